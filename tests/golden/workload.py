"""A workload instrumented with prometheus_client in multiprocess mode, as users write one.

Run as ``python -m tests.golden.workload DIR IDENTITY``: it writes prometheus_client's own
multiprocess files for process IDENTITY under DIR (the identity replaces the PID so the
files, and the ``pid`` label of ``all``-mode gauges, are the same on every run). The
values are fixed; the bucket bounds are the awkward ones (0.1 + 0.2, 1e7, 123456789.0).
"""

from __future__ import annotations

import os
import sys


def main(directory: str, identity: str) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(lambda: identity)
    from prometheus_client import Counter, Gauge, Histogram

    share = 2 if identity == "7" else 1  # the second process adds a little more
    latency = Histogram("workload_request_seconds", "Time a workload request took.", ["route"],
                        buckets=(0.1 + 0.2, 1.0, 1e7, 123456789.0))
    for v in (0.05, 0.3, 0.30000000000000004, 0.7, 12.5, 2e7, 5e8)[:3 + 2 * share]:
        latency.labels(route="/predict").observe(v)
    latency.labels(route='/a "quoted"\\path').observe(0.2)
    rows = Counter("workload_rows", "Rows the workload processed.", ["table"])
    rows.labels(table="users").inc(1e7 * share)
    rows.labels(table="orders").inc(0.1 + 0.2)
    Gauge("workload_threads", "Threads per workload process.", multiprocess_mode="all").set(4 * share)
    Gauge("workload_peak_bytes", "Largest buffer of any workload process.",
          multiprocess_mode="max").set(1234567.0 * share)
    Gauge("workload_inflight", "Requests in flight in all workload processes.",
          multiprocess_mode="livesum").set(3 * share)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
