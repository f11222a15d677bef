"""Data quality rates and scores, anomaly scores, and the [analytics] config table."""

import statistics

import numpy as np
import pytest

from mlsidecar import catalogue as C
from mlsidecar.analytics import engine
from mlsidecar.analytics.anomaly import SCORE, SIGNALS, VALUE, AnomalyTracker, histogram_quantile, robust_z
from mlsidecar.analytics.quality import CHECKS, ISSUES, RATE, QualityRing
from mlsidecar.analytics.settings import AnalyticsSettings, FeatureSpec, ModelSpec
from mlsidecar.config import ConfigError, from_dict
from mlsidecar.store import Batch


def test_quality_rates_and_scores_with_declared_ranges_and_types():
    s = AnalyticsSettings(models=(ModelSpec("m", features=(
        FeatureSpec("age", "numeric", 0, 120), FeatureSpec("country", "categorical", categories=("DE", "FR")),
        FeatureSpec("income", "numeric"))),))
    e = engine.build(s)
    events = [
        {"age": 30, "country": "DE", "income": 1.0},           # fine
        {"age": -1, "country": "US", "income": 2.0},           # 2 out of range
        {"age": None, "country": "FR"},                        # 2 missing (null, absent)
        {"age": "thirty", "country": 1.5, "income": float("nan")},  # 2 type mismatch, 1 missing (NaN)
        {"age": True, "country": "DE", "income": 3.0},         # bool is not a number
    ]
    for f in events:
        e.on_prediction({"features": f}, "m", "v", 0.0)
    b = Batch()
    e.tick(b, 1.0)
    g = b.gauges
    n = 15
    assert g[(C.DATA_QUALITY, ("m", "v", "sidecar_completeness"))] == pytest.approx(1 - 3 / n)
    assert g[(C.DATA_QUALITY, ("m", "v", "sidecar_range_validity"))] == pytest.approx(1 - 2 / n)
    assert g[(C.DATA_QUALITY, ("m", "v", "sidecar_type_validity"))] == pytest.approx(1 - 3 / n)
    assert g[(C.DATA_QUALITY, ("m", "v", "sidecar_overall"))] == pytest.approx(1 - 8 / n)
    assert g[(RATE, ("m", "v", "age", "type_mismatch"))] == pytest.approx(2 / 5)
    assert g[(RATE, ("m", "v", "income", "missing"))] == pytest.approx(2 / 5)
    assert b.counters[(CHECKS, ("m", "v", "age"))] == 5
    assert b.counters[(ISSUES, ("m", "v", "country", "out_of_range"))] == 1
    assert (ISSUES, ("m", "v", "country", "missing")) in b.zero


def test_undeclared_feature_takes_the_type_of_its_first_value_and_missing_is_counted():
    e = engine.build()
    e.on_prediction({"features": {"a": 1.0, "b": "x"}}, "m", "v", 0.0)
    e.on_prediction({"features": {"a": "oops"}}, "m", "v", 0.0)
    b = Batch()
    e.tick(b, 1.0)
    assert b.gauges[(RATE, ("m", "v", "a", "type_mismatch"))] == 0.5
    assert b.gauges[(RATE, ("m", "v", "b", "missing"))] == 0.5


def test_quality_window_is_a_bounded_ring():
    r = QualityRing(4)
    for code in [1, 1, 1, 0, 0, 0, 0, 3]:
        r.push(code)
    assert r.n == 4 and r.rates() == (0.0, 0.0, 0.25)
    assert r.totals == [4, 3, 0, 1]
    assert QualityRing(3).rates() is None


def test_too_many_features_are_dropped_and_counted():
    from mlsidecar.analytics.engine import DROPPED
    e = engine.build(AnalyticsSettings(max_features=2))
    e.on_prediction({"features": {"a": 1, "b": 2, "c": 3}}, "m", "v", 0.0)
    b = Batch()
    e.tick(b, 1.0)
    assert len(e.models[("m", "v")].features) == 2
    assert b.counters[(DROPPED, ("too_many_features",))] == 1


# --- anomaly ------------------------------------------------------------------------
def test_robust_z_matches_the_formula():
    rng = np.random.default_rng(1)
    base = rng.normal(10, 2, 60).tolist()
    med = statistics.median(base)
    mad = statistics.median(abs(v - med) for v in base)
    assert robust_z(20.0, base) == pytest.approx((20 - med) / (1.4826 * mad))
    assert robust_z(5.0, [1, 1, 1, 1]) == 100.0  # no spread at all: clamped sign
    assert robust_z(1.0, [1, 1, 1, 1]) == 0.0
    mean_ad = (0 + 0 + 0 + 2) / 4  # MAD 0, mean AD > 0
    assert robust_z(3.0, [1, 1, 1, 3]) == pytest.approx(2 / (1.2533 * mean_ad))


