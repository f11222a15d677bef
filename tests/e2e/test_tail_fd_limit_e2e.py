"""More files than descriptors: with the soft RLIMIT_NOFILE at 256 and 1,200 files matching one
glob, every line is counted exactly once and the tail worker is never restarted (it holds at
most sources.max_open_files open, at most half the limit, closing idle ones)."""

import glob
import os
import resource
import subprocess
import sys
import time

import orjson

from tests.harness import Sidecar, total, wait_for

NOFILE = 256


class SidecarWithFewDescriptors(Sidecar):
    """The sidecar with its soft RLIMIT_NOFILE lowered (set in the child only: this test
    process may hold more descriptors than that)."""

    def start(self, wait_ready: bool = True) -> Sidecar:
        cmd = [sys.executable, "-m", "mlsidecar", "run", "--listen", f"127.0.0.1:{self.port}",
               "--state-dir", self.state_dir, *self.args]
        if self.config:
            cmd += ["--config", self.config]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard)))
        if wait_ready:
            wait_for(self.ready, timeout=60, what=f"sidecar ready (log: {self.log_path})")
        return self


def line(i: int) -> bytes:
    return orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.001, "seq": i}) + b"\n"


def tail_status(state: str) -> dict:
    (path,) = glob.glob(os.path.join(state, "status", "tail-*.json"))
    return orjson.loads(open(path, "rb").read())


def test_more_files_than_descriptors_are_all_counted(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    paths = [logs / f"app-{i:04d}.jsonl" for i in range(1200)]
    for i, p in enumerate(paths):
        p.write_bytes(line(2 * i) + line(2 * i + 1))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\npoll_interval = 0.2\n")
    sc = SidecarWithFewDescriptors(tmp_path, "--tail", str(logs / "*.jsonl"), config=str(cfg))
    try:
        sc.start()
        run(sc, paths)
    finally:
        if sc.proc is not None:
            sc.kill_all()


def run(sc: Sidecar, paths: list) -> None:
    pid = wait_for(lambda: tail_status(sc.state_dir).get("pid"), what="tail worker status")
    sc.wait_value("ml_predictions_total", 2400, timeout=90)
    for i, p in enumerate(paths):  # every file written again, closed ones too
        with open(p, "ab") as fh:
            fh.write(line(10_000 + i))
    s = sc.wait_value("ml_predictions_total", 3600, timeout=90)
    time.sleep(1.0)
    s = sc.scrape()
    assert total(s, "ml_predictions_total") == 3600  # nothing counted twice
    assert total(s, "mlsidecar_worker_restarts_total") == 0
    st = tail_status(sc.state_dir)
    assert st["pid"] == pid, "the tail worker was restarted"
    assert st["files"] == 1200 and st["open_files"] <= st["max_open_files"] <= 128, st
    assert "error" not in st, st
    log = sc.log()
    assert "Too many open files" not in log and "closed while idle" in log, log
    assert sc.stop() == 0
