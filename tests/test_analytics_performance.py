"""Live scores against scikit-learn, label joins, bounds."""

import math
import random
import warnings

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from mlsidecar import catalogue as C
from mlsidecar.analytics import engine
from mlsidecar.analytics.performance import (
    CORRECT,
    FALSE_NEG,
    FALSE_POS,
    LABEL_JOINS,
    LABELLED,
    TRUE_POS,
    LabelJoin,
    LiveWindow,
)
from mlsidecar.analytics.settings import AnalyticsSettings, PerformanceSettings
from mlsidecar.events import Rejected
from mlsidecar.store import Batch


def sk(y_true, y_pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (accuracy_score(y_true, y_pred),
                precision_score(y_true, y_pred, average="weighted"),
                recall_score(y_true, y_pred, average="weighted"),
                f1_score(y_true, y_pred, average="weighted"))


def window_of(pairs, size=10_000):
    w = LiveWindow(size)
    for t, (a, b) in enumerate(pairs):
        w.add(float(t), a, b)
    return w


@pytest.mark.parametrize("seed", range(5))
def test_scores_equal_sklearn_on_random_multiclass(seed):
    rng = random.Random(seed)
    classes = ["a", "b", "c", "d"][: 2 + seed % 3]
    y_true = [rng.choice(classes) for _ in range(500)]
    # some classes only ever predicted, some never predicted
    y_pred = [t if rng.random() < 0.6 else rng.choice(classes + ["zz"]) for t in y_true]
    got = window_of(zip(y_true, y_pred)).scores()
    assert got == pytest.approx(sk(y_true, y_pred), abs=1e-12)


def test_sliding_window_scores_only_the_last_n():
    rng = random.Random(7)
    pairs = [(rng.choice("xyz"), rng.choice("xyz")) for _ in range(1000)]
    w = window_of(pairs, size=200)
    last = pairs[-200:]
    assert w.scores() == pytest.approx(sk([a for a, _ in last], [b for _, b in last]), abs=1e-12)
    assert len(w.items) == 200


def test_time_window_drops_old_predictions_and_empty_window_is_nan():
    w = LiveWindow(1000, seconds=10.0)
    w.add(0.0, "a", "b")
    w.add(5.0, "a", "a")
    w.add(12.0, "b", "b")
    w.trim(12.0)  # horizon 2.0: the first leaves
    assert w.scores() == pytest.approx(sk(["a", "b"], ["a", "b"]))
    b = Batch()
    w.set_gauges(b, ("m", "v"), 100.0)  # everything aged out
    assert w.scores() is None
    with pytest.raises(ValueError):  # scikit-learn refuses an empty window too
        accuracy_score([], [])
    assert math.isnan(b.gauges[(C.ACCURACY, ("m", "v", "live"))])


def test_single_class_and_never_predicted_class():
    assert window_of([("a", "a")] * 5).scores() == pytest.approx(sk(["a"] * 5, ["a"] * 5))
    yt, yp = ["a", "a", "b"], ["b", "b", "b"]
    assert window_of(zip(yt, yp)).scores() == pytest.approx(sk(yt, yp))
    yt, yp = ["a"] * 4, ["b"] * 4  # true class never predicted: precision 0
    assert window_of(zip(yt, yp)).scores() == pytest.approx(sk(yt, yp))


def test_integer_and_boolean_labels_through_the_engine():
    e = engine.build()
    rng = random.Random(3)
    yt = [rng.randint(0, 2) for _ in range(300)]
    yp = [rng.randint(0, 2) for _ in range(300)]
    for t, p in zip(yt, yp):
        e.on_prediction({"y_true": t, "y_pred": p}, "m", "1", 0.0)
    b = Batch()
    e.tick(b, 1.0)
    acc, prec, rec, f1 = sk(yt, yp)
    assert b.gauges[(C.ACCURACY, ("m", "1", "live"))] == pytest.approx(acc)
    assert b.gauges[(C.PRECISION, ("m", "1", "live"))] == pytest.approx(prec)
    assert b.gauges[(C.RECALL, ("m", "1", "live"))] == pytest.approx(rec)
    # counters: cumulative and exact
    assert b.counters[(LABELLED, ("m", "1"))] == 300
    assert b.counters[(CORRECT, ("m", "1"))] == sum(t == p for t, p in zip(yt, yp))
    for c in range(3):
        tp = sum(t == p == c for t, p in zip(yt, yp))
        fp = sum(p == c and t != c for t, p in zip(yt, yp))
        fn = sum(t == c and p != c for t, p in zip(yt, yp))
        assert b.counters.get((TRUE_POS, ("m", "1", str(c))), 0) == tp
        assert b.counters.get((FALSE_POS, ("m", "1", str(c))), 0) == fp
        assert b.counters.get((FALSE_NEG, ("m", "1", str(c))), 0) == fn


def test_labels_joined_later_within_ttl_and_bounded():
    e = engine.build(AnalyticsSettings(performance=PerformanceSettings(label_ttl=60, max_pending=3)))
    b = Batch()
    e.tick(b, 0.0)
    for i in range(5):  # ids 0 and 1 are evicted by max_pending=3
        e.on_prediction({"prediction_id": f"p{i}", "y_pred": "cat"}, "m", "v", 0.0)
    e.label({"event": "label", "prediction_id": "p4", "y_true": "cat"})
    e.label({"event": "label", "prediction_id": "p3", "y_true": "dog"})
    e.label({"event": "label", "prediction_id": "p0", "y_true": "dog"})  # evicted -> unmatched
    e.tick(b, 61.0)  # p2 expires
    e.label({"event": "label", "prediction_id": "p2", "y_true": "dog"})
    e.tick(b, 62.0)
    assert e.join.counts == {"matched": 2, "unmatched": 2, "expired": 1, "evicted": 2}
    assert b.counters[(LABEL_JOINS, ("matched",))] == 2
    assert b.gauges[(C.ACCURACY, ("m", "v", "live"))] == pytest.approx(0.5)


def test_label_join_rejects_late_label_as_expired():
    j = LabelJoin(ttl=10, max_pending=10)
    w = LiveWindow(10)
    j.wait("x", 0.0, w, "a")
    assert not j.label("x", "a", 11.0)
    assert j.counts["expired"] == 1 and not w.items


@pytest.mark.parametrize("ev", [
    {"y_true": "a"},
    {"y_true": "a", "y_pred": [1]},
    {"y_true": {"x": 1}, "y_pred": "a"},
    {"y_pred": "a", "prediction_id": 1.5},
    {"features": [1, 2]},
])
def test_bad_fields_are_rejected_and_leave_no_state(ev):
    e = engine.build()
    with pytest.raises(Rejected):
        e.on_prediction(ev, "m", "v", 0.0)
    assert not e.models


def test_plain_prediction_returns_at_once_and_nothing_configured_gives_none():
    e = engine.build()
    e.on_prediction({"event": "prediction", "model": "m", "latency_s": 0.1}, "m", "v", 0.0)
    assert not e.models
    from mlsidecar.analytics.settings import (
        AnomalySettings,
        ComparisonSettings,
        CorrelationSettings,
        DriftSettings,
        QualitySettings,
        RocSettings,
    )
    off = AnalyticsSettings(performance=PerformanceSettings(enabled=False),
                            drift=DriftSettings(enabled=False), quality=QualitySettings(enabled=False),
                            anomaly=AnomalySettings(enabled=False),
                            comparison=ComparisonSettings(enabled=False), roc=RocSettings(enabled=False),
                            correlation=CorrelationSettings(enabled=False))
    assert engine.build(off) is None


def test_classes_beyond_the_limit_fold_into_other():
    w = LiveWindow(100, max_classes=2)
    for c in "abcde":
        w.add(0.0, c, c)
    assert set(w.support) == {"a", "b", "__other__"}
