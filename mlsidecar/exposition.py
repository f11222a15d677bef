"""Serve the multiprocess files as Prometheus text or OpenMetrics, fast.

prometheus_client's ``MultiProcessCollector`` re-reads and re-parses every
file, every key, on every scrape. Keys never move in these files (they are
append-only), so :class:`MetricsReader` parses each key once, remembers where
its value lives, and on a scrape only reads doubles through a memoryview and
formats lines whose label part was rendered once. It also honours what the
plain collector cannot: series expiry (a family's ``expire_after`` against the
entry's update time), removed series (negative timestamp), and values derived
at scrape time (data freshness keeps rising when the data stops).

Files that are empty, truncated or corrupt (a worker killed mid-write, a
foreign writer's crash) are skipped and counted, never a failed scrape; so is
every key that is not well formed, names a metric or label Prometheus would
refuse, or clashes with another family (a workload's multiprocess dir is
foreign input: it cannot break the exposition or write into a built-in family).
"""

from __future__ import annotations

import math
import mmap
import operator
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.utils import floatToGoString

from . import catalogue
from .catalogue import PIPELINE_DATA_TS, PIPELINE_FRESHNESS, Catalogue, Family
from .fileformat import (
    HEADER,
    BadKey,
    CorruptFile,
    family_name,
    is_metric_file,
    iter_raw_entries,
    parse_file_name,
    parse_key,
    read_used,
    stored_name,
)
from .fileformat import metric_name as metric_key_name

if TYPE_CHECKING:
    from .exemplars import ExemplarReader

LabelItems = tuple[tuple[str, str], ...]
# The server's own families: [(family, [(label items, value), ...]), ...]
Extra = Iterable[tuple[Family, Iterable[tuple[LabelItems, float]]]]
# (label items, le text) -> (trace_id, value, timestamp)
Exemplars = dict[tuple[LabelItems, str], tuple[str, float, float]]
Getter = Callable[["memoryview[float]"], tuple[float, ...]]
HistogramPlan = list[tuple[int, list[tuple[int, str]], str, str]]

INF = math.inf

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Families computed from another family's value at scrape time.
DERIVED: dict[str, tuple[Family, Callable[[float, float], float]]] = {
    PIPELINE_DATA_TS.name: (PIPELINE_FRESHNESS, lambda value, now: max(0.0, now - value))}
_DERIVED_NAMES = {d.name for d, _ in DERIVED.values()}

# Why a key of a multiprocess file is left out (mlsidecar_multiproc_keys_skipped_total{reason}).
SKIP_BAD_KEY = "bad_key"  # not a [name, sample, {labels}, help] list of strings
SKIP_INVALID_NAME = "invalid_name"  # a metric, sample or label name Prometheus would refuse
SKIP_CLASH = "clashing_family"  # its sample names belong to another family (or another type)
SKIP_REASONS = (SKIP_BAD_KEY, SKIP_INVALID_NAME, SKIP_CLASH)
SERVER_OWNED = "(rendered by the server)"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_STRINGS = frozenset({str})
_SHAPES_KEPT = 10000


def _sample_names(base: str, typ: str) -> tuple[str, ...]:
    """Every sample name a family writes in either exposition format."""
    if typ == "counter":
        return base, base + "_total", base + "_created"
    if typ == "histogram":
        return base, base + "_bucket", base + "_sum", base + "_count", base + "_created"
    if typ == "summary":
        return base, base + "_sum", base + "_count", base + "_created"
    return (base,)




def format_value(v: float) -> str:
    """Go-style float text, as Prometheus expects (+Inf, -Inf, NaN)."""
    if -INF < v < INF:
        return repr(v)
    if v == INF:
        return "+Inf"
    if v == -INF:
        return "-Inf"
    if v != v:
        return "NaN"
    return repr(v)


