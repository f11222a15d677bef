"""Each identity decision of the tailer, on real files, without logrotate or a daemon.

Every line carries a sequence number and the lines otherwise look alike (one writer's
structured log): the first 64 bytes of every generation are the same.
"""

import gzip
import os
import shutil
import time

import pytest

from mlsidecar.sources.tail import GAP_DELETED, HEAD_BYTES, Tailer
from tests.tailing import drain


def line(i: int) -> bytes:
    return b'{"event":"prediction","model":"m","version":"v","status":"success","latency_s":0.01,"seq":' \
        + str(i).encode() + b"}\n"


def write(path, seqs, mode="ab"):
    with open(path, mode) as fh:
        fh.write(b"".join(line(i) for i in seqs))


def read_then_stop(log: str, seqs) -> tuple[dict, float]:
    """Write and read ``seqs``, then stop: the positions and listing time a restart is given."""
    write(log, seqs)
    t = Tailer([log], watch="poll")
    assert drain(t) == list(seqs)
    saved, at = t.positions(), t.listed_at
    t.stop()
    time.sleep(0.01)
    return saved, at


def gzip_to(src: str, dst: str) -> None:
    """What logrotate's compress makes: a gzip copy with the source's times."""
    with open(src, "rb") as fh, gzip.open(dst, "wb") as out:
        out.write(fh.read())
    st = os.stat(src)
    os.utime(dst, (st.st_atime, st.st_mtime))


def restart(t: Tailer, patterns, **kw) -> Tailer:
    """What a crash and a new start do: positions (and the listing time) as last flushed."""
    saved, at = t.positions(), t.listed_at
    t.stop()
    return Tailer(patterns, positions=saved, saved_at=at, watch="poll", **kw)


def test_alike_generations_share_their_first_64_bytes():
    assert line(1)[:64] == line(99999)[:64]


def test_same_inode_new_content_is_read_from_its_start(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(100))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(100))
    # Rewritten in place, longer than what was read: same inode, same first bytes.
    write(log, range(1000, 1200), "r+b")
    assert os.path.getsize(log) > t.files[str(log)].offset
    assert drain(t) == list(range(1000, 1200))


def test_same_inode_new_content_while_stopped(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(100))
    t = Tailer([str(log)], watch="poll")
    drain(t)
    ino = os.stat(log).st_ino
    t.stop()
    t2 = restart(t, [str(log)])
    with open(log, "r+b") as fh:
        fh.truncate(0)
    write(log, range(5000, 5150))
    assert os.stat(log).st_ino == ino
    assert drain(t2) == list(range(5000, 5150))


def test_copytruncate_copy_is_found_by_content_not_by_its_first_bytes(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(60))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(60))
    write(log, range(60, 100))  # written, not read yet
    # A decoy from before: same first KiB, other lines after it (an older generation that
    # started the same way), newer by mtime than the copy, so it is looked at first.
    write(tmp_path / "app.jsonl.2", list(range(30)) + list(range(7000, 7100)), "wb")
    shutil.copyfile(log, tmp_path / "app.jsonl.1")  # logrotate's copy ...
    with open(log, "r+b") as fh:  # ... and its truncate
        fh.truncate(0)
    write(log, range(100, 105))
    past = t.listed_at - 10
    os.utime(tmp_path / "app.jsonl.1", (past, past))
    os.utime(tmp_path / "app.jsonl.2", (past + 1, past + 1))
    got = drain(t)
    assert got == list(range(60, 105))


def test_copy_taken_before_we_read_on_is_not_a_new_generation(tmp_path):
    """copytruncate where the sidecar had read past logrotate's copy: the copy is covered."""
    log = tmp_path / "app.jsonl"
    write(log, range(40))
    shutil.copyfile(log, tmp_path / "app.jsonl.1")
    write(log, range(40, 80))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(80))
    with open(log, "r+b") as fh:
        fh.truncate(0)
    write(log, range(80, 90))
    assert drain(t) == list(range(80, 90))


def test_sibling_older_than_the_last_flush_is_never_read(tmp_path):
    log = tmp_path / "app.jsonl"
    old = tmp_path / "app.jsonl.3"
    write(old, range(900, 950), "wb")  # history from before the sidecar ever ran
    past = time.time() - 3600
    os.utime(old, (past, past))
    write(log, range(50))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(50))
    t2 = restart(t, [str(log)])
    os.rename(log, tmp_path / "app.jsonl.1")
    write(log, range(50, 60), "wb")
    assert drain(t2) == list(range(50, 60))


