"""The unix socket sources against the real daemon: stream, datagram, backpressure, safety."""

import os
import socket
import stat

import pytest

from tests.harness import total, wait_for

PRED = b'{"event":"prediction","model":"m","latency_s":0.05}'


@pytest.fixture
def sock_paths(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return str(d / "events.sock"), str(d / "events.dgram")


def test_stream_and_datagram_events_are_counted(tmp_path, sidecar_factory, sock_paths):
    stream_path, dgram_path = sock_paths
    sc = sidecar_factory("--socket", stream_path, "--socket-datagram", dgram_path).start()
    assert stat.S_IMODE(os.stat(stream_path).st_mode) == 0o660
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(stream_path)
        s.sendall((PRED + b"\n") * 500 + b"{bad\n")
        s.sendall(PRED)  # the last line without its newline counts when the connection closes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        for _ in range(300):
            d.sendto(PRED, dgram_path)
        d.sendto(b'{"event":"drift","model":"m","feature":"f","score":0.3}', dgram_path)
    s = sc.wait_value("ml_predictions_total", 801)
    assert total(s, "mlsidecar_events_rejected_total", reason="malformed_json") == 1
    assert total(s, "ml_feature_drift_score", feature_name="f") == 0.3
    assert total(s, "mlsidecar_events_total", source=dgram_path) == 301
    assert total(s, "mlsidecar_events_dropped_total") == 0


def test_backpressure_drops_and_counts_never_blocks(tmp_path, sidecar_factory, sock_paths):
    stream_path, dgram_path = sock_paths
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nsocket_queue = 5\n")
    sc = sidecar_factory("--socket-datagram", dgram_path, config=str(cfg)).start()
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        d.setblocking(False)
        line = b"\n".join([PRED] * 4)  # 4 events per datagram, the queue holds 5
        for _ in range(3000):
            try:
                d.sendto(line, dgram_path)
                sent += 4
            except BlockingIOError:
                pass  # the kernel buffer is full: the workload's send never blocks
    def settled():
        s = sc.scrape()
        got = total(s, "ml_predictions_total") + total(s, "mlsidecar_events_dropped_total")
        return s if got == sent else None
    s = wait_for(settled, what="accepted + dropped == sent")
    assert total(s, "mlsidecar_events_dropped_total", reason="backpressure") > 0


def test_symlink_at_socket_path_is_refused(tmp_path, sidecar_factory, sock_paths):
    stream_path, _ = sock_paths
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, stream_path)
    sc = sidecar_factory("--socket", stream_path).start(wait_ready=False)
    wait_for(lambda: "is not a socket" in sc.log(), what="refusal logged")
    assert target.read_text() == "keep me"
    assert os.path.islink(stream_path)
    status, _, body = sc.get("/metrics")
    assert status == 200


