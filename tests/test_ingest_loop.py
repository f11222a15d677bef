"""The one ingest loop (mlsidecar.runtime.ingest.run), driven by a scripted in-memory source.

The clock is the script's: a wait moves it on by what the loop asked for, so the flush
cadence is checked exactly, in milliseconds, against a real writer, journal and state dir.
"""

from __future__ import annotations

import ast
import os
import threading

import orjson
import pytest

from mlsidecar import catalogue as C
from mlsidecar import config as configmod
from mlsidecar.events import INVALID_UTF8, MALFORMED, NOT_OBJECT, OVERSIZED
from mlsidecar.runtime import ingest as ingest_mod
from mlsidecar.runtime.ingest import (
    CAUGHT_UP_FLUSH,
    Counts,
    Ingest,
    StateHealth,
    make_mapper,
    make_writer,
    run,
)
from mlsidecar.runtime.state import StateDir
from mlsidecar.store import Batch, SeriesWriter, StateWriteError

START = 1024.0
FLUSH_EVERY = 0.25
LINE = orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.01})


class FakeStop:
    """The loop's stop flag, without installing signal handlers in the test process."""

    def __init__(self) -> None:
        self.requested = False
        self.wake = threading.Event()


class ScriptedSource:
    """Each read() plays the next step: (seconds later, lines, bytes read, own counts).

    Positions are the number of lines handed out so far, so a flush can be checked to
    journal the position together with exactly the values read up to it."""

    role = "tail"
    idle_wait = 0.5
    settle = 0.0

    def __init__(self, steps: list[tuple[float, list[bytes], int, Counts | None]], stop: FakeStop):
        self.steps = list(steps)
        self.stop = stop
        self.now = START
        self.wake = stop.wake
        self.handed = 0
        self._counts = Counts()
        self.waits: list[float] = []
        self.flushes: list[bool] = []
        self.closed = False

    def clock(self) -> float:
        return self.now

    def read(self):
        if not self.steps:
            self.stop.requested = True
            return
        dt, lines, nbytes, own = self.steps.pop(0)
        self.now += dt
        self._counts = own or Counts()
        self._counts.nbytes += nbytes
        self._counts.progressed = nbytes > 0
        if lines:
            self.handed += len(lines)
            yield "src", lines

    def drain(self):
        return iter(())

    def counts(self) -> Counts:
        counts, self._counts = self._counts, Counts()
        return counts

    def positions(self, final: bool):
        return {"time": self.now}, {"src": {"lines": self.handed}}

    def flushed(self, ok: bool) -> None:
        self.flushes.append(ok)

    def every_second(self, now: float):
        return [(C.BYTES_BEHIND, ("src",), 7.0)]

    def status(self):
        return {"sources": [{"name": "src", "open": True, "lines": self.handed}]}

    def status_shape(self):
        return ()

    def wait(self, timeout: float) -> None:
        self.waits.append(timeout)
        self.now += timeout

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def worker(tmp_path):
    cfg = configmod.with_overrides(configmod.load(None), state_dir=str(tmp_path))
    state = StateDir(str(tmp_path))
    state.create()
    writer = make_writer(cfg, state, "tail-test")
    batch = Batch()
    ingest = Ingest(cfg, make_mapper(cfg, batch), batch, writer)
    calls: list[dict] = []
    real_flush = writer.flush

    def spy(state_arg=None, entries=None, rewrite=False):
        if refuse:  # the state dir refuses this flush (a full disk)
            refuse.pop()
            raise StateWriteError(28, "No space left on device")
        calls.append({"time": source_clock[0](), "state": state_arg, "entries": entries, "rewrite": rewrite,
                      "events": writer.values.get((C.EVENTS, ("src", "prediction")), 0.0)})
        return real_flush(state_arg, entries=entries, rewrite=rewrite)

    source_clock: list = [lambda: 0.0]
    refuse: list[int] = []
    writer.flush = spy  # type: ignore[method-assign]

    def drive(steps):
        stop = FakeStop()
        source = ScriptedSource(steps, stop)
        source_clock[0] = source.clock
        run("tail-test", source, ingest, StateHealth("tail-test", writer), state, stop, FLUSH_EVERY,
            clock=source.clock, sleep=lambda s: None)
        return source

    drive.refuse = refuse  # type: ignore[attr-defined]
    return cfg, state, ingest, calls, drive


def test_a_trickle_is_flushed_every_flush_interval(worker):
    _cfg, _state, _ingest, calls, drive = worker
    source = drive([(0.0, [LINE], 100, None), (0.03125, [LINE], 100, None), (0.0, [], 0, None),
                    (0.0, [], 0, None)])
    times = [c["time"] for c in calls]
    # The first flush at once; the second line waits for flush_interval after it; the stop flushes.
    assert times[:2] == [START, pytest.approx(START + FLUSH_EVERY)]
    assert len(times) == 3 and calls[-1]["rewrite"] is True
    assert source.flushes == [True] * len(source.flushes) and len(source.flushes) == 3
    assert source.closed


