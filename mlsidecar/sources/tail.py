"""Follow JSON-lines files: globs, rotation, truncation, and resumable positions.

What it guarantees (docs/operations.md has the long form):

* rename + create (logrotate's default): the renamed file is read to its end
  before it is let go, then the new file is read from its start;
* delete + recreate and truncation in place (``copytruncate``): noticed by
  the inode, the size falling below the read position, or the first bytes
  changing; the file is then read from its start. With ``copytruncate``, lines
  written between logrotate's copy and its truncate exist only in the copy,
  which is not read: they can be lost, never counted twice;
* a line is handed on only once its newline has arrived; a line longer than
  ``max_line_bytes`` is skipped to its newline without being held in memory;
* positions identify a file by device + inode + its first bytes, so a new file
  that reuses an inode is not mistaken for the old one, and a file renamed
  while the sidecar was down is found again and finished.

Change notification comes from watchdog (inotify) where it works; a rescan
every ``poll_interval`` keeps all of the above true where it does not.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 64
READ_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


class TailedFile:
    """One open file and how far it has been read."""

    def __init__(self, path: str, fd: int, st: os.stat_result, offset: int = 0, fingerprint: str = ""):
        self.path = path
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.offset = offset  # bytes consumed, up to the end of the last complete line
        self.read_to = offset  # bytes read, including the held partial line
        self.partial = b""
        self.skipping = False  # inside an oversized line: drop bytes until its newline
        self.fingerprint = fingerprint
        self.size = st.st_size
        self.draining = False  # rotated away: read to EOF, then close
        self.tail = b""  # the last bytes consumed, to recognise logrotate's copy of this file
        self.lines = 0
        self.rejected = 0
        self.last_data = time.monotonic()

    def position(self) -> dict:
        return {"path": self.path, "dev": self.dev, "ino": self.ino, "offset": self.offset,
                "fingerprint": self.fingerprint, "skipping": self.skipping, "tail": self.tail.hex()}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def refresh_fingerprint(self) -> None:
        if len(self.fingerprint) < FINGERPRINT_BYTES * 2:
            self.fingerprint = os.pread(self.fd, FINGERPRINT_BYTES, 0).hex()

    def same_start(self) -> bool:
        """Do the file's first bytes still match what was fingerprinted?"""
        if not self.fingerprint:
            return True
        n = len(self.fingerprint) // 2
        return os.pread(self.fd, n, 0).hex() == self.fingerprint


