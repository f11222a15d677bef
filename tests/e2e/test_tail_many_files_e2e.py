"""Many tailed files: what a flush writes grows with what was read, not with how many files there
are (the journal keeps every position, the status lists a bounded number of files)."""

import glob
import os
import time

import orjson

from tests.harness import total, wait_for


def line(i: int) -> bytes:
    return orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.001, "seq": i}) + b"\n"


def tail_worker_pid(state: str) -> int:
    def pid():
        for p in glob.glob(os.path.join(state, "status", "tail-*.json")):
            return orjson.loads(open(p, "rb").read())["pid"]
        return None
    return wait_for(pid, what="the tail worker's status")


def written_by(pid: int) -> int:
    """Bytes the process handed to write(2) and friends (/proc/PID/io wchar)."""
    with open(f"/proc/{pid}/io") as fh:
        return next(int(x.split()[1]) for x in fh if x.startswith("wchar:"))


def bytes_per_second_with_one_file_written(tmp_path, sidecar_factory, n_files: int) -> float:
    logs = tmp_path / f"logs-{n_files}"
    logs.mkdir()
    paths = [logs / f"app-{i:04d}.jsonl" for i in range(n_files)]
    for i, p in enumerate(paths):
        p.write_bytes(line(i))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nflush_interval = 0.1\n")
    sc = sidecar_factory("--tail", str(logs / "*.jsonl"), "--log-level", "warning", config=str(cfg),
                         state_dir=str(tmp_path / f"state-{n_files}")).start()
    sc.wait_value("ml_predictions_total", n_files, timeout=60)
    pid = tail_worker_pid(sc.state_dir)
    time.sleep(3.0)  # the first flushes after start (every position, every gauge) are done
    before, t0 = written_by(pid), time.monotonic()
    busy = paths[0]
    # One file written, five lines a second, every line flushed on its own, for long enough that
    # the journal's rewrite (every position, once it has doubled) counts at its average.
    for k in range(50):
        with open(busy, "ab") as fh:
            fh.write(line(n_files + k))
        time.sleep(0.2)
    rate = (written_by(pid) - before) / (time.monotonic() - t0)
    s = sc.wait_value("ml_predictions_total", n_files + 50)
    assert total(s, "mlsidecar_worker_restarts_total") == 0
    assert sc.stop() == 0
    return rate


def test_bytes_written_do_not_grow_with_idle_files(tmp_path, sidecar_factory):
    few = bytes_per_second_with_one_file_written(tmp_path, sidecar_factory, 8)
    many = bytes_per_second_with_one_file_written(tmp_path, sidecar_factory, 800)
    # 100 times the idle files; every flush rewriting every position made this about 50 (1.7 MB/s
    # against 46 KB/s). Appending what changed, and rewriting it all at twice its size: about 2.
    print(f"bytes written a second: {few:.0f} with 8 files, {many:.0f} with 800")
    assert many < 3 * few + 20_000, (few, many)
