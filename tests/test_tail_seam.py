"""The tailer's rotation, truncation, partial-line and identity decisions, on an in-memory
filesystem and a hand-driven clock: each case runs in milliseconds. The same cases on real
files and real logrotate stay in tests/e2e/.

Every line carries a sequence number and otherwise looks like its neighbours (one writer's
structured log), so generations share their first bytes. Each case asserts the exact
sequence numbers read: nothing lost, nothing twice.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from mlsidecar.sources.tail import GAP_DELETED, Clock, FileSystem, Tailer
from tests.tailing import drain

LOG = "/logs/app.jsonl"


# --- the fake ---------------------------------------------------------------------------
class FakeClock(Clock):
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    sleep = advance


class Inode:
    def __init__(self, ino: int, data: bytes, mtime: float) -> None:
        self.ino, self.data, self.mtime = ino, bytearray(data), mtime

    def stat(self) -> os.stat_result:
        m = self.mtime
        return os.stat_result((stat.S_IFREG | 0o644, self.ino, 1, 1, 0, 0, len(self.data), int(m), int(m), int(m)),
                              {"st_atime": m, "st_mtime": m, "st_ctime": m, "st_mtime_ns": int(m * 1e9)})


class Entry:
    """What os.scandir yields, for one name: its stat is looked up by name when first asked
    for (an lstat), so a name renamed since the listing has gone, or holds another file."""

    def __init__(self, fs: MemFS, path: str) -> None:
        self.fs, self.path, self.name = fs, path, os.path.basename(path)
        self._st: os.stat_result | None = None

    def is_file(self, follow_symlinks: bool = True) -> bool:
        return True

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        if self._st is None:
            self.fs._hook("entry-stat", self.path)
            self._st = self.fs._node(self.path).stat()
        return self._st


class MemFS(FileSystem):
    """Names -> inodes -> bytes, descriptors on inodes, one device; a directory's mtime moves
    with every create, rename and unlink in it. ``before(call, path, fn)`` runs ``fn`` once just
    before the next ``call`` on ``path`` (an error to raise, a rename); ``after`` just after."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.names: dict[str, Inode] = {}
        self.fds: dict[int, Inode] = {}
        self.dir_mtimes: dict[str, float] = {}
        self._next_ino, self._next_fd = 100, 1000
        self._hooks: list[tuple[str, str, Callable[[], None]]] = []
        self._after: list[tuple[str, str, Callable[[], None]]] = []

    # what the workload and logrotate do
    def write(self, path: str, data: bytes) -> None:
        node = self.names.get(path) or self.create(path)
        node.data += data
        node.mtime = self.clock.wall

    def _changed(self, path: str) -> None:
        self.dir_mtimes[os.path.dirname(path)] = self.clock.wall

    def create(self, path: str, ino: int | None = None) -> Inode:
        if ino is None:
            self._next_ino += 1
            ino = self._next_ino
        node = self.names[path] = Inode(ino, b"", self.clock.wall)
        self._changed(path)
        return node

    def rewrite(self, path: str, data: bytes) -> None:
        """Overwritten from its start, on the same inode (``r+b``)."""
        node = self.names[path]
        node.data[: len(data)] = data
        node.mtime = self.clock.wall

    def rename(self, src: str, dst: str) -> None:
        self.names[dst] = self.names.pop(src)
        self._changed(src)
        self._changed(dst)

    def unlink(self, path: str) -> None:
        del self.names[path]
        self._changed(path)

    def copy(self, src: str, dst: str) -> None:
        self.create(dst).data += self.names[src].data
        self.names[dst].mtime = self.clock.wall

    def truncate(self, path: str) -> None:
        self.names[path].data.clear()
        self.names[path].mtime = self.clock.wall

    def before(self, call: str, path: str, fn: Callable[[], None]) -> None:
        self._hooks.append((call, path, fn))

    def after(self, call: str, path: str, fn: Callable[[], None]) -> None:
        self._after.append((call, path, fn))

    def _hook(self, call: str, path: str, hooks: list | None = None) -> None:
        hooks = self._hooks if hooks is None else hooks
        for h in hooks:
            if h[:2] == (call, path):
                hooks.remove(h)
                h[2]()
                return

    def _node(self, path: str) -> Inode:
        try:
            return self.names[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None

    def _fd(self, fd: int) -> Inode:
        try:
            return self.fds[fd]
        except KeyError:
            raise OSError(errno.EBADF, "Bad file descriptor") from None

    # what the tailer calls
    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        self._hook("open", path)
        self._next_fd += 1
        self.fds[self._next_fd] = self._node(path)
        return self._next_fd

    def fstat(self, fd: int) -> os.stat_result:
        return self._fd(fd).stat()

    def stat(self, path: str) -> os.stat_result:
        self._hook("stat", path)
        if path in self.dir_mtimes:
            m = self.dir_mtimes[path]
            return os.stat_result((stat.S_IFDIR | 0o755, 1, 1, 2, 0, 0, 4096, int(m), int(m), int(m)),
                                  {"st_atime": m, "st_mtime": m, "st_ctime": m, "st_mtime_ns": int(m * 1e9)})
        return self._node(path).stat()

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return bytes(self._fd(fd).data[offset: offset + n])

    def close(self, fd: int) -> None:
        self._fd(fd)
        del self.fds[fd]

    def set_blocking(self, fd: int, blocking: bool) -> None:
        self._fd(fd)

    @contextmanager
    def scandir(self, path: str) -> Iterator[list[Entry]]:
        self._hook("scandir", path)
        yield [Entry(self, p) for p in sorted(self.names) if os.path.dirname(p) == path]
        self._hook("scandir", path, self._after)

    def lexists(self, path: str) -> bool:
        return path in self.names

    isfile = lexists

    def isdir(self, path: str) -> bool:
        return any(p.startswith(path.rstrip("/") + "/") for p in self.names)

    def islink(self, path: str) -> bool:
        return False

    def glob(self, pattern: str) -> list[str]:
        d = os.path.dirname(pattern)
        return [p for p in self.names if os.path.dirname(p) == d and fnmatch.fnmatchcase(p, pattern)]


# --- driving the tailer -----------------------------------------------------------------
def line(i: int) -> bytes:
    return b'{"event":"prediction","model":"m","status":"success","latency_s":0.01,"seq":' + str(i).encode() + b"}\n"


def lines(seqs: range | list[int]) -> bytes:
    return b"".join(line(i) for i in seqs)


def shift_up(fs: MemFS, new: bytes) -> None:
    """logrotate's rotation of .1 and .2 with names shifting up one, and the new file's lines."""
    if fs.lexists(LOG + ".2"):
        fs.rename(LOG + ".2", LOG + ".3")
    fs.rename(LOG + ".1", LOG + ".2")
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, new)


