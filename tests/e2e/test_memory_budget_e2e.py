"""Memory stays within the shipped limits when a workload drives every kind past its limits.

Unique model versions, jobs, pipelines, stages, queues, sources, features and metric names
are sent through a tailed file and the datagram socket, far more than the series budget
(limits.max_series, shared by the two ingest workers) allows. The budget must be reached
(mlsidecar_series_limited_total counts the rest), and the proportional set size (PSS) of
every process of the sidecar, added up, must stay under the Kubernetes manifests' 128Mi
limit with room (the systemd unit's MemoryMax=256M is twice that). Every worker runs, the
GPU collector's included (it idles where there is no GPU). Measured on main: about 105 MiB.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import psutil

from tests.harness import total, wait_for

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_LIMIT = 128 * 1024 * 1024
HEADROOM = 0.9  # what the sidecar may use of the limit at worst: the rest is room


def manifest_limit() -> int:
    """The sidecar container's memory limit in the shipped manifest (128Mi)."""
    text = (ROOT / "deploy/kubernetes/inference-deployment.yaml").read_text()
    values = re.findall(r"memory:\s*(\d+)Mi", text)
    return max(int(v) for v in values if int(v) <= 1024) * 1024 * 1024


def unit_limit() -> int:
    m = re.search(r"^MemoryMax=(\d+)M$", (ROOT / "systemd/mlsidecar.service").read_text(), re.M)
    return int(m.group(1)) * 1024 * 1024


def events(i: int) -> list[dict]:
    """One of each kind, every one with a key never seen before."""
    return [
        {"event": "prediction", "model": "m", "version": f"v{i}", "latency_s": 0.01, "confidence": 0.9},
        {"event": "evaluation", "model": "m", "version": f"v{i}", "dataset": "d", "accuracy": 0.9},
        {"event": "drift", "model": "m", "version": "v", "feature": f"f{i}", "score": 0.1},
        {"event": "data_quality", "model": "m", "version": f"v{i}", "scores": {"completeness": 1.0}},
        {"event": "deployment", "model": "m", "version": f"v{i}"},
        {"event": "training", "job": f"j{i}", "epoch": 1, "loss": 0.5, "learning_rate": 0.1},
        {"event": "batch", "job": f"j{i}", "duration_s": 0.3, "batch_size": 32},
        {"event": "checkpoint", "job": f"j{i}", "size_bytes": 1000, "duration_s": 1.0},
        {"event": "pipeline", "pipeline": f"p{i}", "stage": f"s{i}", "records": 5, "duration_s": 0.2},
        {"event": "queue", "pipeline": "p", "queues": {f"q{i}": 3}},
        {"event": "freshness", "pipeline": "p", "source": f"src{i}", "age_s": 5},
        {"event": "schema_violation", "pipeline": "p", "violation_type": f"t{i}"},
        {"event": "metric", "name": f"kpi_{i}", "value": 1.0, "labels": {"shop": f"s{i}"}},
        {"event": "metric", "name": "orders_total", "type": "counter", "value": 1, "labels": {"shop": f"s{i}"}},
    ]


def pss_by_process(root_pid: int, state_dir: str) -> dict[str, int]:
    """PSS of the supervisor and each of its processes, named by worker where known."""
    names = {root_pid: "supervisor"}
    for f in (Path(state_dir) / "status").glob("*.json"):
        try:
            st = json.loads(f.read_text())
            names[st["pid"]] = st["identity"]
        except (ValueError, KeyError, OSError):
            pass
    root = psutil.Process(root_pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            out[names.get(p.pid, f"pid {p.pid}")] = p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return out


def test_every_kind_past_its_limits_stays_within_the_shipped_memory_limits(tmp_path, sidecar_factory):
    assert manifest_limit() == MANIFEST_LIMIT and unit_limit() == 2 * MANIFEST_LIMIT
    log = tmp_path / "events.jsonl"
    log.touch()
    dgram = str(tmp_path / "events.dgram")
    sc = sidecar_factory("--tail", str(log), "--socket-datagram", dgram).start()
    # supervisor, tail, socket and the collector worker (its GPU collector is a thread of it)
    wait_for(lambda: sum(not k.startswith("pid ") for k in pss_by_process(sc.proc.pid, sc.state_dir)) >= 4,
             timeout=10, what="worker statuses")
    start = pss_by_process(sc.proc.pid, sc.state_dir)
    baseline = sum(start.values())

    n_file, n_sock = 3000, 1500
    with open(log, "ab") as fh:
        for i in range(n_file):
            fh.write(b"".join(json.dumps(e).encode() + b"\n" for e in events(i)))
    per_line = len(events(0))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        for i in range(n_file, n_file + n_sock):
            for e in events(i):
                d.sendto(json.dumps(e).encode(), dgram)

    def done():
        s = sc.scrape()
        got = total(s, "mlsidecar_events_total") + total(s, "mlsidecar_events_rejected_total")
        dropped = total(s, "mlsidecar_events_dropped_total")
        return s if got + dropped >= (n_file + n_sock) * per_line else None

    s = wait_for(done, timeout=120, what="every event read")
    for _ in range(3):
        sc.metrics_text()
        sc.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    pss = pss_by_process(sc.proc.pid, sc.state_dir)
    used = sum(pss.values())
    limited = {dict(lv)["metric"] for (name, lv), v in s.items()
               if name == "mlsidecar_series_limited_total" and v > 0 and dict(lv)["metric"].startswith("ml_")}
    detail = ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in pss.items())
    print("at start: " + ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in start.items()))
    print(f"PSS {used / 2**20:.1f} MiB in all (at start {baseline / 2**20:.1f} MiB): {detail}; "
          f"limited families: {sorted(limited)}")
    assert len(limited) >= 5, f"the series budget was not reached: {limited}"
    assert total(s, "mlsidecar_events_rejected_total", reason="too_many_metrics") > 0
    assert used < HEADROOM * MANIFEST_LIMIT, f"PSS {used / 2**20:.1f} MiB: {detail}"
    assert sc.ready()
