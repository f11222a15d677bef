"""Test harness: the real daemon as a subprocess on a free loopback port, and real tools.

Tests scrape over HTTP and wait, bounded, for a value to appear; nothing
depends on timing beyond that bounded wait.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEFAULT_WAIT = 20.0


def require_tool(name: str) -> str:
    """The path of a real tool; skip locally when it is missing, fail in CI."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path:
        return path
    if IN_CI:
        pytest.fail(f"{name} is required in CI (.ci/run installs it)")
    pytest.skip(f"{name} not installed (apt-get install it, or run .ci/run)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = DEFAULT_WAIT, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as exc:  # server not up yet, partial data
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Exposition text into {(sample name, sorted label items): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= set(lv))


class Sidecar:
    """``mlsidecar run`` in a subprocess, with helpers to scrape it."""

    def __init__(self, tmp_path, *args: str, config: str | None = None, env: dict | None = None,
                 state_dir: str | None = None, port: int | None = None):
        self.chosen_port = port is None
        self.port = port or free_port()
        self.state_dir = state_dir or str(tmp_path / "state")
        self.args = list(args)
        self.config = config
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = tmp_path / f"sidecar-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._retries = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> Sidecar:
        cmd = [sys.executable, "-m", "mlsidecar", "run", "--listen", f"127.0.0.1:{self.port}",
               "--state-dir", self.state_dir, *self.args]
        if self.config:
            cmd += ["--config", self.config]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if wait_ready:
            try:
                wait_for(self.ready, what=f"sidecar ready (log: {self.log_path})")
            except AssertionError:
                # A free port picked here can be taken meanwhile by some client's ephemeral
                # port: then start again on another one (only when the port was ours to pick).
                if not (self.chosen_port and "cannot listen on" in self.log() and self._retries < 3):
                    raise
                self._retries += 1
                self.proc = None
                self._log.close()
                self.port = free_port()
                return self.start(wait_ready)
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}: {self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def get(self, path: str, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()

    def metrics_text(self) -> str:
        return self.get("/metrics")[2].decode()

    def scrape(self) -> dict:
        return parse(self.metrics_text())

    def wait_value(self, name: str, expected: float, timeout: float = DEFAULT_WAIT, **labels) -> dict:
        """Wait until the summed samples reach ``expected``; return the scrape."""
        box = {}

        def check():
            box["s"] = self.scrape()
            return total(box["s"], name, **labels) == expected

        try:
            wait_for(check, timeout, what=f"{name}{labels} == {expected}")
        except AssertionError:
            got = total(box.get("s", {}), name, **labels)
            raise AssertionError(f"{name}{labels}: expected {expected}, got {got}; log: {self.log()}") from None
        return box["s"]

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        code = self.proc.returncode
        self._log.close()
        self.proc = None
        return code

    def kill_all(self) -> None:
        """SIGKILL the whole process group (supervisor and workers), as a crash would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()
        self.proc = None


@pytest.fixture
def sidecar_factory(tmp_path):
    started: list[Sidecar] = []

    def make(*args, **kwargs) -> Sidecar:
        sc = Sidecar(tmp_path, *args, **kwargs)
        started.append(sc)
        return sc

    yield make
    for sc in started:
        if sc.proc is not None:
            try:
                os.killpg(sc.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            sc.proc.wait()
