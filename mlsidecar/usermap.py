"""User mappings: metrics from events the built-in kinds do not cover.

In the spirit of statsd_exporter's mapping file, each ``[[mappings]]`` table
matches events of one kind (and optionally field values) and produces one
or more metrics from their fields::

    [[mappings]]
    event = "cache_lookup"
    match = { tier = "redis" }            # all must be equal; "*" matches any present value
    [[mappings.metrics]]
    name = "app_cache_lookups_total"
    type = "counter"                      # counter | gauge | histogram
    labels = { result = "result" }        # label name -> field (dotted path for nested)
    [[mappings.metrics]]
    name = "app_cache_latency_seconds"
    type = "histogram"
    value = "latency_s"                   # field holding the value (counters default to 1)
    buckets = [0.001, 0.01, 0.1, 1]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

from . import catalogue
from .events import DEFAULT_LABEL_LENGTH, MAX_AMOUNT, MISSING_FIELD, Rejected, check_number, label
from .fileformat import family_name, stored_name
from .section import Section

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _lookup(ev: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = ev
    for part in path:
        if type(v) is not dict:
            return None
        v = v.get(part)
    return v


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str
    help: str
    value_path: tuple[str, ...]
    labels: tuple[tuple[str, tuple[str, ...]], ...]
    buckets: tuple[float, ...] | None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, _ in self.labels))

    def label_values(self, ev: dict[str, Any], limit: int = DEFAULT_LABEL_LENGTH) -> tuple[str, ...]:
        values = {}
        for n, path in self.labels:
            field = ".".join(path)
            v = _lookup(ev, path)
            if v is None:
                _missing(field)
            values[n] = label({field: v}, field, limit=limit)
        return tuple(values[n] for n in self.label_names)

    def value(self, ev: dict[str, Any]) -> float:
        if not self.value_path:
            return 1.0
        v = _lookup(ev, self.value_path)
        if v is None:
            _missing(".".join(self.value_path))
        if self.type == "gauge":
            return check_number(v, ".".join(self.value_path))
        # Added up: non-negative and bounded, as a metric event's counters and histograms.
        return check_number(v, ".".join(self.value_path), 0.0, MAX_AMOUNT)


def _clash(name: str, typ: str, taken: dict[str, tuple[str, str]]) -> str:
    """Why a mapping's metric could not be exposed beside the others ('' when it can); the
    same metric in several mappings (same type) is fine. Records its names in ``taken``."""
    base = stored_name(name, typ)
    for suffix in catalogue.SAMPLE_SUFFIXES:
        if base.endswith(suffix):
            return f"{name!r} ends in {suffix}, which is how samples of other metrics are named"
    names = catalogue.exposed_names(name, typ)
    for n in names:
        other = taken.get(n)
        if other is not None and other != (name, typ):
            return f"{name!r} ({typ}) would share the name {n} with {other[1]} {other[0]!r}"
    for n in names:
        taken[n] = (name, typ)
    return ""


def _missing(field: str) -> NoReturn:
    raise Rejected(MISSING_FIELD, f"'{field}' is required by a mapping")


@dataclass(frozen=True)
class UserMapping:
    event: str
    match: tuple[tuple[tuple[str, ...], object], ...]
    metrics: tuple[MetricSpec, ...]

    def matches(self, ev: dict[str, Any]) -> bool:
        for path, want in self.match:
            got = _lookup(ev, path)
            if got is None or (want != "*" and got != want):
                return False
        return True


def parse(top: Section, key: str) -> tuple[UserMapping, ...]:
    """Validate the ``[[mappings]]`` array of tables."""
    top.used.add(key)
    raw = top.data.get(key, [])
    if not isinstance(raw, list):
        raise top.error(key, "must be an array of tables ([[mappings]])")
    out = []
    taken: dict[str, tuple[str, str]] = {}  # exposed name -> (metric, type), over all mappings
    for i, item in enumerate(raw):
        s = Section(top.source, f"{key}[{i}]", item)
        event = s.get("event", str, "")
        if not event:
            raise s.error("event", "is required: the event kind this mapping applies to")
        match = s.get("match", dict, {})
        for f, v in match.items():
            if type(v) not in (str, int, float, bool):
                raise s.error(f"match.{f}", "must be a string, number or boolean")
        metrics_raw = s.get("metrics", tuple, ())
        if not metrics_raw:
            raise s.error("metrics", "needs at least one [[mappings.metrics]] table")
        metrics = []
        for j, m in enumerate(metrics_raw):
            ms = Section(top.source, f"{key}[{i}].metrics[{j}]", m)
            name = ms.get("name", str, "")
            if not NAME.match(name):
                raise ms.error("name", f"{name!r} is not a valid Prometheus metric name")
            if name.startswith(("ml_", "mlsidecar_")):
                raise ms.error("name", "the ml_ and mlsidecar_ prefixes are reserved for built-in metrics")
            typ = ms.get("type", str, "counter")
            if typ not in ("counter", "gauge", "histogram"):
                raise ms.error("type", "must be counter, gauge or histogram")
            name = family_name(name, typ)
            value = ms.get("value", str, "")
            if typ != "counter" and not value:
                raise ms.error("value", f"a {typ} needs the field that holds its value")
            labels = ms.get("labels", dict, {})
            for ln, field in labels.items():
                if not LABEL.match(ln) or ln == "le" or ln.startswith("__"):
                    raise ms.error(f"labels.{ln}", "is not a valid label name")
                if type(field) is not str or not field:
                    raise ms.error(f"labels.{ln}", "must name a field of the event")
            buckets = ms.get("buckets", tuple, ())
            if buckets and (any(type(b) not in (int, float) for b in buckets)
                            or list(buckets) != sorted(buckets)):
                raise ms.error("buckets", "must be a sorted list of numbers")
            help_text = ms.get("help", str, f"Mapped from '{event}' events.")
            ms.finish()
            problem = _clash(name, typ, taken)
            if problem:
                raise ms.error("name", problem)
            metrics.append(MetricSpec(
                name, typ, help_text, tuple(value.split(".")) if value else (),
                tuple((ln, tuple(f.split("."))) for ln, f in sorted(labels.items())),
                tuple(float(b) for b in buckets) or None))
        s.finish()
        out.append(UserMapping(event, tuple((tuple(f.split(".")), v) for f, v in match.items()),
                               tuple(metrics)))
    return tuple(out)
