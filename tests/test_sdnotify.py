"""sd_notify: the protocol unit by unit, then the real daemon talking to a socket that plays systemd."""

import os
import signal
import socket
import tempfile
import time

import pytest

from mlsidecar.runtime.sdnotify import DEFAULT_WATCHDOG_INTERVAL, Notifier
from tests.harness import wait_for


@pytest.fixture
def notify_socket():
    """A unix datagram socket where systemd's would be (a short path: AF_UNIX allows ~107 bytes)."""
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    yield s, path
    s.close()
    os.unlink(path)
    os.rmdir(d)


def recv_all(sock: socket.socket, until, timeout: float = 20.0) -> list[str]:
    """Datagrams until ``until(messages)`` is true; fail after ``timeout`` seconds."""
    msgs: list[str] = []
    deadline = time.monotonic() + timeout
    while not until(msgs):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s; got {msgs!r}")
        sock.settimeout(left)
        try:
            msgs.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return msgs


# --- the protocol ---------------------------------------------------------------------
def test_from_env_is_none_without_notify_socket():
    assert Notifier.from_env({}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}) is None


def test_watchdog_interval_is_half_of_watchdog_usec():
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval == 15.0
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify"})
    assert n.watchdog_interval == DEFAULT_WATCHDOG_INTERVAL == 10.0
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "soon"})
    assert n.watchdog_interval == 10.0


def test_watchdog_meant_for_another_pid_is_ignored():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "4000000"}
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 2.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval == 10.0


def test_messages_on_the_wire(notify_socket):
    sock, path = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready() and n.watchdog() and n.status("reading 3\nfiles") and n.stopping()
    sock.settimeout(5)
    got = [sock.recv(4096).decode() for _ in range(4)]
    assert got[0].split("\n")[0] == "READY=1"
    assert got[1] == "WATCHDOG=1"
    assert got[2] == "STATUS=reading 3 files"  # one line: a newline would start a new assignment
    assert got[3].split("\n")[0] == "STOPPING=1"
    n.close()


def test_abstract_socket():
    name = f"mlsidecar-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        s.settimeout(5)
        assert s.recv(4096).decode().startswith("READY=1")
    finally:
        s.close()


def test_a_dead_socket_never_raises(tmp_path, caplog):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert sum("sd_notify" in r.getMessage() for r in caplog.records) == 1  # warned once, not per ping


# --- the real daemon ---------------------------------------------------------------------
def test_daemon_sends_ready_then_watchdog_pings_then_stopping(tmp_path, sidecar_factory, notify_socket):
    sock, path = notify_socket
    events = tmp_path / "events.jsonl"
    events.touch()
    sc = sidecar_factory("--tail", str(events),
                         env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}).start(wait_ready=False)
    msgs = recv_all(sock, lambda m: any("READY=1" in x.split("\n") for x in m))
    assert msgs[-1].startswith("READY=1")
    # READY=1 means serving: the scrape port answers and every worker has reported.
    wait_for(sc.ready, timeout=10, what="/readyz after READY=1")
    t0 = time.monotonic()
    pings = recv_all(sock, lambda m: sum(x == "WATCHDOG=1" for x in m) >= 3)
    elapsed = time.monotonic() - t0
    # WATCHDOG_USEC=2s: a ping at least every second (half the period), so three within ~3s.
    assert elapsed < 6, f"3 pings took {elapsed:.1f}s"
    assert not any("READY=1" in x for x in pings), "READY=1 sent twice"
    sc.send(signal.SIGTERM)
    rest = recv_all(sock, lambda m: any("STOPPING=1" in x.split("\n") for x in m))
    assert any("STOPPING=1" in x.split("\n") for x in rest)
    assert sc.proc.wait(20) == 0
    assert "Traceback" not in sc.log()

