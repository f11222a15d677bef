"""mlsidecar.client: never raises, never blocks, and what it writes the sidecar accepts."""

import socket
import time

import orjson

from mlsidecar.client import EventClient
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch


def test_file_events_are_accepted_by_the_parser(tmp_path):
    path = tmp_path / "e.jsonl"
    c = EventClient(path=str(path))
    assert c.prediction("m", "v1", latency_s=0.01, confidence=0.9)
    assert c.training("j", epoch=1, losses={"train": 0.3})
    assert c.batch("j", 0.5, 32)
    assert c.pipeline("p", "load", 10, 0.2)
    assert c.freshness("p", "src")
    assert c.metric("kpi", 3, type="counter", shop="a")
    c.close()
    m = Mapper(Batch())
    kinds = [m.handle(orjson.loads(line)) for line in path.read_bytes().splitlines()]
    assert kinds == ["prediction", "training", "batch", "pipeline", "freshness", "metric"]


def test_never_raises_on_bad_input_or_missing_socket(tmp_path):
    c = EventClient(socket=str(tmp_path / "nobody-listens.sock"))
    assert c.prediction("m", "v", latency_s=float("nan")) is False  # NaN is not JSON
    assert c.emit("x", obj=object()) is False
    assert c.prediction("m", "v", latency_s=0.1) is False  # no socket there
    assert c.dropped == 3


def test_never_blocks_when_the_socket_is_full(tmp_path):
    path = str(tmp_path / "d.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)  # bound but never read: its queue fills up
    c = EventClient(socket=path)
    t0 = time.monotonic()
    for _ in range(5000):
        c.prediction("m", "v", latency_s=0.1)
    assert time.monotonic() - t0 < 30
    assert c.dropped > 0 and c.sent > 0 and c.sent + c.dropped == 5000
    server.close()
