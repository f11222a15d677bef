"""Live model performance from labelled predictions.

A labelled prediction is a prediction event that carries both ``y_true`` and
``y_pred``, or one that carried ``y_pred`` and a ``prediction_id`` whose
``label`` event ({"event": "label", "prediction_id": ..., "y_true": ...})
arrived within ``label_ttl`` seconds (and while at most ``max_pending``
predictions were waiting; the oldest is dropped first).

Each model version keeps a sliding window of its last ``window_size``
labelled predictions, optionally also cut to the last ``window_seconds``.
Per-class counts of the window (support, predicted, correct) are updated as
predictions enter and leave it, so computing the scores costs O(classes), and
they equal scikit-learn's ``accuracy_score`` and ``precision_score`` /
``recall_score`` / ``f1_score`` with ``average='weighted'`` (a class never
predicted has precision 0, scikit-learn's ``zero_division`` default). An
empty window has no scores (scikit-learn raises); the gauges are then set to
NaN so no alert fires on a stale value.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .. import catalogue as C
from ..catalogue import COUNTER, GAUGE, HOUR, Family
from ..events import DEFAULT_LABEL_LENGTH, MISSING_FIELD, WRONG_TYPE, Rejected
from .scores import scores_from_counts

OTHER_CLASS = "__other__"
LIVE = "live"
MODEL = C.MODEL

F1 = Family(
    "ml_model_f1_score", GAUGE, "Weighted F1 (0-1), as scikit-learn f1_score(average='weighted').",
    MODEL + ("dataset",), fed_by="labelled prediction", expire_after=24 * HOUR)
LABELLED = Family(
    "ml_model_labelled_predictions_total", COUNTER,
    "Predictions whose true label is known (inline y_true or a joined label event).",
    MODEL, fed_by="labelled prediction")
CORRECT = Family(
    "ml_model_correct_predictions_total", COUNTER, "Labelled predictions where y_pred == y_true.",
    MODEL, fed_by="labelled prediction")
TRUE_POS = Family(
    "ml_model_class_true_positives_total", COUNTER, "Labelled predictions of a class that were right.",
    MODEL + ("class",), fed_by="labelled prediction")
FALSE_POS = Family(
    "ml_model_class_false_positives_total", COUNTER,
    "Labelled predictions of a class whose true label was another class.",
    MODEL + ("class",), fed_by="labelled prediction")
FALSE_NEG = Family(
    "ml_model_class_false_negatives_total", COUNTER,
    "Labelled samples of a class that were predicted as another class.",
    MODEL + ("class",), fed_by="labelled prediction")
WINDOW_SAMPLES = Family(
    "ml_model_live_window_samples", GAUGE, "Labelled predictions in the live scoring window.",
    MODEL, fed_by="labelled prediction", expire_after=24 * HOUR)
CONFUSION = Family(
    "ml_model_confusion_matrix_total", COUNTER,
    "Labelled predictions by true and predicted class: the confusion matrix (classes beyond "
    "max_classes fold into __other__).",
    MODEL + ("true_class", "predicted_class"), fed_by="labelled prediction")
LABEL_JOINS = Family(
    "mlsidecar_label_joins_total", COUNTER,
    "Label events and pending predictions, by outcome (matched, unmatched, expired, evicted).",
    ("result",), fed_by="label")
LABEL_PENDING = Family(
    "mlsidecar_label_pending", GAUGE, "Predictions waiting for their label event.", (),
    fed_by="prediction (prediction_id)")

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (F1, LABELLED, CORRECT, TRUE_POS, FALSE_POS, FALSE_NEG, WINDOW_SAMPLES,
    CONFUSION, LABEL_JOINS, LABEL_PENDING)

_TYPES_OK = (str, int, bool)


def class_label(v, name: str, limit: int = DEFAULT_LABEL_LENGTH) -> str:
    """A class label as the string the counters and scores use (1 and "1" are the same class),
    cut to ``limit`` characters (limits.label_value_length)."""
    t = type(v)
    if t is str:
        return v[:limit]
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    if v is None:
        raise Rejected(MISSING_FIELD, f"'{name}' is required")
    raise Rejected(WRONG_TYPE, f"'{name}' must be a string, an integer or a boolean")


def prediction_key(v) -> str | int:
    t = type(v)
    if t is str:
        return v
    if t is int:
        return v
    if v is None:
        raise Rejected(MISSING_FIELD, "'prediction_id' is required")
    raise Rejected(WRONG_TYPE, "'prediction_id' must be a string or an integer")


def weighted_f1(support: dict, predicted: dict, correct: dict) -> float:
    """scikit-learn's f1_score(average='weighted'): per class 2tp / (2tp + fp + fn)."""
    weight = sum(support.values())
    total = 0.0
    for cls, sup in support.items():
        if not sup:
            continue
        tp = correct.get(cls, 0)
        denom = sup + predicted.get(cls, 0)  # (tp + fn) + (tp + fp)
        if denom:
            total += sup * (2 * tp / denom)
    return total / weight


