"""The state directory: metric files, journals (with positions), worker status.

Layout::

    STATE_DIR/            mode 0700
      metrics/            prometheus_client multiprocess files, one set per worker identity
      journal/ID.json     a worker's last flush: source positions + the values they cover
      status/ID.json      what a worker reports for /readyz and the status page

The supervisor owns it: at start it moves aside files that cannot be read,
and folds the files of identities that no longer exist (a source removed from
the config) into ``*_archive.db``, so counters keep their totals and the
directory does not grow with every change. The metric files' names, keys and
entries are :mod:`mlsidecar.fileformat`'s.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import struct
import time

import orjson
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from ..fileformat import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    encode_raw_key,
    file_type_of,
    identity_of,
    is_metric_file,
    is_readable,
    move_aside,
    type_file_name,
)

log = logging.getLogger(__name__)

ARCHIVE = "archive"


class StateDir:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.metrics = os.path.join(self.root, "metrics")
        self.journals = os.path.join(self.root, "journal")
        self.statuses = os.path.join(self.root, "status")

    def create(self) -> None:
        """Make the directories (0700: positions and values are nobody else's business)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        for d in (self.metrics, self.journals, self.statuses):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def journal(self, identity: str) -> str:
        return os.path.join(self.journals, f"{identity}.json")

    def status_path(self, identity: str) -> str:
        return os.path.join(self.statuses, f"{identity}.json")

    def write_status(self, identity: str, status: dict) -> None:
        """Replace a worker's status atomically. When the state dir refuses the new file
        (full disk), overwrite the old one in place, so an error can still be reported."""
        path = self.status_path(identity)
        tmp = f"{path}.tmp"
        data = orjson.dumps(status)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            # Blocks the old status already holds need no free space; the padding is JSON
            # whitespace. A reader may see a torn write once and skip it.
            fd = os.open(path, os.O_WRONLY)
            try:
                old = os.fstat(fd).st_size
                os.pwrite(fd, data + b" " * max(0, old - len(data)), 0)
            finally:
                os.close(fd)

    def problems(self) -> list[str]:
        """What keeps the sidecar from doing its job with this state dir (empty: nothing)."""
        out = []
        for d in (self.metrics, self.journals, self.statuses):
            if not os.access(d, os.W_OK | os.X_OK):
                out.append(f"state dir {d} is not writable: values and positions cannot be kept")
                break
        try:
            st = os.statvfs(self.root)
            if st.f_bavail == 0 and os.geteuid() != 0 or st.f_bfree == 0:
                out.append(f"state dir {self.root}: no space left on the file system")
        except OSError as exc:
            out.append(f"state dir {self.root}: {exc}")
        return out

    def read_statuses(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        try:
            names = os.listdir(self.statuses)
        except FileNotFoundError:
            return out
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.statuses, name), "rb") as fh:
                    out[name[:-5]] = orjson.loads(fh.read())
            except (OSError, orjson.JSONDecodeError):
                continue
        return out

    def clear_status(self, identity: str) -> None:
        try:
            os.unlink(self.status_path(identity))
        except FileNotFoundError:
            pass
        except OSError as exc:  # read-only state dir: the stale status ages out of /readyz
            log.warning("cannot clear the status of %s: %s", identity, exc)

    # --- housekeeping ---------------------------------------------------------
    def identities(self) -> set[str]:
        return {identity_of(name) for name in os.listdir(self.metrics) if is_metric_file(name)}

    def tidy(self, live: set[str]) -> None:
        """Move aside unreadable files; fold files of retired identities into the archive."""
        retired: list[str] = []
        now = time.time()
        for name in sorted(os.listdir(self.metrics)):
            if not is_metric_file(name):
                continue
            path = os.path.join(self.metrics, name)
            identity = identity_of(name)
            if identity in live:
                continue  # checked entry by entry by the worker that owns it, as it starts
            if not is_readable(path, now):
                aside = move_aside(path)
                log.warning("metric file %s is empty, truncated or corrupt; moved aside to %s", path, aside)
                continue
            if identity != ARCHIVE:
                retired.append(path)
        if retired:
            self.fold(retired)

    def fold(self, paths: list[str]) -> None:
        """Add counters and histograms of ``paths`` into the archive files, then remove them."""
        keep = [p for p in paths if file_type_of(p) != GAUGE]
        now = time.time()
        for metric in MultiProcessCollector.merge(keep, accumulate=False):
            typ = COUNTER if metric.type == COUNTER else HISTOGRAM
            archive = MmapedDict(os.path.join(self.metrics, type_file_name(typ, ARCHIVE)))
            try:
                for s in metric.samples:
                    if typ == HISTOGRAM and s.name.endswith("_count"):
                        continue  # the +Inf bucket: never stored
                    key = encode_raw_key(metric.name, s.name, s.labels, metric.documentation)
                    old, _ = archive.read_value(key)
                    archive.write_value(key, old + s.value, now)
            finally:
                archive.close()
        for p in paths:
            os.unlink(p)
        log.info("folded %d metric files of retired workers into the archive", len(paths))


class SocketLedger:
    """Lines a socket worker took off each socket, and how many of them it has flushed
    (counted, rejected or dropped), kept in a small memory-mapped file per source.

    The page cache keeps what is written to the map when the process is SIGKILLed (not on a
    power loss), so the next start knows how many lines sat in the queue or in an unflushed
    batch at the crash: ``received - accounted``. They are counted as dropped (reason
    ``crash``) instead of vanishing.
    """

    _PAIR = struct.Struct("qq")

    def __init__(self, state: StateDir, identity: str):
        self.dir = state.journals
        self.identity = identity
        self._maps: dict[str, mmap.mmap] = {}
        self._pending: dict[str, int] = {}

    def _map(self, source: str) -> mmap.mmap:
        m = self._maps.get(source)
        if m is None:
            digest = hashlib.sha1(source.encode()).hexdigest()[:10]
            path = os.path.join(self.dir, f"{self.identity}-{digest}.ledger")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < self._PAIR.size:
                    os.posix_fallocate(fd, 0, self._PAIR.size)
                m = self._maps[source] = mmap.mmap(fd, self._PAIR.size)
            finally:
                os.close(fd)
        return m

    def lost_at_last_stop(self, source: str) -> int:
        """Lines received but never flushed by the last run; from now on they count as flushed
        (once the caller's next flush holds them)."""
        received, accounted = self._PAIR.unpack_from(self._map(source), 0)
        lost = max(0, received - accounted)
        self._pending[source] = self._pending.get(source, 0) + lost
        return lost

    def received(self, source: str, n: int) -> None:
        """Called by the reader thread for every batch of lines taken off a socket."""
        m = self._map(source)
        struct.pack_into("q", m, 0, struct.unpack_from("q", m, 0)[0] + n)

    def took(self, source: str, n: int) -> None:
        """``n`` lines of ``source`` are in the batch (or counted as dropped) for the next flush."""
        self._pending[source] = self._pending.get(source, 0) + n

    def flushed(self) -> None:
        """The batch holding everything ``took`` reported is on disk."""
        for source, n in self._pending.items():
            if n:
                m = self._map(source)
                struct.pack_into("q", m, 8, struct.unpack_from("q", m, 8)[0] + n)
        self._pending.clear()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