def copy_truncate(fs: MemFS, new: bytes) -> None:
    """logrotate's copytruncate to .1, and the lines written after the truncate."""
    fs.copy(LOG, LOG + ".1")
    fs.truncate(LOG)
    fs.write(LOG, new)


def setup(patterns: list[str] | None = None, **kw: object) -> tuple[MemFS, FakeClock, list[tuple[str, str]], Tailer]:
    clock = FakeClock()
    fs = MemFS(clock)
    gaps: list[tuple[str, str]] = []
    t = Tailer(patterns or [LOG], watch="poll", fs=fs, clock=clock, on_gap=lambda p, r: gaps.append((p, r)), **kw)
    return fs, clock, gaps, t


def restart(t: Tailer, fs: MemFS, clock: FakeClock, gaps: list | None = None) -> Tailer:
    """A stop and a new start: a new Tailer given the positions as last saved. The old one
    leaves no descriptor open."""
    saved, at = t.positions(), t.listed_at
    t.stop()
    assert fs.fds == {}
    return Tailer([LOG], positions=saved, saved_at=at, watch="poll", fs=fs, clock=clock,
                  on_gap=(lambda p, r: gaps.append((p, r))) if gaps is not None else None)


def read_then_stopped(n: int) -> tuple[MemFS, FakeClock, list[tuple[str, str]], dict, float]:
    """A file of ``n`` lines read whole, then a stop: the positions saved and when."""
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(n)))
    assert drain(t) == list(range(n))
    saved, at = t.positions(), t.listed_at
    t.stop()
    return fs, clock, gaps, saved, at


