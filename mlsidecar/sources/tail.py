"""Follow JSON-lines files: globs, rotation, truncation, and resumable positions.

What it guarantees (docs/operations.md has the long form):

* a file is identified by device + inode *and by its content*: its first bytes (up to
  ``HEAD_BYTES``, growing as the file grows, like OpenTelemetry's filelog receiver) and the
  last bytes read before the position (up to ``TAIL_BYTES``). Lines of one writer that all
  look alike still differ there (sequence numbers, timestamps), so a new file that reuses an
  inode, a file rewritten in place, and logrotate's copy of a file are told apart;
* rename + create (logrotate's default): the renamed file is read to its end before it is let
  go, then the new file is read from its start; generations created and rotated away between
  two looks (or while the sidecar was down) are found among the siblings and read whole;
* ``copytruncate``: noticed when the bytes at the read position change; what had not been read
  yet is finished from logrotate's copy, found by content. Lines written between logrotate's
  copy and its truncate exist in neither file: lost, never counted twice, counted as a gap
  where the sidecar saw them in the file before the truncate;
* a generation known from the positions that was compressed while the sidecar was down
  (``.gz``, ``.bz2``, ``.xz``) is found by content in the compressed file and finished there;
* whatever could not be read (a generation deleted before it was finished, positions lost) is
  reported through ``on_gap`` and logged, never silent;
* a line is handed on only once its newline has arrived; a line longer than ``max_line_bytes``
  is skipped to its newline without being held in memory.

Change notification comes from inotify where it works (watchdog's bindings, its descriptor
waited on in the worker's own loop); a rescan every ``poll_interval`` keeps all of the above
true where it does not.
"""

from __future__ import annotations

import base64
import bz2
import errno
import glob
import gzip
import logging
import lzma
import os
import select
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..logs import RateLimitedLog
from . import osfs


def open_files_limit(wanted: int) -> int:
    """How many tailed files may be open at once: ``wanted``, but at most half the soft
    RLIMIT_NOFILE, so the journal, the status, the metric files and the rest always get one."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return max(1, wanted)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return max(1, wanted)
    return max(1, min(wanted, soft // 2))


class WakeEvent(threading.Event):
    """An event that also wakes a select(): set() writes a byte to a pipe (a signal handler
    sets it to stop the worker while it waits on the inotify descriptor)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        super().set()
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # full (already woken) or closed

    def clear(self) -> None:
        super().clear()
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass


