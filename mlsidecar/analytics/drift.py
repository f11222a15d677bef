"""Feature drift against a reference: PSI over fixed bins, two-sample KS against stored quantiles.

Memory per feature is bounded whatever the event rate: the window is a ring
of the last ``window_size`` values, and the reference is a summary (bin edges
and proportions, ``quantiles + 1`` quantiles, or category frequencies) built
once, either from a reference file (:mod:`mlsidecar.analytics.reference`) or
from the first ``reference_size`` values the sidecar sees for the feature.

PSI (population stability index), natural log::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

where ``e_i`` is the reference share and ``a_i`` the window share of bin
``i``, each floored at ``epsilon`` (default 1e-4, no renormalisation) so a bin
with zero mass on one side contributes a large but finite term; bins empty on
both sides contribute 0. Numeric bins are the reference quantile bins plus an
underflow and an overflow bin; categorical bins are the reference categories
plus one ``unseen`` bucket for any category the reference did not list.

KS: ``D = sup_x |F_ref(x) - F_win(x)|`` where ``F_win`` is the empirical CDF
of the window and ``F_ref`` is the reference CDF interpolated linearly between
its stored quantiles (q_i at i/Q; flat runs of equal quantiles give jumps, so
ties are handled). Because ``F_ref`` is monotone and ``F_win`` is a step
function, the supremum is reached at a window value, on its left or right
side, so D is exact for that ``F_ref``. Against scipy.stats.ks_2samp on the
raw reference sample it differs by at most about ``1/Q + 1/n_ref``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque

from .. import catalogue as C
from ..catalogue import GAUGE, HOUR, Family
from .reference import CATEGORICAL, NUMERIC, bin_index, summarise_categorical, summarise_numeric

PSI_STAT = "psi"
KS_STAT = "ks"
STATISTICS = (PSI_STAT, KS_STAT)
DEFAULT_EPSILON = 1e-4
FEATURE = C.MODEL + ("feature_name",)

DRIFT_PSI = Family(
    "ml_feature_drift_psi", GAUGE,
    "Population stability index of a feature's window against its reference (natural log).",
    FEATURE, fed_by="prediction (features)", expire_after=6 * HOUR)
DRIFT_KS = Family(
    "ml_feature_drift_ks_statistic", GAUGE,
    "Two-sample Kolmogorov-Smirnov statistic of a numeric feature's window against its reference.",
    FEATURE, fed_by="prediction (features)", expire_after=6 * HOUR)
DRIFT_WINDOW = Family(
    "ml_feature_drift_window_samples", GAUGE, "Values in a feature's drift window.",
    FEATURE, fed_by="prediction (features)", expire_after=6 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (DRIFT_PSI, DRIFT_KS, DRIFT_WINDOW)


def psi(expected: list[float], actual: list[float], epsilon: float = DEFAULT_EPSILON) -> float:
    """PSI of two lists of bin proportions (natural log, shares floored at ``epsilon``)."""
    if len(expected) != len(actual):
        raise ValueError("bin counts differ")
    total = 0.0
    for e, a in zip(expected, actual):
        if e <= 0 and a <= 0:
            continue
        e = e if e > epsilon else epsilon
        a = a if a > epsilon else epsilon
        total += (a - e) * math.log(a / e)
    return total


def reference_cdf(q: list[float], x: float, left: bool = False) -> float:
    """F_ref(x) (or its left limit) from quantiles q_0..q_Q at i/Q, linear in between."""
    last = len(q) - 1
    j = bisect_left(q, x) if left else bisect_right(q, x)
    if j == 0:
        return 0.0
    if j > last:
        return 1.0
    i = j - 1
    lo, hi = q[i], q[j]
    return (i + (x - lo) / (hi - lo)) / last


def ks_statistic(quantiles: list[float], window: list[float]) -> float | None:
    """sup |F_ref - F_win| for a window of values; None for an empty window."""
    n = len(window)
    if not n:
        return None
    w = sorted(window)
    d = 0.0
    i = 0
    while i < n:
        x = w[i]
        j = i + 1
        while j < n and w[j] == x:
            j += 1
        below = i / n           # F_win just left of x
        at = j / n              # F_win at x
        d = max(d, abs(reference_cdf(quantiles, x, left=True) - below),
                abs(reference_cdf(quantiles, x) - at))
        i = j
    return d


class FeatureDrift:
    """The reference summary and the window of one feature of one model version."""

    __slots__ = ("kind", "ref", "window", "collect", "reference_size", "bins", "quantiles",
                 "max_categories", "dirty", "_cats")

    def __init__(self, kind: str, ref: dict | None, window_size: int, reference_size: int = 1000,
                 bins: int = 10, quantiles: int = 100, max_categories: int = 50):
        self.kind = kind
        self.window: deque = deque(maxlen=window_size)
        self.collect: list | None = None if ref is not None else []
        self.reference_size = reference_size
        self.bins = bins
        self.quantiles = quantiles
        self.max_categories = max_categories
        self.dirty = False
        self.ref: dict | None = None
        self._cats: dict[str, int] = {}
        if ref is not None:
            self._set_ref(ref)

    def _set_ref(self, ref: dict) -> None:
        self.ref = ref
        if ref["type"] == CATEGORICAL:
            self._cats = {c: i for i, c in enumerate(ref["categories"])}

    def add(self, v) -> None:
        """A float (numeric) or a category string (categorical)."""
        collect = self.collect
        if collect is None:
            self.window.append(v)
            self.dirty = True
            return
        collect.append(v)
        if len(collect) >= self.reference_size:
            self.freeze()

    def freeze(self) -> None:
        """Make the values collected so far the reference (first-N-events mode)."""
        if not self.collect:
            return
        if self.kind == NUMERIC:
            ref = summarise_numeric(self.collect, self.bins, self.quantiles)
        else:
            ref = summarise_categorical(self.collect, self.max_categories)
        self.collect = None
        self._set_ref(ref)

    def compute(self, epsilon: float = DEFAULT_EPSILON) -> tuple[float, float | None] | None:
        """(PSI, KS or None for categorical) of the window; None when it cannot be computed."""
        ref = self.ref
        window = self.window
        n = len(window)
        if ref is None or not n:
            return None
        if ref["type"] == NUMERIC:
            edges = ref["edges"]
            counts = [0] * (len(edges) + 1)
            for v in window:
                counts[bin_index(edges, v)] += 1
            p = psi(ref["proportions"], [c / n for c in counts], epsilon)
            return p, ks_statistic(ref["quantiles"], list(window))
        cats = self._cats
        unseen = len(cats)
        counts = [0] * (unseen + 1)
        for v in window:
            counts[cats.get(v, unseen)] += 1
        expected = list(ref["categories"].values()) + [ref.get("unseen", 0.0)]
        return psi(expected, [c / n for c in counts], epsilon), None


__all__ = ["psi", "ks_statistic", "reference_cdf", "FeatureDrift", "DRIFT_PSI", "DRIFT_KS",
           "DRIFT_WINDOW", "STATISTICS", "NUMERIC", "CATEGORICAL"]