def escape_label(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n")


def unit_of(name: str, families: Catalogue | None = None) -> str:
    """The catalogue's unit of a family, for OpenMetrics' ``# UNIT`` line.

    OpenMetrics wants the name to end in the unit, so a unit the name does not
    end in (none of ours) is left out rather than served wrong.
    """
    fam = (families if families is not None else catalogue.builtin()).stored(name)
    unit = fam.unit if fam is not None else ""
    return unit if unit and name.endswith("_" + unit) else ""


def _with_exemplars(name: str, lines: list[str], exemplars: Exemplars) -> list[str]:
    """Bucket lines with their exemplar appended (OpenMetrics), matched by the line's name and labels."""
    from .exemplars import suffix

    by_prefix: dict[str, str] = {}
    for (label_items, le), ex in exemplars.items():
        base = ",".join(f'{k}="{escape_label(v)}"' for k, v in label_items)
        try:
            le = floatToGoString(le)  # the bucket lines' spelling (a file may hold another)
        except ValueError:
            continue
        by_prefix[f'{name}_bucket{{{base}{"," if base else ""}le="{le}"}} '] = suffix(ex)
    out: list[str] = []
    for line in lines:
        cut = line.rfind(" ") + 1
        out.append(line + by_prefix.get(line[:cut], ""))
    return out


def render_labels(labels: LabelItems) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


@dataclass
class _Family:
    """Everything the reader knows about one metric family, across files."""

    name: str  # as in the key: counters without _total
    type: str
    help: str
    expire_after: float = INF
    # Plain series: slot -> (sample name, label text)
    simple: dict[int, str] = field(default_factory=dict)
    # Histogram series: labels (without le) -> {le float: slot}, sum slot
    buckets: dict[LabelItems, dict[float, int]] = field(default_factory=dict)
    sums: dict[LabelItems, int] = field(default_factory=dict)
    # Rendered once per new series: [(sum slot, [(bucket slot, line prefix)], count prefix, sum prefix)]
    histogram_plan: HistogramPlan | None = None


class _FileView:
    """One *.db file: an mmap, the keys parsed so far, and where their values are."""

    def __init__(self, path: str, reader: MetricsReader):
        self.path = path
        self.type, self.mode, self.identity = parse_file_name(path)
        self.reader = reader
        self.ino: int | None = None
        self.mm: mmap.mmap | None = None
        self.doubles: memoryview[float] | None = None
        self.parsed = HEADER
        self.slots: list[int] = []
        self.indexes: list[int] = []
        self.getter: Getter | None = None
        self.ts_getter: Getter | None = None

    def close(self) -> None:
        if self.doubles is not None:
            self.doubles.release()
            self.doubles = None
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def refresh(self) -> bool:
        """Map new bytes and parse new keys; False when the file cannot be served now."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if st.st_ino != self.ino:
            self.close()
            self.ino = st.st_ino
            self.parsed = HEADER
            self.slots, self.indexes = [], []
            self.getter = self.ts_getter = None
        if st.st_size < HEADER or st.st_size % 8:
            return False
        mm = self.mm
        if mm is None or len(mm) < st.st_size:
            self.close()
            with open(self.path, "rb") as fh:
                mm = self.mm = mmap.mmap(fh.fileno(), st.st_size, access=mmap.ACCESS_READ)
            self.doubles = memoryview(mm).cast("d")
        used = read_used(mm)
        if used > len(mm) or used < HEADER:
            return False
        if used > self.parsed:
            try:
                for key, off in iter_raw_entries(mm, self.parsed, used):
                    slot = self.reader._slot(self, key)
                    if slot is not None:
                        self.slots.append(slot)
                        self.indexes.append(off >> 3)
                    self.parsed = off + 16
            except CorruptFile:
                # Serve what parsed; the rest is skipped until the file is replaced.
                self.reader.skipped_files += 1
            self.getter = self.ts_getter = None
        return True

    def read(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """All values and timestamps of this file, each in one C-level call."""
        doubles = self.doubles
        if not self.indexes or doubles is None:
            return (), ()
        getter, ts_getter = self.getter, self.ts_getter
        if getter is None or ts_getter is None:
            idx = self.indexes
            if len(idx) == 1:
                i = idx[0]
                getter = self.getter = lambda d: (d[i],)
                ts_getter = self.ts_getter = lambda d: (d[i + 1],)
            else:
                getter = self.getter = operator.itemgetter(*idx)
                ts_getter = self.ts_getter = operator.itemgetter(*[i + 1 for i in idx])
        return getter(doubles), ts_getter(doubles)


class MetricsReader:
    """Collects every *.db file under some directories into one exposition.

    ``families`` is the catalogue of built-in families (:func:`mlsidecar.catalogue.builtin`
    unless given): their sample names are theirs alone, their units go into OpenMetrics.
    """

    def __init__(self, directories: list[str], clock: Callable[[], float] = time.time,
                 expiry: dict[str, float] | None = None, families: Catalogue | None = None):
        self.catalogue = families if families is not None else catalogue.builtin()
        self.directories = list(directories)
        self.expiry = expiry if expiry is not None else self.catalogue.expiry()
        self.clock = clock
        self.files: dict[str, _FileView] = {}
        self.families: dict[str, _Family] = {}
        self._slot_ids: dict[tuple[str, str, LabelItems, float | None], int] = {}
        self._slot_family: list[_Family] = []
        self._shapes: dict[tuple[Any, ...], bool] = {}  # (type, name, sample, no le, *label names) -> valid
        self.skipped_files = 0
        self.skipped_keys: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self.exemplars: ExemplarReader | None = None  # bucket exemplars in OpenMetrics
        self.series = 0
        # Sample name -> (family, type) that writes it: the catalogue's first, so a foreign
        # file can neither change a built-in family's type nor write into the server's own.
        self._claimed: dict[str, tuple[str, str]] = {}
        for fam in self.catalogue.values():
            base = metric_key_name(fam)
            owner = (SERVER_OWNED, "") if fam.fed_by.startswith("server") or fam.name in _DERIVED_NAMES \
                else (base, fam.type)
            for n in _sample_names(base, fam.type):
                self._claimed.setdefault(n, owner)

    # --- keys -> slots ------------------------------------------------------
    def _skip(self, reason: str) -> None:
        self.skipped_keys[reason] = self.skipped_keys.get(reason, 0) + 1

    def _slot(self, view: _FileView, raw: bytes) -> int | None:
        """The slot of one key, or None when the key cannot be served (skipped and counted)."""
        try:
            metric_name, sample_name, labels, help_text = parse_key(raw)
        except BadKey:
            self._skip(SKIP_BAD_KEY)
            return None
        if view.mode in ("all", "liveall"):
            labels = {**labels, "pid": view.identity}
        le = labels.pop("le", None) if view.type == "histogram" else None
        # The names are checked once per shape (type, names, label names): 100,000 keys have a few.
        shape = (view.type, metric_name, sample_name, le is None, *labels)
        valid = self._shapes.get(shape)
        if valid is None:
            if len(self._shapes) >= _SHAPES_KEPT:  # foreign keys of ever new names: bounded
                self._shapes.clear()
            valid = self._shapes[shape] = self._valid(view.type, metric_name, sample_name, labels,
                                                      None if le is None else "0")
        # A bucket is its bound, however a writer spelled it ("1e+07", "10000000.0"), as in
        # prometheus_client's MultiProcessCollector: both spellings add up in one bucket.
        try:
            bound = None if le is None else float(le)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            self._skip(SKIP_INVALID_NAME)
            return None
        items: Iterable[tuple[str, Any]] = labels.items()
        if not _STRINGS.issuperset(map(type, labels.values())):  # another client's numbers
            items = [(k, str(v)) for k, v in items]
        label_items = tuple(sorted(items))
        ident = (metric_name, sample_name, label_items, bound)
        slot = self._slot_ids.get(ident)
        if slot is not None:
            return slot
        fam = self.families.get(metric_name)
        if fam is None:
            if not self._claim(metric_name, view.type):
                self._skip(SKIP_CLASH)
                return None
            ttl = self.expiry.get(metric_name, self.expiry.get(metric_name + "_total", INF))
            fam = self.families[metric_name] = _Family(metric_name, view.type, help_text, ttl)
        elif fam.type != view.type:
            self._skip(SKIP_CLASH)
            return None
        slot = len(self._slot_family)
        self._slot_ids[ident] = slot
        self._slot_family.append(fam)
        if view.type == "histogram":
            fam.histogram_plan = None  # a new bucket or sum: plan the lines again
            if bound is not None:
                fam.buckets.setdefault(label_items, {})[bound] = slot
            elif sample_name.endswith("_sum"):
                fam.sums[label_items] = slot
        else:
            fam.simple[slot] = sample_name + render_labels(label_items)
        return slot

    @staticmethod
    def _valid(typ: str, name: str, sample: str, labels: dict[str, Any], le: Any) -> bool:
        """Prometheus' rules for metric and label names, and the samples each type may have."""
        if not _METRIC_NAME.match(name):
            return False
        for k in labels:
            if not _LABEL_NAME.match(k) or k.startswith("__") or k == "le" or (k == "quantile"
                                                                                and typ != "summary"):
                return False
        if typ == "histogram":
            if le is not None:
                try:
                    float(le)
                except (TypeError, ValueError):
                    return False
                return sample == name + "_bucket"
            return sample == name + "_sum"
        if typ == "counter":
            return sample == name + "_total" or (sample == name and name.endswith("_total"))
        if typ == "summary":
            return sample in (name + "_sum", name + "_count")
        return sample == name

    def _claim(self, name: str, typ: str) -> bool:
        """Reserve every sample name a new family writes; False when another family has one."""
        owner = (stored_name(name, typ), typ)
        names = _sample_names(owner[0], typ)
        if any(self._claimed.get(n, owner) != owner for n in names):
            return False
        for n in names:
            self._claimed[n] = owner
        return True

    def _scan(self) -> list[_FileView]:
        seen = set()
        for d in self.directories:
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                if is_metric_file(name):
                    seen.add(os.path.join(d, name))
        for path in list(self.files):
            if path not in seen:
                self.files.pop(path).close()
        for path in seen:
            if path not in self.files:
                self.files[path] = _FileView(path, self)
        return [self.files[p] for p in sorted(seen)]

    # --- collection -----------------------------------------------------------
    def warm(self) -> None:
        """Parse every key the files hold now and plan the histogram lines, without rendering.

        The server calls it as it starts, while the workers restore their files, so the first
        scrape after a restart only reads values: parsing 100,000 keys takes about a second.
        Keys are parsed once either way (a key skipped is counted once, here or at a scrape);
        a file that cannot be served now is counted by the scrapes that skip it, not here.
        """
        skipped_files = self.skipped_files
        for view in self._scan():
            view.refresh()
        self.skipped_files = skipped_files
        for fam in self.families.values():
            if fam.type == "histogram" and fam.histogram_plan is None:
                fam.histogram_plan = self._histogram_plan(fam)

    def collect(self) -> tuple[list[float], list[float]]:
        """Sum (or pick the latest of) every slot's value over all files."""
        views = self._scan()
        n = len(self._slot_family)
        values = [0.0] * n
        stamps = [-INF] * n
        for view in views:
            if not view.refresh():
                self.skipped_files += 1
                continue
            if len(self._slot_family) > n:
                grow = len(self._slot_family) - n
                values.extend([0.0] * grow)
                stamps.extend([-INF] * grow)
                n += grow
            vals, tss = view.read()
            if view.type == "gauge" and view.mode not in ("sum", "livesum"):
                pick = {"min": min, "livemin": min, "max": max, "livemax": max}.get(view.mode)
                for slot, v, t in zip(view.slots, vals, tss):
                    if stamps[slot] == -INF:
                        values[slot] = v
                    elif pick is not None:
                        values[slot] = pick(values[slot], v)
                    elif t >= stamps[slot]:
                        values[slot] = v
                    if t > stamps[slot]:
                        stamps[slot] = t
            else:
                for slot, v, t in zip(view.slots, vals, tss):
                    values[slot] += v
                    if t > stamps[slot]:
                        stamps[slot] = t
        return values, stamps

    def render(self, openmetrics: bool = False, extra: Extra = ()) -> str:
        """The whole exposition; ``extra`` adds the server's own counters:
        ``[(family, [(label items, value), ...]), ...]``."""
        values, stamps = self.collect()
        now = self.clock()
        out: list[str] = []
        series = 0
        traced: dict[str, Exemplars] = self.exemplars.by_family() \
            if openmetrics and self.exemplars is not None else {}
        for name in sorted(self.families):
            fam = self.families[name]
            floor = now - fam.expire_after if fam.expire_after != INF else 0.0
            # Removed series carry a negative timestamp; foreign files write 0.
            if fam.type == "histogram":
                lines = self._histogram_lines(fam, values, stamps, floor)
                if fam.name in traced:
                    lines = _with_exemplars(fam.name, lines, traced[fam.name])
            else:
                lines = [f"{text} {format_value(values[slot])}"
                         for slot, text in fam.simple.items() if stamps[slot] >= floor]
            if not lines:
                continue
            series += len(lines)
            self._header(out, fam.name, fam.type, fam.help, openmetrics)
            out.extend(lines)
            derived = DERIVED.get(fam.name)
            if derived is not None:
                dfam, fn = derived
                dlines = [f"{dfam.name}{text[len(fam.name):]} {format_value(fn(values[slot], now))}"
                          for slot, text in fam.simple.items() if stamps[slot] >= floor]
                self._header(out, dfam.name, dfam.type, dfam.help, openmetrics)
                out.extend(dlines)
        skipped = catalogue.SCRAPE_FILES_SKIPPED
        self._header(out, skipped.name, skipped.type, skipped.help, openmetrics)
        out.append(f"{skipped.name} {format_value(float(self.skipped_files))}")
        keys = catalogue.SCRAPE_KEYS_SKIPPED
        self._header(out, keys.name, keys.type, keys.help, openmetrics)
        out.extend(f'{keys.name}{{reason="{r}"}} {format_value(float(n))}' for r, n in self.skipped_keys.items())
        for own, samples in extra:
            self._header(out, own.name, own.type, own.help, openmetrics)
            out.extend(f"{own.name}{render_labels(labels)} {format_value(float(v))}" for labels, v in samples)
        if openmetrics:
            out.append("# EOF")
        self.series = series
        out.append("")
        return "\n".join(out)

    def _header(self, out: list[str], name: str, typ: str, help_text: str, openmetrics: bool) -> None:
        if openmetrics:
            base = stored_name(name, typ)
            out.append(f"# TYPE {base} {typ}")
            unit = unit_of(base, self.catalogue)
            if unit:
                out.append(f"# UNIT {base} {unit}")
            out.append(f"# HELP {base} {escape_help(help_text).replace(chr(34), chr(92) + chr(34))}")
        else:
            full = family_name(name, typ)
            out.append(f"# HELP {full} {escape_help(help_text)}")
            out.append(f"# TYPE {full} {typ}")

    @staticmethod
    def _histogram_plan(fam: _Family) -> HistogramPlan:
        plan: HistogramPlan = []
        le_texts: dict[float, str] = {}  # as prometheus_client writes a bound: 1e7 is "1e+07"
        for label_items, by_le in fam.buckets.items():
            sum_slot = fam.sums.get(label_items)
            if sum_slot is None:
                continue
            base = ",".join(f'{k}="{escape_label(v)}"' for k, v in label_items)
            sep = "," if base else ""
            buckets = []
            for le in sorted(by_le):
                le_text = le_texts.get(le)
                if le_text is None:
                    le_text = le_texts[le] = floatToGoString(le)
                buckets.append((by_le[le], f'{fam.name}_bucket{{{base}{sep}le="{le_text}"}} '))
            suffix = "{" + base + "}" if base else ""
            plan.append((sum_slot, buckets, f"{fam.name}_count{suffix} ", f"{fam.name}_sum{suffix} "))
        return plan

    @classmethod
    def _histogram_lines(cls, fam: _Family, values: list[float], stamps: list[float], floor: float) -> list[str]:
        plan = fam.histogram_plan
        if plan is None:
            plan = fam.histogram_plan = cls._histogram_plan(fam)
        lines: list[str] = []
        append = lines.append
        for sum_slot, buckets, count_prefix, sum_prefix in plan:
            if stamps[sum_slot] < floor:
                continue
            acc = 0.0
            for slot, prefix in buckets:
                acc += values[slot]
                append(prefix + format_value(acc))
            append(count_prefix + format_value(acc))
            append(sum_prefix + format_value(values[sum_slot]))
        return lines

    def close(self) -> None:
        for view in self.files.values():
            view.close()
        self.files.clear()