def test_generation_created_and_rotated_while_stopped_is_read(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(50))
    t = Tailer([str(log)], watch="poll")
    drain(t)
    t2 = restart(t, [str(log)])
    write(log, range(50, 80))  # written after the last flush
    os.rename(log, tmp_path / "app.jsonl.1")
    write(log, range(80, 120), "wb")  # a generation never seen
    os.rename(tmp_path / "app.jsonl.1", tmp_path / "app.jsonl.2")
    os.rename(log, tmp_path / "app.jsonl.1")
    write(log, range(120, 127), "wb")
    assert drain(t2) == list(range(50, 127))


def test_rotated_twice_between_two_looks_while_running(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(10))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(10))
    os.rename(log, tmp_path / "app.jsonl.1")
    write(log, range(10, 30), "wb")
    os.rename(tmp_path / "app.jsonl.1", tmp_path / "app.jsonl.2")
    os.rename(log, tmp_path / "app.jsonl.1")
    write(log, range(30, 33), "wb")
    assert drain(t) == list(range(10, 33))
    assert drain(t) == []


def test_generation_compressed_while_stopped_is_finished_from_the_gz(tmp_path):
    """delaycompress with two rotations while down: the generation being read is .2.gz now."""
    log = tmp_path / "app.jsonl"
    write(log, range(200))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(200))
    t2 = restart(t, [str(log)])
    write(log, range(200, 260))
    with open(log, "rb") as src, gzip.open(tmp_path / "app.jsonl.2.gz", "wb") as dst:
        dst.write(src.read())
    st = os.stat(log)
    os.utime(tmp_path / "app.jsonl.2.gz", (st.st_atime, st.st_mtime))  # as logrotate keeps it
    os.unlink(log)
    write(tmp_path / "app.jsonl.1", range(260, 300), "wb")
    write(log, range(300, 310), "wb")
    assert sorted(drain(t2)) == list(range(200, 310))
    # A further start reads nothing again.
    t3 = restart(t2, [str(log)])
    assert drain(t3) == []


def test_compressed_copy_of_an_open_file_is_not_a_new_generation(tmp_path):
    """compress without delaycompress while running: the .gz holds what the open file holds."""
    log = tmp_path / "app.jsonl"
    write(log, range(100))
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(100))
    os.rename(log, tmp_path / "app.jsonl.1")
    write(log, range(100, 110), "wb")
    with open(tmp_path / "app.jsonl.1", "rb") as src, gzip.open(tmp_path / "app.jsonl.1.gz", "wb") as dst:
        dst.write(src.read())
    os.unlink(tmp_path / "app.jsonl.1")
    assert drain(t) == list(range(100, 110))


def test_generation_deleted_before_it_was_read_is_counted_as_a_gap(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(20))
    t = Tailer([str(log)], watch="poll")
    drain(t)
    gaps = []
    t2 = restart(t, [str(log)], on_gap=lambda path, reason: gaps.append((path, reason)))
    write(log, range(20, 40))
    os.unlink(log)  # rotate N deleted it while we were down
    write(log, range(40, 45), "wb")
    assert drain(t2) == list(range(40, 45))
    assert gaps == [(str(log), GAP_DELETED)]


def test_head_grows_with_the_file(tmp_path):
    log = tmp_path / "app.jsonl"
    write(log, range(2))
    t = Tailer([str(log)], watch="poll")
    drain(t)
    assert len(t.files[str(log)].head) == os.path.getsize(log)
    write(log, range(2, 100))
    drain(t)
    assert len(t.files[str(log)].head) == HEAD_BYTES


def _rotate(d, base: str, mode: str) -> None:
    """What logrotate does to ``base`` in ``mode`` (numbered generations, rotate unlimited)."""
    p = os.path.join(d, base)

    def number(n):
        return int(n[len(base) + 1:].split(".")[0])

    for n in sorted((n for n in os.listdir(d) if n.startswith(base + ".")), key=lambda n: -number(n)):
        os.rename(os.path.join(d, n), os.path.join(d, n.replace(f".{number(n)}", f".{number(n) + 1}", 1)))
    if mode == "copytruncate":
        shutil.copyfile(p, p + ".1")
        with open(p, "r+b") as fh:
            fh.truncate(0)
    else:
        os.rename(p, p + ".1")
        open(p, "wb").close()
    gz = {"compress": p + ".1", "delaycompress": p + ".2"}.get(mode)
    if gz and os.path.exists(gz):
        st = os.stat(gz)
        with open(gz, "rb") as src, gzip.open(gz + ".gz", "wb") as dst:
            dst.write(src.read())
        os.utime(gz + ".gz", (st.st_atime, st.st_mtime))  # logrotate keeps the mtime
        os.unlink(gz)


