"""The tailed files as a source of the ingest loop: lines, bytes read, positions, own counts."""

from __future__ import annotations

import orjson

from mlsidecar import catalogue as C
from mlsidecar.runtime.worker import TailSource

LINE = orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.01})


def test_the_tail_source_hands_over_lines_bytes_and_positions(tmp_path):
    log = tmp_path / "a.log"
    data = LINE + b"\n" + LINE + b"\n" + b'{"event": "predic'  # the last line is not finished
    log.write_bytes(data)
    source = TailSource([str(log)], 1.0, watch="poll")
    try:
        chunks = list(source.read())
        assert chunks == [(str(log), [LINE, LINE])]
        counts = source.counts()
        assert counts.progressed and counts.nbytes == len(data)
        assert counts.increments == [(C.LINES_READ, (str(log),), len(data))]
        assert source.counts().nbytes == 0 and not source.counts().progressed  # reset once asked
        state, entries = source.positions(final=False)
        assert state == {"time": source.tailer.listed_at}
        [position] = [p for p in entries.values() if p is not None]
        assert position["offset"] == 2 * (len(LINE) + 1)  # up to the last whole line
        assert source.positions(final=False)[1] == {}  # only what changed since the last flush
        with log.open("ab") as fh:
            fh.write(b'tion", "model": "m", "latency_s": 0.01}\n')
        assert [n for _, lines in source.read() for n in lines] == \
            [b'{"event": "prediction", "model": "m", "latency_s": 0.01}']
        status = source.status()
        assert status["sources"][0]["name"] == str(log) and status["sources"][0]["lines"] == 3
        assert source.every_second(0.0) == [(C.BYTES_BEHIND, (str(log),), 0)]
        assert source.every_second(1.0) == []  # unchanged: not written again until GAUGE_REFRESH
    finally:
        source.close()


def test_a_line_over_the_limit_is_counted_by_the_source(tmp_path):
    log = tmp_path / "a.log"
    source = TailSource([str(log)], 1.0, watch="poll", max_line_bytes=64)
    try:
        log.write_bytes(b"x" * 100)  # no newline yet, and already over the limit: not held
        assert list(source.read()) == []
        with log.open("ab") as fh:
            fh.write(b"x" * 100 + b"\n" + LINE + b"\n")
        lines = [n for _, chunk in source.read() for n in chunk]
        counts = source.counts()
        assert lines == [LINE]
        assert counts.oversized == {str(log): 1}
    finally:
        source.close()
