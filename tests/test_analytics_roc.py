"""Windowed ROC AUC and ROC points against scikit-learn on the same window; joins; bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from mlsidecar.analytics import engine, roc
from mlsidecar.analytics.performance import CONFUSION, LABEL_JOINS
from mlsidecar.analytics.settings import (
    AnalyticsSettings,
    PerformanceSettings,
    RocSettings,
)
from mlsidecar.config import ConfigError, from_dict
from mlsidecar.events import INVALID_VALUE, Rejected
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch

TOL = 1e-9
THRESHOLDS = (0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 1.0)


def sk_point(y, s, t):
    """The roc_curve point at threshold t: the smallest curve threshold >= t ((0, 0) if none)."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ok = [i for i, th in enumerate(thr) if th >= t]
    i = max(ok, key=lambda i: -thr[i]) if ok else 0
    return fpr[i], tpr[i]


@pytest.mark.parametrize("trial", range(6))
def test_auc_and_points_equal_sklearn_with_ties(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(20, 3000))
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    if trial % 2:
        s = np.round(s, 1)  # many ties
    assert roc.auc(list(s), list(y)) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    for (fpr, tpr), t in zip(roc.roc_points(list(s), list(y), THRESHOLDS), THRESHOLDS):
        ref = sk_point(y, s, t)
        assert fpr == pytest.approx(ref[0], abs=TOL) and tpr == pytest.approx(ref[1], abs=TOL), t


def test_one_class_is_nan():
    assert math.isnan(roc.auc([0.1, 0.9], [1, 1]))


def feed(events, settings=None, step=1.0, chunk=500):
    b = Batch()
    e = engine.Engine(settings or AnalyticsSettings())
    m = Mapper(b, analytics=e, clock=lambda: 1000.0)
    now = 1000.0
    g = {}
    for i in range(0, len(events), chunk):
        for ev in events[i:i + chunk]:
            m.handle(ev)
        now += step
        m.tick(now)
        g.update({(f.name, k): v for (f, k), v in b.gauges.items()})
        b.gauges.clear()
    return e, g, b


def scored(n, rng, inline=True):
    out, labels = [], []
    for i in range(n):
        y = rng.random() < 0.4
        s = round(min(1.0, max(0.0, rng.gauss(0.65 if y else 0.35, 0.2))), 2)
        ev = {"event": "prediction", "model": "fraud", "version": "v1", "latency_s": 0.01, "score": s,
              "y_pred": int(s >= 0.5)}
        truth = rng.choice([1, True, "1"]) if y else rng.choice([0, False, "0"])
        if inline:
            ev["y_true"] = truth
        else:
            ev["prediction_id"] = f"r{i}"
            labels.append({"event": "label", "prediction_id": f"r{i}", "y_true": truth})
        out.append(ev)
    return out, labels


def truth_and_scores(events, size):
    def pos(v):
        return v in (1, True, "1")
    last = events[-size:]
    return [int(pos(ev["y_true"])) for ev in last], [ev["score"] for ev in last]


def test_engine_window_equals_sklearn():
    rng = random.Random(1)
    events, _ = scored(3000, rng)
    s = AnalyticsSettings(roc=RocSettings(window_size=800, thresholds=THRESHOLDS))
    _, g, _ = feed(events, s)
    y, sc = truth_and_scores(events, 800)
    labels = ("fraud", "v1")
    assert g[("ml_model_roc_auc", labels)] == pytest.approx(roc_auc_score(y, sc), abs=TOL)
    assert g[("ml_model_roc_window_samples", labels)] == 800
    for t in THRESHOLDS:
        fpr, tpr = sk_point(np.array(y), np.array(sc), t)
        lbl = roc.threshold_label(t)
        assert g[("ml_model_roc_fpr", labels + (lbl,))] == pytest.approx(fpr, abs=TOL)
        assert g[("ml_model_roc_tpr", labels + (lbl,))] == pytest.approx(tpr, abs=TOL)
    assert {roc.threshold_label(t) for t in (0.0, 0.5, 1.0)} == {"0", "0.5", "1"}


def test_joined_labels_feed_the_window_and_unknown_ids_are_counted():
    rng = random.Random(2)
    events, labels = scored(600, rng, inline=False)
    rng.shuffle(labels)
    unknown = [{"event": "label", "prediction_id": "never-seen", "y_true": 1}]
    _, g, b = feed(events + labels + unknown, chunk=10_000)
    truth = {lab["prediction_id"]: lab["y_true"] for lab in labels}
    y = [int(truth[ev["prediction_id"]] in (1, True, "1")) for ev in events]
    sc = [ev["score"] for ev in events]
    # the window holds them in label order, and AUC does not depend on order
    assert g[("ml_model_roc_auc", ("fraud", "v1"))] == pytest.approx(roc_auc_score(y, sc), abs=TOL)
    assert b.counters[(LABEL_JOINS, ("unmatched",))] == 1