@pytest.mark.parametrize("mode", ["create", "copytruncate", "compress", "delaycompress"])
def test_random_rotations_and_crashes_count_every_line_once(tmp_path, mode):
    """Random writes, rotations and crashes (with the positions of the last flush, or of an
    older one) in fast succession: inode numbers are reused and every file time falls within
    a second. Every line is counted exactly once (what a crash loses since the last flush is
    read again, as the worker does with its journal)."""
    for run in range(4):
        d = tmp_path / f"{mode}-{run}"
        d.mkdir()
        _random_run(d, mode, run)


def _random_run(d, mode: str, run: int) -> None:
    import collections
    import random

    rng = random.Random(run)
    path = str(d / "app.jsonl")
    open(path, "wb").close()
    t = Tailer([path], watch="poll")
    counted, pending = collections.Counter(), collections.Counter()
    flushed = (t.positions(), t.listed_at)
    seq, down = 0, False

    def drain():
        t.scan()
        for _ in range(5):
            for tf in t.readable():
                for x in t.read(tf):
                    pending[int(x.rsplit(b":", 1)[1].rstrip(b"}"))] += 1

    def flush():
        nonlocal flushed
        flushed = (t.positions(), t.listed_at)
        counted.update(pending)
        pending.clear()

    for _ in range(250):
        r = rng.random()
        if r < 0.5:
            n = rng.randint(1, 30)
            write(path, range(seq, seq + n))
            seq += n
        elif r < 0.65:
            _rotate(str(d), "app.jsonl", mode)
        elif r < 0.8 and not down:
            if r < 0.75:
                flush()
            t.stop()  # SIGKILL: what was read since the last flush is not counted
            pending.clear()
            down = True
        elif r < 0.9 and down:
            t = Tailer([path], positions=flushed[0], saved_at=flushed[1], watch="poll")
            down = False
        if not down and rng.random() < 0.7:
            drain()
            if rng.random() < 0.5:
                flush()
    if down:
        t = Tailer([path], positions=flushed[0], saved_at=flushed[1], watch="poll")
    for _ in range(3):
        drain()
    flush()
    t.stop()
    twice = sorted(q for q, c in counted.items() if c > 1)
    assert not twice, f"run {run}: {len(twice)} lines counted twice, first {twice[:5]}"
    assert len(counted) == seq, f"run {run}: {seq - len(counted)} of {seq} lines lost"


def test_copy_renamed_by_logrotate_while_looked_for_is_still_found(tmp_path):
    """delaycompress: the file being read when the sidecar went down is .2.gz at the restart, and
    logrotate shifts every .N.gz to .N+1.gz while the siblings are being decompressed one by one.
    A name opened after the listing holds another generation by then: the look starts again, so
    the copy (now .3.gz) is finished and nothing is lost."""
    d = str(tmp_path)
    log = os.path.join(d, "app.jsonl")
    write(log, range(50), "wb")
    _rotate(d, "app.jsonl", "delaycompress")
    write(log, range(50, 100))
    _rotate(d, "app.jsonl", "delaycompress")
    write(log, range(100, 200))
    t = Tailer([log], watch="poll")
    assert drain(t) == list(range(100, 200))
    keep = tmp_path / "keep"
    keep.mkdir()
    os.link(log, keep / "read")  # its inode number is not reused by a new generation
    gaps = []
    t2 = restart(t, [log], on_gap=lambda path, reason: gaps.append(reason))
    write(log, range(200, 260))  # not read before the stop
    _rotate(d, "app.jsonl", "delaycompress")
    write(log, range(260, 300))
    _rotate(d, "app.jsonl", "delaycompress")
    write(log, range(300, 310))
    for name, back in (("app.jsonl.4.gz", 3), ("app.jsonl.3.gz", 2)):  # older generations
        os.utime(os.path.join(d, name), (t.listed_at - back, t.listed_at - back))
    opened = t2._open_sibling
    shifted = []

    def open_sibling(name, *args, **kw):
        if name.endswith(".2.gz") and not shifted:  # logrotate runs again just now
            shifted.append(name)
            _rotate(d, "app.jsonl", "delaycompress")
        return opened(name, *args, **kw)

    t2._open_sibling = open_sibling
    assert sorted(drain(t2)) == list(range(200, 310))
    assert shifted and gaps == []


def test_generation_made_and_rotated_while_the_path_was_missing_is_read(tmp_path):
    """dateext: a look falls between logrotate's rename and its create (no file at the path);
    before the next look the new file is written and rotated away too. It is read, in order."""
    log = str(tmp_path / "app.jsonl")
    write(log, range(10), "wb")
    t = Tailer([log], watch="poll")
    assert drain(t) == list(range(10))
    os.rename(log, log + "-20261201-104914")  # renamed; the new file not created yet
    assert drain(t) == []
    write(log, range(10, 30), "wb")
    os.rename(log, log + "-20261201-104915")
    write(log, range(30, 33), "wb")
    assert drain(t) == list(range(10, 33))
    assert drain(t) == []


