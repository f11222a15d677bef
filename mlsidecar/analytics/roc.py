"""Windowed ROC AUC and ROC points of binary classifiers.

A prediction event may carry ``score``, the probability of the positive class
in [0, 1]. Once its true label is known (``y_true`` inline, or a joined
``label`` event), the pair (score, is the label the positive class) enters the
version's ring of the last ``window_size`` pairs: two preallocated arrays,
never grown.

On each compute:

* ``ml_model_roc_auc`` equals ``sklearn.metrics.roc_auc_score``: the
  Mann-Whitney statistic with mid-ranks for tied scores, which is exactly the
  area under the trapezoidal ROC curve scikit-learn draws;
* ``ml_model_roc_tpr`` / ``ml_model_roc_fpr`` with a ``threshold`` label: the
  share of positives / negatives scored >= the threshold, which is the point
  of ``sklearn.metrics.roc_curve(drop_intermediate=False)`` at the smallest
  score >= the threshold ((0, 0) when there is none).

Both are NaN while the window has fewer than ``min_samples`` pairs or only one
class (scikit-learn raises there).
"""

from __future__ import annotations

from bisect import bisect_left

from .. import catalogue as C
from ..catalogue import GAUGE, HOUR, Family
from .comparison import Ring

NAN = float("nan")

AUC = Family(
    "ml_model_roc_auc", GAUGE,
    "Area under the ROC curve over the window of scored, labelled predictions "
    "(as scikit-learn roc_auc_score); NaN below the minimum or with one class.",
    C.MODEL, fed_by="labelled prediction (score)", expire_after=24 * HOUR)
TPR = Family(
    "ml_model_roc_tpr", GAUGE,
    "True positive rate at a score threshold (positives scored >= threshold / positives).",
    C.MODEL + ("threshold",), fed_by="labelled prediction (score)", expire_after=24 * HOUR)
FPR = Family(
    "ml_model_roc_fpr", GAUGE,
    "False positive rate at a score threshold (negatives scored >= threshold / negatives).",
    C.MODEL + ("threshold",), fed_by="labelled prediction (score)", expire_after=24 * HOUR)
ROC_SAMPLES = Family(
    "ml_model_roc_window_samples", GAUGE, "Scored, labelled predictions in the ROC window.",
    C.MODEL, fed_by="labelled prediction (score)", expire_after=24 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (AUC, TPR, FPR, ROC_SAMPLES)


def threshold_label(t: float) -> str:
    """The threshold as a label value: shortest round-trip text ("0.5", "1")."""
    return repr(float(t)).removesuffix(".0") if float(t).is_integer() else repr(float(t))


def auc(scores, positive) -> float:
    """ROC AUC of scores against 0/1 labels, mid-ranks for ties; NaN with one class."""
    n = len(scores)
    n_pos = sum(positive)
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    pairs = sorted(zip(scores, positive))
    rank_sum = 0.0  # sum of (1-based, mid-) ranks of the positives
    i = 0
    while i < n:
        s = pairs[i][0]
        j = i
        pos_here = 0
        while j < n and pairs[j][0] == s:
            pos_here += pairs[j][1]
            j += 1
        if pos_here:
            rank_sum += pos_here * (i + 1 + j) / 2.0  # ranks i+1 .. j
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_points(scores, positive, thresholds) -> list[tuple[float, float]]:
    """(fpr, tpr) at each threshold: share of negatives / positives with score >= threshold."""
    n_pos = sum(positive)
    n_neg = len(scores) - n_pos
    pos = sorted(s for s, p in zip(scores, positive) if p)
    neg = sorted(s for s, p in zip(scores, positive) if not p)
    out = []
    for t in thresholds:
        tp = n_pos - bisect_left(pos, t)
        fp = n_neg - bisect_left(neg, t)
        out.append((fp / n_neg if n_neg else NAN, tp / n_pos if n_pos else NAN))
    return out


class RocWindow:
    """The last ``size`` (score, positive) pairs of one model version."""

    __slots__ = ("scores", "positive", "dirty")

    def __init__(self, size: int):
        self.scores = Ring(size)
        self.positive = Ring(size, "B")
        self.dirty = False

    def add(self, score: float, is_positive: bool) -> None:
        # Ring.push twice, inlined (the per-event path): both rings share one position.
        sc, pos = self.scores, self.positive
        h = sc.head
        sc.data[h] = score
        pos.data[h] = 1 if is_positive else 0
        h += 1
        if h == sc.capacity:
            h = 0
        sc.head = pos.head = h
        if sc.count < sc.capacity:
            sc.count += 1
            pos.count = sc.count
        self.dirty = True

    def set_gauges(self, batch, labels: tuple[str, str], thresholds, threshold_labels,
                   min_samples: int) -> None:
        if not self.dirty:
            return
        self.dirty = False
        scores = self.scores.values()
        positive = self.positive.values()
        n = len(scores)
        batch.set(ROC_SAMPLES, labels, float(n))
        if n < min_samples:
            value = NAN
            points = [(NAN, NAN)] * len(thresholds)
        else:
            value = auc(scores, positive)
            points = roc_points(scores, positive, thresholds) if value == value else \
                [(NAN, NAN)] * len(thresholds)
        batch.set(AUC, labels, value)
        for lbl, (fpr, tpr) in zip(threshold_labels, points):
            batch.set(TPR, labels + (lbl,), tpr)
            batch.set(FPR, labels + (lbl,), fpr)

    def nbytes(self) -> int:
        return self.scores.nbytes() + self.positive.nbytes()
