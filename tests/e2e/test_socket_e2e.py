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
