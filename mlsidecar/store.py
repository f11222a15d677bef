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

The entry layout (see prometheus_client.mmap_dict): a 4-byte ``used`` header,
4 bytes padding, then entries of ``int32 len, utf-8 key padded to 8, double
value, double timestamp``. The timestamp is the last update time (unix
seconds); a negative timestamp marks a series as removed.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_left as _bisect_left  # le is inclusive: v <= bound
import struct
import time
from collections.abc import Iterator
from typing import Any

import orjson
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.utils import floatToGoString

from . import catalogue
from .catalogue import COUNTER, GAUGE, HISTOGRAM, Family

_INT = struct.Struct("i")
_TWO_DOUBLES = struct.Struct("dd")

Labels = tuple[str, ...]
SeriesKey = tuple[Family, Labels]


class CorruptFile(Exception):
    """A metric file whose entries run past its end (a crash mid-write, or not ours)."""


def iter_entries(buf: Any, start: int, used: int) -> Iterator[tuple[str, int]]:
    """Yield (key, offset of the value) for the entries in ``buf[start:used]``."""
    pos = start
    while pos < used:
        if pos + 4 > used:
            raise CorruptFile(f"entry header at {pos} runs past {used}")
        (length,) = _INT.unpack_from(buf, pos)
        padded = length + (8 - (length + 4) % 8)
        end = pos + 4 + padded + 16
        if length <= 0 or end > used:
            raise CorruptFile(f"entry at {pos} of length {length} runs past {used}")
        key = bytes(buf[pos + 4:pos + 4 + length]).decode("utf-8")
        yield key, pos + 4 + padded
        pos = end


def file_name(family: Family, identity: str) -> str:
    """The multiprocess file a family's series of one worker live in."""
    if family.type == GAUGE:
        return f"gauge_{family.gauge_mode}_{identity}.db"
    return f"{family.type}_{identity}.db"


def bucket_bounds(family: Family) -> list[str]:
    """The ``le`` label values of a histogram, ending with +Inf."""
    return [floatToGoString(b) for b in family.buckets] + ["+Inf"]


