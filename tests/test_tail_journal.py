"""The journal of a tail worker: positions appended as they change, crash-safe at any point.

A flush appends one record (the writes, only the positions that changed); the journal is
rewritten whole once it has doubled. A crash can cut the last record short: it is dropped
(its writes never reached the metric files). A file let go never comes back."""

import os

import orjson

from mlsidecar import catalogue as C
from mlsidecar.sources.tail import Tailer
from mlsidecar.store import Batch, SeriesWriter


def line(i: int) -> bytes:
    return orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.001, "seq": i}) + b"\n"


def writer(tmp_path) -> SeriesWriter:
    return SeriesWriter(str(tmp_path / "m"), "tail-x", str(tmp_path / "tail-x.json"))


def counted(w: SeriesWriter) -> float:
    return w.values.get((C.PREDICTIONS, ("m", "", "success")), 0.0)


def step(t: Tailer, w: SeriesWriter, batch: Batch) -> int:
    """Read what is there, count it, flush it with the changed positions (as the worker does)."""
    n = 0
    for _ in range(50):  # more files than may be open: a batch per look, as the worker does
        t.scan()
        for tf in t.due(True):
            n += len(t.read(tf))
        if not t.rescan:
            break
    if n:
        batch.inc(C.PREDICTIONS, ("m", "", "success"), n)
        w.apply(batch)
        batch.clear()
    w.flush({"time": t.listed_at}, entries=t.position_changes())
    return n


def restart(tmp_path, pattern) -> tuple[Tailer, SeriesWriter]:
    w = writer(tmp_path)
    return Tailer([pattern], positions=w.journal_entries, watch="poll",
                  saved_at=(w.journal_state or {}).get("time", 0.0)), w


def test_a_flush_appends_only_what_changed(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(300):
        (logs / f"f{i:03d}.jsonl").write_bytes(line(i))
    t, w = restart(tmp_path, str(logs / "*.jsonl"))
    b = Batch()
    assert step(t, w, b) == 300
    full = os.path.getsize(w.journal_path)
    sizes = []
    for k in range(5):
        with open(logs / "f007.jsonl", "ab") as fh:
            fh.write(line(1000 + k))
        before = os.path.getsize(w.journal_path)
        assert step(t, w, b) == 1
        sizes.append(os.path.getsize(w.journal_path) - before)
    assert max(sizes) * 50 < full, (sizes, full)  # one position of 300, and one write
    t.stop()
    w.close()
    t2, w2 = restart(tmp_path, str(logs / "*.jsonl"))
    assert counted(w2) == 305
    assert step(t2, w2, b) == 0  # every position as it was: nothing read again
    assert counted(w2) == 305


def test_a_record_cut_short_by_a_crash_is_dropped_with_its_writes(tmp_path):
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(10)))
    t, w = restart(tmp_path, str(log))
    b = Batch()
    assert step(t, w, b) == 10
    with open(log, "ab") as fh:
        fh.write(line(10))
    assert step(t, w, b) == 1  # appended
    with open(log, "ab") as fh:
        fh.write(line(11))
    # The crash: the record of the next flush is cut short, and its writes never reach the files.
    t.scan()
    (tf,) = t.due(True)
    assert len(t.read(tf)) == 1
    b.inc(C.PREDICTIONS, ("m", "", "success"), 1)
    w.apply(b)
    b.clear()
    size = os.path.getsize(w.journal_path)
    w.flush({"time": t.listed_at}, entries=t.position_changes())
    with open(w.journal_path, "r+b") as fh:
        fh.truncate(size + (os.path.getsize(w.journal_path) - size) // 2)
    t.stop()  # a crash: the last whole record (11) is what the files are made to hold again
    t2, w2 = restart(tmp_path, str(log))
    assert w2.journal_status == "ok"
    assert counted(w2) == 11
    assert step(t2, w2, b) == 1  # line 11 is read again, counted once
    assert counted(w2) == 12
    t2.stop()
    w2.close()
    t3, w3 = restart(tmp_path, str(log))  # the torn record is gone from the journal for good
    assert step(t3, w3, b) == 0 and counted(w3) == 12


def test_a_file_let_go_does_not_come_back_from_the_journal(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    keep, gone = logs / "keep.jsonl", logs / "gone.jsonl"
    keep.write_bytes(line(0))
    gone.write_bytes(line(1))
    t, w = restart(tmp_path, str(logs / "*.jsonl"))
    b = Batch()
    assert step(t, w, b) == 2
    os.unlink(gone)
    step(t, w, b)  # rotated away: drained
    t.retire_quiet(now=1e18, quiet=0)  # and let go
    step(t, w, b)
    t.stop()
    w.close()
    _t2, w2 = restart(tmp_path, str(logs / "*.jsonl"))
    assert [p["path"] for p in (w2.journal_entries or {}).values()] == [str(keep)]
    _t2.stop()


def test_a_journal_of_the_previous_version_is_read(tmp_path):
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(i) for i in range(5)))
    t, w = restart(tmp_path, str(log))
    b = Batch()
    assert step(t, w, b) == 5
    old = {"state": {"files": t.positions(), "time": t.listed_at}, "writes": []}
    t.stop()
    w.close()
    with open(w.journal_path, "wb") as fh:
        fh.write(orjson.dumps(old))  # one object, every position in its state
    w2 = writer(tmp_path)
    assert w2.journal_status == "ok" and w2.journal_entries is None
    t2 = Tailer([str(log)], positions=w2.journal_state["files"], watch="poll")
    assert step(t2, w2, b) == 0 and counted(w2) == 5
    t2.stop()


def read_all(t: Tailer) -> int:
    n = 0
    for _ in range(50):
        t.scan()
        for tf in t.due(True):
            n += len(t.read(tf))
        if not t.rescan:
            break
    return n


def test_files_closed_while_idle_are_reopened_where_they_were(tmp_path):
    """max_open_files 2 of 5 files: written, rotated away and truncated while closed, each line
    is read once (a rotated one is found as after a restart)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    paths = [logs / f"f{i}.jsonl" for i in range(5)]
    for i, p in enumerate(paths):
        p.write_bytes(line(10 * i) + line(10 * i + 1))
    t = Tailer([str(logs / "*.jsonl")], watch="poll", max_open_files=2)
    assert read_all(t) == 10
    assert t.open_count() <= 2 and len(t.parked) == 3
    closed = [p for p in paths if str(p) not in t.files]
    a, b, c = closed
    with open(a, "ab") as fh:  # written while closed
        fh.write(line(100))
    with open(b, "ab") as fh:  # written, then rotated away, a new file in its place
        fh.write(line(101))
    os.rename(b, str(b) + ".1")
    b.write_bytes(line(102) + line(103))
    c.write_bytes(line(104))  # rewritten in place (shorter: not what was read)
    assert read_all(t) == 1 + 1 + 2 + 1
    assert t.open_count() <= 2
    assert read_all(t) == 0  # and nothing read twice
    positions = t.positions()
    assert len({(p["dev"], p["ino"]) for p in positions.values()}) == len(positions)
    t.stop()
