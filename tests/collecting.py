"""Collect through the runner, as the collector worker does (tests only)."""

from __future__ import annotations

from mlsidecar.collectors import Collector, Reading
from mlsidecar.runtime.collect import CollectorRun
from mlsidecar.store import SeriesWriter

_runs: dict[tuple[int, int], CollectorRun] = {}


def run_of(c: Collector, writer: SeriesWriter) -> CollectorRun:
    """The one CollectorRun of this collector and writer (made on first use)."""
    key = (id(c), id(writer))
    run = _runs.get(key)
    if run is None or run.collector is not c or run.writer is not writer:
        run = _runs[key] = CollectorRun(c.name, c, writer)
    return run


def publish(c: Collector, writer: SeriesWriter) -> CollectorRun:
    """One collect, published by the runner; raises what the collector raised."""
    run = run_of(c, writer)
    run.collect()
    return run


def readings(c: Collector) -> dict[tuple, Reading]:
    """What one collect read, by series: no store involved."""
    out = c.collect()
    assert isinstance(out, list) and all(isinstance(r, Reading) for r in out)
    return {(r.family, r.labels): r for r in out}
