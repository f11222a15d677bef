"""Poison events against the real daemon: rejected and counted, the worker never restarts."""

import os
import socket

from tests.harness import total

GOOD = b'{"event":"prediction","model":"ok","latency_s":0.05}\n'
POISON = [
    # Two extreme values of one series in one chunk: their sum overflows a float.
    b'{"event":"prediction","model":"p","latency_s":1e308}\n',
    b'{"event":"prediction","model":"p","latency_s":1e308}\n',
    b'{"event":"pipeline","pipeline":"p","stage":"s","records":1e308,"status":"error"}\n',
    b'{"event":"pipeline","pipeline":"p","stage":"s","records":1e308}\n',
    b'{"event":"metric","name":"h","type":"histogram","value":-5}\n',
    b'{"event":{}}\n',
    b'{"event":[]}\n',
]


def test_poison_lines_in_a_file_and_on_a_socket_cost_nothing_else(tmp_path, sidecar_factory):
    log = tmp_path / "e.jsonl"
    log.write_bytes(b"".join(POISON) + GOOD * 10)
    dgram = str(tmp_path / "ev.dgram")
    sc = sidecar_factory("--tail", str(log), "--socket-datagram", dgram).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        for line in POISON * 3:
            d.sendto(line, dgram)
            d.sendto(GOOD, dgram)
    s = sc.wait_value("ml_predictions_total", 10 + 21, model_name="ok")
    assert total(s, "mlsidecar_events_rejected_total", source=str(log)) == len(POISON)
    assert total(s, "mlsidecar_events_rejected_total", source=dgram) == 3 * len(POISON)
    assert total(s, "mlsidecar_events_rejected_total", reason="internal_error") == 0
    assert total(s, "mlsidecar_events_rejected_total", reason="wrong_type") == 4 * 2
    assert total(s, "mlsidecar_worker_restarts_total") == 0
    assert total(s, "ml_predictions_total", model_name="p") == 0
    with open(log, "ab") as fh:
        fh.write(GOOD)
    sc.wait_value("ml_predictions_total", 32, model_name="ok")
    assert sc.get("/readyz")[0] == 200
    assert os.path.exists(log)