class LiveWindow:
    """The sliding window and cumulative counters of one model version."""

    __slots__ = ("size", "seconds", "max_classes", "items", "support", "predicted", "correct",
                 "classes", "labelled", "n_correct", "deltas", "dirty", "cells", "overflow")

    def __init__(self, size: int, seconds: float = 0.0, max_classes: int = 50):
        self.size = size
        self.seconds = seconds
        self.max_classes = max_classes
        self.items: deque = deque()
        self.support: dict[str, int] = {}
        self.predicted: dict[str, int] = {}
        self.correct: dict[str, int] = {}
        self.classes: set[str] = set()
        # Counter deltas not handed to a batch yet: [labelled, correct, {(family, class): n}]
        self.labelled = 0
        self.n_correct = 0
        self.deltas: dict = {}
        self.dirty = False
        self.cells: dict[tuple[str, str], int] = {}  # confusion-matrix deltas
        self.overflow = 0  # labels folded into __other__

    def _cls(self, c: str) -> str:
        classes = self.classes
        if c in classes:
            return c
        if len(classes) >= self.max_classes:
            self.overflow += 1
            return OTHER_CLASS
        classes.add(c)
        return c

    def add(self, now: float, y_true: str, y_pred: str) -> None:
        yt = self._cls(y_true)
        yp = self._cls(y_pred)
        items = self.items
        if len(items) >= self.size:
            self._pop()
        items.append((now, yt, yp))
        self.support[yt] = self.support.get(yt, 0) + 1
        self.predicted[yp] = self.predicted.get(yp, 0) + 1
        cell = (yt, yp)
        self.cells[cell] = self.cells.get(cell, 0) + 1
        d = self.deltas
        self.labelled += 1
        if yt == yp:
            self.correct[yt] = self.correct.get(yt, 0) + 1
            self.n_correct += 1
            k = (TRUE_POS, yt)
            d[k] = d.get(k, 0) + 1
        else:
            k = (FALSE_POS, yp)
            d[k] = d.get(k, 0) + 1
            k = (FALSE_NEG, yt)
            d[k] = d.get(k, 0) + 1
        self.dirty = True

    def _pop(self) -> None:
        _, yt, yp = self.items.popleft()
        _dec(self.support, yt)
        _dec(self.predicted, yp)
        if yt == yp:
            _dec(self.correct, yt)

    def trim(self, now: float) -> None:
        if self.seconds > 0:
            horizon = now - self.seconds
            items = self.items
            while items and items[0][0] < horizon:
                self._pop()
                self.dirty = True

    def scores(self) -> tuple[float, float, float, float] | None:
        """(accuracy, weighted precision, weighted recall, weighted F1), None when empty."""
        n = len(self.items)
        if not n:
            return None
        acc, prec, rec = scores_from_counts(n, self.support, self.predicted, self.correct)
        return acc, prec, rec, weighted_f1(self.support, self.predicted, self.correct)

    def flush_counters(self, batch, labels: tuple[str, str]) -> None:
        if not self.labelled and not self.deltas:
            return
        batch.inc(LABELLED, labels, self.labelled)
        batch.inc(CORRECT, labels, self.n_correct)
        for (fam, cls), n in self.deltas.items():
            batch.inc(fam, labels + (cls,), n)
            # The other two per-class counters start at zero, so rate() works from the start.
            for other in (TRUE_POS, FALSE_POS, FALSE_NEG):
                if other is not fam:
                    batch.ensure(other, labels + (cls,))
        for (yt, yp), n in self.cells.items():
            batch.inc(CONFUSION, labels + (yt, yp), n)
        self.labelled = 0
        self.n_correct = 0
        self.deltas = {}
        self.cells = {}

    def set_gauges(self, batch, labels: tuple[str, str], now: float) -> None:
        self.trim(now)
        if not self.dirty:
            return
        self.dirty = False
        s = self.scores()
        key = labels + (LIVE,)
        nan = float("nan")
        acc, prec, rec, f1 = s if s is not None else (nan, nan, nan, nan)
        batch.set(C.ACCURACY, key, acc)
        batch.set(C.PRECISION, key, prec)
        batch.set(C.RECALL, key, rec)
        batch.set(F1, key, f1)
        batch.set(WINDOW_SAMPLES, labels, float(len(self.items)))

    def correct_count(self) -> int:
        return sum(self.correct.values())

    def accuracy(self) -> float | None:
        n = len(self.items)
        return sum(self.correct.values()) / n if n else None


