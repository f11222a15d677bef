"""Pairwise Pearson correlation of numeric features over a sliding window.

Per model version, the last ``window_size`` prediction events with
``features`` are kept as one preallocated column of floats per tracked
feature (NaN where the event lacked the feature or it was not a finite
number). The tracked features are the configured ones, or, when none are
configured, the first ``max_features`` numeric features seen; so a version
holds at most ``max_features`` columns and exports at most k(k-1)/2 series.

For each pair the coefficient is computed over the rows where both values are
present (pairwise-complete), two-pass with exact sums, and equals
``numpy.corrcoef`` of those rows. It is NaN while a pair has fewer than
``min_samples`` complete rows or either feature is constant there.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from .. import catalogue as C
from ..catalogue import GAUGE, HOUR, Family
from ..events import DEFAULT_LABEL_LENGTH

NAN = float("nan")

CORRELATION = Family(
    "ml_feature_correlation", GAUGE,
    "Pearson correlation of two numeric features over the window (feature_a < feature_b); "
    "NaN below the minimum sample size or for a constant feature.",
    C.MODEL + ("feature_a", "feature_b"), fed_by="prediction (features)", expire_after=6 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (CORRELATION,)


def _power_of_two_scale(values) -> float:
    """A power of two that brings the largest |value| down to [0.5, 1): exact, r unchanged."""
    top = max((abs(v) for v in values), default=0.0)
    exponent = math.frexp(top)[1] if top > 1.0 else 0
    return math.ldexp(1.0, -exponent)


def pearson(xs, ys) -> tuple[int, float]:
    """(complete pairs, Pearson r) over the pairs where neither value is NaN."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x == x and y == y]
    n = len(pairs)
    if n < 2:
        return n, NAN
    # Scaled by powers of two (exact), so that sums and squares of huge values cannot overflow.
    sx = _power_of_two_scale(p[0] for p in pairs)
    sy = _power_of_two_scale(p[1] for p in pairs)
    if sx != 1.0 or sy != 1.0:
        pairs = [(x * sx, y * sy) for x, y in pairs]
    mx = math.fsum(p[0] for p in pairs) / n
    my = math.fsum(p[1] for p in pairs) / n
    sxx = math.fsum((p[0] - mx) ** 2 for p in pairs)
    syy = math.fsum((p[1] - my) ** 2 for p in pairs)
    if not (sxx > 0 and syy > 0):
        return n, NAN
    sxy = math.fsum((p[0] - mx) * (p[1] - my) for p in pairs)
    r = sxy / math.sqrt(sxx * syy)
    return n, max(-1.0, min(1.0, r))


class FeatureCorrelation:
    """The rows of one model version: a column per feature, a shared ring position."""

    __slots__ = ("size", "names", "known", "columns", "fixed", "max_features", "head", "count",
                 "dirty")

    def __init__(self, size: int, features: tuple[str, ...], max_features: int):
        self.size = size
        self.fixed = bool(features)
        self.max_features = max_features
        self.names: list[str] = []
        self.known: set[str] = set()
        self.columns: list[array] = []
        self.head = 0
        self.count = 0
        self.dirty = False
        for name in features[:max_features]:
            self._add_column(name)

    def _add_column(self, name: str) -> None:
        self.names.append(name)
        self.known.add(name)
        self.columns.append(array("d", [NAN]) * self.size)

    def observe(self, feats: dict[str, Any]) -> None:
        if not self.fixed and len(self.names) < self.max_features:
            for name, value in feats.items():
                t = type(value)
                if (t is float or t is int) and name not in self.known \
                        and len(self.names) < self.max_features:
                    self._add_column(name)
        h = self.head
        get = feats.get
        v: Any
        for name, col in zip(self.names, self.columns):
            v = get(name)
            t = type(v)
            if t is float:
                col[h] = v if v - v == 0.0 else NAN
            elif t is int:
                col[h] = float(v)
            else:
                col[h] = NAN
        h += 1
        self.head = 0 if h == self.size else h
        if self.count < self.size:
            self.count += 1
        self.dirty = True

    def column(self, i: int):
        col, count, head, size = self.columns[i], self.count, self.head, self.size
        start = (head - count) % size
        if start + count <= size:
            return col[start:start + count]
        return col[start:] + col[:head]

    def set_gauges(self, batch, labels: tuple[str, str], min_samples: int,
                   label_length: int = DEFAULT_LABEL_LENGTH) -> None:
        if not self.dirty:
            return
        self.dirty = False
        cols = [self.column(i) for i in range(len(self.names))]
        order = sorted(range(len(self.names)), key=self.names.__getitem__)
        for ai, i in enumerate(order):
            for j in order[ai + 1:]:
                n, r = pearson(cols[i], cols[j])
                batch.set(CORRELATION, labels + (self.names[i][:label_length], self.names[j][:label_length]),
                          r if n >= min_samples else NAN)

    def nbytes(self) -> int:
        return sum(c.itemsize * len(c) for c in self.columns)
