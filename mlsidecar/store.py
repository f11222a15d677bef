"""Metric values shared between processes: prometheus_client's multiprocess files.

Each worker owns the files of one fixed identity (``counter_tail-0.db``,
``histogram_tail-0.db``, ``gauge_mostrecent_tail-0.db`` ...), written with
prometheus_client's own ``MmapedDict``, so ``MultiProcessCollector`` can read
them too. Fixed identities instead of PIDs mean a restarted worker reopens its
files and carries on from the values in them: no pile of dead-PID files, no
counter reset.

A worker keeps the absolute value of every series it owns in memory, adds up
a chunk of events in plain dicts (:class:`Batch`) and writes each touched
series once per flush. The flush is crash-safe together with the source
positions: the new absolute values and the positions go to a journal file
(atomic rename) *before* the mmap files are touched, and a restart re-applies
the last journal. Absolute values make the replay idempotent, so ``kill -9``
at any instant neither loses nor re-counts a line.

File names, keys, the entry layout and what is done with a broken file belong
to :mod:`mlsidecar.fileformat`; this module decides what is written when.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import os
import time
from bisect import bisect_left as _bisect_left  # le is inclusive: v <= bound
from bisect import bisect_right as _bisect_right
from collections import Counter
from functools import partial
from math import fsum
from typing import Any

import orjson
from prometheus_client.mmap_dict import MmapedDict

from .catalogue import COUNTER, GAUGE, HISTOGRAM, Catalogue, Family, UserFamilies, builtin
from .fileformat import (
    BadKey,
    Entry,
    belongs_to,
    bucket_bounds,
    encode_bucket_keys,
    encode_key,
    entry_size,
    file_name,
    file_type_of,
    parse_key,
    rewrite_file,
    scan_entries,
)
from .fileformat import move_aside as _move_aside
from .fileformat import remove as _remove

log = logging.getLogger(__name__)

Labels = tuple[str, ...]
SeriesKey = tuple[Family, Labels]


class StateWriteError(OSError):
    """The state directory refused a write (full disk, read-only, permissions): nothing of the
    flush was lost, it is kept in memory and written again at the next flush."""


# Kinds of state-dir faults (mlsidecar_state_faults_total{kind}).
FAULT_JOURNAL = "journal_corrupt"  # unreadable journal moved aside
FAULT_POSITIONS = "positions_lost"  # values found without the positions they belong to
FAULT_FILE = "metric_file_corrupt"  # metric file that cannot be read, moved aside
FAULT_ENTRY = "metric_entry_corrupt"  # entries with a bad key or an impossible value, dropped
FAULT_WRITE = "write_failed"  # a flush the state dir refused (kept, written again later)

class _Stored:
    """What start-up read of one metric file: its entries, the parts of each entry's key
    (None: not one this module can restore) and where each key's last entry is."""

    __slots__ = ("path", "entries", "parts", "_at", "damaged", "recovered")

    def __init__(self, path: str, entries: list[Entry], parts: list[list[Any] | None]):
        self.path = path
        self.entries = entries
        self.parts = parts
        self._at: dict[str, int] | None = None
        self.damaged = False  # entries were dropped from it at start-up
        self.recovered = 0  # of those, taken back from the journal's last flush

    def write(self, key: str, value: float, ts: float) -> bool:
        """What a journal write does to the file: a new value for its key, or a new entry;
        False when the file holds that value already."""
        at = self._at
        if at is None:
            at = self._at = {k: i for i, (k, _v, _t) in enumerate(self.entries)}  # the last of each
        i = at.get(key)
        if i is not None:
            entry = (key, value, ts)
            if self.entries[i] == entry:
                return False
            self.entries[i] = entry
            return True
        try:
            parts: list[Any] | None = list(parse_key(key, strict=True))
        except BadKey:
            parts = None  # written to the file as the journal says, not restored
        at[key] = len(self.entries)
        self.entries.append((key, value, ts))
        self.parts.append(parts)
        return True


