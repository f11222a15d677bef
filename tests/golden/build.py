"""Build the golden multiprocess directory from the committed inputs, and render it.

Everything is fixed: the clock, the inputs (``inputs/``), the identities of the
workload processes, the sidecar's own readings. The same build gives the same
bytes on every machine, so ``/metrics`` can be compared with the committed
``metrics.txt`` / ``metrics.openmetrics.txt`` byte for byte.

What the directory holds:

- ``state/metrics``: the sidecar's own files, written by the real mapper and
  writer from ``inputs/expired.jsonl`` (7 hours ago) and ``inputs/events.jsonl``
  (now), with ``inputs/config.toml`` (odd ``metric_buckets``, a static label, an
  expiry); one removed series (``ml_pipeline_queue_size{queue="retry"}``);
- ``workload``: prometheus_client's own multiprocess files of two workload
  processes (``workload.py``), plus one file written by hand whose histogram
  spells the bound 1e7 both as ``1e+07`` and ``10000000.0``;
- ``foreign``: files only the sidecar's reader defines an output for: one
  truncated mid-write, one whose key would write into a built-in family.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from mlsidecar import catalogue as C
from mlsidecar import config, selfmetrics
from mlsidecar.mapping import Mapper
from mlsidecar.runtime.state import StateDir
from mlsidecar.store import Batch, SeriesWriter

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "inputs"
TEXT_GOLDEN = HERE / "metrics.txt"
OPENMETRICS_GOLDEN = HERE / "metrics.openmetrics.txt"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOURS_AGO_7 = NOW - 7 * 3600
WORKLOAD_IDENTITIES = ("web-1", "7")
# Series in the files that the sidecar hides on purpose (expired, removed): (sample, labels).
HIDDEN = {
    ("ml_feature_drift_score", (("cluster", "golden"), ("feature_name", "age"), ("model_name", "resnet"),
                                ("model_version", "v1"))),
    ("golden_batch_age_seconds", (("batch", "old"), ("cluster", "golden"))),
}
# What the fixed self-metrics read (the real ones read psutil: different on every run).
PYTHON_LABELS = (("implementation", "CPython"), ("major", "3"), ("minor", "11"), ("patchlevel", "0"),
                 ("version", "3.11.0"))
READING = {"cpu": 1.25, "rss": 52428800.0, "vms": 314572800.0, "start": NOW - 60.0, "fds": 12.0,
           "max_fds": 1024.0}


@dataclass
class Golden:
    cfg: config.Config
    state: StateDir
    workload: str
    foreign: str


class FixedSelfMetrics(selfmetrics.SelfMetrics):
    """The sidecar's self-metrics with fixed readings instead of psutil's."""

    def __init__(self) -> None:
        super().__init__(supervisor_pid=1)

    def _read(self, pid: int, worker: bool = True) -> dict | None:
        return dict(READING)


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _write_sidecar_files(cfg: config.Config, state: StateDir) -> None:
    clock = [HOURS_AGO_7]
    writer = SeriesWriter(state.metrics, "tail-0", state.journal("tail-0"),
                          static_labels=cfg.static_labels({}), expiry=C.expiry(dict(cfg.expire)),
                          clock=lambda: clock[0])
    mapper = Mapper(Batch(), metric_prefix=cfg.metric_prefix,
                    metric_buckets=cfg.metric_buckets or C.LATENCY_BUCKETS, clock=lambda: clock[0])
    for name, at in (("expired.jsonl", HOURS_AGO_7), ("events.jsonl", NOW)):
        clock[0] = at
        mapper.tick(at)
        for ev in _lines(INPUTS / name):
            mapper.handle(ev)
        mapper.tick(at)
        writer.apply(mapper.batch, now=at)
        writer.flush({"golden": name})
    writer.remove(C.PIPELINE_QUEUE, ("etl", "retry"))
    writer.flush({"golden": "removed"})
    writer.close()


def _write_workload_files(directory: str) -> None:
    for identity in WORKLOAD_IDENTITIES:
        subprocess.run([sys.executable, "-m", "tests.golden.workload", directory, identity], check=True,
                       cwd=HERE.parent.parent, timeout=60)
    # Another client's writer: the bound 1e7 spelled two ways, one series in both renderers.
    d = MmapedDict(os.path.join(directory, "histogram_legacy.db"))
    name, doc = "workload_request_seconds", "Time a workload request took."
    for le, count in (("1e+07", 1.0), ("10000000.0", 2.0), ("+Inf", 0.0)):
        d.write_value(mmap_key(name, name + "_bucket", ["route", "le"], ["/legacy", le], doc), count, 0.0)
    d.write_value(mmap_key(name, name + "_sum", ["route"], ["/legacy"], doc), 2.4e7, 0.0)
    d.close()


def _write_foreign_files(directory: str) -> None:
    # A gauge that would write into the built-in counter ml_predictions_total: skipped.
    d = MmapedDict(os.path.join(directory, "gauge_all_intruder.db"))
    d.write_value(mmap_key("ml_predictions_total", "ml_predictions_total", [], [], "Not ours."), 5.0, 0.0)
    d.close()
    # A process killed mid-write: the header counts bytes the file does not have.
    path = os.path.join(directory, "counter_9.db")
    d = MmapedDict(path)
    d.write_value(mmap_key("workload_crashed", "workload_crashed_total", [], [], "Never served."), 1.0, 0.0)
    used = d._used
    d.close()
    os.truncate(path, used - 13)


def build(root: Path) -> Golden:
    """Write the golden directory under ``root``."""
    C.load_builtins()
    cfg = config.load(str(INPUTS / "config.toml"))
    workload, foreign = root / "workload", root / "foreign"
    workload.mkdir(parents=True)
    foreign.mkdir()
    cfg = config.with_overrides(cfg, multiproc_dir=[str(workload), str(foreign)])
    state = StateDir(str(root / "state"))
    state.create()
    _write_sidecar_files(cfg, state)
    _write_workload_files(str(workload))
    _write_foreign_files(str(foreign))
    return Golden(cfg, state, str(workload), str(foreign))


def scrape(golden: Golden) -> tuple[bytes, bytes]:
    """``/metrics`` as text, then as OpenMetrics, through the real server's handler."""
    from aiohttp.test_utils import TestClient, TestServer

    from mlsidecar.server import Server

    async def run() -> tuple[bytes, bytes]:
        server = Server(golden.cfg, golden.state, [], clock=lambda: NOW)
        server.self_metrics = FixedSelfMetrics()
        saved = selfmetrics._PYTHON_LABELS
        selfmetrics._PYTHON_LABELS = PYTHON_LABELS
        try:
            async with TestClient(TestServer(server.app(), host="127.0.0.1")) as client:
                bodies = []
                for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
                    r = await client.get(golden.cfg.server.telemetry_path, headers={"Accept": accept})
                    assert r.status == 200, await r.text()
                    bodies.append(await r.read())
                return bodies[0], bodies[1]
        finally:
            selfmetrics._PYTHON_LABELS = saved
            server.executor.shutdown()

    return asyncio.run(run())