def start_again(saved: dict, at: float, fs: MemFS, clock: FakeClock, gaps: list) -> Tailer:
    """A start from saved positions, its gaps appended to ``gaps``."""
    return Tailer([LOG], positions=saved, saved_at=at, watch="poll", fs=fs, clock=clock,
                  on_gap=lambda p, r: gaps.append((p, r)))


# --- rotation -------------------------------------------------------------------------------
def test_rename_and_create_reads_the_old_file_to_its_end_then_the_new_one() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    fs.write(LOG, lines(range(100, 150)))  # written after the last read, before the rename
    clock.advance(1)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(150, 200)))
    assert drain(t) == list(range(100, 200))
    # The writer still had the old file open for a moment.
    fs.write(LOG + ".1", lines(range(200, 205)))
    assert drain(t) == list(range(200, 205))
    clock.advance(60)
    t.retire_quiet(clock.monotonic(), 5.0)
    assert [tf.name for tf in t.readable()] == [LOG]
    assert drain(t) == [] and gaps == []


def test_copytruncate_finishes_the_unread_lines_from_the_copy() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    fs.write(LOG, lines(range(100, 150)))  # not read yet when logrotate copies
    clock.advance(1)
    copy_truncate(fs, lines(range(200, 230)))
    assert sorted(drain(t)) == list(range(100, 150)) + list(range(200, 230))
    assert drain(t) == [] and gaps == []


def test_truncated_in_place_is_read_again_from_its_start() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(50)))
    assert drain(t) == list(range(50))
    fs.truncate(LOG)
    clock.advance(1)
    fs.write(LOG, lines(range(300, 310)))
    assert drain(t) == list(range(300, 310))
    assert gaps == []  # everything written before the truncate had been read


def test_truncated_before_its_end_was_read_counts_a_gap() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(50)))
    assert drain(t) == list(range(50))
    fs.write(LOG, lines(range(50, 60)))
    t.scan()  # sees the new size, does not read it yet
    fs.truncate(LOG)
    fs.write(LOG, lines(range(400, 402)))
    assert drain(t) == [400, 401]
    assert gaps == [(LOG, "truncated_unread")]


# --- partial lines ------------------------------------------------------------------------
def test_a_partial_last_line_is_held_until_its_newline() -> None:
    fs, clock, gaps, t = setup()
    tenth = line(10)
    fs.write(LOG, lines(range(10)) + tenth[:20])
    assert drain(t) == list(range(10))
    pos = next(iter(t.positions().values()))
    assert pos["offset"] == len(lines(range(10)))  # the held bytes are not consumed
    fs.write(LOG, tenth[20:-1])
    assert drain(t) == []
    fs.write(LOG, b"\n" + line(11))
    assert drain(t) == [10, 11]


def test_a_partial_line_held_at_a_stop_is_read_whole_after_the_start() -> None:
    fs, clock, gaps, t = setup()
    tenth = line(10)
    fs.write(LOG, lines(range(10)) + tenth[:30])
    assert drain(t) == list(range(10))
    t = restart(t, fs, clock)
    fs.write(LOG, tenth[30:] + line(11))
    assert drain(t) == [10, 11]