def test_after_a_burst_the_last_lines_are_flushed_at_once(worker):
    _cfg, _state, _ingest, calls, drive = worker
    drive([(0.0, [LINE], 100, None), (0.03125, [LINE], 2 << 20, None), (0.0, [], 0, None),
           (0.0, [], 0, None)])
    times = [c["time"] for c in calls]
    assert times[:2] == [START, pytest.approx(START + CAUGHT_UP_FLUSH)]


def test_positions_reach_the_journal_with_the_values_read_up_to_them(worker, tmp_path):
    cfg, state, _ingest, calls, drive = worker
    steps = [(0.0, [LINE] * 3, 300, None)] + [(0.1, [LINE] * n, 100 * n, None) for n in (1, 2, 4, 8)] \
        + [(0.0, [], 0, None)] * 4
    drive(steps)
    assert len(calls) >= 3
    for call in calls:  # every flush hands the writer the position together with its values
        assert call["entries"] == {"src": {"lines": call["events"]}}
    assert calls[-1]["events"] == 18
    # What a restart finds: the same position and the same count, from the journal and files.
    again = SeriesWriter(state.metrics, "tail-test", state.journal("tail-test"), catalogue=C.builtin())
    assert again.journal_entries == {"src": {"lines": 18}}
    assert again.values[(C.EVENTS, ("src", "prediction"))] == 18


def test_a_source_own_counts_are_counted(worker):
    _cfg, state, ingest, _calls, drive = worker
    own = Counts(oversized={"src": 2}, increments=[(C.EVENTS_DROPPED, ("src", "backpressure"), 3.0)])
    drive([(0.0, [LINE], 100, own), (0.0, [], 0, None)])
    values = ingest.writer.values
    assert values[(C.EVENTS_REJECTED, ("src", OVERSIZED))] == 2
    assert values[(C.EVENTS_DROPPED, ("src", "backpressure"))] == 3
    assert values[(C.EVENTS_REJECTED, ("src", MALFORMED))] == 0  # every reason starts at 0
    assert values[(C.BYTES_BEHIND, ("src",))] == 7.0  # the gauges of every_second
    assert ingest.accepted == 1 and ingest.rejected == 2
    status = orjson.loads(open(state.status_path("tail-test"), "rb").read())
    assert status["role"] == "tail" and status["accepted"] == 1 and status["rejected"] == 2
    assert status["sources"] == [{"name": "src", "open": True, "lines": 1}]


def test_a_refused_flush_is_reported_to_the_source_and_retried(worker):
    _cfg, _state, ingest, calls, drive = worker
    drive.refuse.append(1)
    source = drive([(0.0, [LINE], 100, None), (0.0, [], 0, None), (0.5, [LINE], 100, None),
                    (0.0, [], 0, None), (0.0, [], 0, None)])
    assert source.flushes[0] is False and source.flushes[-1] is True
    assert calls[0]["events"] == 2  # the refused flush's values went out with the next one
    assert ingest.writer.values[(C.EVENTS, ("src", "prediction"))] == 2
    assert ingest.writer.values[(C.STATE_FAULTS, ("tail-test", "write_failed"))] == 1


def test_a_rejected_line_is_decoded_once(tmp_path, monkeypatch):
    cfg = configmod.with_overrides(configmod.load(None), state_dir=str(tmp_path))
    state = StateDir(str(tmp_path))
    state.create()
    batch = Batch()
    ingest = Ingest(cfg, make_mapper(cfg, batch), batch, make_writer(cfg, state, "tail-test"))
    decoded: list[bytes] = []
    real = orjson.loads

    def spy(data):
        decoded.append(bytes(data))
        return real(data)

    monkeypatch.setattr(orjson, "loads", spy)
    lines = [b"{not json", b'{"model": "\xff"}', b"[1, 2]", LINE, b"   "]
    ingest.lines(lines, "src")
    assert sorted(decoded) == sorted(lines)  # each line once: the reason comes from that one parse
    counters = batch.counters
    for reason in (MALFORMED, INVALID_UTF8, NOT_OBJECT):
        assert counters[(C.EVENTS_REJECTED, ("src", reason))] == 1, reason
    assert counters[(C.EVENTS, ("src", "prediction"))] == 1
    assert ingest.rejected == 3  # the blank line is no event


def test_sources_import_nothing_from_runtime():
    """A source only produces: it must not reach up into the loop that drives it."""
    root = os.path.join(os.path.dirname(ingest_mod.__file__), os.pardir, "sources")
    upward = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(root, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                absolute = module if node.level == 0 else ("mlsidecar." + module if node.level == 2 else "")
                if absolute.startswith("mlsidecar.runtime") or (node.level == 2 and not module
                                                               and any(a.name == "runtime" for a in node.names)):
                    upward.append(f"{name}:{node.lineno}")
            elif isinstance(node, ast.Import):
                upward += [f"{name}:{node.lineno}" for a in node.names if a.name.startswith("mlsidecar.runtime")]
    assert upward == []
