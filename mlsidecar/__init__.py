"""mlsidecar: ML workload events, GPU and process readings as Prometheus metrics on one port.

The public API is small: the CLI (``mlsidecar``) is the product; Python
workloads may use :mod:`mlsidecar.client` to send events.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