def worker_pid(sc, identity: str) -> int:
    import re
    found = re.findall(rf"started {re.escape(identity)} \(pid (\d+)\)", sc.log())
    assert found, sc.log()
    return int(found[-1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(path: str, tries: int = 50) -> socket.socket:
    """A stream connection; waits (bounded) while the listen backlog is full."""
    import time
    for i in range(tries):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if i == tries - 1:
                raise
            time.sleep(0.02)


def closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_stream_connections_beyond_the_limit_are_closed_and_counted(tmp_path, sidecar_factory, sock_paths):
    stream_path, _ = sock_paths
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nsocket_max_connections = 5\n")
    sc = sidecar_factory("--socket", stream_path, config=str(cfg)).start()
    kept = [connect(stream_path) for _ in range(5)]
    for c in kept:
        c.sendall(PRED + b"\n")
    sc.wait_value("ml_predictions_total", 5)  # all five accepted and read
    extra = [connect(stream_path) for _ in range(3)]
    for c in extra:
        assert wait_for(lambda c=c: closed_by_peer(c), what="an excess connection closed")
        c.close()
    sc.wait_value("mlsidecar_socket_connections_rejected_total", 3, reason="connection_limit")
    assert all(not closed_by_peer(c) for c in kept)  # the ones inside the limit stay open
    for c in kept:
        c.close()
    with connect(stream_path) as c:  # room again
        c.sendall(PRED + b"\n")
    sc.wait_value("ml_predictions_total", 6)


def test_out_of_descriptors_the_socket_worker_pauses_instead_of_spinning(tmp_path, sidecar_factory, sock_paths):
    import resource
    import time

    stream_path, _ = sock_paths
    sc = sidecar_factory("--socket", stream_path).start()
    pid = worker_pid(sc, "socket")
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (48, 48))  # below socket_max_connections
    conns = []
    try:
        for _ in range(80):  # bounded; beyond the backlog connect() fails and we stop
            try:
                conns.append(connect(stream_path))
            except OSError:
                break
        wait_for(lambda: "pausing accept" in sc.log() or "Errno 24" in sc.log(), what="EMFILE seen")
        time.sleep(1.5)  # a worker spinning on accept logs thousands of lines in this time
        lines = [ln for ln in sc.log().splitlines() if "accept" in ln or "Errno 24" in ln]
        assert len(lines) <= 3, lines[:5]
    finally:
        for c in conns:
            c.close()
    with connect(stream_path) as c:
        c.sendall(PRED + b"\n")
    s = sc.wait_value("ml_predictions_total", 1)
    assert total(s, "mlsidecar_socket_connections_rejected_total", reason="fd_limit") >= 1
    assert total(s, "mlsidecar_worker_restarts_total") == 0


def test_unfinished_lines_of_all_connections_share_one_byte_budget(tmp_path, sidecar_factory, sock_paths):
    stream_path, _ = sock_paths
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nsocket_buffer_bytes = 2097152\nsocket_max_connections = 200\n")
    sc = sidecar_factory("--socket", stream_path, config=str(cfg)).start()
    pid = worker_pid(sc, "socket")
    rss0 = rss_bytes(pid)
    conns = [connect(stream_path) for _ in range(120)]
    partial = b"x" * 250_000  # under max_line_bytes, never finished: 30 MB held on the old code
    for c in conns:
        c.sendall(partial)

    def dropped():
        n = total(sc.scrape(), "mlsidecar_events_dropped_total", reason="buffer_limit")
        return n if n >= 100 else None
    wait_for(dropped, what="partial lines over the budget dropped")
    growth = rss_bytes(pid) - rss0
    for c in conns:
        c.sendall(b"\n" + PRED + b"\n")
        c.close()
    s = sc.wait_value("ml_predictions_total", 120)  # every connection still delivers its next line
    n_dropped = total(s, "mlsidecar_events_dropped_total", reason="buffer_limit")
    kept = total(s, "mlsidecar_events_rejected_total", reason="malformed_json")  # finished x-lines
    assert n_dropped + kept == 120 and kept <= 2_097_152 // 250_000 + 1
    assert growth < 12 * 2**20, growth  # the budget (2 MiB) and read buffers, not 120 x 250 KB


def test_the_socket_queue_is_bounded_in_bytes(tmp_path, sidecar_factory, sock_paths):
    import orjson

    _, dgram_path = sock_paths
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sources]\nsocket_queue_bytes = 1048576\nmax_line_bytes = 200000\n")
    sc = sidecar_factory("--socket-datagram", dgram_path, config=str(cfg)).start()
    big = orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.05, "note": "n" * 150_000})
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        d.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        d.setblocking(False)
        for _ in range(2000):  # 300 MB offered in a burst, bounded
            try:
                d.sendto(big, dgram_path)
                sent += 1
            except BlockingIOError:
                pass

    def settled():
        s = sc.scrape()
        got = (total(s, "ml_predictions_total") + total(s, "mlsidecar_events_dropped_total")
               + total(s, "mlsidecar_events_rejected_total"))
        return s if got == sent else None
    s = wait_for(settled, timeout=60, what="accepted + dropped == sent")
    assert total(s, "mlsidecar_events_dropped_total", reason="backpressure") > 0