def _dec(d: dict, k) -> None:
    v = d[k] - 1
    if v:
        d[k] = v
    else:
        del d[k]


class LabelJoin:
    """Predictions waiting for their label, bounded in time (ttl) and count (max_pending)."""

    def __init__(self, ttl: float, max_pending: int):
        self.ttl = ttl
        self.max_pending = max_pending
        self.pending: OrderedDict = OrderedDict()  # id -> (time, window, y_pred)
        self.counts = {"matched": 0, "unmatched": 0, "expired": 0, "evicted": 0}
        self._flushed = dict(self.counts)
        self._last_pending = -1.0

    def wait(self, pid, now: float, window: LiveWindow | None, y_pred: str | None,
             extra=None) -> None:
        """``extra``: (callback, arg1, arg2), called with the label as callback(arg1, arg2, y_true)."""
        pending = self.pending
        if pid in pending:
            del pending[pid]
        elif len(pending) >= self.max_pending:
            pending.popitem(last=False)
            self.counts["evicted"] += 1
        pending[pid] = (now, window, y_pred, extra)

    def label(self, pid, y_true: str, now: float) -> bool:
        entry = self.pending.pop(pid, None)
        if entry is None or entry[0] < now - self.ttl:
            self.counts["expired" if entry is not None else "unmatched"] += 1
            return False
        self.counts["matched"] += 1
        if entry[1] is not None:
            entry[1].add(now, y_true, entry[2])
        extra = entry[3]
        if extra is not None:
            extra[0](extra[1], extra[2], y_true)
        return True

    def expire(self, now: float) -> None:
        horizon = now - self.ttl
        pending = self.pending
        while pending:
            pid, entry = next(iter(pending.items()))
            if entry[0] >= horizon:
                break
            del pending[pid]
            self.counts["expired"] += 1

    def flush(self, batch) -> None:
        """Hand counter deltas and the pending gauge to the batch (only what changed)."""
        changed = False
        for result, n in self.counts.items():
            d = n - self._flushed[result]
            if d:
                batch.inc(LABEL_JOINS, (result,), d)
                changed = True
        if changed:
            for result in self.counts:
                batch.ensure(LABEL_JOINS, (result,))
            self._flushed = dict(self.counts)
        pending = float(len(self.pending))
        if pending != self._last_pending:
            batch.set(LABEL_PENDING, (), pending)
            self._last_pending = pending