# --- identity of alike files ----------------------------------------------------------------
def test_the_same_inode_rewritten_while_stopped_is_read_from_its_start() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    t = restart(t, fs, clock)
    t.stop()
    clock.advance(5)
    fs.rewrite(LOG, lines(range(1000, 1200)))  # same inode, same first bytes, longer
    t = restart(t, fs, clock)
    assert drain(t) == list(range(1000, 1200))


def test_an_inode_number_reused_after_a_delete_is_a_new_file() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    ino = fs.names[LOG].ino
    saved, at = t.positions(), t.listed_at
    t.stop()
    clock.advance(5)
    fs.unlink(LOG)
    fs.create(LOG, ino=ino)  # the filesystem hands the number out again
    fs.write(LOG, lines(range(500, 650)))
    t = Tailer([LOG], positions=saved, saved_at=at, watch="poll", fs=fs, clock=clock)
    assert drain(t) == list(range(500, 650))


def test_a_reused_inode_whose_first_lines_are_the_same_is_still_a_new_file() -> None:
    """A re-run of a deterministic job writes the same first lines (more than HEAD_BYTES) into
    a new file that got the old inode number: the bytes before the position tell them apart."""
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    ino = fs.names[LOG].ino
    saved, at = t.positions(), t.listed_at
    t.stop()
    clock.advance(5)
    fs.unlink(LOG)
    fs.create(LOG, ino=ino)
    fs.write(LOG, lines(range(20)) + lines(range(3000, 3200)))
    assert len(lines(range(20))) > 1024
    t = Tailer([LOG], positions=saved, saved_at=at, watch="poll", fs=fs, clock=clock)
    assert drain(t) == list(range(20)) + list(range(3000, 3200))


def test_the_copy_is_told_from_an_older_shorter_generation_that_starts_alike() -> None:
    """After a copytruncate, an older generation whose first line differs only after its
    first 64 bytes is not taken for the copy: the unread lines come from the real copy."""
    fs, clock, gaps, t = setup()
    fs.write(LOG + ".2", lines(range(5000, 5005)))  # an older run's log, left beside it
    clock.advance(0.5)
    fs.write(LOG, lines(range(100)))
    clock.advance(1.1)  # looked at after the older one's mtime, beyond the clocks' slack
    assert drain(t) == list(range(100))
    assert line(0)[:64] == line(5000)[:64]
    fs.write(LOG, lines(range(100, 120)))
    copy_truncate(fs, lines(range(200, 210)))
    assert drain(t) == list(range(100, 120)) + list(range(200, 210))
    assert gaps == []


def test_a_copy_made_while_stopped_is_found_by_its_content() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    fs.write(LOG, lines(range(100, 120)))
    t.scan()
    t = restart(t, fs, clock, gaps)
    t.stop()
    clock.advance(5)
    copy_truncate(fs, lines(range(200, 210)))  # copytruncate while the sidecar is down
    saved, at = t.positions(), t.listed_at
    t = start_again(saved, at, fs, clock, gaps)
    assert drain(t) == list(range(100, 120)) + list(range(200, 210))
    assert gaps == []


# --- rotations while stopped, and races with logrotate ------------------------------------------
def test_a_generation_rotated_twice_while_stopped_is_read_whole() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(100)))
    assert drain(t) == list(range(100))
    fs.write(LOG, lines(range(100, 110)))
    t = restart(t, fs, clock, gaps)
    t.stop()
    saved, at = t.positions(), t.listed_at
    clock.advance(5)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(200, 210)))  # created and rotated away while stopped
    clock.advance(5)
    fs.rename(LOG + ".1", LOG + ".2")
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(300, 310)))
    t = start_again(saved, at, fs, clock, gaps)
    assert drain(t) == list(range(100, 110)) + list(range(200, 210)) + list(range(300, 310))
    assert gaps == []


