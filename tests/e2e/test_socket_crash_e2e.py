"""A SIGKILL on the socket path: what was taken off the socket but not flushed yet is counted at
the next start (dropped, reason "crash"), never lost without a trace and never counted twice."""

import multiprocessing
import os
import signal
import socket
import threading

from mlsidecar.runtime.state import SocketLedger, StateDir
from tests.harness import total

PRED = b'{"event":"prediction","model":"m","latency_s":0.05}'


def _crash_after_receiving(root: str) -> None:
    ledger = SocketLedger(StateDir(root), "socket")
    ledger.received("/run/a.sock", 100)
    ledger.took("/run/a.sock", 60)
    ledger.flushed()  # 60 of them on disk
    ledger.received("/run/a.sock", 50)
    ledger.took("/run/a.sock", 20)  # in a batch, not flushed
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_ledger_outlives_a_sigkill(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    state.create()
    p = multiprocessing.get_context("fork").Process(target=_crash_after_receiving, args=(state.root,))
    p.start()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    ledger = SocketLedger(state, "socket")
    assert ledger.lost_at_last_stop("/run/a.sock") == 90
    ledger.flushed()
    assert SocketLedger(state, "socket").lost_at_last_stop("/run/a.sock") == 0


def test_lines_queued_at_a_sigkill_are_counted_as_dropped_at_the_next_start(tmp_path, sidecar_factory):
    path = str(tmp_path / "events.dgram")
    sc = sidecar_factory("--socket-datagram", path).start()
    sent = 0
    stop = threading.Event()

    def send():
        nonlocal sent
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
            d.settimeout(2)
            while sent < 200_000 and not stop.is_set():
                try:
                    d.sendto(PRED, path)
                except OSError:
                    return  # the sidecar is gone
                sent += 1

    t = threading.Thread(target=send, daemon=True)
    t.start()
    while sent < 30_000 and t.is_alive():
        threading.Event().wait(0.01)
    sc.kill_all()
    stop.set()
    t.join(10)
    sc = sidecar_factory("--socket-datagram", path, state_dir=sc.state_dir, port=sc.port).start()
    s = sc.wait_value("mlsidecar_worker_up", 1, worker="socket")
    s = sc.scrape()
    counted = total(s, "ml_predictions_total")
    crash = total(s, "mlsidecar_events_dropped_total", reason="crash")
    backpressure = total(s, "mlsidecar_events_dropped_total", reason="backpressure")
    # Datagrams still in the kernel's queue of the old socket die with it: at most its length
    # (the kernel lets one more in), and one that recvmsg returned as the kill came.
    with open("/proc/sys/net/unix/max_dgram_qlen") as fh:
        kernel_queue = int(fh.read())
    accounted = counted + crash + backpressure
    summary = f"sent {sent}, counted {counted}, crash {crash}, backpressure {backpressure}"
    print(summary)
    assert accounted <= sent, summary
    assert sent - accounted <= kernel_queue + 2, summary
    if crash:
        assert "before the last crash were never counted" in sc.log()
