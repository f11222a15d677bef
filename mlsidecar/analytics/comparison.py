"""A/B and canary comparison of the versions of one model, with statistical significance.

Per compared version the sidecar keeps fixed-size rings (preallocated, never
grown) of the last ``window_size`` predictions' latency and error flag and of
the last ``window_size`` confidences; accuracy comes from the version's live
scoring window (:mod:`.performance`), so it is the same window as
``ml_model_accuracy_score{dataset="live"}``. The rings are fed once per chunk
from the Mapper's per-chunk prediction records: a plain prediction costs
nothing more per event.

For every (model, baseline, candidate) and metric, difference = candidate -
baseline, with

* accuracy, error_rate: the two-proportion z-test. The p-value uses the
  pooled proportion (statsmodels ``proportions_ztest``), the interval is the
  unpooled Wald interval (statsmodels ``confint_proportions_2indep``,
  method="wald");
* latency_seconds, confidence: Welch's t-test and its interval
  (``scipy.stats.ttest_ind(equal_var=False)`` and its ``confidence_interval``).

Below ``min_samples`` on either side, or when the test is undefined (zero
variance on both sides), the values are NaN, never 0.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any

from .. import catalogue as C
from ..catalogue import GAUGE, HOUR, Family
from .distributions import normal_quantile, normal_two_sided_p, t_quantile, t_two_sided_p

NAN = float("nan")
PAIR = ("model_name", "baseline_version", "candidate_version", "metric")
METRICS = ("accuracy", "error_rate", "latency_seconds", "confidence")

DIFFERENCE = Family(
    "ml_model_comparison_difference", GAUGE,
    "Candidate minus baseline version of a model over the comparison window, by metric "
    "(accuracy, error_rate, latency_seconds, confidence); NaN below the minimum sample size.",
    PAIR, fed_by="prediction (two or more versions)", expire_after=24 * HOUR)
CI_LOWER = Family(
    "ml_model_comparison_ci_lower", GAUGE,
    "Lower end of the confidence interval of ml_model_comparison_difference.",
    PAIR, fed_by="prediction (two or more versions)", expire_after=24 * HOUR)
CI_UPPER = Family(
    "ml_model_comparison_ci_upper", GAUGE,
    "Upper end of the confidence interval of ml_model_comparison_difference.",
    PAIR, fed_by="prediction (two or more versions)", expire_after=24 * HOUR)
P_VALUE = Family(
    "ml_model_comparison_p_value", GAUGE,
    "Two-sided p-value of the difference (two-proportion z-test for accuracy and error_rate, "
    "Welch's t-test for latency_seconds and confidence).",
    PAIR, fed_by="prediction (two or more versions)", expire_after=24 * HOUR)
SAMPLES = Family(
    "ml_model_comparison_samples", GAUGE,
    "Predictions of a compared version in its comparison window (accuracy: "
    "ml_model_live_window_samples).",
    C.MODEL, fed_by="prediction (two or more versions)", expire_after=24 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (DIFFERENCE, CI_LOWER, CI_UPPER, P_VALUE, SAMPLES)


@dataclass(frozen=True)
class Result:
    difference: float
    ci_lower: float
    ci_upper: float
    p_value: float


UNDEFINED = Result(NAN, NAN, NAN, NAN)


def two_proportions(x_candidate: int, n_candidate: int, x_baseline: int, n_baseline: int,
                    confidence_level: float = 0.95) -> Result:
    """Difference of two proportions, pooled z-test p-value, Wald interval."""
    if n_candidate <= 0 or n_baseline <= 0:
        return UNDEFINED
    p1 = x_candidate / n_candidate
    p2 = x_baseline / n_baseline
    diff = p1 - p2
    pooled = (x_candidate + x_baseline) / (n_candidate + n_baseline)
    se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_candidate + 1.0 / n_baseline))
    p_value = normal_two_sided_p(diff / se0) if se0 > 0 else NAN
    se = math.sqrt(p1 * (1.0 - p1) / n_candidate + p2 * (1.0 - p2) / n_baseline)
    half = normal_quantile(0.5 + confidence_level / 2.0) * se
    return Result(diff, diff - half, diff + half, p_value)


def mean_var(values) -> tuple[int, float, float]:
    """(n, mean, sample variance with ddof=1), two-pass with exact sums."""
    n = len(values)
    if n == 0:
        return 0, NAN, NAN
    mean = math.fsum(values) / n
    if n == 1:
        return 1, mean, NAN
    var = math.fsum((v - mean) * (v - mean) for v in values) / (n - 1)
    return n, mean, var


def welch(candidate: tuple[int, float, float], baseline: tuple[int, float, float],
          confidence_level: float = 0.95) -> Result:
    """Welch's t-test from (n, mean, variance) of each side."""
    n1, m1, v1 = candidate
    n2, m2, v2 = baseline
    if n1 < 2 or n2 < 2:
        return UNDEFINED
    diff = m1 - m2
    a, b = v1 / n1, v2 / n2
    se2 = a + b
    if not se2 > 0:
        return Result(diff, NAN, NAN, NAN)
    se = math.sqrt(se2)
    df = se2 * se2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    p_value = t_two_sided_p(diff / se, df)
    half = t_quantile(0.5 + confidence_level / 2.0, df) * se
    return Result(diff, diff - half, diff + half, p_value)