class SeriesWriter:
    """The metric files of one worker identity, and the journal that keeps them crash-safe.

    ``static_labels`` are added to every series this writer creates (config
    labels and labels from the environment). ``series_limit`` caps the series
    of each family; updates to further series are counted in
    ``mlsidecar_series_limited_total`` and dropped.

    ``catalogue`` is the built-in families (:func:`mlsidecar.catalogue.builtin` unless
    given); the user families its files hold are rebuilt at start into
    ``user_families``, which the mapper then takes over (see ``Mapper.restore``).
    """

    def __init__(self, directory: str, identity: str, journal_path: str | None = None,
                 static_labels: dict[str, str] | None = None, series_limit: int = 10000,
                 on_limited=None, expiry: dict[str, float] | None = None, clock=time.time,
                 total_limit: int | None = None, catalogue: Catalogue | None = None,
                 user_families: UserFamilies | None = None):
        self.catalogue = catalogue if catalogue is not None else builtin()
        self.user_families = user_families if user_families is not None else UserFamilies(self.catalogue)
        self.directory = directory
        self.identity = identity
        self.journal_path = journal_path
        self.static_labels = dict(static_labels or {})
        self.series_limit = series_limit
        self.on_limited = on_limited
        self._files: dict[str, MmapedDict] = {}
        # (family, labels) -> the mmap keys of the series (one, or buckets + sum).
        self._keys: dict[SeriesKey, list[str]] = {}
        # (family, labels) -> absolute value (counter/gauge) or [bucket counts..., sum].
        self.values: dict[SeriesKey, Any] = {}
        self._series_per_family: dict[str, int] = {}
        self.limited: dict[str, int] = {}
        self._pending: dict[tuple[str, str], tuple[float, float]] = {}
        # When each series was last written: for expiry.
        self.touched: dict[SeriesKey, float] = {}
        self.expiry = expiry if expiry is not None else self.catalogue.expiry()
        self.clock = clock
        self.journal_state: Any = None
        # What start-up found: "ok", "missing" or "corrupt"; any stored values restored;
        # the faults found (kind, message), for the worker to count and report.
        self.journal_status = "missing"
        self.restored_values = False
        self.faults: list[tuple[str, str]] = []
        # Workload series in all (see series_weight); the limit applies once restored.
        self.total = 0
        self.total_limit: int | None = None
        # Restoring makes a few objects per stored sample, all kept: the cyclic garbage collector
        # would walk them again and again (a quarter of the time with 100,000 series).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._load()
        finally:
            if collecting:
                gc.enable()
        self.total_limit = total_limit

    # --- start-up -----------------------------------------------------------
    def _fault(self, kind: str, message: str) -> None:
        log.warning("%s", message)
        self.faults.append((kind, message))

    def _load(self) -> None:
        """Check the files, re-apply the last journal to them, then restore what they hold.

        Nothing found broken stops the start: a bad journal or metric file is moved aside
        (``*.corrupt``), bad entries are dropped, and each is logged and kept in ``faults``.
        Each file is read, and each key parsed, once: what the journal writes is applied to
        the files and to what was read of them alike.
        """
        os.makedirs(self.directory, exist_ok=True)
        now = self.clock()
        stored: dict[str, _Stored] = {}
        unread: list[str] = []  # could not be read at all: tried once more after the journal
        for name in sorted(os.listdir(self.directory)):
            if self._owns(name):
                checked = self._check_file(os.path.join(self.directory, name), now)
                if checked is None:
                    unread.append(name)
                else:
                    stored[name] = checked
        journal = self._read_journal()
        if journal is not None:
            # First make the files whole: the last flush may have been cut short.
            for name, key, value, ts in journal["writes"]:
                v = float(value)  # float("NaN"), float("+Inf")
                st = stored.get(name)
                if st is None and name not in unread:  # a file the journal created
                    st = stored[name] = _Stored(os.path.join(self.directory, name), [], [])
                # Mostly the files hold them already (the flush was not cut short): not rewritten.
                if st is None or st.write(key, v, ts):
                    self._file(name).write_value(key, v, ts)
                    if st is not None and st.damaged:
                        st.recovered += 1
            self.journal_state = journal.get("state")
            for st in stored.values():
                if st.recovered:
                    log.warning("metric file %s: %d series taken back from the journal (its last "
                                "flush wrote them)", st.path, st.recovered)
        for name in unread:
            path = os.path.join(self.directory, name)
            checked = self._check_file(path, now, again=True)
            if checked is None:
                self.close()
                _move_aside(path)
                self._fault(FAULT_FILE, f"metric file {path} cannot be read; moved aside")
                continue
            stored[name] = checked
        files = sorted(stored.items())
        self.restored_values = any(ts >= 0 for _name, st in files for _k, _v, ts in st.entries)
        self._register_stored(files)
        loaded: list[tuple[str, str]] = []  # (file, key) of the samples restored
        unrestored: list[tuple[str, str]] = []  # and of those whose series could not be
        now = self.clock()
        self._families_of: dict[str, Family | None] = {}  # metric name -> family, while restoring
        self._bucket_index: dict[tuple[float, ...], dict[str, int]] = {}  # le text -> bucket
        restore, expired = self._restore, self._expired
        for name, st in files:
            file_type = file_type_of(name)
            kept = []
            for entry, parts in zip(st.entries, st.parts):
                key, value, ts = entry
                if ts >= 0 and parts is not None and not expired(parts[0], ts, now):
                    if restore(file_type, parts, value, ts):
                        loaded.append((name, key))
                    else:
                        unrestored.append((name, key))
                    kept.append(entry)
            if len(kept) < len(st.entries):
                self._compact(name, st.path, kept)
            elif kept:
                self._file(name)  # mapped now: the first flush does not wait for it
        self._families_of = {}
        self._bucket_index = {}
        # Keys written under other static labels (config changed) move to the current ones.
        current = {k for keys in self._keys.values() for k in keys}
        moved = False
        for name, key in loaded:
            if key not in current:
                self._file(name).write_value(key, 0.0, -1.0)
                moved = True
        for name, key in unrestored:
            self._file(name).write_value(key, 0.0, -1.0)
        if unrestored:
            log.warning("%s: %d stored samples not restored (their family is not known, has changed "
                        "type, or is at its series limit): removed", self.identity, len(unrestored))
        if moved:
            for sk in self.values:
                self._stage(sk, time.time())

    def _owns(self, name: str) -> bool:
        """Is ``name`` one of this writer's metric files?"""
        return belongs_to(name, self.identity)

    def _register_stored(self, files) -> None:
        """Rebuild the families of stored keys that are not built in (user metrics, user
        mappings: made on their first event) from all their keys, into ``user_families``, so
        a restart restores them whole and the next event finds them as they were."""
        found: dict[str, list] = {}
        known: dict[str, bool] = {}  # metric name -> has a family (looked up once per name)
        for name, st in files:
            file_type = file_type_of(name)
            for parts in st.parts:
                if parts is None:
                    continue
                metric_name, _sample, labels, help_text = parts
                has = known.get(metric_name)
                if has is None:
                    has = known[metric_name] = self.user_families.stored(metric_name) is not None
                if has:
                    continue
                full = metric_name + "_total" if file_type == COUNTER else metric_name
                f = found.setdefault(full, [file_type, help_text, set(), set()])
                f[2].update(k for k in labels if k != "le" and k not in self.static_labels)
                if labels.get("le", "+Inf") != "+Inf":
                    f[3].add(float(labels["le"]))
        for full, (file_type, help_text, names, bounds) in found.items():
            if file_type == HISTOGRAM and not bounds:
                continue
            self.user_families.add(Family(
                full, file_type if file_type in (COUNTER, HISTOGRAM) else GAUGE, help_text,
                tuple(sorted(names)), tuple(sorted(bounds)) if file_type == HISTOGRAM else (),
                fed_by="metric"))

    def _expired(self, name: str, ts: float, now: float) -> bool:
        """Was a stored sample of metric ``name`` (as in its key) written too long ago?"""
        ttl = self.expiry.get(name, self.expiry.get(name + "_total", math.inf))
        return ts < now - ttl

    def _compact(self, name: str, path: str, kept: list[tuple[str, float, float]]) -> None:
        """Rewrite a file without its removed and expired series, so it does not grow forever.

        The file is unmapped first and mapped again on the next write: a map of the replaced
        inode would send every later write to a deleted file.
        """
        f = self._files.pop(name, None)
        if f is not None:
            f.close()
        rewrite_file(path, kept)

    def _read_journal(self) -> dict | None:
        """The last journal record, checked; a journal that cannot be used is moved aside (None).

        The journal is JSON lines: a full record (the state, every entry, the writes) written
        whole by rename, then records appended by later flushes with only the entries that
        changed (see :meth:`flush`). ``journal_entries`` gets the entries as of the last record;
        the record returned carries that record's state and writes (the writes of earlier
        records reached the metric files before the next record was appended). A last record
        without its newline was cut short by a crash while it was written: its writes never
        reached the files, so the one before it is the last flush.
        """
        self.journal_entries: dict[str, dict] | None = None
        self._journal_base = 0  # bytes of the last full record; the journal is rewritten at 2x
        self._journal_size = 0
        self._journal_rewrite = True  # the first flush writes a full record (drops a torn tail)
        self._entries_unwritten: dict[str, dict | None] = {}  # changes refused by the state dir
        if not self.journal_path:
            return None
        tmp = self.journal_path + ".tmp"
        if os.path.lexists(tmp):  # a flush cut short (kill, full disk): never renamed, not used
            _remove(tmp)
        if not os.path.lexists(self.journal_path):
            return None
        try:
            if not os.path.isfile(self.journal_path):
                raise ValueError("not a regular file")
            with open(self.journal_path, "rb") as fh:
                data = fh.read()
            if not data:
                raise ValueError("empty (a power loss before it reached the disk?)")
            lines = data.split(b"\n")
            torn = len(lines) > 1 and lines[-1] != b""  # appended records end with a newline
            if lines[-1] == b"" or torn:
                lines.pop()
            if not lines:
                raise ValueError("no complete record")
            journal = orjson.loads(lines[0])  # the full record (or a journal of an older version)
            _check_journal(journal, f"_{self.identity}.db")
            entries = journal.get("entries")
            for raw in lines[1:]:
                record = orjson.loads(raw)
                _check_journal(record, f"_{self.identity}.db", appended=True)
                if entries is None:
                    raise ValueError("an appended record without a full record before it")
                for key in record.get("gone", ()):
                    entries.pop(key, None)
                for key, patch in record.get("entries", {}).items():
                    entries.setdefault(key, {}).update(patch)
                journal = record
        except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            aside = _move_aside(self.journal_path)
            self.journal_status = "corrupt"
            self._fault(FAULT_JOURNAL, f"journal {self.journal_path} is unusable ({exc}); moved aside "
                        f"to {aside}. Values kept; positions lost: the files are read on from their end")
            return None
        if torn:
            log.warning("journal %s: its last record was cut short (a crash while it was written); "
                        "its writes never reached the metric files: going on from the one before",
                        self.journal_path)
        self.journal_entries = entries
        self.journal_status = "ok"
        return journal

    def _check_file(self, path: str, now: float, again: bool = False) -> _Stored | None:
        """The entries of a metric file, checked (None: it cannot be read, reported unless
        tried ``again``); a file with impossible entries is kept beside and rewritten without them."""
        file_type = file_type_of(path)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            if not again:
                self._fault(FAULT_FILE, f"metric file {path} cannot be read ({exc})")
            return None
        parts: list[list[Any] | None] = []
        good, problems = scan_entries(data, file_type, now, parts)  # type: ignore[arg-type]
        checked = _Stored(path, good, parts)
        if not problems:
            return checked
        checked.damaged = True
        aside = _move_aside(path, copy=True)
        rewrite_file(path, good)
        kind = FAULT_ENTRY if good else FAULT_FILE
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        self._fault(kind, f"metric file {path}: {'; '.join(problems[:3])}{more}; the file as found "
                    f"is kept in {aside}, {len(good)} good entries kept: the series dropped start "
                    "again from zero")
        return checked

    def forget_expired(self, now: float | None = None) -> int:
        """Drop series not written for longer than their family's expiry from memory."""
        now = time.time() if now is None else now
        gone = 0
        for sk, t in list(self.touched.items()):
            ttl = self.expiry.get(sk[0].name, math.inf)
            if t < now - ttl:
                del self.touched[sk]
                if sk in self.values:
                    del self.values[sk]
                    del self._keys[sk]
                    self._series_per_family[sk[0].name] -= 1
                    self.total -= series_weight(sk[0])
                    gone += 1
        return gone

    def _restore(self, file_type: str, parts: list[Any], value: float, ts: float) -> bool:
        """Take one stored sample back into memory; False when its series is not restored (its
        family could not be rebuilt, is of another type, or is at its series limit)."""
        metric_name, sample_name, labels, _help = parts
        families = self._families_of
        if metric_name in families:
            fam = families[metric_name]
        else:
            fam = families[metric_name] = self.user_families.stored(metric_name)
        if fam is None or fam.type != file_type:
            return False  # its keys are dropped below
        sk = (fam, tuple([labels.get(n, "") for n in fam.labels]))  # values are strings (checked)
        values = self.values
        cur = values.get(sk)
        if cur is None and not self._new_series(sk):
            return False
        if fam.type == HISTOGRAM:
            if cur is None:
                cur = values[sk]
            if sample_name.endswith("_sum"):
                cur[-1] = value
            else:
                index = self._bucket_index.get(fam.buckets)
                if index is None:
                    index = self._bucket_index[fam.buckets] = {le: i for i, le in enumerate(bucket_bounds(fam))}
                i = index.get(labels.get("le"))
                if i is not None:
                    cur[i] = value
        else:
            values[sk] = value
        touched = self.touched
        if ts > touched.get(sk, 0.0):
            touched[sk] = ts
        return True

    # --- series bookkeeping -------------------------------------------------
    def _file(self, name: str) -> MmapedDict:
        f = self._files.get(name)
        if f is None:
            f = MmapedDict(os.path.join(self.directory, name))
            try:
                # Back the whole map with disk blocks now: on a full disk a write to a sparse
                # page of the map would kill the process (SIGBUS) instead of raising ENOSPC.
                os.posix_fallocate(f._f.fileno(), 0, f._capacity)
            except OSError:
                f.close()
                raise
            self._files[name] = f
        return f

    def _reserve(self, pending: dict) -> None:
        """Make room, with real disk blocks, for the new keys of a flush before any is written."""
        need: dict[str, int] = {}
        for name, key in pending:
            f = self._file(name)
            if key not in f._positions:
                need[name] = need.get(name, 0) + entry_size(key)
        for name, n in need.items():
            f = self._files[name]
            capacity = f._capacity
            while f._used + n > capacity:
                capacity *= 2  # as MmapedDict grows: it then finds the blocks already there
            if capacity != f._capacity:
                os.posix_fallocate(f._f.fileno(), 0, capacity)

    def _new_series(self, sk: SeriesKey) -> bool:
        """Create a series; False when its family is at the series limit or the budget is used."""
        fam, lv = sk
        n = self._series_per_family.get(fam.name, 0)
        weight = series_weight(fam)
        # The sidecar's own series (weight 0) are bounded by design and never refused: the
        # counter of refused series must always have room.
        if weight and (n >= self.series_limit or
                       (self.total_limit is not None and self.total + weight > self.total_limit)):
            return False
        self.total += weight
        self._series_per_family[fam.name] = n + 1
        labels = dict(zip(fam.labels, lv))
        for k, v in self.static_labels.items():
            labels.setdefault(k, v)
        if fam.type == HISTOGRAM:
            keys = encode_bucket_keys(fam, labels)
            keys.append(encode_key(fam, fam.name + "_sum", labels))
            self._keys[sk] = keys
            self.values[sk] = [0.0] * (len(fam.buckets) + 2)
        else:
            self._keys[sk] = [encode_key(fam, fam.name, labels)]
            self.values[sk] = 0.0
        return True

    def _ensure(self, sk: SeriesKey) -> bool:
        if sk in self.values:
            return True
        if self._new_series(sk):
            return True
        name = sk[0].name
        self.limited[name] = self.limited.get(name, 0) + 1
        if self.on_limited is not None:
            self.on_limited(name)
        return False

    def _stage(self, sk: SeriesKey, now: float) -> None:
        fam = sk[0]
        self.touched[sk] = now
        name = file_name(fam, self.identity)
        value = self.values[sk]
        keys = self._keys[sk]
        if fam.type == HISTOGRAM:
            for key, v in zip(keys, value):
                self._pending[(name, key)] = (v, now)
        else:
            self._pending[(name, keys[0])] = (value, now)

    # --- updates ------------------------------------------------------------
    def apply(self, batch: Batch, now: float | None = None) -> None:
        """Fold a batch of deltas into the absolute values and stage the writes."""
        now = time.time() if now is None else now
        values = self.values
        for sk, delta in batch.counters.items():
            if self._ensure(sk):
                values[sk] += delta
                self._stage(sk, now)
        for sk, counts in batch.histograms.items():
            if self._ensure(sk):
                cur = values[sk]
                for i, c in enumerate(counts):
                    if c:
                        cur[i] += c
                self._stage(sk, now)
        for sk, value in batch.gauges.items():
            if self._ensure(sk):
                values[sk] = value
                self._stage(sk, now)
        for sk in batch.zero:
            if sk not in values and self._ensure(sk):
                self._stage(sk, now)
        batch.clear()

    def set_gauge(self, family: Family, labels: Labels, value: float, now: float | None = None) -> None:
        """Set one gauge now (collectors); it is written at the next flush."""
        sk = (family, labels)
        if self._ensure(sk):
            self.values[sk] = float(value)
            self._stage(sk, time.time() if now is None else now)

    def set_counter(self, family: Family, labels: Labels, total: float, now: float | None = None) -> None:
        """Set a counter to a total read from elsewhere (e.g. NVML energy, CPU seconds)."""
        self.set_gauge(family, labels, total, now)

    def inc(self, family: Family, labels: Labels, amount: float = 1.0, now: float | None = None) -> None:
        """Add to one counter now (self-metrics); it is written at the next flush."""
        sk = (family, labels)
        if self._ensure(sk):
            self.values[sk] += amount
            self._stage(sk, time.time() if now is None else now)

    def remove(self, family: Family, labels: Labels) -> None:
        """Hide a series from /metrics (a process that exited, a GPU that left)."""
        sk = (family, labels)
        if sk not in self.values:
            return
        name = file_name(family, self.identity)
        for key in self._keys[sk]:
            self._pending[(name, key)] = (0.0, -1.0)
        del self.values[sk]
        del self._keys[sk]
        self.touched.pop(sk, None)
        self._series_per_family[family.name] -= 1
        self.total -= series_weight(family)

    def series(self, family: Family) -> list[Labels]:
        """The label values of this writer's live series of a family."""
        return [lv for (fam, lv) in self.values if fam is family]

    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self, state: Any = None, entries: dict[str, dict | None] | None = None,
              rewrite: bool = False) -> int:
        """Journal the staged writes with ``state``, then write them to the metric files.

        ``entries``: keyed state that changes a little at a time (a tailer's positions, one per
        file): only the entries that changed since the last flush, None for one removed. The
        journal keeps all of them; a flush appends one record with the staged writes, the state
        and only the fields of the entries that changed, so what a flush writes grows with
        what changed, not with how many entries there are. Once the journal is twice its last
        full record (or ``rewrite``), it is rewritten whole by rename. Crash-safe at any point:
        a record is one write, applied before the files; a torn last record is dropped at start.
        """
        pending = self._pending
        if not pending and state is None and not entries:
            return 0
        if self.journal_path is not None:
            self._journal(pending, state, entries, rewrite)
            self.journal_state = state
        try:
            self._reserve(pending)
            for (name, key), (v, ts) in pending.items():
                self._file(name).write_value(key, v, ts)
        except OSError as exc:
            raise StateWriteError(exc.errno, f"cannot write the metric files in {self.directory}: "
                                  f"{exc.strerror or exc}") from exc
        n = len(pending)
        self._pending = {}
        return n

    def _journal(self, pending: dict, state: Any, entries: dict[str, dict | None] | None,
                 rewrite: bool) -> None:
        """Part of :meth:`flush`: append a record to the journal, or rewrite it whole."""
        path = self.journal_path
        assert path is not None
        # JSON has no NaN or infinity (orjson writes null): a gauge's non-finite value is
        # journalled as "NaN", "+Inf" or "-Inf" (a comparison not computable yet is NaN).
        writes = [[name, key, v if -_INF < v < _INF else _nonfinite(v), ts]
                  for (name, key), (v, ts) in pending.items()]
        full = self.journal_entries
        if full is None:
            full = self.journal_entries = {}
        changes = self._entries_unwritten  # what earlier refused flushes did not write yet
        for key, value in (entries or {}).items():
            old = full.get(key)
            if value is None:
                if old is not None or key in changes:
                    full.pop(key, None)
                    changes[key] = None
                continue
            if old is not None and key not in changes and old.keys() == value.keys():
                patch = {f: v for f, v in value.items() if old[f] != v}
                if patch:
                    changes[key] = patch
                    old.update(patch)
            else:
                full[key] = dict(value)
                changes[key] = None  # replaced whole: written as gone, then all its fields
        if rewrite or self._journal_rewrite or self._journal_size > max(JOURNAL_REWRITE_MIN,
                                                                        2 * self._journal_base):
            data = orjson.dumps({"state": state, "entries": full, "writes": writes}) + b"\n"
            tmp = path + ".tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                _remove(tmp)
                raise StateWriteError(exc.errno, f"cannot write the journal {path}: "
                                      f"{exc.strerror or exc}") from exc
            self._journal_base = self._journal_size = len(data)
            self._journal_rewrite = False
        else:
            gone = [k for k, v in changes.items() if v is None]
            record: dict[str, Any] = {"state": state, "writes": writes, "entries": {
                k: (v if v is not None else full[k]) for k, v in changes.items()
                if v is not None or k in full}}
            if gone:
                record["gone"] = gone
            data = orjson.dumps(record) + b"\n"
            try:
                # A directory that refuses new files (read-only, its mode changed) would refuse
                # the next rewrite too: the state dir is refusing writes, say so now.
                if not os.access(os.path.dirname(path) or ".", os.W_OK):
                    raise OSError(errno.EACCES, "the journal's directory is not writable")
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                try:
                    view = memoryview(data)
                    while view:  # one write: a crash cuts the record short at worst (dropped)
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
            except OSError as exc:
                self._journal_rewrite = True  # a part of a record may be there: rewrite next time
                raise StateWriteError(exc.errno, f"cannot write the journal {path}: "
                                      f"{exc.strerror or exc}") from exc
            self._journal_size += len(data)
        changes.clear()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def series_weight(fam: Family) -> int:
    """What a series costs of the global budget: the time series Prometheus stores for it
    (a histogram's buckets, +Inf, _sum and _count); the sidecar's own series are free."""
    if fam.name.startswith("mlsidecar_"):
        return 0
    return len(fam.buckets) + 3 if fam.type == HISTOGRAM else 1


