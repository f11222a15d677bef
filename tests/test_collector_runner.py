"""The collector runner: publishing, removal, counter continuation, the deadline, up/duration.

A scripted collector returns the readings a test gives it; the runner writes them to a real
SeriesWriter, and a second writer on the same directory is what a restarted worker reads back.
"""

from __future__ import annotations

import threading
import time

import pytest

from mlsidecar import catalogue as C
from mlsidecar.collectors import (
    INCREMENT,
    TOTAL,
    Collector,
    CollectorSettings,
    CollectorUnavailable,
    Partial,
    Reading,
)
from mlsidecar.collectors import host as H
from mlsidecar.runtime.collect import RETRY_SETUP_EVERY, CollectorRun, DeadlinePassed
from mlsidecar.store import SeriesWriter

MEM = (H.MEM_TOTAL, ())
RX = (H.NET_RX, ("eth0",))
TX = (H.NET_TX, ("eth0",))


class Scripted(Collector):
    """Returns (or raises) what the test puts in ``next``; ``block`` holds a collect."""

    name = "scripted"

    def __init__(self, deadline: float = 5.0):
        super().__init__(CollectorSettings("scripted", True, 1.0, {}))
        self.next: list[Reading] | Exception = []
        self.block: threading.Event | None = None
        self.setups = 0
        self.closed = False
        self._deadline = deadline

    def setup(self) -> None:
        self.setups += 1

    def collect(self) -> list[Reading]:
        if self.block is not None:
            self.block.wait(10)
        if isinstance(self.next, Exception):
            raise self.next
        return list(self.next)

    def deadline(self) -> float:
        return self._deadline

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def metrics(tmp_path):
    return str(tmp_path / "metrics")


@pytest.fixture
def writer(metrics):
    w = SeriesWriter(metrics, "collect")
    yield w
    w.close()


def started(c: Collector, writer: SeriesWriter) -> CollectorRun:
    run = CollectorRun(c.name, c, writer)
    run.setup()
    return run


def up(writer: SeriesWriter) -> float:
    return writer.values[(C.COLLECTOR_UP, ("scripted",))]


def test_readings_are_published_and_vanished_series_removed(writer):
    c = Scripted()
    run = started(c, writer)
    c.next = [Reading(*MEM, 64.0), Reading(*RX, 10.0, TOTAL), Reading(*TX, 20.0, TOTAL)]
    run.collect()
    assert writer.values[MEM] == 64.0 and writer.values[RX] == 10.0 and writer.values[TX] == 20.0
    assert up(writer) == 1.0 and (C.COLLECTOR_DURATION, ("scripted",)) in writer.values
    c.next = [Reading(*MEM, 32.0), Reading(*RX, 15.0, TOTAL)]  # the interface's TX went away
    run.collect()
    assert writer.values[MEM] == 32.0 and writer.values[RX] == 15.0
    assert TX not in writer.values and writer.series(H.NET_TX) == []
    assert set(run.published) == {MEM, RX}


def _restarted(metrics: str, stored: dict) -> SeriesWriter:
    """A writer that reads back what an earlier worker left in the metric files."""
    w = SeriesWriter(metrics, "collect")
    for (fam, labels), value in stored.items():
        w.set_counter(fam, labels, value)
    w.flush()
    w.close()
    return SeriesWriter(metrics, "collect")


def test_a_total_continues_from_the_metric_files_after_a_restart(metrics):
    w = _restarted(metrics, {RX: 1000.0})
    c = Scripted()
    run = started(c, w)
    c.next = [Reading(*RX, 5.0, TOTAL), Reading(*TX, 7.0, TOTAL)]
    run.collect()
    assert w.values[RX] == 1000.0, "the first total after a restart is the baseline"
    assert w.values[TX] == 7.0, "nothing stored: the total as read"
    c.next = [Reading(*RX, 8.0, TOTAL), Reading(*TX, 9.0, TOTAL)]
    run.collect()
    assert w.values[RX] == 1003.0 and w.values[TX] == 9.0
    w.close()