class Ring:
    """The last ``capacity`` floats, preallocated; ``values()`` in arrival order."""

    __slots__ = ("data", "capacity", "head", "count")

    def __init__(self, capacity: int, typecode: str = "d"):
        self.capacity = capacity
        self.data: array[Any] = array(typecode, bytes(array(typecode).itemsize * capacity))
        self.head = 0  # next write position
        self.count = 0

    def push(self, value) -> None:
        h = self.head
        self.data[h] = value
        h += 1
        self.head = 0 if h == self.capacity else h
        if self.count < self.capacity:
            self.count += 1

    def extend(self, values) -> None:
        cap = self.capacity
        m = len(values)
        if m >= cap:
            self.data[:] = array(self.data.typecode, values[m - cap:])
            self.head = 0
            self.count = cap
            return
        h = self.head
        first = min(m, cap - h)
        tc = self.data.typecode
        self.data[h:h + first] = array(tc, values[:first])
        if first < m:
            self.data[:m - first] = array(tc, values[first:])
        self.head = (h + m) % cap
        self.count = min(cap, self.count + m)

    def fill(self, value, m: int) -> None:
        """Append ``value`` ``m`` times."""
        self.extend([value] * min(m, self.capacity))

    def values(self) -> array:
        cap, count, head = self.capacity, self.count, self.head
        start = (head - count) % cap
        if start + count <= cap:
            return self.data[start:start + count]
        return self.data[start:] + self.data[:head]

    def keep_newest(self, m: int) -> None:
        """Forget all but the newest ``m`` values."""
        self.count = max(0, min(self.count, m))

    def nbytes(self) -> int:
        return self.data.itemsize * len(self.data)


class VersionStats:
    """What one compared version keeps: rings of latency, error flags, confidences.

    With ``window_seconds``, ``stamps`` hold (time, predictions so far, confidences so far) per
    chunk, for chunks whose values may still be in the rings (at most ``size`` + 1 of them), so
    the rings can be cut by age.
    """

    __slots__ = ("latency", "errors", "confidence", "last_seen", "traffic", "n_conf", "stamps",
                 "timed", "dirty")

    def __init__(self, size: int, timed: bool = False):
        self.latency = Ring(size)
        self.errors = Ring(size, "B")
        self.confidence = Ring(size)
        self.last_seen = 0.0
        self.traffic = 0   # predictions since tracking started
        self.n_conf = 0    # confidences since tracking started
        self.timed = timed
        self.stamps: deque[tuple[float, int, int]] = deque()
        self.dirty = True

    def add(self, now: float, latencies, confidences, error: bool) -> None:
        m = len(latencies)
        self.latency.extend(latencies)
        self.errors.extend(bytes([1]) * m if error else bytes(m))
        if confidences:
            self.confidence.extend(confidences)
        self.traffic += m
        self.n_conf += len(confidences)
        self.last_seen = now
        self.dirty = True
        if self.timed:
            st = self.stamps
            if st and st[-1][0] == now:
                st[-1] = (now, self.traffic, self.n_conf)
            else:
                st.append((now, self.traffic, self.n_conf))
            cap = self.latency.capacity
            # A chunk whose values were all overwritten in both rings is of no more use.
            while len(st) > 1 and st[0][1] <= self.traffic - cap and st[0][2] <= self.n_conf - cap:
                st.popleft()

    def trim(self, horizon: float) -> None:
        """Forget predictions that arrived before ``horizon``."""
        st = self.stamps
        old_pred = old_conf = -1
        while st and st[0][0] < horizon:
            _, old_pred, old_conf = st.popleft()
        if old_pred >= 0:
            self.latency.keep_newest(self.traffic - old_pred)
            self.errors.keep_newest(self.traffic - old_pred)
            self.confidence.keep_newest(self.n_conf - old_conf)
            self.dirty = True

    def error_count(self) -> int:
        return sum(self.errors.values())

    def nbytes(self) -> int:
        return self.latency.nbytes() + self.errors.nbytes() + self.confidence.nbytes()