def test_score_only_predictions_join_without_y_pred():
    rng = random.Random(3)
    events, labels = scored(300, rng, inline=False)
    for ev in events:
        del ev["y_pred"]
    _, g, _ = feed(events + labels, chunk=10_000)
    assert not math.isnan(g[("ml_model_roc_auc", ("fraud", "v1"))])


def test_nan_below_the_minimum_and_with_one_class():
    rng = random.Random(4)
    events, _ = scored(30, rng)
    _, g, _ = feed(events, AnalyticsSettings(roc=RocSettings(min_samples=50)))
    assert math.isnan(g[("ml_model_roc_auc", ("fraud", "v1"))])
    assert math.isnan(g[("ml_model_roc_tpr", ("fraud", "v1", "0.5"))])
    only_neg = [dict(ev, y_true=0) for ev in scored(200, rng)[0]]
    _, g, _ = feed(only_neg)
    assert math.isnan(g[("ml_model_roc_auc", ("fraud", "v1"))])


@pytest.mark.parametrize("score", [1.5, -0.1, "0.5", True, None])
def test_bad_scores_are_rejected_and_leave_nothing(score):
    e = engine.build()
    ev = {"event": "prediction", "model": "m", "latency_s": 0.1, "y_true": 1, "y_pred": 1}
    if score is not None:
        ev["score"] = score
        with pytest.raises(Rejected) as exc:
            e.on_prediction(ev, "m", "v", 0.0)
        assert exc.value.reason in (INVALID_VALUE, "wrong_type")
        assert not e.models
    b = Batch()
    m = Mapper(b, analytics=engine.build())
    if score is not None:
        with pytest.raises(Rejected):
            m.handle(ev)
        m.tick(1.0)
        assert not any(f.name.startswith("ml_predictions") for f, _ in b.counters)


def test_configured_positive_class():
    rng = random.Random(5)
    events, _ = scored(400, rng)
    for ev in events:
        ev["y_true"] = "fraud" if ev["y_true"] in (1, True, "1") else "ok"
    _, g, _ = feed(events, AnalyticsSettings(roc=RocSettings(positive_class=("fraud",))))
    y = [int(ev["y_true"] == "fraud") for ev in events]
    assert g[("ml_model_roc_auc", ("fraud", "v1"))] == pytest.approx(
        roc_auc_score(y, [ev["score"] for ev in events]), abs=TOL)
    cfg = from_dict({"analytics": {"roc": {"positive_class": "fraud", "thresholds": [0.5, 0.1]}}})
    assert cfg.analytics.roc.positive_class == ("fraud",)
    assert cfg.analytics.roc.thresholds == (0.1, 0.5)


@pytest.mark.parametrize("table,key", [
    ({"thresholds": [0.5, 2]}, "analytics.roc.thresholds[1]"),
    ({"positive_class": [1.5]}, "analytics.roc.positive_class"),
    ({"min_samples": 2000}, "analytics.roc.min_samples"),
])
def test_config_errors_name_the_key(table, key):
    with pytest.raises(ConfigError) as exc:
        from_dict({"analytics": {"roc": table}}, "sidecar.toml")
    assert key in str(exc.value)


def test_confusion_matrix_counts_every_cell_and_folds_overflow():
    b = Batch()
    s = AnalyticsSettings(performance=PerformanceSettings(max_classes=3))
    m = Mapper(b, analytics=engine.Engine(s))
    pairs = [("cat", "cat")] * 5 + [("cat", "dog")] * 2 + [("dog", "cat")] + [("bird", "bird")] * 3 \
        + [("fish", "cat"), ("emu", "emu")]
    for t, p in pairs:
        m.handle({"event": "prediction", "model": "m", "version": "v", "latency_s": 0.01,
                  "y_true": t, "y_pred": p})
    m.tick(2000.0)
    cells = {k[2:]: v for (f, k), v in b.counters.items() if f is CONFUSION}
    assert cells == {("cat", "cat"): 5, ("cat", "dog"): 2, ("dog", "cat"): 1, ("bird", "bird"): 3,
                     ("__other__", "cat"): 1, ("__other__", "__other__"): 1}
    assert b.counters[(engine.DROPPED, ("too_many_classes",))] == 3