class Tailer:
    """Reads every file matching some glob patterns, line by line, exactly once.

    ``on_oversized(path)`` is called for every line skipped for its length.
    """

    def __init__(self, patterns: list[str], *, max_line_bytes: int = 256 * 1024,
                 positions: dict | None = None, saved_at: float = 0.0, watch: str = "auto",
                 on_oversized=None):
        self.patterns = list(patterns)
        self.max_line_bytes = max_line_bytes
        self.files: dict[str, TailedFile] = {}
        self.retired: list[TailedFile] = []  # rotated away, being drained
        self.on_oversized = on_oversized or (lambda path: None)
        self.wake = threading.Event()
        self.rescan = True
        self.watch_mode = "poll"
        self._observer = None
        self._saved = dict(positions or {})
        self._saved_at = saved_at  # when those positions were written
        self._last_scan = time.time()
        if watch in ("auto", "inotify"):
            self._start_watching(required=watch == "inotify")

    # --- notification -------------------------------------------------------
    def _start_watching(self, required: bool) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers.inotify import InotifyObserver
        except ImportError as exc:  # not Linux, or watchdog without inotify
            if required:
                raise
            log.warning("inotify unavailable (%s); polling files", exc)
            return
        tailer = self

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event):  # noqa: D401 - watchdog callback
                if event.event_type in ("created", "moved", "deleted"):
                    tailer.rescan = True  # a rotation or a new file: look at the names again
                tailer.wake.set()

        observer = InotifyObserver()
        dirs = {os.path.dirname(os.path.abspath(p)) or "." for p in self.patterns}
        watched = 0
        for d in sorted(dirs):
            if glob.has_magic(d) or not os.path.isdir(d):
                continue  # the rescan finds files there
            try:
                observer.schedule(_Wake(), d, recursive=False)
                watched += 1
            except OSError as exc:
                if required:
                    raise
                log.warning("cannot watch %s (%s); polling it", d, exc)
        try:
            observer.start()
        except OSError as exc:
            if required:
                raise
            log.warning("inotify failed to start (%s); polling files", exc)
            return
        self._observer = observer
        self.watch_mode = "inotify" if watched else "poll"

    def wait(self, timeout: float) -> None:
        """Sleep until a watched directory changes, or ``timeout`` passes."""
        self.wake.wait(timeout)
        self.wake.clear()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
        for tf in list(self.files.values()) + self.retired:
            tf.close()
        self.files.clear()
        self.retired.clear()

    # --- discovery and rotation ---------------------------------------------------
    def matched_paths(self) -> list[str]:
        paths: set[str] = set()
        for pattern in self.patterns:
            if glob.has_magic(pattern):
                paths.update(p for p in glob.glob(pattern) if os.path.isfile(p))
            elif os.path.isfile(pattern):
                paths.add(pattern)
        return sorted(paths)

    def scan(self) -> None:
        """Open new files, notice rotations, truncations and deletions."""
        self.rescan = False
        since, self._last_scan = self._last_scan, time.time()
        if self._saved:
            self._resume_saved()
        matched = set(self.matched_paths())
        rotated = []
        for path, tf in list(self.files.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != (tf.dev, tf.ino):
                # Renamed away or deleted: finish what was written to it, then let go.
                del self.files[path]
                tf.draining = True
                self.retired.append(tf)
                rotated.append(path)
                log.info("%s rotated; reading the rest of the old file", path)
                continue
            tf.size = st.st_size
            if st.st_size < tf.read_to or (tf.offset and not tf.same_start()):
                log.info("%s truncated; reading from the start", path)
                self._recover_copy(tf)
                self._restart(tf)
        if rotated:
            # Rotated twice since the last scan: the middle generation was never seen.
            self._read_unseen(rotated, [tf.position() for tf in self.readable()], since)
        for path in sorted(matched - set(self.files)):
            self._open(path)

    def _restart(self, tf: TailedFile) -> None:
        tf.offset = tf.read_to = 0
        tf.partial = b""
        tf.tail = b""
        tf.skipping = False
        tf.fingerprint = ""

    def _open(self, path: str, offset: int = 0, fingerprint: str = "", skipping: bool = False,
              truncated=None, tail: bytes = b""):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot open %s: %s", path, exc)
            return None
        st = os.fstat(fd)
        tf = TailedFile(path, fd, st, offset, fingerprint)
        tf.skipping = skipping
        tf.tail = tail
        if offset and (st.st_size < offset or not tf.same_start()):
            if truncated is not None:
                truncated(tf)
            self._restart(tf)
        self.files[path] = tf
        return tf

    def _resume_saved(self) -> None:
        """Pick up the positions of the last run, including files rotated meanwhile."""
        saved, self._saved = self._saved, {}
        rotated: set[str] = set()
        for pos in saved.values():
            path = pos["path"]
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == (pos["dev"], pos["ino"]):
                tail = bytes.fromhex(pos.get("tail", ""))
                self._open(path, pos["offset"], pos["fingerprint"], pos.get("skipping", False),
                           truncated=lambda tf: self._recover_copy(tf, tail), tail=tail)
                continue
            # Rotated while we were down: look for the old inode beside it and finish it.
            old = self._find_inode(os.path.dirname(path) or ".", pos["dev"], pos["ino"])
            if old is not None:
                tf = self._open(old, pos["offset"], pos["fingerprint"], pos.get("skipping", False))
                if tf is not None:
                    del self.files[old]
                    if tf.offset == 0 and pos["offset"]:
                        tf.close()  # not the same file after all
                    else:
                        self._retire(tf, path)
                        log.info("%s was rotated to %s while stopped; finishing it", path, old)
            rotated.add(path)
        # Generations created and rotated away while we were down were never seen.
        self._read_unseen(sorted(rotated), list(saved.values()), self._saved_at)

    def _read_unseen(self, paths: list[str], positions: list[dict], since: float) -> None:
        """Read whole, oldest first, the rotated siblings of ``paths`` written after ``since``
        that are neither open nor a copy of a file with one of ``positions``."""
        known = {(p["dev"], p["ino"]) for p in positions}
        known.update((tf.dev, tf.ino) for tf in self.readable())
        copies_of = [(p["fingerprint"], p["offset"], bytes.fromhex(p.get("tail", "")))
                     for p in positions if p.get("fingerprint")]
        for path in paths:
            try:
                st = os.stat(path)
                known.add((st.st_dev, st.st_ino))
            except FileNotFoundError:
                pass
            for sibling in self._unseen_generations(path, known, copies_of, since):
                tf = self._open(sibling)
                if tf is not None:
                    del self.files[sibling]
                    known.add((tf.dev, tf.ino))
                    self._retire(tf, path)
                    log.info("%s: reading %s, a generation rotated away unseen", path, sibling)

    def _retire(self, tf: TailedFile, path: str) -> None:
        tf.path = path
        tf.draining = True
        self.retired.append(tf)

    @staticmethod
    def _siblings(path: str) -> list[tuple[os.stat_result, str]]:
        """Uncompressed rotated siblings of a file (``app.jsonl.1``, ``app.jsonl-20261126``)."""
        directory, base = os.path.split(path)
        found = []
        try:
            with os.scandir(directory or ".") as it:
                for entry in it:
                    name = entry.name
                    if (name.startswith(base + ".") or name.startswith(base + "-")) \
                            and not name.endswith(COMPRESSED) and entry.is_file(follow_symlinks=False):
                        found.append((entry.stat(follow_symlinks=False), entry.path))
        except OSError:
            return []
        return found

    def _unseen_generations(self, path: str, skip: set, copies_of: list, since: float) -> list[str]:
        """Rotated siblings written after our last flush that we never had open.

        A sibling that starts like a file we have a position in is a copytruncate copy of
        it, not a new generation: _recover_copy reads its unread part, nothing else does.
        """
        found = []
        for st, p in self._siblings(path):
            if (st.st_dev, st.st_ino) in skip or st.st_mtime <= since:
                continue
            try:
                if any(_is_copy(p, st, *known_file) for known_file in copies_of):
                    continue
            except OSError:
                continue
            found.append((st.st_mtime, p))
        return [p for _, p in sorted(found)]

    def _recover_copy(self, tf: TailedFile, tail: bytes | None = None) -> None:
        """After a copytruncate, finish the unread part of the file from logrotate's copy.

        The newest sibling that starts with the same bytes as the file we were reading is
        the copy; what we had not read yet is in it, from our offset on. Only lines written
        between logrotate's copy and its truncate are then lost.
        """
        if not tf.offset or not tf.fingerprint:
            return
        if tail is not None:
            tf.tail = tail
        for st, sibling in sorted(self._siblings(tf.path), key=lambda x: -x[0].st_mtime):
            if (st.st_dev, st.st_ino) == (tf.dev, tf.ino) or st.st_size < tf.offset:
                continue
            try:
                if not _is_copy(sibling, st, tf.fingerprint, tf.offset, tf.tail):
                    continue
            except OSError:
                continue
            copy = self._open(sibling, tf.offset, tf.fingerprint)
            if copy is not None:
                del self.files[sibling]
                self._retire(copy, tf.path)
                log.info("%s: reading the rest from logrotate's copy %s", tf.path, sibling)
            return

    @staticmethod
    def _find_inode(directory: str, dev: int, ino: int) -> str | None:
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) == (dev, ino) and entry.is_file(follow_symlinks=False):
                        return entry.path
        except OSError:
            pass
        return None

    # --- reading -----------------------------------------------------------------
    def read(self, tf: TailedFile, limit: int = READ_BYTES) -> list[bytes]:
        """The complete lines that arrived since the last read (at most ``limit`` bytes)."""
        data = os.pread(tf.fd, limit, tf.read_to)
        if not data:
            return []
        if tf.read_to == 0:
            if data.startswith(BOM):
                data = data[3:]
                tf.offset = tf.read_to = 3
            tf.refresh_fingerprint()
        elif len(tf.fingerprint) < FINGERPRINT_BYTES * 2:
            tf.refresh_fingerprint()
        tf.read_to += len(data)
        tf.last_data = time.monotonic()
        if tf.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                tf.offset = tf.read_to
                return []
            tf.skipping = False
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
            else:
                tf.partial = buf
            return []
        tf.tail = (tf.tail + buf[max(0, end + 1 - FINGERPRINT_BYTES):end + 1])[-FINGERPRINT_BYTES:]
        tail = buf[end + 1:]
        if len(tail) > self.max_line_bytes:
            self._oversized(tf)
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

    def retire_quiet(self, now: float, quiet: float) -> None:
        """Let go of rotated files that have had nothing new for ``quiet`` seconds.

        A writer that has not reopened its log yet still appends to the renamed
        file, so a rotated file is kept until it goes quiet, not just to EOF.
        """
        for tf in list(self.retired):
            if tf.last_data < now - quiet:
                self.retired.remove(tf)
                tf.close()

    def positions(self) -> dict:
        out = {f"{tf.dev}:{tf.ino}": tf.position() for tf in self.readable()}
        # Saved positions not yet resumed stay until they are.
        for k, v in self._saved.items():
            out.setdefault(k, v)
        return out

    def behind(self, tf: TailedFile) -> int:
        return max(0, tf.size - tf.offset)


def _is_copy(path: str, st: os.stat_result, fingerprint: str, offset: int, tail: bytes) -> bool:
    """Does ``path`` hold a copy of a file we read up to ``offset``? The same first bytes,
    and the same bytes just before that offset (what we last read)."""
    if st.st_size < offset:
        return False
    with open(path, "rb") as fh:
        if fh.read(len(fingerprint) // 2).hex() != fingerprint:
            return False
        fh.seek(offset - len(tail))
        return fh.read(len(tail)) == tail
