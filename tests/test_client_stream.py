"""EventClient(stream=...): a stream socket written without ever waiting, and never half a line."""

import socket
import time

import orjson

from mlsidecar.client import EventClient
from tests.harness import wait_for


def test_stream_mode_never_blocks_and_never_sends_half_a_line(tmp_path):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    c = EventClient(stream=path)
    big = "x" * 3000  # lines of ~3 KB, so the kernel buffer fills within the loop
    t0 = time.monotonic()
    for _ in range(5000):
        c.prediction("m", "v", latency_s=0.1, note=big)  # nobody reads yet
    assert time.monotonic() - t0 < 30  # bounded: a blocking write would hang here for ever
    assert c.dropped > 0 and c.sent > 0 and c.sent + c.dropped == 5000
    conn, _ = server.accept()
    conn.settimeout(1)
    data = b""
    while True:
        try:
            chunk = conn.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    # Once the reader has room again, the tail of a line cut by the full buffer goes out first.
    assert c.prediction("m", "v", latency_s=0.2)
    conn.settimeout(1)
    while not data.endswith(b"\n") or data.count(b"\n") < c.sent:
        data += conn.recv(1 << 20)
    lines = data.splitlines()
    assert len(lines) == c.sent
    assert all(orjson.loads(line)["event"] == "prediction" for line in lines)  # each one whole
    c.close()
    conn.close()
    server.close()


def test_stream_mode_reconnects_after_the_sidecar_restarts(tmp_path):
    path = str(tmp_path / "s.sock")

    def listen():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(4)
        return s

    server = listen()
    c = EventClient(stream=path)
    assert c.emit("deployment", model="m")
    conn, _ = server.accept()
    conn.close()
    server.close()
    import os
    os.unlink(path)
    server = listen()

    def delivered():
        c.emit("deployment", model="m")  # the first try after the restart may hit the dead one
        server.settimeout(0.1)
        try:
            conn2, _ = server.accept()
        except TimeoutError:
            return None
        conn2.settimeout(2)
        return conn2.recv(1000)
    got = wait_for(delivered, timeout=10, what="an event after the restart")
    assert b'"event":"deployment"' in got
    server.close()


def test_stream_mode_through_the_daemon(tmp_path, sidecar_factory):
    path = str(tmp_path / "events.sock")
    sc = sidecar_factory("--socket", path).start()
    c = EventClient(stream=path)
    for _ in range(300):
        c.prediction("m", "v", latency_s=0.01)
    c.close()
    sc.wait_value("ml_predictions_total", c.sent)
    assert c.sent + c.dropped == 300 and c.sent > 0
