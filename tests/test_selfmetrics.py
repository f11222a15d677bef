"""The sidecar's own resource use: process_* for the supervisor, mlsidecar_worker_* per worker, python_info."""

from __future__ import annotations

import json
import os
import platform
import signal

import psutil

from tests.harness import total, wait_for

PREDICTION = b'{"event":"prediction","model":"m","version":"v1","latency_s":0.01}\n'


def test_supervisor_and_workers_report_their_own_cpu_and_memory(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.touch()
    sc = sidecar_factory("--tail", str(events)).start()
    sup = psutil.Process(sc.proc.pid)
    before = sup.cpu_times()
    s = sc.scrape()
    after = sup.cpu_times()

    # process_*: the supervisor, the PID the unit or container runs.
    cpu = total(s, "process_cpu_seconds_total")
    assert before.user + before.system <= cpu <= after.user + after.system
    assert total(s, "process_start_time_seconds") == sup.create_time()
    rss = total(s, "process_resident_memory_bytes")
    assert 0.5 * sup.memory_info().rss <= rss <= 2 * sup.memory_info().rss
    assert total(s, "process_open_fds") >= 3
    assert total(s, "process_max_fds") == sup.rlimit(psutil.RLIMIT_NOFILE)[0]
    assert total(s, "python_info", version=platform.python_version()) == 1

    # One series per worker, each the worker's own process.
    workers = {dict(lv)["worker"]: v for (n, lv), v in s.items() if n == "mlsidecar_worker_resident_memory_bytes"}
    children = {c.pid: c for c in sup.children()}
    assert {"server", "collect"} <= workers.keys() and any(w.startswith("tail-") for w in workers), workers
    assert len(workers) == len(children), (workers, children)
    assert all(v > 1e6 for v in workers.values()), workers
    assert total(s, "mlsidecar_worker_cpu_seconds_total") <= sum(  # later readings, float sums
        c.cpu_times().user + c.cpu_times().system for c in sup.children()) + 1e-6
    tail = next(w for w in workers if w.startswith("tail-"))
    tail_cpu = total(s, "mlsidecar_worker_cpu_seconds_total", worker=tail)

    # Work done by the tail worker shows as its CPU time, not the others'.
    with open(events, "ab") as fh:
        fh.write(PREDICTION * 100_000)
    sc.wait_value("ml_predictions_total", 100_000, timeout=60)
    s = wait_for(lambda: (lambda s: s if total(s, "mlsidecar_worker_cpu_seconds_total", worker=tail)
                          > tail_cpu + 0.05 else None)(sc.scrape()), what="tail worker CPU rising")
    assert total(s, "mlsidecar_worker_cpu_seconds_total", worker=tail) > tail_cpu


def status_pid(sc, identity: str) -> int | None:
    with open(os.path.join(sc.state_dir, "status", f"{identity}.json")) as fh:
        return json.load(fh).get("pid")


def test_a_restarted_worker_is_read_again_under_its_new_pid(sidecar_factory):
    sc = sidecar_factory().start()
    old = status_pid(sc, "collect")
    rss = total(sc.scrape(), "mlsidecar_worker_resident_memory_bytes", worker="collect")
    assert abs(rss - psutil.Process(old).memory_info().rss) < 0.5 * rss

    os.kill(old, signal.SIGKILL)  # the supervisor starts it again
    new = wait_for(lambda: (status_pid(sc, "collect") or old) != old and status_pid(sc, "collect"),
                   what="collect worker restarted")
    rss = wait_for(lambda: total(sc.scrape(), "mlsidecar_worker_resident_memory_bytes", worker="collect"),
                   what="collect worker read again")
    assert abs(rss - psutil.Process(new).memory_info().rss) < 0.5 * rss
    workers = [dict(lv)["worker"] for (n, lv), _ in sc.scrape().items()
               if n == "mlsidecar_worker_resident_memory_bytes"]
    assert workers.count("collect") == 1
