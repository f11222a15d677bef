"""Classification scores, computed as scikit-learn computes them.

``precision`` and ``recall`` are ``average='weighted'``: per-class scores
weighted by each class's support in ``y_true``. A class that is never
predicted has precision 0 (scikit-learn's ``zero_division`` default, which
warns and uses 0), and classes that only appear in ``y_pred`` have zero
weight.
"""

from __future__ import annotations

from collections import Counter


def classification_scores(y_true: list, y_pred: list) -> tuple[float, float, float]:
    """(accuracy, weighted precision, weighted recall) of two equal-length label lists."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    if not y_true:
        raise ValueError("no samples")
    support: Counter = Counter(y_true)
    predicted: Counter = Counter(y_pred)
    correct: Counter = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    return scores_from_counts(len(y_true), support, predicted, correct)


def scores_from_counts(n: int, support, predicted, correct) -> tuple[float, float, float]:
    """The same scores from per-class counts (true support, predicted, correct)."""
    total_correct = sum(correct.values())
    accuracy = total_correct / n
    weight = sum(support.values())
    precision = 0.0
    recall = 0.0
    for cls, sup in support.items():
        if not sup:
            continue
        tp = correct.get(cls, 0)
        pred = predicted.get(cls, 0)
        if pred:
            precision += sup * (tp / pred)
        recall += sup * (tp / sup)
    return accuracy, precision / weight, recall / weight
