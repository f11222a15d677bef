"""Shared helpers of the benchmarks: start the daemon, scrape a sum, generate logs, print tables.

Everything here talks to 127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODELS = (("resnet50", "v3"), ("resnet50", "v4"), ("bert-intent", "v12"), ("fraud-xgb", "v7"))
FEATURES = ("age", "income", "country")
COUNTRIES = ("de", "fr", "us", "jp")
MB = 1024 * 1024


# --- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0, headers: dict | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until truthy; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Daemon:
    """``python3 -m mlsidecar run`` in its own process group, on a free loopback port."""

    def __init__(self, workdir: str, *args: str, state_dir: str | None = None, port: int | None = None,
                 config: str | None = None, log_name: str | None = None, tree: str | None = None):
        self.port = port or free_port()
        self.tree = tree or str(REPO)  # another checkout's package (python -m runs it from its cwd)
        self.state_dir = state_dir or os.path.join(workdir, "state")
        self.args = list(args)
        self.config = config
        self.log_path = os.path.join(workdir, log_name or f"sidecar-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, wait: bool = True) -> Daemon:
        cmd = [sys.executable, "-m", "mlsidecar", "run", "--listen", f"127.0.0.1:{self.port}",
               "--state-dir", self.state_dir, "--log-level", "warning", *self.args]
        if self.config:
            cmd += ["--config", self.config]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.tree,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        if wait:
            wait_for(self.ready, timeout, what=f"sidecar ready (log {self.log_path})")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def metrics(self, timeout: float = 10.0) -> str:
        return http_get(self.url + "/metrics", timeout).decode()

    def pids(self) -> list[int]:
        import psutil

        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        code = self.proc.returncode
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and workers), as a crash would."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None


# --- scraping -------------------------------------------------------------------------------------

def sample_sum(text: str, name: str, contains: str = "") -> float:
    """Sum of the samples called exactly ``name`` (any labels) whose line contains ``contains``."""
    total = 0.0
    brace = name + "{"
    space = name + " "
    for line in text.splitlines():
        if (line.startswith(brace) or line.startswith(space)) and contains in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def count_samples(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def scrape_sum(url: str, name: str, contains: str = "", timeout: float = 10.0) -> float:
    return sample_sum(http_get(url, timeout).decode(), name, contains)


def wait_sum(url: str, name: str, expected: float, timeout: float, interval: float = 0.05,
             t0: float | None = None, contains: str = "") -> tuple[float, float]:
    """Poll ``url`` until sum(name) >= expected; (seconds since t0, last sum). Bounded by ``timeout``."""
    t0 = time.perf_counter() if t0 is None else t0
    deadline = time.monotonic() + timeout
    got = -1.0
    while time.monotonic() < deadline:
        try:
            got = scrape_sum(url, name, contains)
        except (OSError, ValueError):
            pass
        if got >= expected:
            return time.perf_counter() - t0, got
        time.sleep(interval)
    return math.inf, got


# --- logs -----------------------------------------------------------------------------------------

def prediction_event(rng: random.Random, i: int, features: bool = False) -> dict:
    model, version = MODELS[i % len(MODELS)]
    ev = {"event": "prediction", "model": model, "version": version,
          "status": "error" if rng.random() < 0.02 else "success",
          "latency_s": round(rng.lognormvariate(math.log(0.03), 0.8), 5),
          "confidence": round(min(1.0, max(0.0, rng.betavariate(8, 2))), 4),
          "prediction_id": f"req-{i:09d}"}
    if features:
        ev["features"] = {"age": round(rng.gauss(40, 12), 1), "income": round(rng.gauss(50000, 15000), 0),
                          "country": rng.choice(COUNTRIES)}
    return ev


def write_prediction_log(path: str, n: int, features: bool = False, seed: int = 1) -> int:
    """``n`` prediction lines (fixed key order, so a regex program can read them); returns bytes."""
    rng = random.Random(seed)
    size = 0
    with open(path, "wb") as fh:
        chunk = []
        for i in range(n):
            chunk.append(orjson.dumps(prediction_event(rng, i, features)))
            if len(chunk) == 10000:
                data = b"\n".join(chunk) + b"\n"
                fh.write(data)
                size += len(data)
                chunk = []
        if chunk:
            data = b"\n".join(chunk) + b"\n"
            fh.write(data)
            size += len(data)
    return size


def write_mixed_log(path: str, n_lines: int, seed: int = 7) -> tuple[int, int, int]:
    """About ``n_lines`` lines of every event kind, from the demo workload with a fake clock.

    Returns (lines, predictions, bytes).
    """
    from mlsidecar.demo import DemoWorkload

    demo = DemoWorkload(path, seed=seed)
    demo.start = 1_700_000_000.0
    lines = preds = size = 0
    now = demo.start
    with open(path, "wb") as fh:
        while lines < n_lines:
            buf = []
            for _ in range(500):
                now += 0.001
                for ev in demo.events(now):
                    buf.append(orjson.dumps(ev))
                    preds += ev["event"] == "prediction"
            data = b"\n".join(buf) + b"\n"
            fh.write(data)
            lines += len(buf)
            size += len(data)
    return lines, preds, size


def append_file(src: str, dst: str, block: int = 4 * MB) -> None:
    """Append ``src`` to ``dst`` at once (as fast as the page cache takes it)."""
    with open(src, "rb") as fin, open(dst, "ab") as fout:
        while True:
            b = fin.read(block)
            if not b:
                break
            fout.write(b)


def cached_log(kind: str, n: int, cache_dir: str) -> tuple[str, dict]:
    """Generate a log once per (kind, n) into ``cache_dir``; (path, facts)."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{kind}-{n}.jsonl")
    meta = path + ".meta.json"
    if os.path.exists(path) and os.path.exists(meta):
        with open(meta, "rb") as fh:
            return path, orjson.loads(fh.read())
    if kind == "predictions":
        size = write_prediction_log(path, n)
        facts = {"lines": n, "predictions": n, "bytes": size}
    elif kind == "features":
        size = write_prediction_log(path, n, features=True)
        facts = {"lines": n, "predictions": n, "bytes": size}
    elif kind == "mixed":
        lines, preds, size = write_mixed_log(path, n)
        facts = {"lines": lines, "predictions": preds, "bytes": size}
    else:
        raise ValueError(kind)
    with open(meta, "wb") as fh:
        fh.write(orjson.dumps(facts))
    return path, facts


def default_cache() -> str:
    return os.path.join(tempfile.gettempdir(), "mlsidecar-bench-logs")


# --- output ---------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)


def fmt_s(x: float) -> str:
    if x == math.inf:
        return "timeout"
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.1f} ms"


def fmt_rate(n: float, secs: float) -> str:
    if not secs or secs == math.inf:
        return "-"
    return f"{n / secs:,.0f}/s"


def header(title: str) -> None:
    print(f"\n## {title}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]})\n", flush=True)