def test_a_sibling_renamed_between_the_listing_and_the_open_is_not_passed_over() -> None:
    fs, clock, gaps, saved, at = read_then_stopped(100)  # generation A, read up to 100
    clock.advance(5)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(200, 210)))  # B
    clock.advance(5)
    shift_up(fs, lines(range(300, 310)))  # C

    def logrotate() -> None:  # runs after the directory was listed, before .1 is opened
        clock.advance(5)
        shift_up(fs, lines(range(400, 410)))  # D

    fs.before("open", LOG + ".1", logrotate)
    t = start_again(saved, at, fs, clock, gaps)
    assert drain(t) == list(range(200, 210)) + list(range(300, 310)) + list(range(400, 410))
    assert gaps == []


def test_a_saved_file_shifted_up_between_its_lookup_and_its_open_is_finished_once() -> None:
    """logrotate renames .1 -> .2 -> .3 while a restart finds the file it was reading by its
    inode and opens it: the name then holds the next generation. The file is looked up again,
    finished from its position, and never read from 0 as an unseen generation."""
    fs, clock, gaps, saved, at = read_then_stopped(100)  # generation A, read up to 100
    fs.write(LOG, lines(range(100, 110)))  # written to A after the stop
    clock.advance(5)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(200, 210)))  # B
    clock.advance(5)
    shift_up(fs, lines(range(300, 310)))  # C

    def logrotate() -> None:  # A was found at .2; before the open, every name shifts up one
        clock.advance(1)
        shift_up(fs, lines(range(400, 410)))  # D

    fs.before("open", LOG + ".2", logrotate)
    t = start_again(saved, at, fs, clock, gaps)
    got = drain(t)
    assert sorted(got) == list(range(100, 110)) + list(range(200, 210)) + list(range(300, 310)) \
        + list(range(400, 410)), got
    assert gaps == []


def _missed_by_listings(fs: MemFS, name: str, listings: int) -> None:
    """The next ``listings`` directory listings miss ``name`` (a listing made while logrotate
    renames can), the one after sees it again."""
    hidden = "/elsewhere/" + os.path.basename(name)

    def hide() -> None:
        fs.rename(name, hidden)
        for _ in range(listings - 1):
            fs.before("scandir", os.path.dirname(name), lambda: None)
        fs.before("scandir", os.path.dirname(name), lambda: fs.rename(hidden, name))

    fs.before("scandir", os.path.dirname(name), hide)


@pytest.mark.parametrize("listings", [1, 2], ids=["lookup", "lookup-and-copy-search"])
def test_a_saved_file_a_listing_missed_is_finished_from_its_position(listings: int) -> None:
    """The restart's lookup by inode (and then its search for a copy) does not see the file it
    was reading: the next look that sees it goes on from the saved position, never from 0."""
    fs, clock, gaps, saved, at = read_then_stopped(100)
    fs.write(LOG, lines(range(100, 110)))
    clock.advance(5)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(200, 210)))
    _missed_by_listings(fs, LOG + ".1", listings)
    t = start_again(saved, at, fs, clock, gaps)
    got = drain(t)
    assert sorted(got) == list(range(100, 110)) + list(range(200, 210)), got
    if listings == 1:
        assert gaps == []  # found by the copy search, as the file itself


def _renamed_during_listings(fs: MemFS, name: str, listings: int) -> None:
    """logrotate renames ``name`` while each of the next ``listings`` directory listings is
    read, and the listing misses it (renamed from a place not read yet to one already passed):
    out of the directory before the listing, back after it. The directory's mtime moves."""
    hidden = "/elsewhere/" + os.path.basename(name)
    for _ in range(listings):
        fs.before("scandir", os.path.dirname(name), lambda: fs.rename(name, hidden))
        fs.after("scandir", os.path.dirname(name), lambda: fs.rename(hidden, name))