def test_a_total_above_the_stored_one_is_published_as_read(metrics):
    """A source that kept counting (NVML's ECC count) is not shifted: no value is lost or made up."""
    w = _restarted(metrics, {RX: 100.0})
    c = Scripted()
    run = started(c, w)
    c.next = [Reading(*RX, 150.0, TOTAL)]
    run.collect()
    assert w.values[RX] == 150.0
    w.close()


def test_increments_add_to_the_stored_total(metrics):
    w = _restarted(metrics, {RX: 5.0})
    c = Scripted()
    run = started(c, w)
    c.next = [Reading(*RX, 1.0, INCREMENT), Reading(*TX, 2.0, INCREMENT)]
    run.collect()
    assert w.values[RX] == 6.0 and w.values[TX] == 2.0
    c.next = [Reading(*RX, 0.0, INCREMENT), Reading(*TX, 3.0, INCREMENT)]
    run.collect()
    assert w.values[RX] == 6.0 and w.values[TX] == 5.0
    w.flush()
    w.close()
    back = SeriesWriter(metrics, "collect")
    assert back.values[RX] == 6.0 and back.values[TX] == 5.0
    back.close()


def test_a_collect_past_its_deadline_is_up_0_and_not_started_again_while_stuck(writer):
    c = Scripted(deadline=0.2)
    run = started(c, writer)
    c.next = [Reading(*MEM, 64.0)]
    run.collect()
    c.block = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(DeadlinePassed, match="did not answer within 0.2s"):
        run.collect()
    assert time.monotonic() - t0 < 5
    assert up(writer) == 0.0
    assert MEM not in writer.values, "stale values withdrawn"
    with pytest.raises(TimeoutError, match="has not returned"):
        run.collect()
    assert sum(t.name == "collect-scripted" for t in threading.enumerate()) == 1
    run.close()
    assert not c.closed, "a collector stuck in a call is not closed under it"
    c.block.set()
    c.block = None
    deadline = time.monotonic() + 10
    while any(t.name == "collect-scripted" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    run.collect()
    assert up(writer) == 1.0 and writer.values[MEM] == 64.0
    run.close()
    assert c.closed


def test_unavailable_mid_run_withdraws_its_series_and_sets_up_again(writer):
    c = Scripted()
    run = CollectorRun(c.name, c, writer)
    c.next = [Reading(*MEM, 64.0)]
    assert run.run(100.0) and c.setups == 1
    c.next = CollectorUnavailable("driver gone")
    assert not run.run(101.0)
    assert MEM not in writer.values and up(writer) == 0.0 and run.error == "driver gone"
    c.next = [Reading(*MEM, 64.0)]
    assert not run.run(102.0) and c.setups == 1, "set up again only after a while"
    assert run.run(102.0 + RETRY_SETUP_EVERY) and c.setups == 2
    assert writer.values[MEM] == 64.0 and up(writer) == 1.0


def test_partial_readings_are_published_and_the_run_is_failed(writer):
    c = Scripted()
    run = started(c, writer)
    c.next = [Reading(*MEM, 64.0), Reading(*RX, 1.0, TOTAL)]
    run.collect()
    c.next = Partial("GPU 1 is lost", [Reading(*MEM, 32.0)])
    with pytest.raises(Partial):
        run.collect()
    assert writer.values[MEM] == 32.0 and RX not in writer.values
    assert up(writer) == 0.0 and run.error == "GPU 1 is lost"


def test_a_failed_collect_keeps_the_last_readings(writer):
    c = Scripted()
    run = started(c, writer)
    c.next = [Reading(*MEM, 64.0)]
    run.collect()
    c.next = OSError("boom")
    assert not run.run(0.0)
    assert writer.values[MEM] == 64.0 and up(writer) == 0.0 and run.error == "OSError: boom"