class SeriesWriter:
    """The metric files of one worker identity, and the journal that keeps them crash-safe.

    ``static_labels`` are added to every series this writer creates (config
    labels and labels from the environment). ``series_limit`` caps the series
    of each family; updates to further series are counted in
    ``mlsidecar_series_limited_total`` and dropped.
    """

    def __init__(self, directory: str, identity: str, journal_path: str | None = None,
                 static_labels: dict[str, str] | None = None, series_limit: int = 10000,
                 on_limited=None, expiry: dict[str, float] | None = None, clock=time.time,
                 total_limit: int | None = None):
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
        self.expiry = expiry if expiry is not None else catalogue.expiry()
        self.clock = clock
        self.journal_state: Any = None
        # Workload series in all (see series_weight); the limit applies once restored.
        self.total = 0
        self.total_limit: int | None = None
        self._load()
        self.total_limit = total_limit

    # --- start-up -----------------------------------------------------------
    def _load(self) -> None:
        """Re-apply the last journal to the files, then read the files back."""
        os.makedirs(self.directory, exist_ok=True)
        if self.journal_path and os.path.exists(self.journal_path):
            # First make the files whole: the last flush may have been cut short.
            with open(self.journal_path, "rb") as fh:
                journal = orjson.loads(fh.read())
            for name, key, value, ts in journal.get("writes", []):
                self._file(name).write_value(key, value, ts)
            self.journal_state = journal.get("state")
            self.close()
        suffix = f"_{self.identity}.db"
        files = []
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(suffix):
                continue
            path = os.path.join(self.directory, name)
            try:
                files.append((name, path, list(_read_file(path))))
            except (CorruptFile, OSError, ValueError) as exc:
                # A file we cannot trust is moved aside rather than served.
                os.replace(path, path + ".corrupt")
                raise CorruptFile(f"{path}: {exc}; moved aside") from exc
        self._register_stored(files)
        loaded: list[tuple[str, str, float]] = []
        now = self.clock()
        for name, path, entries in files:
            file_type = name.split("_", 1)[0]
            kept = []
            for key, value, ts in entries:
                if ts >= 0 and not self._expired(key, ts, now):
                    self._restore(name, file_type, key, value, ts)
                    loaded.append((name, key, ts))
                    kept.append((key, value, ts))
            if len(kept) < len(entries):
                self._compact(path, kept)
        # Keys written under other static labels (config changed) move to the current ones.
        current = {k for keys in self._keys.values() for k in keys}
        moved = False
        for name, key, ts in loaded:
            if key not in current:
                self._file(name).write_value(key, 0.0, -1.0)
                moved = True
        if moved:
            for sk in self.values:
                self._stage(sk, time.time())

    def _register_stored(self, files) -> None:
        """Rebuild the families of stored keys that no module has registered (user metrics,
        user mappings: registered on their first event) from all their keys, so a restart
        restores them whole and the next event finds them as they were."""
        found: dict[str, list] = {}
        for name, _path, entries in files:
            file_type = name.split("_", 1)[0]
            for key, _value, _ts in entries:
                metric_name, _sample, labels, help_text = json.loads(key)
                if metric_name in catalogue.REGISTRY or metric_name + "_total" in catalogue.REGISTRY:
                    continue
                full = metric_name + "_total" if file_type == COUNTER else metric_name
                f = found.setdefault(full, [file_type, help_text, set(), set()])
                f[2].update(k for k in labels if k != "le" and k not in self.static_labels)
                if labels.get("le", "+Inf") != "+Inf":
                    f[3].add(float(labels["le"]))
        for full, (file_type, help_text, names, bounds) in found.items():
            if file_type == HISTOGRAM and not bounds:
                continue
            catalogue.register(Family(
                full, file_type if file_type in (COUNTER, HISTOGRAM) else GAUGE, help_text,
                tuple(sorted(names)), tuple(sorted(bounds)) if file_type == HISTOGRAM else (),
                fed_by="metric"))

    def _expired(self, key: str, ts: float, now: float) -> bool:
        name = json.loads(key)[0]
        ttl = self.expiry.get(name, self.expiry.get(name + "_total", math.inf))
        return ts < now - ttl

    def _compact(self, path: str, kept: list[tuple[str, float, float]]) -> None:
        """Rewrite a file without its removed and expired series, so it does not grow forever."""
        tmp = path + ".compact"
        if os.path.exists(tmp):
            os.unlink(tmp)
        fresh = MmapedDict(tmp)
        try:
            for key, value, ts in kept:
                fresh.write_value(key, value, ts)
        finally:
            fresh.close()
        os.replace(tmp, path)

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

    def _restore(self, name: str, file_type: str, key: str, value: float, ts: float) -> None:
        metric_name, sample_name, labels, _help = json.loads(key)
        fam = catalogue.REGISTRY.get(metric_name) or catalogue.REGISTRY.get(metric_name + "_total")
        if fam is None or fam.type != file_type:
            return  # a family that could not be rebuilt (or of another type): its keys are dropped below
        lv = tuple(str(labels.get(n, "")) for n in fam.labels)
        sk = (fam, lv)
        if fam.type == HISTOGRAM:
            bounds = bucket_bounds(fam)
            cur = self.values.get(sk)
            if cur is None:
                self._new_series(sk)
                cur = self.values[sk]
            if sample_name.endswith("_sum"):
                cur[-1] = value
            elif labels.get("le") in bounds:
                cur[bounds.index(labels["le"])] = value
        else:
            if sk not in self.values:
                self._new_series(sk)
            self.values[sk] = value
        self.touched[sk] = max(ts, self.touched.get(sk, 0.0))
        self._file(name)

    # --- series bookkeeping -------------------------------------------------
    def _file(self, name: str) -> MmapedDict:
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = MmapedDict(os.path.join(self.directory, name))
        return f

    def _new_series(self, sk: SeriesKey) -> bool:
        """Create a series; False when its family is at the series limit."""
        fam, lv = sk
        n = self._series_per_family.get(fam.name, 0)
        if n >= self.series_limit:
            return False
        weight = series_weight(fam)
        if self.total_limit is not None and self.total + weight > self.total_limit:
            return False
        self.total += weight
        self._series_per_family[fam.name] = n + 1
        labels = dict(zip(fam.labels, lv))
        for k, v in self.static_labels.items():
            labels.setdefault(k, v)
        if fam.type == HISTOGRAM:
            keys = []
            for le in bucket_bounds(fam):
                keys.append(_key(fam, fam.name + "_bucket", {**labels, "le": le}))
            keys.append(_key(fam, fam.name + "_sum", labels))
            self._keys[sk] = keys
            self.values[sk] = [0.0] * (len(fam.buckets) + 2)
        else:
            self._keys[sk] = [_key(fam, fam.name, labels)]
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
    def apply(self, batch: "Batch", now: float | None = None) -> None:
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

    def flush(self, state: Any = None) -> int:
        """Journal the staged writes with ``state`` (source positions), then write them."""
        pending = self._pending
        if not pending and state is None:
            return 0
        if self.journal_path is not None:
            writes = [[name, key, v, ts] for (name, key), (v, ts) in pending.items()]
            tmp = self.journal_path + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps({"state": state, "writes": writes}))
            os.replace(tmp, self.journal_path)
            self.journal_state = state
        for (name, key), (v, ts) in pending.items():
            self._file(name).write_value(key, v, ts)
        n = len(pending)
        self._pending = {}
        return n

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


def metric_name(fam: Family) -> str:
    """The family name as prometheus_client stores it: counters without ``_total``."""
    if fam.type == COUNTER and fam.name.endswith("_total"):
        return fam.name[:-6]
    return fam.name


def _key(fam: Family, sample_name: str, labels: dict[str, str]) -> str:
    return json.dumps([metric_name(fam), sample_name, labels, fam.help], sort_keys=True)


def _read_file(path: str) -> Iterator[tuple[str, float, float]]:
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8:
        return
    (used,) = _INT.unpack_from(data, 0)
    if used > len(data):
        raise CorruptFile(f"header says {used} bytes used, file has {len(data)}")
    for key, off in iter_entries(data, 8, used):
        v, ts = _TWO_DOUBLES.unpack_from(data, off)
        yield key, v, ts


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

    def ensure(self, family: Family, labels: Labels) -> None:
        """Create a series at zero if it does not exist yet."""
        self.zero.add((family, labels))

