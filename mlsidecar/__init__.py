"""mlsidecar: ML workload events, GPU and process readings as Prometheus metrics on one port.

The product is the ``mlsidecar`` command. The Python API is small on purpose:

* :class:`EventClient` — for Python workloads: one call per event, standard library only,
  never raises into the workload and never blocks it.
* ``__version__``.

Errors the sidecar raises internally, for those reading the code::

    Exception
    ├── config.ConfigError            a config that cannot be used (names the file and the key)
    ├── events.Rejected               one event the sidecar will not map (reason + detail)
    ├── store.CorruptFile             a metric file that runs past its end
    ├── sources.socket.SocketError    a socket path with something else in the way
    └── collectors.CollectorUnavailable  hardware or processes a collector cannot read
"""

from .client import EventClient

__version__ = "0.1.0"

__all__ = ["EventClient", "__version__"]
