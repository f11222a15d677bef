"""Feature correlation against numpy.corrcoef on the same window; feature importance events."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from mlsidecar.analytics import engine
from mlsidecar.analytics.correlation import FeatureCorrelation, pearson
from mlsidecar.analytics.settings import AnalyticsSettings, CorrelationSettings
from mlsidecar.config import ConfigError, from_dict
from mlsidecar.events import Rejected
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch

TOL = 1e-9


@pytest.mark.parametrize("trial", range(5))
def test_pearson_equals_numpy(trial):
    rng = np.random.default_rng(trial)
    x = rng.normal(size=500) * 1e4 + 5e4
    y = 0.3 * x + rng.normal(size=500) * 3e3
    assert pearson(list(x), list(y))[1] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=TOL)


def test_constant_feature_is_nan():
    assert math.isnan(pearson([1.0] * 10, list(range(10)))[1])


def feed(events, settings=None, chunk=250):
    b = Batch()
    e = engine.Engine(settings or AnalyticsSettings())
    m = Mapper(b, analytics=e, clock=lambda: 1000.0)
    now, g = 1000.0, {}
    for i in range(0, len(events), chunk):
        for ev in events[i:i + chunk]:
            m.handle(ev)
        now += 1
        m.tick(now)
        g.update({(f.name, k): v for (f, k), v in b.gauges.items()})
        b.gauges.clear()
    return e, g, b


def rows(n, rng):
    out = []
    for _ in range(n):
        age = rng.gauss(40, 12)
        f = {"age": age, "income": 1000 * age + rng.gauss(0, 9000), "score": rng.random(),
             "country": rng.choice("abc"), "n": rng.randint(0, 9)}
        if rng.random() < 0.1:
            del f["income"]  # missing: pairwise-complete rows only
        if rng.random() < 0.05:
            f["age"] = None
        out.append({"event": "prediction", "model": "m", "version": "v1", "latency_s": 0.01,
                    "features": f})
    return out


def test_engine_window_equals_numpy_pairwise_complete():
    rng = random.Random(1)
    events = rows(3000, rng)
    _, g, _ = feed(events, AnalyticsSettings(correlation=CorrelationSettings(window_size=1000,
                                                                             interval=1.0)))
    last = [ev["features"] for ev in events[-1000:]]
    names = ["age", "income", "n", "score"]  # numeric features, auto-detected
    got = {k[1][2:]: v for k, v in g.items() if k[0] == "ml_feature_correlation"}
    assert set(got) == {(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    for (a, b), r in got.items():
        pairs = [(f[a], f[b]) for f in last
                 if isinstance(f.get(a), (int, float)) and isinstance(f.get(b), (int, float))]
        ref = np.corrcoef(np.array(pairs, dtype=float).T)[0, 1]
        assert r == pytest.approx(ref, abs=TOL), (a, b)
    assert got[("age", "income")] > 0.5


def test_recomputed_every_interval_only():
    rng = random.Random(3)
    b = Batch()
    e = engine.Engine(AnalyticsSettings(correlation=CorrelationSettings(interval=10.0, min_samples=2)))
    m = Mapper(b, analytics=e)
    updates = 0
    for t in range(30):  # one tick per second
        for ev in rows(20, rng):
            m.handle(ev)
        m.tick(1000.0 + t)
        updates += any(f.name == "ml_feature_correlation" for f, _ in b.gauges)
        b.clear()
    assert updates == 3


def test_configured_features_only_and_nan_below_minimum():
    rng = random.Random(2)
    s = AnalyticsSettings(correlation=CorrelationSettings(features=("income", "age"), min_samples=30))
    _, g, _ = feed(rows(20, rng), s)
    got = {k[1][2:]: v for k, v in g.items() if k[0] == "ml_feature_correlation"}
    assert list(got) == [("age", "income")] and math.isnan(got[("age", "income")])


def test_columns_are_bounded_by_max_features():
    c = FeatureCorrelation(100, (), 3)
    for i in range(50):
        c.observe({f"f{j}": float(i * j) for j in range(20)})
    assert len(c.columns) == 3 and c.nbytes() == 3 * 100 * 8


@pytest.mark.parametrize("table,key", [
    ({"features": ["a", 3]}, "analytics.correlation.features[1]"),
    ({"features": ["a", "b", "c"], "max_features": 2}, "analytics.correlation.features"),
    ({"min_samples": 1}, "analytics.correlation.min_samples"),
])
def test_config_errors_name_the_key(table, key):
    with pytest.raises(ConfigError) as exc:
        from_dict({"analytics": {"correlation": table}}, "sidecar.toml")
    assert key in str(exc.value)


def test_feature_importance_events_become_gauges_bounded():
    b = Batch()
    s = AnalyticsSettings(max_features=2)
    m = Mapper(b, analytics=engine.Engine(s))
    m.handle({"event": "feature_importance", "model": "m", "version": "v1",
              "importances": {"age": 0.5, "income": 0.3, "country": 0.2}, "method": "shap"})
    m.handle({"event": "feature_importance", "model": "m", "version": "v1", "importances": {"age": 0.6}})
    m.tick(1.0)
    got = {k: v for (f, k), v in b.gauges.items() if f.name == "ml_feature_importance"}
    assert got == {("m", "v1", "age"): 0.6, ("m", "v1", "income"): 0.3}
    assert b.counters[(engine.DROPPED, ("too_many_features",))] == 1
    for bad in ({"importances": {}}, {"importances": {"a": "x"}}, {"importances": [1]}, {},
                {"importances": {"a": 1}, "method": 3}):
        with pytest.raises(Rejected):
            m.handle({"event": "feature_importance", "model": "m", **bad})


def test_huge_values_do_not_overflow_and_equal_numpy_scaled():
    x = [1e308, -1e308, 5e307, 1.0, 3e307]
    y = [1.0, 2.0, 3.0, 4.0, 2.5]
    ref = np.corrcoef(np.array(x) / 1e300, y)[0, 1]  # r does not depend on the scale
    assert pearson(x, y)[1] == pytest.approx(ref, abs=TOL)
    c = FeatureCorrelation(10, ("a", "b"), 2)
    b = Batch()
    for a_, b_ in zip(x, y):
        c.observe({"a": a_, "b": b_})
    c.set_gauges(b, ("m", "v"), 2)
    assert list(b.gauges.values()) == [pytest.approx(ref, abs=TOL)]