class Summary:
    """Per-version numbers the pairwise tests need, recomputed only when the rings changed."""

    __slots__ = ("n", "errors", "latency", "confidence")

    def __init__(self, vs: VersionStats):
        self.n = vs.latency.count
        self.errors = vs.error_count()
        self.latency = mean_var(vs.latency.values())
        self.confidence = mean_var(vs.confidence.values())


class ModelComparison:
    __slots__ = ("versions", "baseline", "settled", "published", "summaries")

    def __init__(self) -> None:
        self.versions: dict[str, VersionStats] = {}
        self.baseline: str | None = None
        self.settled = False  # the automatic baseline is kept once results exist
        self.published: set[tuple[str, str]] = set()  # (baseline, candidate) pairs with series
        self.summaries: dict[str, Summary] = {}


class Comparisons:
    """Every compared model: which versions, which baseline, and the exported results.

    ``settings`` is a :class:`~mlsidecar.analytics.settings.ComparisonSettings`; ``drop(reason)``
    counts what a bound or a vanished version keeps out.
    """

    def __init__(self, settings, max_models: int, drop):
        self.s = settings
        self.max_models = max_models
        self.drop = drop
        self.models: dict[str, ModelComparison] = {}
        # Models seen with one version so far: model -> {version: last seen}.
        self.single: dict[str, dict[str, float]] = {}
        self.baselines = dict(settings.baselines)
        self.z = normal_quantile(0.5 + settings.confidence_level / 2.0)

    def wanted(self, model: str) -> bool:
        return self.s.auto or model in self.baselines

    # --- per chunk -------------------------------------------------------------------
    def records(self, records: dict, now: float) -> None:
        """The Mapper's per-chunk records: (model, version, status) -> (latencies, confidences)."""
        models = self.models
        for (model, version, _status), (latencies, _) in records.items():
            if latencies and model not in models:
                self._start(model, version, now)
        for (model, version, status), (latencies, confidences) in records.items():
            if not latencies:
                continue
            mc = models.get(model)
            if mc is None:
                continue
            vs = mc.versions.get(version)
            if vs is None:
                if len(mc.versions) >= self.s.max_versions:
                    self.drop("too_many_versions")
                    continue
                vs = mc.versions[version] = VersionStats(self.s.window_size, self.s.window_seconds > 0)
            vs.add(now, latencies, confidences, status == "error")

    def _start(self, model: str, version: str, now: float) -> ModelComparison | None:
        """A model is compared once it has two live versions (and is wanted)."""
        if not self.wanted(model):
            return None
        seen = self.single.get(model)
        if seen is None:
            if len(self.single) + len(self.models) >= self.max_models:
                self.drop("too_many_models")
                return None
            seen = self.single[model] = {}
        ttl = self.s.version_ttl
        for v, t in list(seen.items()):
            if t < now - ttl:
                del seen[v]
        seen[version] = now
        if len(seen) < 2:
            return None
        del self.single[model]
        mc = self.models[model] = ModelComparison()
        return mc

    # --- derived gauges --------------------------------------------------------------
    def compute(self, batch, now: float, accuracy_counts) -> None:
        """``accuracy_counts(model, version)`` -> (correct, labelled) of the live window, or None."""
        s = self.s
        nan_result = UNDEFINED
        for model, mc in self.models.items():
            self._expire(model, mc, batch, now)
            if s.window_seconds > 0:
                for vs in mc.versions.values():
                    vs.trim(now - s.window_seconds)
            for version, vs in mc.versions.items():
                if vs.dirty or version not in mc.summaries:
                    vs.dirty = False
                    mc.summaries[version] = Summary(vs)
                batch.set(SAMPLES, (model, version), float(mc.summaries[version].n))
            base = self._baseline(model, mc)
            for pair in [p for p in mc.published if p[0] != base]:
                mc.published.discard(pair)  # an earlier automatic choice of baseline
                for metric in METRICS:
                    self._publish(batch, (model,) + pair + (metric,), UNDEFINED)
            if base is None:
                continue
            b = mc.summaries[base]
            acc_b = accuracy_counts(model, base)
            for cand, c in mc.summaries.items():
                if cand == base:
                    continue
                mc.published.add((base, cand))
                prefix = (model, base, cand)
                ok = c.n >= s.min_samples and b.n >= s.min_samples
                results = {
                    "error_rate": two_proportions(c.errors, c.n, b.errors, b.n, s.confidence_level)
                    if ok else nan_result,
                    "latency_seconds": welch(c.latency, b.latency, s.confidence_level)
                    if ok else nan_result,
                    "confidence": welch(c.confidence, b.confidence, s.confidence_level)
                    if c.confidence[0] >= s.min_samples and b.confidence[0] >= s.min_samples
                    else nan_result,
                }
                acc_c = accuracy_counts(model, cand)
                if acc_b is not None and acc_c is not None and acc_c[1] >= s.min_samples \
                        and acc_b[1] >= s.min_samples:
                    results["accuracy"] = two_proportions(acc_c[0], acc_c[1], acc_b[0], acc_b[1],
                                                          s.confidence_level)
                else:
                    results["accuracy"] = nan_result
                for metric in METRICS:
                    self._publish(batch, prefix + (metric,), results[metric])

    @staticmethod
    def _publish(batch, key: tuple, r: Result) -> None:
        batch.set(DIFFERENCE, key, r.difference)
        batch.set(CI_LOWER, key, r.ci_lower)
        batch.set(CI_UPPER, key, r.ci_upper)
        batch.set(P_VALUE, key, r.p_value)

    def _baseline(self, model: str, mc: ModelComparison) -> str | None:
        if len(mc.versions) < 2:
            return None
        want = self.baselines.get(model)
        if want:
            return want if want in mc.versions else None
        if mc.baseline not in mc.versions:
            mc.settled = False
        if not mc.settled:
            # The version with the most traffic; kept, once the comparison has its minimum
            # sample on both sides, for as long as it is live.
            mc.baseline = min(mc.versions, key=lambda v: (-mc.versions[v].traffic, v))
            n = self.s.min_samples
            mc.settled = mc.summaries[mc.baseline].n >= n and any(
                su.n >= n for v, su in mc.summaries.items() if v != mc.baseline)
        return mc.baseline

    def _expire(self, model: str, mc: ModelComparison, batch, now: float) -> None:
        """A version without predictions for ``version_ttl`` leaves; its pairs turn NaN once."""
        horizon = now - self.s.version_ttl
        gone = [v for v, vs in mc.versions.items() if vs.last_seen < horizon]
        for v in gone:
            del mc.versions[v]
            mc.summaries.pop(v, None)
            self.drop("version_vanished")
            batch.set(SAMPLES, (model, v), NAN)
            for pair in [p for p in mc.published if v in p]:
                mc.published.discard(pair)
                for metric in METRICS:
                    self._publish(batch, (model,) + pair + (metric,), UNDEFINED)

    def nbytes(self) -> int:
        """Bytes held in rings (the bound docs/analytics.md states)."""
        return sum(vs.nbytes() for mc in self.models.values() for vs in mc.versions.values())
