"""Exemplars: the latest traced observation per histogram bucket, for OpenMetrics.

A prediction event may carry ``trace_id``; its latency then becomes the
exemplar of the bucket it falls in (``... le="0.025"} 12 # {trace_id="4bf9..."} 0.012 1764000000.5``),
so Grafana can link a slow bucket to the trace of a request that landed there.

Exemplars are a hint, not a count: each ingest worker keeps the latest one per
(series, bucket) in memory and rewrites ``STATE_DIR/exemplars/IDENTITY.json``
(atomically) after a chunk that changed them; the server reads those files at
scrape time and adds them to bucket lines in OpenMetrics only (the Prometheus
text format has no exemplars). They are not journalled: after a restart a
bucket has none until the next traced event.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.utils import floatToGoString

from .events import INVALID_VALUE, WRONG_TYPE, Rejected
from .logs import RateLimitedLog

if TYPE_CHECKING:
    from .catalogue import Family

LabelItems = tuple[tuple[str, str], ...]
# (sorted label items, le text) -> (trace_id, value, timestamp)
BucketExemplars = dict[tuple[LabelItems, str], tuple[str, float, float]]

log = logging.getLogger("mlsidecar.exemplars")
_errors = RateLimitedLog(log, interval=300.0)

# OpenMetrics: the exemplar's label names and values together at most 128 characters.
MAX_TRACE_ID = 64
DIRNAME = "exemplars"


def check_trace_id(value: Any) -> str:
    """A prediction's ``trace_id``: a string of 1-64 characters (an OpenMetrics exemplar label)."""
    if type(value) is not str:
        raise Rejected(WRONG_TYPE, "'trace_id' must be a string")
    if not 0 < len(value) <= MAX_TRACE_ID:
        raise Rejected(INVALID_VALUE, f"'trace_id' must be 1-{MAX_TRACE_ID} characters")
    trace_id: str = value
    return trace_id


def le_text(le: float) -> str:
    """A bucket bound as the exposition spells it (prometheus_client's floatToGoString)."""
    text: str = floatToGoString(le)
    return text


class ExemplarStore:
    """One ingest worker's latest exemplars, written to its file after a chunk changed them."""

    def __init__(self, state_dir: str, identity: str, static_labels: dict[str, str] | None = None):
        self.path = os.path.join(state_dir, DIRNAME, f"{identity}.json")
        self.static = dict(static_labels or {})
        # (family name, sorted label items, le) -> (trace_id, value, timestamp)
        self.latest: dict[tuple[str, LabelItems, float], tuple[str, float, float]] = {}
        self.dirty = False

    def record(self, family: Family, label_values: tuple[str, ...], value: float, trace_id: str, ts: float) -> None:
        labels = {**self.static, **dict(zip(family.labels, label_values))}
        i = bisect.bisect_left(family.buckets, value)
        le = family.buckets[i] if i < len(family.buckets) else math.inf
        self.latest[(family.name, tuple(sorted(labels.items())), le)] = (trace_id, value, ts)
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        rows = [[name, dict(items), le_text(le), tid, value, ts]
                for (name, items, le), (tid, value, ts) in self.latest.items()]
        tmp = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(rows))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as exc:
            _errors.warning("write", "cannot write exemplars to %s: %s", self.path, exc)


class ExemplarReader:
    """The server's view: every worker's file, re-read only when it changed."""

    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, DIRNAME)
        self._files: dict[str, tuple[int, list[Any]]] = {}

    def by_family(self) -> dict[str, BucketExemplars]:
        """{family name: {(sorted label items, le text): (trace_id, value, ts)}}; the latest wins."""
        try:
            names = [n for n in os.listdir(self.dir) if n.endswith(".json")]
        except FileNotFoundError:
            return {}
        out: dict[str, BucketExemplars] = {}
        for name in sorted(names):
            path = os.path.join(self.dir, name)
            try:
                mtime = os.stat(path).st_mtime_ns
                cached = self._files.get(path)
                if cached is None or cached[0] != mtime:
                    with open(path, "rb") as fh:
                        cached = self._files[path] = (mtime, orjson.loads(fh.read()))
            except (OSError, orjson.JSONDecodeError):
                continue
            for row in cached[1]:
                try:
                    fam, labels, le, tid, value, ts = row
                    key = (tuple(sorted((str(k), str(v)) for k, v in labels.items())), str(le))
                    old = out.setdefault(str(fam), {}).get(key)
                    if old is None or ts >= old[2]:
                        out[str(fam)][key] = (str(tid), float(value), float(ts))
                except (TypeError, ValueError, AttributeError):
                    continue
        for path in list(self._files):
            if os.path.basename(path) not in names:
                del self._files[path]
        return out


def suffix(exemplar: tuple[str, float, float]) -> str:
    """The text after a bucket's value: `` # {trace_id="..."} VALUE TIMESTAMP``."""
    from .exposition import escape_label, format_value

    tid, value, ts = exemplar
    return f' # {{trace_id="{escape_label(tid)}"}} {format_value(value)} {ts:.3f}'