def test_histogram_quantile_like_promql():
    bounds = (0.1, 0.5, 1.0)
    assert histogram_quantile(0.95, bounds, [0, 0, 0, 0]) is None
    assert histogram_quantile(0.5, bounds, [10, 10, 0, 0]) == pytest.approx(0.1)
    assert histogram_quantile(0.75, bounds, [10, 10, 0, 0]) == pytest.approx(0.3)
    assert histogram_quantile(0.95, bounds, [0, 0, 0, 5]) == 1.0  # +Inf bucket: highest bound


def test_anomaly_tracker_scores_a_latency_jump_from_batch_deltas():
    t = AnomalyTracker(SIGNALS, points=30, min_points=10)
    buckets = len(C.PREDICTION_LATENCY.buckets) + 2
    out = Batch()
    for i in range(21):
        b = Batch()
        slow = i == 20
        for _ in range(100):
            b.observe(C.PREDICTION_LATENCY, ("m", "v"), 0.9 if slow else 0.02 + 0.001 * (i % 3))
        b.inc(C.PREDICTIONS, ("m", "v", "error"), 50 if slow else 1)
        b.inc(C.PREDICTIONS, ("m", "v", "success"), 50 if slow else 99)
        t.accumulate(b)
        t.sample(out, lambda key: 0.9)
    assert len(out.histograms) == 0 and buckets
    assert out.gauges[(SCORE, ("m", "v", "latency_p95"))] > 3
    assert out.gauges[(SCORE, ("m", "v", "error_rate"))] > 3
    assert out.gauges[(SCORE, ("m", "v", "accuracy"))] == 0.0
    assert out.gauges[(VALUE, ("m", "v", "error_rate"))] == 0.5


# --- config -------------------------------------------------------------------------
def test_config_table_parses_with_defaults_and_full_form(tmp_path):
    assert from_dict({}).analytics == AnalyticsSettings()
    from mlsidecar.analytics import reference
    ref = tmp_path / "ref.json"
    ref.write_text(__import__("json").dumps(reference.build([{"x": float(i)} for i in range(100)])))
    cfg_path = tmp_path / "c.toml"
    cfg = from_dict({"analytics": {
        "error_rate_window": 60, "compute_interval": 0.5,
        "performance": {"window_size": 50, "window_seconds": 600, "label_ttl": 30, "max_pending": 10},
        "drift": {"statistic": "ks", "window_size": 200, "min_samples": 20},
        "quality": {"window_size": 10},
        "anomaly": {"signals": ["accuracy"], "interval": 5, "baseline_points": 20, "min_points": 5},
        "features": {"x": {"type": "numeric", "min": 0, "max": 1}},
        "models": {"fraud": {"reference": "ref.json", "features": {"c": {"categories": ["a", "b"]}}}},
    }}, str(cfg_path))
    a = cfg.analytics
    assert a.error_rate_window == 60.0 and a.drift.statistic == "ks" and a.performance.label_ttl == 30
    assert a.model("fraud").reference == str(ref)
    assert a.model("fraud").features[0] == FeatureSpec("c", "categorical", None, None, ("a", "b"))
    assert a.features[0].max == 1.0


@pytest.mark.parametrize("table,key", [
    ({"drift": {"statistic": "chi2"}}, "analytics.drift.statistic"),
    ({"performance": {"window_size": 0}}, "analytics.performance.window_size"),
    ({"performance": {"window_size": 10**9}}, "analytics.performance.window_size"),
    ({"drift": {"window_size": 10, "min_samples": 20}}, "analytics.drift.min_samples"),
    ({"anomaly": {"signals": ["cpu"]}}, "analytics.anomaly.signals[0]"),
    ({"features": {"x": {"type": "text"}}}, "analytics.features.x.type"),
    ({"features": {"x": {"min": 5, "max": 1}}}, "analytics.features.x.min"),
    ({"models": {"m": {"reference": "nope.json"}}}, "analytics.models.m.reference"),
    ({"drift": {"windowsize": 5}}, "analytics.drift.windowsize"),
    ({"quality": {"enabled": "yes"}}, "analytics.quality.enabled"),
])
def test_config_errors_name_file_and_key(tmp_path, table, key):
    with pytest.raises(ConfigError) as exc:
        from_dict({"analytics": table}, str(tmp_path / "c.toml"))
    assert exc.value.key == key and str(tmp_path / "c.toml") in str(exc.value)


def test_reference_type_conflicting_with_declared_type_is_refused(tmp_path):
    from mlsidecar.analytics import reference
    (tmp_path / "r.json").write_text(__import__("json").dumps(reference.build([{"x": 1.0}])))
    with pytest.raises(ConfigError, match="declared categorical"):
        from_dict({"analytics": {"models": {"m": {"reference": "r.json", "features": {
            "x": {"type": "categorical"}}}}}}, str(tmp_path / "c.toml"))