def test_an_unseen_generation_a_listing_missed_while_logrotate_renamed_is_read() -> None:
    """Two rotations while stopped leave a generation never seen at ``.1``; the restart's listings
    are made while logrotate renames, and miss it. The directory's mtime moved during each: the
    restart lists again until a listing nothing changed during, and reads the generation."""
    fs, clock, gaps, saved, at = read_then_stopped(100)
    clock.advance(5)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(200, 210)))  # B, rotated away unseen
    clock.advance(5)
    shift_up(fs, lines(range(300, 310)))
    _renamed_during_listings(fs, LOG + ".1", 3)
    t = start_again(saved, at, fs, clock, gaps)
    got = drain(t)
    assert sorted(got) == list(range(200, 210)) + list(range(300, 310)), got
    assert gaps == []


def test_a_generation_rotated_away_between_the_restarts_look_and_its_open_is_read() -> None:
    """The restart looks for generations rotated away while it was down, then opens the path;
    logrotate rotates in between, so the path holds the next file by the open. The generation it
    moved away (never seen by any run) is still found among the siblings and read whole."""
    fs, clock, gaps, saved, at = read_then_stopped(100)
    clock.advance(5)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(200, 210)))  # B: never seen by any run

    def logrotate() -> None:
        clock.advance(1)
        shift_up(fs, lines(range(300, 310)))

    fs.before("open", LOG, logrotate)
    t = start_again(saved, at, fs, clock, gaps)
    got = drain(t)
    assert sorted(got) == list(range(200, 210)) + list(range(300, 310)), got
    assert gaps == []


def test_a_sibling_renamed_between_the_listing_and_its_stat_hides_no_other_generation() -> None:
    """The restart lists the siblings to find a generation rotated away while it was down; one
    listed name (an old generation) is renamed by logrotate before its stat. The other siblings
    are still looked at: the listing is made again, and the generation is read."""
    fs, clock, gaps, t = setup()
    fs.write(LOG + ".2", lines(range(0, 10)))  # history from before the sidecar ran
    clock.advance(60)
    fs.create(LOG)  # empty when the sidecar stops: nothing to verify it by
    assert drain(t) == []
    saved, at = t.positions(), t.listed_at
    t.stop()
    clock.advance(5)
    fs.write(LOG, lines(range(200, 210)))
    fs.rename(LOG, LOG + ".1")  # rotated away while stopped, never seen written
    fs.write(LOG, lines(range(300, 310)))
    fs.before("entry-stat", LOG + ".2", lambda: fs.rename(LOG + ".2", LOG + ".3"))
    t = start_again(saved, at, fs, clock, gaps)
    got = drain(t)
    assert sorted(got) == list(range(200, 210)) + list(range(300, 310)), got
    assert gaps == []


def test_the_file_logrotate_moves_aside_as_a_backup_is_read() -> None:
    """The workload opened the log by name between logrotate's rename and its create, so the
    path existed again; logrotate moved that file, with its lines, to ``-YYYYMMDDHH.backup``."""
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(10)))
    assert drain(t) == list(range(10))
    clock.advance(1)
    fs.rename(LOG, LOG + "-20261201-101500")  # dateext
    fs.write(LOG, lines(range(10, 15)))  # the workload creates it again at once
    fs.rename(LOG, LOG + "-2026120110.backup")  # logrotate finds it in the way of its create
    fs.create(LOG)
    fs.write(LOG, lines(range(15, 20)))
    assert sorted(drain(t)) == list(range(10, 20))
    assert gaps == []


def test_an_unseen_generation_that_keeps_moving_while_looked_at_is_read_at_a_later_look() -> None:
    """Every open of the unseen generation finds its name moved on (logrotate shifting a
    thousand names takes a while): it is looked at again at the next scans, not passed over."""
    fs, clock, gaps, saved, at = read_then_stopped(100)  # A, read whole
    clock.advance(1)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(100, 150)))  # B, never seen
    clock.advance(1)
    fs.rename(LOG + ".1", LOG + ".2")
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(150, 160)))  # C
    real_open, moving = fs.open, [6]

    def open_moving(path: str, flags: int, mode: int = 0o777) -> int:
        if path == LOG + ".1" and moving[0] > 0:
            moving[0] -= 1
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return real_open(path, flags, mode)

    fs.open = open_moving  # type: ignore[method-assign]
    t = start_again(saved, at, fs, clock, gaps)
    assert sorted(drain(t)) == list(range(100, 160))
    assert moving == [0] and gaps == []


