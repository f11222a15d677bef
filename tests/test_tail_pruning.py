"""Positions that can no longer matter are let go, and a compressed copy is looked for among the
generations after the file's last change first: on real files, without logrotate or a daemon
(as tests/test_tail_identity.py)."""

import gzip
import os
import time

from mlsidecar.sources.tail import MAX_COMPRESSED_TRIES, Tailer
from tests.test_tail_identity import drain, line, restart, write


def test_a_rotated_generation_read_whole_is_let_go_across_restarts(tmp_path):
    """Restarts more often than the quiet time re-opened every rotated generation, so their
    positions piled up in the journal; one read whole and not written since is let go."""
    log = tmp_path / "app.jsonl"
    pattern = [str(log)]
    t = Tailer(pattern, watch="poll")
    seq = 0
    for gen in range(6):
        write(log, range(seq, seq + 10))
        seq += 10
        assert len(drain(t)) == 10
        os.rename(log, f"{log}.{gen + 1}")  # rotated: a writer appended to it no more
        old = time.time() - 120
        os.utime(f"{log}.{gen + 1}", (old, old))
        log.touch()
        drain(t)
        t = restart(t, pattern)  # a restart before the rotated file went quiet
        assert drain(t) == []
        t.retire_quiet(time.monotonic(), 5.0)
    assert [p["path"] for p in t.positions().values()] == [str(log)], t.positions()
    assert not t.retired
    write(log, range(seq, seq + 3))
    assert drain(t) == list(range(seq, seq + 3))  # and nothing read twice
    t.stop()


def test_a_rotated_generation_still_written_is_kept(tmp_path):
    log = tmp_path / "app.jsonl"
    t = Tailer([str(log)], watch="poll")
    write(log, range(5))
    assert drain(t) == list(range(5))
    os.rename(log, f"{log}.1")
    log.touch()
    drain(t)
    t = restart(t, [str(log)])
    drain(t)
    t.retire_quiet(time.monotonic(), 5.0)  # just written (its mtime is now): kept
    assert len(t.retired) == 1
    write(f"{log}.1", range(5, 8))  # the writer had not reopened yet
    assert drain(t) == [5, 6, 7]
    t.stop()


def test_the_compressed_copy_is_looked_for_after_the_files_last_change_first(tmp_path):
    """Down while the file read up to a position was compressed; more .gz siblings than are
    decompressed lie a few seconds before its last change (within the slack for coarse clocks):
    its copy, newer than that change, is tried first."""
    log = tmp_path / "app.jsonl"
    write(log, range(10))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(10))
    m = os.stat(log).st_mtime
    saved, at = t.positions(), t.listed_at
    t.stop()
    # While down: ten more lines, then rotated and compressed; older compressed generations of
    # other content (written a few seconds before) lie beside it.
    write(log, range(10, 20))
    with open(log, "rb") as src, gzip.open(f"{log}.1.gz", "wb") as dst:
        dst.write(src.read())
    os.utime(f"{log}.1.gz", (m + 0.5, m + 0.5))
    os.unlink(log)
    log.touch()
    for k in range(MAX_COMPRESSED_TRIES + 8):
        name = f"{log}.{k + 2}.gz"
        with gzip.open(name, "wb") as fh:
            fh.write(b"".join(line(100_000 * (k + 1) + i) for i in range(20)))
        when = m - 5 + k * 0.1
        os.utime(name, (when, when))
    gaps = []
    t2 = Tailer([str(log)], positions=saved, saved_at=at, watch="poll",
                on_gap=lambda path, reason: gaps.append(reason))
    assert drain(t2) == list(range(10, 20))
    assert gaps == []
    t2.stop()
