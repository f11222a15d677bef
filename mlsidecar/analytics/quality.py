"""Data quality of prediction features: missing, out-of-range and mistyped values.

Every prediction event that carries ``features`` is checked against each
feature the model is known to have (declared in the config, listed in its
reference, or seen before; at most ``max_features`` per model):

* ``missing``: the feature is absent from the event, null, or a NaN/Infinity.
* ``type_mismatch``: a numeric feature got something other than a number
  (booleans are not numbers), or a categorical feature got something other
  than a string, integer or boolean (an object, an array, a float).
* ``out_of_range``: a numeric value outside the declared ``min``/``max``, or
  a categorical value not in the declared ``categories``.

A feature with no declared type takes the type of its reference, or else of
the first non-null value it gets. Rates are over the last ``window_size``
checks of the feature (a ring of one byte per check); cumulative counts are
exported as counters. ``ml_data_quality_score{quality_metric}`` per model
version is 1.0 when perfect: ``sidecar_completeness`` = 1 - missing share,
``sidecar_type_validity`` = 1 - mismatch share, ``sidecar_range_validity`` =
1 - out-of-range share, ``sidecar_overall`` = share of checks with no problem,
each over all the model's features' windows together. The ``sidecar_`` prefix
keeps them apart from the scores a workload sends in ``data_quality`` events.
"""

from __future__ import annotations

from .. import catalogue as C
from ..catalogue import COUNTER, GAUGE, HOUR, Family
from .reference import CATEGORICAL, NUMERIC

OK, MISSING, OUT_OF_RANGE, TYPE_MISMATCH = 0, 1, 2, 3
PROBLEMS = ("missing", "out_of_range", "type_mismatch")  # codes 1..3
FEATURE = C.MODEL + ("feature_name",)

CHECKS = Family(
    "ml_feature_checks_total", COUNTER,
    "Feature values checked (one per feature per prediction event carrying features).",
    FEATURE, fed_by="prediction (features)")
ISSUES = Family(
    "ml_feature_quality_issues_total", COUNTER,
    "Feature values with a problem: missing, out_of_range, type_mismatch.",
    FEATURE + ("problem",), fed_by="prediction (features)",
    zero_siblings=(("problem", PROBLEMS),))
RATE = Family(
    "ml_feature_quality_rate", GAUGE,
    "Share (0-1) of a feature's recent values with a problem, over the quality window.",
    FEATURE + ("problem",), fed_by="prediction (features)", expire_after=6 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (CHECKS, ISSUES, RATE)


class QualityRing:
    """Problem codes of the last ``size`` checks, with running counts per code."""

    __slots__ = ("buf", "size", "pos", "n", "counts", "totals", "flushed", "dirty")

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.size = size
        self.pos = 0
        self.n = 0
        self.counts = [0, 0, 0, 0]
        self.totals = [0, 0, 0, 0]
        self.flushed = [0, 0, 0, 0]
        self.dirty = False

    def push(self, code: int) -> None:
        pos = self.pos
        counts = self.counts
        if self.n == self.size:
            counts[self.buf[pos]] -= 1
        else:
            self.n += 1
        self.buf[pos] = code
        counts[code] += 1
        self.totals[code] += 1
        pos += 1
        self.pos = 0 if pos == self.size else pos
        self.dirty = True

    def rates(self) -> tuple[float, float, float] | None:
        n = self.n
        if not n:
            return None
        c = self.counts
        return c[MISSING] / n, c[OUT_OF_RANGE] / n, c[TYPE_MISMATCH] / n


class FeatureTracker:
    """One feature of one model version: its type, declared domain, quality ring and drift."""

    __slots__ = ("kind", "lo", "hi", "cats", "ring", "drift", "seen", "make_drift")

    def __init__(self, kind: str | None, ring_size: int, lo: float | None = None,
                 hi: float | None = None, categories=None, make_drift=None):
        self.kind = kind
        self.lo = -float("inf") if lo is None else lo
        self.hi = float("inf") if hi is None else hi
        self.cats = frozenset(categories) if categories else None
        self.ring = QualityRing(ring_size)
        self.make_drift = make_drift  # kind -> FeatureDrift | None, called once the kind is known
        self.drift = make_drift(kind) if (make_drift is not None and kind is not None) else None
        self.seen = 0

    def observe(self, v) -> None:
        t = type(v)
        kind = self.kind
        if v is None or (t is float and v - v != 0.0):
            code = MISSING
        elif kind is None:
            if t is float or t is int:
                self.kind = NUMERIC
            elif t is str or t is bool:
                self.kind = CATEGORICAL
            else:
                self.ring.push(TYPE_MISMATCH)
                return
            if self.make_drift is not None:
                self.drift = self.make_drift(self.kind)
            self.observe(v)
            return
        elif kind == NUMERIC:
            if t is float or t is int:
                code = OUT_OF_RANGE if (v < self.lo or v > self.hi) else OK
                if self.drift is not None:
                    self.drift.add(float(v))
            else:
                code = TYPE_MISMATCH
        else:
            if t is str:
                c = v
            elif t is bool:
                c = "true" if v else "false"
            elif t is int:
                c = str(v)
            else:
                self.ring.push(TYPE_MISMATCH)
                return
            code = OUT_OF_RANGE if (self.cats is not None and c not in self.cats) else OK
            if self.drift is not None:
                self.drift.add(c)
        self.ring.push(code)


def flush_counters(batch, labels: tuple[str, str, str], ring: QualityRing) -> None:
    """Hand the ring's new cumulative counts to the batch as counter deltas."""
    totals, flushed = ring.totals, ring.flushed
    checks = sum(totals) - sum(flushed)
    if not checks:
        return
    batch.inc(CHECKS, labels, checks)
    for code, problem in enumerate(PROBLEMS, 1):
        d = totals[code] - flushed[code]
        if d:
            batch.inc(ISSUES, labels + (problem,), d)
        else:
            batch.ensure(ISSUES, labels + (problem,))
    ring.flushed = list(totals)


def model_scores(rings) -> dict[str, float] | None:
    """The per-model quality scores over the windows of all its features."""
    n = missing = rng = typ = 0
    for r in rings:
        n += r.n
        c = r.counts
        missing += c[MISSING]
        rng += c[OUT_OF_RANGE]
        typ += c[TYPE_MISMATCH]
    if not n:
        return None
    # "sidecar_": the workload's own data_quality events write the same family with its own
    # quality_metric names (often "completeness"); one name per writer keeps both series whole.
    return {"sidecar_completeness": 1 - missing / n, "sidecar_type_validity": 1 - typ / n,
            "sidecar_range_validity": 1 - rng / n, "sidecar_overall": 1 - (missing + rng + typ) / n}