def test_a_file_renamed_away_between_the_stat_and_the_open_is_read_once() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(10)))
    assert drain(t) == list(range(10))
    fs.write(LOG, lines(range(10, 20)))
    t = restart(t, fs, clock)
    t.stop()
    saved, at = t.positions(), t.listed_at
    clock.advance(5)

    def rotate() -> None:  # the path is looked at, then renamed before it is opened
        fs.rename(LOG, LOG + ".1")
        fs.write(LOG, lines(range(30, 40)))

    fs.before("open", LOG, rotate)
    t = Tailer([LOG], positions=saved, saved_at=at, watch="poll", fs=fs, clock=clock)
    assert drain(t) == list(range(10, 20)) + list(range(30, 40))


def test_emfile_on_open_is_retried_and_loses_nothing() -> None:
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(10)))

    def emfile() -> None:
        raise OSError(errno.EMFILE, "Too many open files", LOG)

    fs.before("open", LOG, emfile)
    t.scan()
    assert t.fd_refused == 1 and t.readable() == [] and t.rescan
    assert drain(t) == list(range(10))
    # Again for the new file of a rotation.
    fs.write(LOG, lines(range(10, 20)))
    clock.advance(1)
    fs.rename(LOG, LOG + ".1")
    fs.write(LOG, lines(range(20, 30)))
    fs.before("open", LOG, emfile)
    assert drain(t, rounds=1) == list(range(10, 20))
    assert t.fd_refused == 2
    assert drain(t) == list(range(20, 30))
    assert gaps == []


def test_a_generation_deleted_while_stopped_before_it_was_read_is_a_counted_gap() -> None:
    fs, clock, gaps, saved, at = read_then_stopped(10)
    clock.advance(5)
    fs.write(LOG, lines(range(10, 20)))
    fs.rename(LOG, LOG + ".1")
    fs.unlink(LOG + ".1")
    fs.write(LOG, lines(range(20, 25)))
    t = start_again(saved, at, fs, clock, gaps)
    assert drain(t) == list(range(20, 25))
    assert gaps == [(LOG, GAP_DELETED)]


def test_more_files_than_may_be_open_are_closed_while_idle_and_lose_nothing() -> None:
    fs, clock, gaps, t = setup(["/logs/*.jsonl"], max_open_files=2)
    names = [f"/logs/w{i}.jsonl" for i in range(5)]
    for i, name in enumerate(names):
        fs.write(name, lines(range(i * 100, i * 100 + 10)))
    got = drain(t, rounds=6)
    assert sorted(got) == [i * 100 + j for i in range(5) for j in range(10)]
    assert len(fs.fds) <= 2 and t.parked_total > 0
    clock.advance(1)
    for i, name in enumerate(names):  # each written again while closed, one with a partial line
        fs.write(name, lines(range(i * 100 + 10, i * 100 + 20)) + (b'{"seq":' if i == 3 else b""))
    got = drain(t, rounds=6)
    assert sorted(got) == [i * 100 + j for i in range(5) for j in range(10, 20)]
    fs.write(names[3], b"399}\n")
    assert drain(t, rounds=6) == [399] and len(fs.fds) <= 2 and gaps == []


def test_a_file_written_just_before_it_is_closed_while_idle_is_read() -> None:
    """Lines appended after the look that found the file idle and before it was closed are read
    when it is looked at next, although it is not written again."""
    fs, clock, gaps, t = setup()
    fs.write(LOG, lines(range(10)))
    assert drain(t) == list(range(10))
    fs.write(LOG, lines(range(10, 15)))  # after the look, before the close
    t.park(t.files[LOG])
    assert drain(t) == list(range(10, 15))
    assert gaps == []