class _ShiftingNames:
    """The real filesystem, except that the first ``n`` opens of a ``.gz`` find the name gone:
    logrotate shifting ``.N.gz`` to ``.N+1.gz`` (a thousand renames) while the tailer looks."""

    def __init__(self, n: int):
        from mlsidecar.sources.tail import REAL_FILES
        self.real, self.left = REAL_FILES, n

    def open(self, path, flags):
        if path.endswith(".gz") and self.left > 0:
            self.left -= 1
            raise FileNotFoundError(path)
        return self.real.open(path, flags)

    def lexists(self, path):
        return self.real.lexists(path) and not (path.endswith(".gz") and self.left > 0)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_compressed_copy_renamed_while_looked_for_is_not_read_again_from_its_start(tmp_path):
    """delaycompress, two rotations while down, and the compressed copy's name shifting while
    the restarted tailer looks for it: the copy is still found by its content later and read
    from the saved position, never from 0 (the lines read before the stop are not counted twice)."""
    log = tmp_path / "app.jsonl"
    for i in range(40):  # older compressed generations, as logrotate leaves them
        gz = tmp_path / f"app.jsonl.{i + 3}.gz"
        with gzip.open(gz, "wb") as dst:
            dst.write(b"".join(line(j) for j in range(-100 * (i + 1), -100 * i)))
        os.utime(gz, (time.time() - 100 + i, time.time() - 100 + i))
    write(log, range(200))
    gaps = []
    t = Tailer([str(log)], watch="poll")
    assert drain(t) == list(range(200))
    saved, at = t.positions(), t.listed_at
    t.stop()
    write(log, range(200, 260))  # written after the stop
    os.rename(log, tmp_path / "app.jsonl.1")  # first rotation
    write(log, range(260, 300), "wb")
    one = tmp_path / "app.jsonl.1"  # second rotation: .1 compressed, the live file becomes .1
    with open(one, "rb") as src, gzip.open(tmp_path / "app.jsonl.2.gz", "wb") as dst:
        dst.write(src.read())
    st = os.stat(one)
    os.utime(tmp_path / "app.jsonl.2.gz", (st.st_atime, st.st_mtime))  # logrotate keeps it
    os.unlink(one)
    os.rename(log, one)
    write(log, range(300, 310), "wb")
    fs = _ShiftingNames(400)
    t2 = Tailer([str(log)], positions=saved, saved_at=at, watch="poll", fs=fs,
                on_gap=lambda path, reason: gaps.append(reason))
    got = drain(t2, rounds=2)
    fs.left = 0  # logrotate is done renaming
    os.rename(tmp_path / "app.jsonl.2.gz", tmp_path / "app.jsonl.3.gz.tmpname")
    for i in range(42, 2, -1):
        os.rename(tmp_path / f"app.jsonl.{i}.gz", tmp_path / f"app.jsonl.{i + 1}.gz")
    os.rename(tmp_path / "app.jsonl.3.gz.tmpname", tmp_path / "app.jsonl.3.gz")
    os.rename(one, tmp_path / "app.jsonl.2")  # a third rotation (its compression comes later)
    os.rename(log, one)
    write(log, range(310, 320), "wb")
    got += drain(t2, rounds=12)
    assert sorted(got) == list(range(200, 320)), \
        f"{sum(q < 200 for q in got) + len(got) - len(set(got))} counted twice, " \
        f"{sorted(set(range(200, 320)) - set(got))[:5]} lost"
    assert gaps == []


def test_a_generation_caught_while_logrotate_compresses_it_is_read_once(tmp_path):
    """Stopped across two delaycompress rotations, restarted while logrotate is compressing the
    unseen middle generation: ``.1`` and its ``.1.gz`` both exist. The generation is read once."""
    log = str(tmp_path / "app.jsonl")
    saved, at = read_then_stop(log, range(100))  # A
    os.rename(log, log + ".1")  # A rotated
    write(log, range(100, 150), "wb")  # B, never seen
    with open(log + ".1", "rb") as src, gzip.open(log + ".2.gz", "wb") as dst:
        dst.write(src.read())  # A compressed ...
    os.unlink(log + ".1")
    os.rename(log, log + ".1")  # ... B rotated
    write(log, range(150, 160), "wb")  # C
    with open(log + ".1", "rb") as src, gzip.open(log + ".1.gz", "wb") as dst:
        dst.write(src.read())  # logrotate now compressing B: .1 not removed yet
    t2 = Tailer([log], positions=saved, saved_at=at, watch="poll")
    got = drain(t2)
    assert sorted(got) == list(range(100, 160)), \
        f"{len(got) - len(set(got))} counted twice, {sorted(set(range(100, 160)) - set(got))[:5]} lost"
