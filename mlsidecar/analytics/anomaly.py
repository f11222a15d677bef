"""Anomaly scores of key signals: a robust z-score against a rolling baseline.

Every ``interval`` seconds each model version yields one value per signal:

* ``latency_p95``: the 95th percentile of the prediction latencies of the
  interval, interpolated within the ``ml_prediction_latency_seconds`` buckets
  as PromQL's histogram_quantile does (read from the chunk's histogram
  deltas, so the per-event path pays nothing);
* ``error_rate``: errors / predictions in the interval;
* ``accuracy``: the live-window accuracy at the end of the interval.

The score of a value ``x`` against the previous ``baseline_points`` values
``b`` is ``(x - median(b)) / (1.4826 * MAD(b))``; when the MAD is 0 the mean
absolute deviation around the median times 1.2533 is used instead (both
estimate one standard deviation for normal data); when that is 0 too, the
score is 0 if ``x`` equals the median and +-100 otherwise. Scores are clamped
to [-100, 100] and exported once the baseline holds ``min_points`` values.
The value itself is exported too, so alerts can combine both, e.g.
``ml_anomaly_score{signal="latency_p95"} > 3``.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median

from .. import catalogue as C
from ..catalogue import GAUGE, HOUR, Family

SIGNALS = ("latency_p95", "error_rate", "accuracy")
CAP = 100.0
MAD_SCALE = 1.4826
MEAN_AD_SCALE = 1.2533

SCORE = Family(
    "ml_anomaly_score", GAUGE,
    "Robust z-score (median/MAD) of a signal against its rolling baseline; |score| > 3 is unusual.",
    C.MODEL + ("signal",), fed_by="prediction (derived)", expire_after=6 * HOUR)
VALUE = Family(
    "ml_anomaly_signal_value", GAUGE, "The latest value of a signal scored for anomalies.",
    C.MODEL + ("signal",), fed_by="prediction (derived)", expire_after=6 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (SCORE, VALUE)


def robust_z(x: float, baseline) -> float:
    """The robust z-score of ``x`` against the baseline values (see the module docstring)."""
    b = list(baseline)
    if not b:
        raise ValueError("empty baseline")
    med = median(b)
    dev = [abs(v - med) for v in b]
    mad = median(dev)
    if mad > 0:
        z = (x - med) / (MAD_SCALE * mad)
    else:
        mean_ad = sum(dev) / len(dev)
        if mean_ad > 0:
            z = (x - med) / (MEAN_AD_SCALE * mean_ad)
        elif x == med:
            z = 0.0
        else:
            z = math.copysign(CAP, x - med)
    return max(-CAP, min(CAP, z))


def histogram_quantile(q: float, bounds, counts) -> float | None:
    """PromQL's histogram_quantile on non-cumulative counts (len(bounds) + 1, last is +Inf)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    cum = 0.0
    for i, c in enumerate(counts):
        if cum + c >= rank and c:
            if i == len(bounds):
                return bounds[-1]
            lo = 0.0 if i == 0 else bounds[i - 1]
            hi = bounds[i]
            return lo + (hi - lo) * (rank - cum) / c
        cum += c
    return bounds[-1]


class SignalBaseline:
    __slots__ = ("values", "min_points")

    def __init__(self, points: int, min_points: int):
        self.values: deque = deque(maxlen=points)
        self.min_points = min_points

    def score(self, x: float) -> float | None:
        """Score ``x`` against the baseline, then add it; None while the baseline is short."""
        z = robust_z(x, self.values) if len(self.values) >= self.min_points else None
        self.values.append(x)
        return z


class ModelSignals:
    """The per-interval accumulators and baselines of one model version."""

    __slots__ = ("latency", "total", "errors", "baselines")

    def __init__(self, n_buckets: int):
        self.latency = [0.0] * n_buckets
        self.total = 0.0
        self.errors = 0.0
        self.baselines: dict[str, SignalBaseline] = {}


class AnomalyTracker:
    def __init__(self, signals=SIGNALS, points: int = 60, min_points: int = 10, max_models: int = 100):
        self.signals = tuple(signals)
        self.points = points
        self.min_points = min_points
        self.max_models = max_models
        self.models: dict[tuple[str, str], ModelSignals] = {}
        self._bounds = C.PREDICTION_LATENCY.buckets
        self._want_latency = "latency_p95" in self.signals
        self._want_errors = "error_rate" in self.signals

    def _model(self, key) -> ModelSignals | None:
        m = self.models.get(key)
        if m is None and len(self.models) < self.max_models:
            m = self.models[key] = ModelSignals(len(self._bounds) + 1)
        return m

    def accumulate(self, batch) -> None:
        """Fold the chunk's prediction counter and latency histogram deltas in."""
        if self._want_errors:
            for (fam, lv), v in batch.counters.items():
                if fam is C.PREDICTIONS:
                    m = self._model(lv[:2])
                    if m is not None:
                        m.total += v
                        if lv[2] == "error":
                            m.errors += v
        if self._want_latency:
            for (fam, lv), h in batch.histograms.items():
                if fam is C.PREDICTION_LATENCY:
                    m = self._model(lv)
                    if m is not None:
                        lat = m.latency
                        for i in range(len(lat)):
                            lat[i] += h[i]

    def sample(self, batch, accuracy_of) -> None:
        """End an interval: score each signal that has a value, reset the accumulators."""
        for key, m in self.models.items():
            values = {}
            if self._want_latency:
                p95 = histogram_quantile(0.95, self._bounds, m.latency)
                if p95 is not None:
                    values["latency_p95"] = p95
            if self._want_errors and m.total:
                values["error_rate"] = m.errors / m.total
            if "accuracy" in self.signals:
                acc = accuracy_of(key)
                if acc is not None:
                    values["accuracy"] = acc
            m.latency = [0.0] * len(m.latency)
            m.total = m.errors = 0.0
            for signal, x in values.items():
                b = m.baselines.get(signal)
                if b is None:
                    b = m.baselines[signal] = SignalBaseline(self.points, self.min_points)
                z = b.score(x)
                batch.set(VALUE, key + (signal,), x)
                if z is not None:
                    batch.set(SCORE, key + (signal,), z)