_INF = math.inf
NONFINITE = ("NaN", "+Inf", "-Inf")
JOURNAL_REWRITE_MIN = 256 * 1024  # bytes: a smaller journal is appended to, not rewritten


def _nonfinite(v: float) -> str:
    return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")


def _check_journal(journal: Any, suffix: str, appended: bool = False) -> None:
    """Raise ValueError unless ``journal`` has the shape :meth:`SeriesWriter.flush` writes
    (``appended``: a record appended after the full one)."""
    if not isinstance(journal, dict) or not isinstance(journal.get("writes"), list):
        raise ValueError("not a journal (no list of writes)")
    for w in journal["writes"]:
        if not (isinstance(w, list) and len(w) == 4 and isinstance(w[0], str) and isinstance(w[1], str)
                and w[0].endswith(suffix) and "/" not in w[0]
                and (_finite(w[2]) or (w[0].startswith(GAUGE + "_") and w[2] in NONFINITE))
                and _finite(w[3])):
            raise ValueError(f"a write of the wrong shape: {str(w)[:100]}")
    state = journal.get("state")
    if state is not None and not isinstance(state, dict):
        raise ValueError("state is not an object")
    entries = journal.get("entries")
    if (entries is not None or appended) and not (
            isinstance(entries, dict) and all(isinstance(v, dict) for v in entries.values())):
        raise ValueError("entries are not an object of objects")
    gone = journal.get("gone", [])
    if not (isinstance(gone, list) and all(isinstance(k, str) for k in gone)):
        raise ValueError("gone is not a list of keys")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Batch:
    """Deltas of one chunk of events, added up in plain dicts before any file is touched."""

    __slots__ = ("counters", "histograms", "gauges", "zero")

    def __init__(self) -> None:
        self.counters: dict[SeriesKey, float] = {}
        self.histograms: dict[SeriesKey, list[float]] = {}
        self.gauges: dict[SeriesKey, float] = {}
        self.zero: set[SeriesKey] = set()

    def clear(self) -> None:
        self.counters.clear()
        self.histograms.clear()
        self.gauges.clear()
        self.zero.clear()

    def __bool__(self) -> bool:
        return bool(self.counters or self.histograms or self.gauges or self.zero)

    def inc(self, family: Family, labels: Labels, amount: float = 1.0) -> None:
        sk = (family, labels)
        c = self.counters
        c[sk] = c.get(sk, 0.0) + amount

    def set(self, family: Family, labels: Labels, value: float) -> None:
        self.gauges[(family, labels)] = value

    def observe(self, family: Family, labels: Labels, value: float, count: int = 1) -> None:
        sk = (family, labels)
        h = self.histograms.get(sk)
        if h is None:
            h = self.histograms[sk] = [0.0] * (len(family.buckets) + 2)
        # Non-cumulative bucket counts, as prometheus_client's multiprocess files hold them.
        h[_bisect_left(family.buckets, value)] += count
        h[-1] += value * count

    def observe_all(self, family: Family, labels: Labels, values: list[float]) -> None:
        """Observe many values at once (a chunk's latencies): sorted once in C, each bucket's
        count found by bisection (a dozen steps, not one per value), one exact sum."""
        sk = (family, labels)
        h = self.histograms.get(sk)
        if h is None:
            h = self.histograms[sk] = [0.0] * (len(family.buckets) + 2)
        try:
            total = fsum(values)
        except OverflowError:  # not reachable with values <= MAX_AMOUNT; saturate rather than raise
            total = math.nan
            saturated = True
        else:
            saturated = False
        if total == total:  # no NaN among them: the sorted order is well defined
            ordered = sorted(values)
            n = len(ordered)
            below = 0  # values <= the bound before
            for i, bound in enumerate(family.buckets):
                upto = _bisect_right(ordered, bound)  # le is inclusive: v <= bound
                if upto != below:
                    h[i] += upto - below
                    below = upto
                    if below == n:
                        break
            else:
                if below < n:
                    h[-2] += n - below  # +Inf
        else:
            for i, c in Counter(map(partial(_bisect_left, family.buckets), values)).items():
                h[i] += c
        if saturated:
            h[-1] = 1.7976931348623157e308
        else:
            h[-1] += total

    def has_counter(self, family: Family, labels: Labels) -> bool:
        """Whether this chunk already counted the series (its siblings are ensured then)."""
        return (family, labels) in self.counters

    def ensure(self, family: Family, labels: Labels) -> None:
        """Create a series at zero if it does not exist yet."""
        self.zero.add((family, labels))

