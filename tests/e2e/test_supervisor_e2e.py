"""The supervisor: a crashed worker is restarted with backoff and counted; nothing is lost."""

import json
import os
import signal
import time

from tests.harness import total, wait_for

LINE = b'{"event":"prediction","model":"m","latency_s":0.01}\n'


def worker_pid(sc, role):
    def find():
        for name in os.listdir(os.path.join(sc.state_dir, "status")):
            if name.endswith(".json"):
                with open(os.path.join(sc.state_dir, "status", name)) as fh:
                    st = json.load(fh)
                if st.get("role") == role:
                    return st["pid"]
        return None
    return wait_for(find, what=f"{role} worker status")


def test_killed_worker_is_restarted_counted_and_loses_nothing(tmp_path, sidecar_factory):
    log = tmp_path / "e.jsonl"
    log.write_bytes(LINE * 1000)
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 1000)
    pid = worker_pid(sc, "tail")
    os.kill(pid, signal.SIGKILL)
    with open(log, "ab") as fh:
        fh.write(LINE * 500)
    sc.wait_value("ml_predictions_total", 1500)
    wait_for(lambda: total(sc.scrape(), "mlsidecar_worker_restarts_total") == 1, what="restart counted")
    assert worker_pid(sc, "tail") != pid
    assert "exited with code -9" in sc.log()
    # A worker that keeps dying backs off instead of spinning.
    for _ in range(2):
        os.kill(wait_for(lambda old=pid: (p := worker_pid(sc, "tail")) != old and p, what="new pid"), signal.SIGKILL)
        pid = worker_pid(sc, "tail")
        time.sleep(0.2)
    assert "restarting in 1.0s" in sc.log() or "restarting in 2.0s" in sc.log()
    sc.wait_value("ml_predictions_total", 1500)


def test_sigint_stops_cleanly_too(tmp_path, sidecar_factory):
    log = tmp_path / "e.jsonl"
    log.write_bytes(LINE * 10)
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 10)
    assert sc.stop(signal.SIGINT) == 0
    assert "stopped" in sc.log()


def test_state_dir_is_private_and_event_data_never_names_a_file(tmp_path, sidecar_factory):
    log = tmp_path / "e.jsonl"
    bait = tmp_path / "bait"
    hostile = [{"event": "prediction", "model": str(bait), "version": "../../bait2", "latency_s": 0.1},
               {"event": "metric", "name": "x", "value": 1, "labels": {"path": str(bait) + "3"}},
               {"event": "label", "prediction_id": str(bait) + "4", "y_true": "a"}]
    import orjson
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in hostile))
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 1)
    assert os.stat(sc.state_dir).st_mode & 0o777 == 0o700
    assert not list(tmp_path.glob("bait*"))
    assert not list((tmp_path / "state").rglob("*bait*"))