class InotifyReader:
    """One inotify descriptor, watched directories on it, read without blocking.

    Uses the inotify bindings watchdog ships (watchdog.observers.inotify_c) without its
    observer: the worker waits on the descriptor itself.
    """

    def __init__(self) -> None:
        from watchdog.observers import inotify_c

        self._c = inotify_c
        k = inotify_c.InotifyConstants
        self.mask = (k.IN_MODIFY | k.IN_CREATE | k.IN_DELETE | k.IN_MOVED_FROM | k.IN_MOVED_TO
                     | k.IN_DELETE_SELF | k.IN_MOVE_SELF)
        self.names = k.IN_CREATE | k.IN_DELETE | k.IN_MOVED_FROM | k.IN_MOVED_TO | k.IN_DELETE_SELF \
            | k.IN_MOVE_SELF | k.IN_Q_OVERFLOW | k.IN_IGNORED
        self.modify, self.isdir = k.IN_MODIFY, k.IN_ISDIR
        fd = inotify_c.inotify_init()
        if fd < 0:
            err = ctypes_errno()
            raise OSError(err, os.strerror(err))
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.fd = fd
        self.dirs: dict[int, str] = {}

    def watch(self, directory: str) -> None:
        wd = self._c.inotify_add_watch(self.fd, os.fsencode(directory), self.mask)
        if wd < 0:
            err = ctypes_errno()
            raise OSError(err, os.strerror(err), directory)
        self.dirs[wd] = directory

    def wait(self, timeout: float, wake: WakeEvent) -> None:
        try:
            select.select([self.fd, wake.read_fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            time.sleep(min(timeout, 0.1))

    def read(self) -> tuple[bool, set[str]]:
        """(whether names changed, the files written) since the last read."""
        rescan, written = False, set[str]()
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                return True, written
            if not buf:
                break
            for wd, mask, _cookie, name in self._c.InotifyFD._parse_event_buffer(buf):
                if mask & self.names:
                    rescan = True
                elif mask & self.modify and not mask & self.isdir and wd in self.dirs:
                    written.add(os.path.join(self.dirs[wd], os.fsdecode(name)))
        return rescan, written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno() or errno.EIO


class FileSystem(Protocol):
    """The filesystem calls the tailer makes, in one place. The real ones are the module
    ``osfs``; a test gives an in-memory one (tests/test_tail_seam.py) to drive rotation,
    truncation and races between a look and an open in milliseconds. The inotify wake-ups and
    decompression stay real."""

    def open(self, path: str, flags: int, /) -> int: ...
    def fstat(self, fd: int, /) -> os.stat_result: ...
    def stat(self, path: str, /) -> os.stat_result: ...
    def pread(self, fd: int, n: int, offset: int, /) -> bytes: ...
    def close(self, fd: int, /) -> None: ...
    def set_blocking(self, fd: int, blocking: bool, /) -> None: ...
    def scandir(self, path: str, /) -> AbstractContextManager[Iterator[os.DirEntry[str]]]: ...
    def lexists(self, path: str, /) -> bool: ...
    def isfile(self, path: str, /) -> bool: ...
    def isdir(self, path: str, /) -> bool: ...
    def islink(self, path: str, /) -> bool: ...
    def glob(self, pattern: str, /) -> list[str]: ...


class Clock(Protocol):
    """Wall time (compared with file mtimes), monotonic time (idle spans) and a short wait
    (for a directory to settle): the real ones are the module ``time``."""

    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float, /) -> None: ...


REAL_FILES: FileSystem = osfs
REAL_CLOCK: Clock = time


class SiblingMoved(Exception):
    """A rotated sibling's name holds another file than when the directory was listed."""


def open_regular(name: str, fs: FileSystem = REAL_FILES) -> int:
    """A read descriptor on ``name``, which must be a regular file and not a symlink.

    Opened non-blocking and checked on the descriptor itself: a FIFO swapped in between a
    look and the open would otherwise block the worker for ever in open(), and a check of
    the name before the open (isfile) races with the swap.
    """
    fd = fs.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(fs.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        fs.set_blocking(fd, True)
    except BaseException:
        fs.close(fd)
        raise
    return fd

log = logging.getLogger(__name__)

HEAD_BYTES = 1024  # how much of a file's start identifies it
TAIL_BYTES = 1024  # how much before the read position verifies it
READ_BYTES = 1 << 20
MTIME_SLACK = 1.0  # file times come from a coarser clock than time.time()
COPY_SLACK = 10.0  # a copy is not older than the file's last verified change by more than this
MISSING_LOOK = 60.0  # a path rotated away and not created again yet is looked after this long
MAX_COMPRESSED_TRIES = 32  # compressed siblings decompressed at most, looking for one copy
COPY_LOOK = 30.0  # seconds a copy is looked for again while logrotate keeps renaming siblings
MAX_UNSEEN_LOOKS = 50  # scans that look again at siblings that kept moving while looked at
DIR_TICK = 0.02  # a directory's mtime comes from a clock this coarse, at worst (HZ=100 is 10 ms)
LISTING_TRIES = 50  # listings of a directory that kept changing while listed, DIR_TICK apart
BOM = b"\xef\xbb\xbf"
DECOMPRESS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
# Temporaries, never generations. logrotate's ``<log>-YYYYMMDDHH.backup`` is one: the file the
# workload had already created again at the path when logrotate came to create it (between
# logrotate's rename and its create), moved out of the way with the lines written to it.
NOT_GENERATIONS = (".tmp", ".swp")

# Why part of a source could not be read (mlsidecar_source_gaps_total{reason}).
GAP_DELETED = "deleted_unread"  # a known generation was removed before it was read to its end
GAP_COPYTRUNCATE = "copytruncate_window"  # lines written between logrotate's copy and truncate
GAP_TRUNCATED = "truncated_unread"  # truncated in place before its end was read, no copy found
GAP_COMPRESSED = "compressed_unreadable"  # only a compressed copy is left, in a format not read
GAP_COMPRESSED_SHORT = "compressed_short"  # the compressed copy holds less than the file had
GAP_POSITIONS = "positions_lost"  # values without positions: started at the end of the files


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _saved_position(ident: Identity) -> dict:
    return {"path": ident.path, "dev": ident.dev, "ino": ident.ino, "offset": ident.offset,
            "head": _b64(ident.head), "tail": _b64(ident.tail), "size": ident.size,
            "skipping": ident.skipping, "draining": ident.draining, "mtime": ident.mtime}


@dataclass
class Identity:
    """What a saved position knows about its file: where it was and what it looked like."""

    path: str  # the tailed path the file was (or is) read as
    dev: int
    ino: int
    offset: int
    head: bytes  # the file's first bytes
    tail: bytes  # the bytes just before ``offset``
    size: int = 0  # the size last seen
    skipping: bool = False
    draining: bool = False
    mtime: float = 0.0  # the file's mtime when last seen unchanged: its copies are not older

    @classmethod
    def from_position(cls, pos: dict) -> Identity:
        if "head" in pos:
            head, tail = base64.b64decode(pos["head"]), base64.b64decode(pos.get("tail", ""))
        else:  # positions written by an older version: hex, 64 bytes
            head, tail = bytes.fromhex(pos.get("fingerprint", "")), bytes.fromhex(pos.get("tail", ""))
        return cls(pos["path"], int(pos["dev"]), int(pos["ino"]), int(pos["offset"]), head, tail,
                   int(pos.get("size", pos["offset"])), bool(pos.get("skipping", False)),
                   bool(pos.get("draining", False)), float(pos.get("mtime", 0.0)))

    def same_file(self, fd: int, fs: FileSystem = REAL_FILES) -> bool:
        """Does ``fd`` (this inode, or a copy) hold what we read, up to ``offset``?"""
        size = fs.fstat(fd).st_size
        if size < self.offset:
            return False
        if fs.pread(fd, len(self.head), 0) != self.head:
            return False
        return fs.pread(fd, len(self.tail), self.offset - len(self.tail)) == self.tail

    def copy_kind(self, fd: int, fs: FileSystem = REAL_FILES) -> str | None:
        """Is ``fd`` a copy of this file? "behind": it goes on past ``offset`` (read the rest
        from it); "covered": it holds no more than was read; None: another file."""
        size = fs.fstat(fd).st_size
        n = min(len(self.head), size)
        if n == 0 or fs.pread(fd, n, 0) != self.head[:n]:
            return None
        if size >= self.offset:
            if not self.tail and self.offset > len(self.head):
                return None  # nothing to check the position by
            if fs.pread(fd, len(self.tail), self.offset - len(self.tail)) != self.tail:
                return None
            return "behind" if size > self.offset else "covered"
        # Shorter than what was read: a copy taken before we read on (copytruncate).
        start = self.offset - len(self.tail)
        if size > start and fs.pread(fd, size - start, start) != self.tail[:size - start]:
            return None
        return "covered"


def same_start(fs: FileSystem, a: int, b: int) -> bool:
    """Do two files start with the same bytes (up to HEAD_BYTES, or the shorter one's size)?"""
    n = min(HEAD_BYTES, fs.fstat(a).st_size, fs.fstat(b).st_size)
    return n > 0 and fs.pread(a, n, 0) == fs.pread(b, n, 0)


class Unseen(NamedTuple):
    """A rotated sibling never had open: a generation to read whole (from ``start``)."""

    mtime: float
    name: str
    fd: int | None  # None: it vanished or changed name while looked at (look again)
    listed: os.stat_result  # as the directory listing found it
    start: int = 0  # a saved position's offset when it is the very file that position read


@dataclass
class Parked:
    """A tailed file closed while idle: what identifies it, and how it looked when closed."""

    ident: Identity
    lines: int
    checked: tuple[int, int]  # (size, mtime_ns) when closed; (-1, 0): to be looked at


class TailedFile:
    """One open file and how far it has been read.

    ``dev``/``ino`` name the generation being read; ``fd`` is normally that inode, or a
    decompressed copy of it when only a compressed copy was left.
    """

    def __init__(self, path: str, fd: int, st: os.stat_result, offset: int = 0, name: str = "",
                 fs: FileSystem = REAL_FILES, clock: Clock = REAL_CLOCK):
        self.fs = fs
        self.clock = clock
        self.path = path
        self.name = name or path  # the file actually read (a rotated sibling, a copy)
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.offset = offset  # bytes consumed, up to the end of the last complete line
        self.read_to = offset  # bytes read, including the held partial line
        self.partial = b""
        self.skipping = False  # inside an oversized line: drop bytes until its newline
        self.size = st.st_size
        self.draining = False  # rotated away: read to EOF, then close
        self.head = b""
        self.tail = b""
        self.decompressed = False  # fd is a private decompressed copy: nobody rewrites it
        self.physical = (st.st_dev, st.st_ino)  # the file opened (a .gz for a decompressed copy)
        self.mtime = st.st_mtime  # when last seen unchanged
        self.lines = 0
        self.rejected = 0
        self.last_data = self.clock.monotonic()
        self._checked: tuple[int, int] = (-1, 0)  # (size, mtime_ns) at the last unchanged() check
        self.more = False  # the last read filled its chunk
        self.load_identity()

    def load_identity(self) -> None:
        """Head and tail as they are in the file now (after it was verified, or at 0)."""
        self.head = self.fs.pread(self.fd, min(HEAD_BYTES, max(self.offset, self.read_to)), 0)
        n = min(TAIL_BYTES, self.offset)
        self.tail = self.fs.pread(self.fd, n, self.offset - n)

    def identity(self) -> Identity:
        return Identity(self.path, self.dev, self.ino, self.offset, self.head, self.tail,
                        max(self.size, self.read_to), self.skipping, self.draining, self.mtime)

    def position(self) -> dict:
        return {"path": self.path, "dev": self.dev, "ino": self.ino, "offset": self.offset,
                "head": _b64(self.head), "tail": _b64(self.tail), "size": max(self.size, self.read_to),
                "skipping": self.skipping, "draining": self.draining, "mtime": self.mtime}

    def unchanged(self) -> bool:
        """Are the bytes already read still there? False after a truncate or a rewrite."""
        if self.decompressed:
            return True
        st = self.fs.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns) == self._checked:
            return True  # not written since it was checked: thousands of idle files cost a fstat
        if st.st_size < self.read_to:
            return False
        if self.head and self.fs.pread(self.fd, len(self.head), 0) != self.head:
            return False
        n = len(self.tail)
        if n and self.fs.pread(self.fd, n, self.offset - n) != self.tail:
            return False
        self.mtime = st.st_mtime
        self._checked = (st.st_size, st.st_mtime_ns)
        return True

    def holds_start_of(self, fd: int) -> bool:
        """Does this open file start with the bytes ``fd`` starts with (up to HEAD_BYTES)?
        Asked of the file itself, not of what was read from it: a copy of a file that was
        barely read yet is still recognised."""
        return same_start(self.fs, fd, self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            self.fs.close(self.fd)
            self.fd = -1


class Tailer:
    """Reads every file matching some glob patterns, line by line, exactly once.

    ``on_oversized(path)`` is called for every line skipped for its length, ``on_gap(path,
    reason)`` for every part of a source that could not be read.
    ``start_at_end``: open the files found at the first look at their end (positions lost).
    """

    # The real ones, on the class: one more attribute on each Tailer would make every read()
    # call slower (CPython keeps about 30 instance attributes inline, and a Tailer has 29).
    fs: FileSystem = REAL_FILES
    clock: Clock = REAL_CLOCK

    def __init__(self, patterns: list[str], *, max_line_bytes: int = 256 * 1024,
                 positions: dict | None = None, saved_at: float = 0.0, watch: str = "auto",
                 on_oversized=None, on_gap=None, start_at_end: bool = False,
                 follow_symlinked_dirs: bool = False, max_open_files: int = 256,
                 fs: FileSystem | None = None, clock: Clock | None = None):
        if fs is not None:  # a test gives an in-memory one
            self.fs = fs
        if clock is not None:
            self.clock = clock
        self.patterns = list(patterns)
        self.max_open = open_files_limit(max_open_files)
        # Files closed while idle (more match than max_open): their identity, by (dev, inode).
        self.parked: dict[tuple[int, int], Parked] = {}
        self.parked_total = 0  # files closed while idle since the start
        self.fd_refused = 0  # opens refused for the descriptor limit (EMFILE, ENFILE)
        self._limit_log = RateLimitedLog(log, interval=60.0)
        self._said_limit = False
        self.follow_symlinked_dirs = follow_symlinked_dirs
        self._warned: set[tuple[str, str]] = set()  # (path, what): each said once, not every scan
        for pattern in self.patterns:
            if not glob.has_magic(pattern) and self.fs.isdir(pattern):
                log.warning("%s is a directory, not a file: nothing is tailed there (give a file, "
                            "or a glob such as %s)", pattern, os.path.join(pattern, "*.jsonl"))
        self.max_line_bytes = max_line_bytes
        self.files: dict[str, TailedFile] = {}
        self.retired: list[TailedFile] = []  # rotated away, being drained
        self.on_oversized = on_oversized or (lambda path: None)
        self.on_gap = on_gap or (lambda path, reason: None)
        self.wake = WakeEvent()
        self.rescan = True
        self.watch_mode = "poll"
        self._inotify: InotifyReader | None = None
        self._saved: list[Identity] = []
        # Files whose copy could not be looked at (every sibling was renamed as we opened it:
        # logrotate shifting .N.gz up), with when the looking began and whether the file went
        # while we were down: looked for again at each scan, never taken for new generations.
        self._sought: list[tuple[Identity, float, bool]] = []
        # Paths whose unseen generations kept moving while we looked (logrotate shifting a
        # thousand names): looked at again at the next scans, from the same time, and the looks.
        self._unseen_again: dict[str, tuple[float, int]] = {}
        # inotify: the files written since the last read (absolute paths), and the directories
        # watched; files elsewhere are read at every wake-up, as when polling.
        self.dirty: set[str] = set()
        self._watched_dirs: set[str] = set()
        self._notified: dict[str, str | None] = {}  # path -> its absolute path if watched
        self.file_changes = 0  # files opened, rotated, truncated or let go: the status says so at once
        # What position_changes() last handed out: at first, the keys of the positions given
        # (a journal holds them), so those no longer wanted are handed out as gone.
        self._journalled: dict[str, tuple] = dict.fromkeys(positions or {}, ())
        for pos in (positions or {}).values():
            try:
                self._saved.append(Identity.from_position(pos))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring an unreadable saved position %.200r: %s", pos, exc)
        self._saved_at = saved_at  # when the directories were last listed before those positions
        self.listed_at = saved_at or self.clock.time()  # the start of the last look at the directories
        self._start_at_end = start_at_end
        self._changed: set[str] = set()  # truncated since the last scan (found while reading)
        # Paths gone at a look (logrotate renamed them and had not created the new file yet),
        # with when they went: a generation created and rotated away before the next look is
        # only found among the siblings.
        self._missing: dict[str, float] = {}
        if watch in ("auto", "inotify"):
            self._start_watching(required=watch == "inotify")

    # --- notification -------------------------------------------------------
    def _start_watching(self, required: bool) -> None:
        try:
            inotify = InotifyReader()
        except (ImportError, OSError, AttributeError) as exc:  # not Linux, no inotify, no libc
            if required:
                raise
            log.warning("inotify unavailable (%s); polling files", exc)
            return
        dirs = {os.path.dirname(os.path.abspath(p)) or "." for p in self.patterns}
        for d in sorted(dirs):
            if glob.has_magic(d) or not os.path.isdir(d):
                continue  # the rescan finds files there
            try:
                inotify.watch(d)
                self._watched_dirs.add(d)
            except OSError as exc:
                if required:
                    inotify.close()
                    raise
                log.warning("cannot watch %s (%s); polling it", d, exc)
        if not self._watched_dirs:
            inotify.close()
            return
        self._inotify = inotify
        self.watch_mode = "inotify"

    def wait(self, timeout: float) -> None:
        """Sleep until a watched directory changes, ``wake`` is set, or ``timeout`` passes.

        The inotify descriptor is read here, in the worker's own loop: no observer threads,
        no queues between them. A write names its file in ``dirty`` (see due()); a file
        created, moved or deleted (or events lost to a full queue) asks for a rescan.
        """
        if self._inotify is None:
            self.wake.wait(timeout)
            self.wake.clear()
            return
        if not self.wake.is_set():
            self._inotify.wait(timeout, self.wake)
        self.wake.clear()
        rescan, written = self._inotify.read()
        self.rescan = self.rescan or rescan
        self.dirty.update(written)

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for tf in list(self.files.values()) + self.retired:
            tf.close()
        self.files.clear()
        self.retired.clear()

    # --- discovery and rotation ---------------------------------------------------
    def matched_paths(self) -> list[str]:
        paths: set[str] = set()
        known = self.files.keys() | {p.ident.path for p in self.parked.values()}
        for pattern in self.patterns:
            if glob.has_magic(pattern):
                # A wildcard in the file name alone picks no directory: nothing to check there.
                dirs = glob.has_magic(os.path.dirname(pattern))
                paths.update(p for p in self.fs.glob(pattern)  # known ones are checked by scan()
                             if (p in known or self.fs.isfile(p))
                             and not (dirs and self._through_symlinked_dir(pattern, p)))
            elif self.fs.isfile(pattern):
                paths.add(pattern)
        return sorted(paths)

    def _through_symlinked_dir(self, pattern: str, path: str) -> bool:
        """Whether ``path`` was reached through a symlinked directory that a wildcard matched.

        The part of the pattern before its first wildcard is the user's own choice and may be a
        link; a directory the wildcard picked may not, unless sources.follow_symlinked_dirs.
        """
        if self.follow_symlinked_dirs:
            return False
        parts, got = pattern.split(os.sep), path.split(os.sep)
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        for i in range(first, len(got) - 1):
            d = os.sep.join(got[: i + 1])
            if self.fs.islink(d):
                self._warn_once(path, "symlinked_dir", "%s is reached through the symlinked directory "
                                "%s: skipped (set sources.follow_symlinked_dirs to follow it)", path, d)
                return True
        return False

    def _warn_once(self, path: str, what: str, msg: str, *args: object) -> None:
        if (path, what) not in self._warned:
            self._warned.add((path, what))
            log.warning(msg, *args)

    def scan(self) -> None:
        """Open new files, notice rotations, truncations and deletions."""
        self.rescan = False
        started = self.clock.time()
        since = self.listed_at
        if self._sought:
            self._look_for_copies_again()
        if self._unseen_again:
            again, self._unseen_again = self._unseen_again, {}
            for path, (at, looks) in sorted(again.items()):
                self._read_unseen([path], at, looks=looks + 1)
        unseen = self._resume_saved() if self._saved else None
        matched = set(self.matched_paths())
        changed = sorted(self._changed)
        self._changed.clear()
        for path, tf in list(self.files.items()):
            try:
                st = self.fs.stat(path)
            except FileNotFoundError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != (tf.dev, tf.ino):
                # Renamed away or deleted: finish what was written to it, then let go.
                del self.files[path]
                self._retire(tf, path)
                changed.append(path)
                if st is None:
                    self._missing[path] = started
                log.info("%s rotated; reading the rest of the old file", path)
                continue
            if not tf.unchanged():
                self._truncated(tf)
                changed.append(path)
            tf.size = st.st_size
        parked_rotated, parked_idents = self._look_at_parked()
        changed += parked_rotated
        parked_paths = {p.ident.path for p in self.parked.values()}
        for path, gone_at in list(self._missing.items()):
            if path in self.files or path in parked_paths or started - gone_at > MISSING_LOOK:
                del self._missing[path]
            else:
                changed.append(path)
        self._park_idle()
        at_end, self._start_at_end = self._start_at_end, False
        for path in sorted(matched - set(self.files) - parked_paths):
            if not self._room():
                self.rescan = True  # opened at the next look, once idle files are closed
                break
            opened = self._open(path)
            if opened is not None and at_end:
                self._skip_to_end(opened)
            if opened is not None:
                self._missing.pop(path, None)
        # Generations rotated away unseen (while we were down, or twice since the last look) are
        # looked for once the paths are open again: one that logrotate rotated away between this
        # look and the open would otherwise be passed over, the path then holding the next file.
        if unseen is not None:
            self._read_unseen(*unseen)
        if changed:
            self._read_unseen(sorted(set(changed)), since, parked_idents)
        self.listed_at = started

    def _skip_to_end(self, tf: TailedFile) -> None:
        """Start after the last complete line (the positions of the last run are lost)."""
        size = self.fs.fstat(tf.fd).st_size
        start = max(0, size - READ_BYTES)
        nl = self.fs.pread(tf.fd, size - start, start).rfind(b"\n")
        end = start + nl + 1 if nl >= 0 else size
        if end:
            tf.offset = tf.read_to = end
            tf.skipping = nl < 0  # inside a line longer than we looked back: skip to its end
            tf.load_identity()
            log.warning("%s: positions of the last run are lost; starting after its last line "
                        "(%d bytes not counted again)", tf.path, end)
            self.on_gap(tf.path, GAP_POSITIONS)

    def _truncated(self, tf: TailedFile) -> None:
        """The bytes we read are gone from the file: finish from a copy, then read from 0."""
        log.info("%s truncated or rewritten; reading it from the start", tf.path)
        self._finish_from_copy(tf.identity(), tf.path)
        tf.offset = tf.read_to = 0
        tf.partial = b""
        tf.skipping = False
        tf.head = tf.tail = b""
        tf.size = self.fs.fstat(tf.fd).st_size
        self._changed.add(tf.path)
        self.rescan = True
        self.file_changes += 1

    def _open(self, path: str, offset: int = 0, name: str = "") -> TailedFile | None:
        try:
            fd = open_regular(name or path, self.fs)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._fd_refused(name or path, exc)
                return None
            # Said once per path and reason (a refused symlink stays refused at every scan).
            self._warn_once(name or path, f"open:{exc.errno}", "cannot open %s: %s", name or path, exc)
            return None
        self._warned = {w for w in self._warned if w[0] != (name or path)}  # may say it again later
        tf = TailedFile(path, fd, self.fs.fstat(fd), offset, name, fs=self.fs, clock=self.clock)
        self.files[path] = tf
        self.file_changes += 1
        return tf

    def _resume_saved(self) -> tuple[list[str], float, list[Identity]]:
        """Pick up the positions of the last run, including files rotated or copied meanwhile;
        the paths rotated meanwhile, since when and the positions, for _read_unseen."""
        saved, self._saved = self._saved, []
        rotated: set[str] = set()
        for ident in saved:
            if not ident.draining and not self._room():
                # More files than may be open: looked at (opened, verified, read) by the next
                # looks, a batch at a time, as idle ones are closed.
                self.parked[(ident.dev, ident.ino)] = Parked(ident, 0, (-1, 0))
                self.rescan = True
                continue
            self._resume(ident, rotated)
        now = self.clock.time()
        self._missing.update((p, now) for p in rotated if not self.fs.lexists(p))
        # Generations created and rotated away while we were down were never seen.
        return sorted(rotated), self._saved_at, saved

    def _resume(self, ident: Identity, rotated: set[str]) -> None:
        """Go on from a position not open now (of the last run, or of a file closed while idle):
        in place, or in the file it was rotated to, or in a copy; ``rotated`` gets its path
        if it is not at its path any more."""
        path = ident.path
        log.debug("%s: resuming inode %d at byte %d (draining %s)", path, ident.ino, ident.offset, ident.draining)
        found = self._resume_in_place(ident)
        if found == "resumed":
            return
        rotated.add(path)
        if found == "changed" or not ident.offset:
            # Nothing was read from it: nothing to verify it by, nothing to finish. If it
            # was written and rotated away meanwhile, it is an unseen generation (below).
            return
        tf = None
        for _attempt in range(4):  # logrotate may rename it between the look and the open
            old = self._find_inode(os.path.dirname(path) or ".", ident.dev, ident.ino)
            if old is None:
                break
            tf = self._open_verified(ident, old)
            if tf is not None or not self._moved(old, ident):
                break  # found; or there and changed (truncated, rewritten): finished from a copy
        if tf is not None:
            self._retire(tf, path)
            log.info("%s was rotated to %s while stopped or closed; finishing it", path, old)
            return
        self._finish_from_copy(ident, path, while_down=True)

    def _moved(self, name: str, ident: Identity) -> bool:
        """Does ``name`` no longer hold the file of ``ident`` (gone, or another file shifted in)?"""
        try:
            st = self.fs.stat(name)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != (ident.dev, ident.ino)

    # --- a bounded set of open files ---------------------------------------------
    def open_count(self) -> int:
        return len(self.files) + len(self.retired)

    def _room(self) -> bool:
        """May one more file be opened? Closes an idle one to make room if need be."""
        if self.open_count() < self.max_open:
            return True
        self._park_idle(need=1)
        return self.open_count() < self.max_open

    def _park_idle(self, need: int = 0) -> int:
        """Close the files idle longest (read to their end) while more than max_open are open."""
        excess = self.open_count() + need - self.max_open
        if excess <= 0:
            return 0
        idle = [tf for tf in self.files.values() if not tf.more and tf.read_to >= tf.size]
        idle.sort(key=lambda tf: tf.last_data)
        for tf in idle[:excess]:
            self.park(tf)
        if self.parked and not self._said_limit:
            self._said_limit = True
            log.warning("more tailed files than may be open at once (%d: sources.max_open_files, at "
                        "most half the soft RLIMIT_NOFILE): files are closed while idle and reopened "
                        "at their position when written", self.max_open)
        return min(excess, len(idle))

    def shed(self, n: int) -> int:
        """Close up to ``n`` idle files now (a descriptor is needed elsewhere)."""
        idle = sorted((tf for tf in self.files.values() if not tf.more and tf.read_to >= tf.size),
                      key=lambda tf: tf.last_data)[:n]
        for tf in idle:
            self.park(tf)
        return len(idle)

    def park(self, tf: TailedFile) -> None:
        """Close an idle file, keeping what identifies it and its position; reopened by
        _look_at_parked when its size or mtime changes, checked to be the same file."""
        st = self.fs.fstat(tf.fd)
        tf.read_to = tf.offset  # a partial line is read again when reopened
        tf.partial = b""
        # Written since it was last read (between the look that found it idle and now): looked
        # at again at once, not taken as unchanged from this size on (that line was never read).
        checked = (st.st_size, st.st_mtime_ns) if st.st_size <= tf.offset else (-1, 0)
        self.parked[(tf.dev, tf.ino)] = Parked(tf.identity(), tf.lines, checked)
        del self.files[tf.path]
        tf.close()
        self.parked_total += 1
        self.file_changes += 1

    def _look_at_parked(self) -> tuple[list[str], list[Identity]]:
        """Reopen the closed files that were written (or moved, or replaced) since they were
        closed, as many as there is room for; the paths of those rotated away (their unseen
        generations are looked for by scan(), after the paths are open again) and the positions
        reopened."""
        wanted = []
        for key, p in self.parked.items():
            try:
                st = self.fs.stat(p.ident.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == key and (st.st_size, st.st_mtime_ns) == p.checked:
                continue
            wanted.append((key, p))
        rotated: set[str] = set()
        idents = []
        for key, p in wanted:
            if not self._room():
                self.rescan = True  # the others at the next look
                break
            del self.parked[key]
            idents.append(p.ident)
            self._resume(p.ident, rotated)
            tf = self.files.get(p.ident.path)
            if tf is not None and (tf.dev, tf.ino) == key:
                tf.lines = p.lines
        if rotated:
            now = self.clock.time()
            self._missing.update((p, now) for p in rotated if not self.fs.lexists(p))
        return sorted(rotated), idents

    def _fd_refused(self, name: str, exc: OSError) -> None:
        self.fd_refused += 1
        self.shed(16)
        self.rescan = True
        self._limit_log.warning("emfile", "cannot open %s: %s (the descriptor limit, RLIMIT_NOFILE); "
                                "closing idle files and trying again (lower sources.max_open_files)",
                                name, exc.strerror or exc)

    def _resume_in_place(self, ident: Identity) -> str | None:
        """The saved file is still at its path: go on from the position ("resumed"), or, when
        its content changed (truncated, rewritten, a new file on the same inode), finish it from
        a copy and let the scan read the path from its start ("changed"). None: not there."""
        try:
            st = self.fs.stat(ident.path)
        except FileNotFoundError:
            return None
        if (st.st_dev, st.st_ino) != (ident.dev, ident.ino):
            return None
        tf = self._open_verified(ident, ident.path)
        if tf is not None:
            self.files[ident.path] = tf
            return "resumed"
        if self._moved(ident.path, ident):
            return None  # renamed away between the look and the open: looked for by its inode
        log.info("%s changed while stopped (truncated or replaced); reading it from the start",
                 ident.path)
        self._finish_from_copy(ident, ident.path, while_down=True)
        return "changed"

    def _open_verified(self, ident: Identity, name: str) -> TailedFile | None:
        """Open ``name`` at the saved position if it holds what was read; else None.
        A compressed ``name`` (a generation read from its .gz before the stop) is read
        decompressed, as before."""
        compressed = name.endswith(COMPRESSED)
        try:
            physical = self.fs.stat(name)
            fd = self._open_sibling(name, physical) if compressed else open_regular(name, self.fs)
        except (OSError, SiblingMoved):  # a .gz renamed over since the stat: not the one read
            return None
        if fd is None:
            return None
        try:
            ok = ident.same_file(fd, self.fs)
        except OSError:
            ok = False
        if not ok:
            self.fs.close(fd)
            return None
        tf = TailedFile(ident.path, fd, self.fs.fstat(fd), ident.offset, name, fs=self.fs, clock=self.clock)
        tf.skipping = ident.skipping
        if compressed:
            tf.decompressed = True
            tf.dev, tf.ino = ident.dev, ident.ino
            tf.physical = (physical.st_dev, physical.st_ino)
            tf.mtime = physical.st_mtime
        return tf

    def _finish_from_copy(self, ident: Identity, path: str, while_down: bool = False,
                          since: float | None = None) -> bool:
        """Find a copy of a file we read up to ``ident.offset`` (logrotate's copytruncate copy,
        or a compressed generation) and read the rest from it. Count what is known lost, and,
        ``while_down``, a file that was being written and is gone without a copy.

        A copy that could not be looked at because its siblings were being renamed is looked
        for again at the next scans (``since``: when the looking began), for COPY_LOOK seconds.
        """
        if not ident.offset:
            return False
        for _attempt in range(4):  # look again if a sibling was renamed while we looked
            found = self._find_copy(ident, path)
            if found:
                return True
            if found is False:
                break
        else:
            now = self.clock.monotonic()
            began = now if since is None else since
            if now - began < COPY_LOOK:
                log.debug("%s: siblings renamed while looking for the copy of inode %d: looked for again",
                          path, ident.ino)
                self._sought.append((ident, began, while_down))
                return False
        return self._no_copy(ident, path, while_down)

    def _look_for_copies_again(self) -> None:
        sought, self._sought = self._sought, []
        for ident, began, while_down in sought:
            if self._finish_from_copy(ident, ident.path, while_down, since=began):
                log.info("%s: found the copy of the file read up to byte %d after logrotate's renames",
                         ident.path, ident.offset)

    def _find_copy(self, ident: Identity, path: str) -> bool | None:
        """True: a copy was found and is being read; None: a sibling vanished, look again."""
        open_inodes = {tf.physical for tf in self.readable()}
        compressed_tries = 0
        vanished = False
        # Oldest first from the file's last change: its copy was made after that (plain copies) or
        # keeps that mtime (compressed ones); newer generations come after it. Those a little
        # older than that change (within COPY_SLACK: coarse clocks) come last, so that a pile of
        # them cannot use up the MAX_COMPRESSED_TRIES before the one just compressed is tried.
        candidates = [(st, p) for st, p in self._siblings(path)
                      if st.st_mtime >= ident.mtime - COPY_SLACK]
        for st, sibling in sorted(candidates, key=lambda x: (x[0].st_mtime < ident.mtime - MTIME_SLACK,
                                                             x[0].st_mtime)):
            key = (st.st_dev, st.st_ino)
            if key == (ident.dev, ident.ino) and key not in open_inodes:
                # The file itself, under a name it was renamed to after it was looked up by its
                # inode (logrotate shifting names): went on in from the position, not a copy.
                tf = self._open_verified(ident, sibling)
                if tf is not None:
                    self._retire(tf, path)
                    log.info("%s was rotated to %s while stopped or closed; finishing it", path, sibling)
                    return True
                continue
            if key == (ident.dev, ident.ino) or key in open_inodes or st.st_size == 0:
                log.debug("%s: %s skipped looking for inode %d (open %s, size %d)", path, sibling, ident.ino,
                          key in open_inodes, st.st_size)
                continue
            if sibling.endswith(COMPRESSED):
                compressed_tries += 1
                if compressed_tries > MAX_COMPRESSED_TRIES:
                    log.debug("%s: %s not tried for inode %d (too many)", path, sibling, ident.ino)
                    continue
            try:
                fd = self._open_sibling(sibling, st)
            except SiblingMoved:
                vanished = True
                continue
            if fd is None:
                vanished = vanished or not self.fs.lexists(sibling)
                continue
            try:
                kind = ident.copy_kind(fd, self.fs)
            except OSError:
                kind = None
            if kind is None:
                log.debug("%s: %s is not a copy of inode %d", path, sibling, ident.ino)
                self.fs.close(fd)
                continue
            size = self.fs.fstat(fd).st_size
            compressed = sibling.endswith(COMPRESSED)
            stat_for = os.stat_result((0, ident.ino, ident.dev, 0, 0, 0, size, 0, 0, 0)) \
                if compressed else self.fs.fstat(fd)
            tf = TailedFile(path, fd, stat_for, min(ident.offset, size), sibling, fs=self.fs, clock=self.clock)
            tf.decompressed = compressed
            tf.physical = key
            tf.mtime = st.st_mtime
            self._retire(tf, path)
            lost = ident.size - max(size, ident.offset)
            if lost > 0:
                log.warning("%s: %d bytes seen in the file are not in its copy %s: lost", path, lost,
                            sibling)
                self.on_gap(path, GAP_COMPRESSED_SHORT if compressed else GAP_COPYTRUNCATE)
            if kind == "behind":
                log.info("%s: reading the rest from logrotate's copy %s", path, sibling)
            return True
        return None if vanished else False

    def _no_copy(self, ident: Identity, path: str, while_down: bool) -> bool:
        """No copy of a file we read up to ``ident.offset``: count what may be lost."""
        log.debug("%s: no copy of inode %d (read to byte %d of %d, draining %s)", path, ident.ino,
                  ident.offset, ident.size, ident.draining)
        if ident.size > ident.offset:
            log.warning("%s: truncated or removed before %d bytes were read, and no copy was found: "
                        "lost", path, ident.size - ident.offset)
            self.on_gap(path, GAP_TRUNCATED)
        elif any(s.endswith(COMPRESSED[3:]) for _, s in self._siblings(path)):
            log.warning("%s: the file read up to byte %d is gone; only copies in a compressed format "
                        "not read here are left: what followed is lost", path, ident.offset)
            self.on_gap(path, GAP_COMPRESSED)
        elif while_down and not ident.draining:
            log.warning("%s: the file read up to byte %d (inode %d) was removed or replaced while "
                        "stopped and no copy of it was found: what was written to it after that is "
                        "lost", path, ident.offset, ident.ino)
            self.on_gap(path, GAP_DELETED)
        return False

    def _open_sibling(self, name: str, listed: os.stat_result | None = None) -> int | None:
        """A descriptor on ``name``; for a compressed file, on a private decompressed copy.

        ``listed``: the file the name had when the directory was listed. logrotate shifts
        ``.N.gz`` to ``.N+1.gz`` while we look; a name that holds another file by the open, or
        none, raises SiblingMoved (the caller lists again), so a copy is never judged by, nor
        recorded as, the file that had its name a moment ago, nor passed over as gone.
        """
        opener = next((o for ext, o in DECOMPRESS.items() if name.endswith(ext)), None)
        try:
            if opener is None and name.endswith(COMPRESSED):
                return None
            raw = open_regular(name, self.fs)
            if listed is not None:
                now = self.fs.fstat(raw)
                if (now.st_dev, now.st_ino) != (listed.st_dev, listed.st_ino):
                    self.fs.close(raw)
                    raise SiblingMoved(name)
            if opener is None:
                return raw
            out = tempfile.TemporaryFile(prefix="mlsidecar-decompressed-")
            with os.fdopen(raw, "rb") as fh, opener(fh, "rb") as src:
                shutil.copyfileobj(src, out, READ_BYTES)
            fd = os.dup(out.fileno())
            out.close()
            return fd
        except FileNotFoundError:
            if listed is not None:
                # Listed a moment ago, gone now: renamed (its name may already hold the next
                # file shifted up), so the caller lists again rather than taking it as absent.
                raise SiblingMoved(name) from None
            return None
        except (OSError, EOFError, lzma.LZMAError) as exc:
            log.warning("cannot read %s: %s", name, exc)
            return None

    def _read_unseen(self, paths: list[str], since: float, saved: Sequence[Identity] = (),
                     looks: int = 0) -> None:
        """Read whole, oldest first, the rotated siblings of ``paths`` written after ``since``
        that are neither open nor a compressed copy of a file we know (open, or ``saved``).

        logrotate may rename siblings while we look: a sibling that vanished between the
        listing and the open sends us round again (a few times), and then to the next scans
        (up to MAX_UNSEEN_LOOKS), so none is passed over.
        """
        for _attempt in range(4):
            vanished = False
            known = {tf.physical for tf in self.readable()}
            idents = [*saved, *(ident for ident, _, _ in self._sought)]
            for path in paths:
                try:
                    st = self.fs.stat(path)
                    known.add((st.st_dev, st.st_ino))
                except FileNotFoundError:
                    pass
                for gen in self._unseen_generations(path, known, since, idents):
                    sibling, fd, orig, start = gen.name, gen.fd, gen.listed, gen.start
                    if fd is None:
                        vanished = True
                        continue
                    st = self.fs.fstat(fd)
                    tf = TailedFile(path, fd, st, start, sibling, fs=self.fs, clock=self.clock)
                    if sibling.endswith(COMPRESSED):
                        tf.decompressed = True  # orig: the .gz as listed, checked at the open
                        tf.dev, tf.ino = orig.st_dev, orig.st_ino
                        tf.physical = (orig.st_dev, orig.st_ino)
                        tf.mtime = orig.st_mtime
                    known.add(tf.physical)
                    self._retire(tf, path)
                    log.info("%s: reading %s, a generation rotated away unseen", path, sibling)
            if not vanished:
                return
        if looks < MAX_UNSEEN_LOOKS:
            log.debug("%s: siblings kept moving while looked at: looked at again at the next scan", paths)
            for path in paths:
                at, n = self._unseen_again.get(path, (since, looks))
                self._unseen_again[path] = (min(at, since), max(n, looks))
        else:
            log.warning("%s: rotated siblings kept moving for %d looks; generations among them may "
                        "be passed over", ", ".join(paths), looks)

    def _unseen_generations(self, path: str, known: set, since: float,
                            idents: list[Identity]) -> list[Unseen]:
        """Rotated siblings written after ``since`` that we never had open, oldest first, each
        with a descriptor on it (None: it vanished or changed name meanwhile; look again).

        A compressed sibling that holds the bytes of a file we know is that file's compressed
        copy (``compress``, or ``delaycompress`` after two rotations), not a new generation.
        logrotate's plain copies (``copytruncate``) are found by _finish_from_copy when the
        truncate is seen, and are open by then. A plain sibling that is the very file a saved
        position read (its inode, and its bytes at that position) is read on from there
        (``Unseen.start``).
        """
        found: list[Unseen] = []
        for st, p in self._siblings(path):
            if (st.st_dev, st.st_ino) in known or st.st_mtime <= since - MTIME_SLACK:
                continue
            try:
                fd = self._open_sibling(p, st)
            except SiblingMoved:
                found.append(Unseen(st.st_mtime, p, None, st))
                continue
            if fd is None:
                if not self.fs.lexists(p):
                    found.append(Unseen(st.st_mtime, p, None, st))
                continue
            start = 0
            if not p.endswith(COMPRESSED):
                now = self.fs.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):  # renamed over meanwhile
                    self.fs.close(fd)
                    found.append(Unseen(st.st_mtime, p, None, st))
                    continue
                # A file a saved position read, missed by the lookups (a directory listing can
                # miss a name renamed while it is read): read on from that position.
                try:
                    start = next((i.offset for i in idents if (i.dev, i.ino) == (st.st_dev, st.st_ino)
                                  and i.offset and i.same_file(fd, self.fs)), 0)
                except OSError:
                    start = 0
            else:
                try:
                    copy = any(tf.holds_start_of(fd) for tf in self.readable()) \
                        or any(i.copy_kind(fd, self.fs) for i in idents)
                except OSError:
                    copy = True
                if copy:
                    self.fs.close(fd)
                    continue
            found.append(Unseen(st.st_mtime, p, fd, st, start))
        # logrotate compressing ``.1`` into ``.1.gz`` has both for a moment: the plain one is
        # the generation (the compressed one may be half written), read once.
        plain = [g.fd for g in found if g.fd is not None and not g.name.endswith(COMPRESSED)]
        for g in list(found):
            gz = g.fd
            if gz is None or not g.name.endswith(COMPRESSED):
                continue
            try:
                copy = any(same_start(self.fs, gz, fd) for fd in plain)
            except OSError:
                copy = False
            if copy:
                self.fs.close(gz)
                found.remove(g)
        found.sort(key=lambda g: g.mtime)
        return found

    def _retire(self, tf: TailedFile, path: str) -> None:
        self.file_changes += 1
        if self.files.get(path) is tf:
            del self.files[path]
        tf.path = path
        tf.draining = True
        self.retired.append(tf)

    def _siblings(self, path: str) -> list[tuple[os.stat_result, str]]:
        """Rotated siblings of a file (``app.jsonl.1``, ``app.jsonl.2.gz``, ``app.jsonl-20261126``)."""
        directory, base = os.path.split(path)

        def sibling(name: str) -> bool:
            return (name.startswith(base + ".") or name.startswith(base + "-")) \
                and not name.endswith(NOT_GENERATIONS)

        try:
            return self._listing(directory or ".", sibling)
        except OSError:
            return []

    def _find_inode(self, directory: str, dev: int, ino: int) -> str | None:
        try:
            found = self._listing(directory)
        except OSError:
            return None
        return next((name for st, name in found if (st.st_dev, st.st_ino) == (dev, ino)), None)

    def _listing(self, directory: str, keep: Callable[[str], bool] = lambda name: True
                 ) -> list[tuple[os.stat_result, str]]:
        """The regular files of ``directory`` whose names ``keep``, each with its stat, from a
        listing (and stats) that nothing changed during.

        A listing made while logrotate shifts ``.N.gz`` to ``.N+1.gz`` can miss a name (renamed
        from a place the listing had not reached to one it had passed), and a name listed can be
        gone by its stat; a generation missed so is never looked for again. Any rename, create
        or unlink sets the directory's mtime, so the listing is taken when the mtime is the same
        before and after it and older than the clock's tick, and no name went missing; else it
        is made again a tick later, LISTING_TRIES times at most.
        """
        found: list[tuple[os.stat_result, str]] = []
        last = None  # the mtime after the previous listing
        for _try in range(LISTING_TRIES):
            started = self.clock.time()
            try:
                before = self.fs.stat(directory).st_mtime_ns
            except OSError:
                before = None
            with self.fs.scandir(directory) as it:
                entries = [entry for entry in it if keep(entry.name)]
            found, moved = [], False
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        found.append((entry.stat(follow_symlinks=False), entry.path))
                except FileNotFoundError:
                    moved = True  # renamed since the listing read it
                except OSError:
                    continue
            try:
                after = self.fs.stat(directory).st_mtime_ns if before is not None else None
            except OSError:
                after = None
            # Unchanged, and set before the tick the listing began in (or unchanged for a whole
            # tick: an mtime ahead of our clock, a server's clock on a network filesystem); with
            # no mtime to tell by, as listed.
            settled = before is None or after is None or (
                before == after and (started * 1e9 - before > DIR_TICK * 1e9 or before == last))
            if settled and not moved:
                return found
            last = after
            self.clock.sleep(DIR_TICK)
        log.debug("%s kept changing while listed (%d listings): going on with the last", directory,
                  LISTING_TRIES)
        return found

    # --- reading -----------------------------------------------------------------
    def read(self, tf: TailedFile, limit: int = READ_BYTES) -> list[bytes]:
        """The complete lines that arrived since the last read (at most ``limit`` bytes)."""
        data = tf.fs.pread(tf.fd, limit, tf.read_to)
        tf.more = len(data) == limit  # more to read: due() keeps it without a word from inotify
        if not data:
            return []
        if tf.offset and not tf.unchanged():
            # Truncated (copytruncate) or rewritten since the last read: these bytes are not
            # the continuation of what was read. The next scan reads the file from its start.
            self._truncated(tf)
            return []
        if tf.read_to == 0 and data.startswith(BOM):
            data = data[3:]
            tf.offset = tf.read_to = 3
        if len(tf.head) < HEAD_BYTES:
            tf.head = tf.fs.pread(tf.fd, HEAD_BYTES, 0)[:tf.read_to + len(data)]
        tf.read_to += len(data)
        tf.last_data = self.clock.monotonic()
        if tf.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                tf.offset = tf.read_to
                tf.tail = (tf.tail + data)[-TAIL_BYTES:]
                return []
            tf.skipping = False
            tf.tail = (tf.tail + data[:nl + 1])[-TAIL_BYTES:]
            data = data[nl + 1:]
            tf.offset = tf.read_to - len(data)
        buf = tf.partial + data if tf.partial else data
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self.max_line_bytes:
                self._oversized(tf)
                tf.partial = b""
                tf.skipping = True
                tf.offset = tf.read_to
                tf.tail = (tf.tail + buf)[-TAIL_BYTES:]
            else:
                tf.partial = buf
            return []
        tf.tail = (tf.tail + buf[max(0, end + 1 - TAIL_BYTES):end + 1])[-TAIL_BYTES:]
        tail = buf[end + 1:]
        if len(tail) > self.max_line_bytes:
            self._oversized(tf)
            tf.tail = (tf.tail + tail)[-TAIL_BYTES:]
            tail = b""
            tf.skipping = True
        tf.partial = tail
        tf.offset = tf.read_to - len(tail) if not tf.skipping else tf.read_to
        return buf[:end].split(b"\n")

    def _oversized(self, tf: TailedFile) -> None:
        tf.rejected += 1
        self.on_oversized(tf.path)

    def readable(self) -> list[TailedFile]:
        """Open files, drained rotated ones first so order is kept across a rotation."""
        return self.retired + list(self.files.values())

    def due(self, everything: bool) -> list[TailedFile]:
        """The files to read now. ``everything`` (after a look at the directories), or when
        polling: all. With inotify: the rotated ones, those inotify named since the last call,
        those not read to their end yet, and those in directories not watched; with thousands
        of idle files, a wake-up then reads what was written instead of every file."""
        dirty, self.dirty = self.dirty, set()
        if everything or self.watch_mode != "inotify":
            return self.readable()
        out = list(self.retired)
        notified = self._notified
        for path, tf in self.files.items():
            key = notified.get(path, "")
            if key == "":
                full = os.path.abspath(path)
                key = notified[path] = full if os.path.dirname(full) in self._watched_dirs else None
                if len(notified) > 4 * len(self.files) + 64:  # paths long gone
                    self._notified = notified = {p: notified[p] for p in self.files if p in notified}
            if key is None or key in dirty or tf.more or tf.read_to < tf.size:
                out.append(tf)
        return out

    def retire_quiet(self, now: float, quiet: float) -> None:
        """Let go of rotated files that have had nothing new for ``quiet`` seconds.

        A writer that has not reopened its log yet still appends to the renamed
        file, so a rotated file is kept until it goes quiet, not just to EOF.
        """
        wall = self.clock.time()
        for tf in list(self.retired):
            st = self.fs.fstat(tf.fd)  # of a decompressed copy: the private copy
            if tf.read_to < st.st_size:
                continue  # not read to its end yet
            # Quiet since we opened it, or (after a restart, which opened it again) not written
            # for that long by its own mtime: a generation read whole and gone quiet is let go,
            # and its position with it, so frequent restarts do not pile them up.
            mtime = tf.mtime if tf.decompressed else st.st_mtime
            if tf.last_data < now - quiet or mtime < wall - quiet:
                self.retired.remove(tf)
                tf.close()
                self.file_changes += 1

    def positions(self) -> dict:
        """Every position, keyed by what is read (a decompressed copy may carry the number of
        a reused inode); saved positions not resumed yet stay until they are."""
        out = {key: tf.position() for key, tf in self._readable_by_key().items()}
        for key, ident in self._parked_by_key().items():
            out.setdefault(key, _saved_position(ident))
        for key, ident in self._unresumed():  # inode numbers may repeat among them: not a key
            out.setdefault(key, _saved_position(ident))
        return out

    def _unresumed(self) -> list[tuple[str, Identity]]:
        """Positions not open: saved ones not resumed yet, and those whose copy is sought."""
        return [*((f"saved-{i}", ident) for i, ident in enumerate(self._saved)),
                *((f"sought-{i}", ident) for i, (ident, _, _) in enumerate(self._sought))]

    def _readable_by_key(self) -> dict[str, TailedFile]:
        return {f"{tf.physical[0]}:{tf.physical[1]}": tf for tf in self.readable()}

    def _parked_by_key(self) -> dict[str, Identity]:
        return {f"{dev}:{ino}": p.ident for (dev, ino), p in self.parked.items()}

    def position_changes(self) -> dict[str, dict | None]:
        """The positions that changed since the last call (None: gone), for a journal that
        keeps them all: with thousands of files, a flush writes what was read, not every one."""
        now: dict[str, tuple] = {}
        out: dict[str, dict | None] = {}
        last = self._journalled
        for key, tf in self._readable_by_key().items():
            sig = (tf.path, tf.dev, tf.ino, tf.offset, max(tf.size, tf.read_to), tf.skipping,
                   tf.draining, tf.mtime, tf.head, tf.tail)
            now[key] = sig
            if last.get(key) != sig:
                out[key] = tf.position()
        for key, ident in [*self._parked_by_key().items(), *self._unresumed()]:
            if key not in now:
                sig = (ident.path, ident.dev, ident.ino, ident.offset, ident.size, ident.skipping,
                       ident.draining, ident.mtime, ident.head, ident.tail)
                now[key] = sig
                if last.get(key) != sig:
                    out[key] = _saved_position(ident)
        for key in last.keys() - now.keys():
            out[key] = None
        self._journalled = now
        return out

    def behind(self, tf: TailedFile) -> int:
        return max(0, tf.size - tf.offset)
