"""Version comparison against statsmodels and SciPy on the same window; bounds and bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from mlsidecar.analytics import comparison as cmp
from mlsidecar.analytics import distributions as D
from mlsidecar.analytics import engine
from mlsidecar.analytics.engine import DROPPED
from mlsidecar.analytics.settings import (
    AnalyticsSettings,
    ComparisonSettings,
    PerformanceSettings,
)
from mlsidecar.config import ConfigError, from_dict
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch

TOL = 1e-9


# --- the distributions -------------------------------------------------------------------------

@pytest.mark.parametrize("df", [1, 1.5, 2, 3.7, 10, 29.3, 100, 999.5, 20000])
def test_t_distribution_equals_scipy(df):
    for t in (-50, -5, -2.5, -1, -0.1, 0, 0.3, 1.96, 3, 8, 40):
        assert D.t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), abs=1e-12, rel=1e-9)
    for p in (0.5, 0.6, 0.9, 0.975, 0.995, 0.9999999):
        assert D.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-11, abs=1e-11)


def test_normal_equals_scipy():
    for z in (0, 0.5, 1.96, 4, 10, 30):
        assert D.normal_two_sided_p(z) == pytest.approx(2 * stats.norm.sf(z), rel=1e-12, abs=1e-300)
    for p in (0.5, 0.9, 0.975, 0.995):
        assert D.normal_quantile(p) == pytest.approx(stats.norm.ppf(p), abs=1e-12)


# --- the tests themselves ----------------------------------------------------------------------

PROPORTION_CASES = [(90, 100, 80, 100), (470, 500, 930, 1000), (3, 150, 12, 140), (0, 120, 5, 130),
                    (120, 120, 115, 120), (51, 101, 49, 99)]


@pytest.mark.parametrize("x1,n1,x2,n2", PROPORTION_CASES)
@pytest.mark.parametrize("level", [0.95, 0.9, 0.99])
def test_two_proportions_equal_statsmodels(x1, n1, x2, n2, level):
    r = cmp.two_proportions(x1, n1, x2, n2, level)
    _, p = proportions_ztest([x1, x2], [n1, n2])
    lo, hi = confint_proportions_2indep(x1, n1, x2, n2, method="wald", compare="diff", alpha=1 - level)
    assert r.difference == pytest.approx(x1 / n1 - x2 / n2, abs=TOL)
    assert r.p_value == pytest.approx(p, abs=TOL)
    assert r.ci_lower == pytest.approx(lo, abs=TOL)
    assert r.ci_upper == pytest.approx(hi, abs=TOL)


def test_two_proportions_without_variance_is_nan_not_zero():
    r = cmp.two_proportions(100, 100, 50, 50)
    assert r.difference == 0.0 and math.isnan(r.p_value)


@pytest.mark.parametrize("trial", range(6))
def test_welch_equals_scipy(trial):
    rng = np.random.default_rng(trial)
    a = rng.lognormal(np.log(0.03), 0.6, size=int(rng.integers(5, 2000)))
    b = rng.lognormal(np.log(0.035), 0.3 + trial / 10, size=int(rng.integers(5, 2000)))
    for level in (0.95, 0.99):
        r = cmp.welch(cmp.mean_var(list(a)), cmp.mean_var(list(b)), level)
        ref = stats.ttest_ind(a, b, equal_var=False)
        ci = ref.confidence_interval(confidence_level=level)
        assert r.difference == pytest.approx(a.mean() - b.mean(), abs=TOL)
        assert r.p_value == pytest.approx(ref.pvalue, abs=TOL)
        assert r.ci_lower == pytest.approx(ci.low, abs=TOL)
        assert r.ci_upper == pytest.approx(ci.high, abs=TOL)


# --- through the engine, on the window ---------------------------------------------------------

def run(events_by_chunk, settings=None, start=1000.0, step=1.0):
    """Feed chunks of events through a Mapper; return (engine, gauges of the last tick, batch)."""
    b = Batch()
    e = engine.Engine(settings or AnalyticsSettings())
    m = Mapper(b, analytics=e, clock=lambda: start)
    now = start
    gauges = {}
    for chunk in events_by_chunk:
        for ev in chunk:
            m.handle(ev)
        now += step
        m.tick(now)
        gauges.update({(f.name, k): v for (f, k), v in b.gauges.items()})
        b.gauges.clear()
    return e, gauges, b


def ab_events(n, rng, *, v2_latency=1.3, v2_accuracy=0.85, v1_share=0.6):
    out = []
    for _ in range(n):
        v = "v1" if rng.random() < v1_share else "v2"
        lat = rng.lognormvariate(math.log(0.03), 0.5) * (v2_latency if v == "v2" else 1.0)
        acc = 0.93 if v == "v1" else v2_accuracy
        y = rng.choice("abc")
        ev = {"event": "prediction", "model": "m", "version": v, "latency_s": lat,
              "status": "error" if rng.random() < (0.02 if v == "v1" else 0.05) else "success",
              "y_true": y, "y_pred": y if rng.random() < acc else "z"}
        if rng.random() < 0.8:
            ev["confidence"] = rng.betavariate(8, 2) if v == "v1" else rng.betavariate(7, 2)
        out.append(ev)
    return out


def test_engine_results_equal_references_on_the_same_window():
    rng = random.Random(3)
    chunks = [ab_events(400, rng) for _ in range(8)]  # 3200 events, window 1000 per version
    settings = AnalyticsSettings(comparison=ComparisonSettings(window_size=1000, min_samples=100),
                                 performance=PerformanceSettings(window_size=700))
    _, g, _ = run(chunks, settings)
    events = [ev for c in chunks for ev in c]

    def window(v, pred=lambda ev: True, size=1000):
        return [ev for ev in events if ev["version"] == v and pred(ev)][-size:]

    def ring(v, pred=lambda ev: True, size=1000):
        """The last `size`, in the order the rings are fed: chunk by chunk, and within a chunk
        by (model, version, status) series in order of first appearance."""
        order = []
        for c in chunks:
            series = {}
            for ev in c:
                series.setdefault((ev["version"], ev["status"]), []).append(ev)
            order += [ev for evs in series.values() for ev in evs]
        return [ev for ev in order if ev["version"] == v and pred(ev)][-size:]

    v1, v2 = ring("v1"), ring("v2")
    # v1 has more traffic: it is the baseline.
    key = ("m", "v1", "v2")
    assert g[("ml_model_comparison_samples", ("m", "v1"))] == 1000.0
    # latency: Welch on the last 1000 predictions of each version
    ref = stats.ttest_ind([ev["latency_s"] for ev in v2], [ev["latency_s"] for ev in v1], equal_var=False)
    ci = ref.confidence_interval()
    assert g[("ml_model_comparison_p_value", key + ("latency_seconds",))] == pytest.approx(ref.pvalue, abs=TOL)
    assert g[("ml_model_comparison_ci_lower", key + ("latency_seconds",))] == pytest.approx(ci.low, abs=TOL)
    assert g[("ml_model_comparison_ci_upper", key + ("latency_seconds",))] == pytest.approx(ci.high, abs=TOL)
    # confidence: its own window of the last 1000 confidences
    c1 = [ev["confidence"] for ev in ring("v1", lambda ev: "confidence" in ev)]
    c2 = [ev["confidence"] for ev in ring("v2", lambda ev: "confidence" in ev)]
    ref = stats.ttest_ind(c2, c1, equal_var=False)
    assert g[("ml_model_comparison_p_value", key + ("confidence",))] == pytest.approx(ref.pvalue, abs=TOL)
    assert g[("ml_model_comparison_difference", key + ("confidence",))] == pytest.approx(
        np.mean(c2) - np.mean(c1), abs=TOL)
    # error rate: z-test over the same 1000 predictions
    e1 = sum(ev["status"] == "error" for ev in v1)
    e2 = sum(ev["status"] == "error" for ev in v2)
    _, p = proportions_ztest([e2, e1], [1000, 1000])
    lo, hi = confint_proportions_2indep(e2, 1000, e1, 1000, method="wald")
    assert g[("ml_model_comparison_p_value", key + ("error_rate",))] == pytest.approx(p, abs=TOL)
    assert g[("ml_model_comparison_ci_lower", key + ("error_rate",))] == pytest.approx(lo, abs=TOL)
    assert g[("ml_model_comparison_ci_upper", key + ("error_rate",))] == pytest.approx(hi, abs=TOL)
    # accuracy: the live scoring window (700 labelled predictions)
    a1 = sum(ev["y_true"] == ev["y_pred"] for ev in window("v1", size=700))
    a2 = sum(ev["y_true"] == ev["y_pred"] for ev in window("v2", size=700))
    _, p = proportions_ztest([a2, a1], [700, 700])
    assert g[("ml_model_comparison_difference", key + ("accuracy",))] == pytest.approx((a2 - a1) / 700, abs=TOL)
    assert g[("ml_model_comparison_p_value", key + ("accuracy",))] == pytest.approx(p, abs=TOL)
    # the difference is real and significant
    assert g[("ml_model_comparison_p_value", key + ("accuracy",))] < 0.01
    assert g[("ml_model_comparison_ci_upper", key + ("accuracy",))] < 0


def test_nan_not_zero_below_the_minimum_sample():
    rng = random.Random(1)
    _, g, _ = run([ab_events(150, rng)],
                  AnalyticsSettings(comparison=ComparisonSettings(min_samples=100)))
    key = ("m", "v1", "v2")
    for fam in ("difference", "ci_lower", "ci_upper", "p_value"):
        for metric in cmp.METRICS:
            v = g[(f"ml_model_comparison_{fam}", key + (metric,))]
            assert math.isnan(v), (fam, metric, v)
    assert 0 < g[("ml_model_comparison_samples", ("m", "v2"))] < 100


def test_one_version_is_not_compared_and_plain_predictions_are_not_slowed_per_event():
    e, g, _ = run([[{"event": "prediction", "model": "m", "version": "v1", "latency_s": 0.01}] * 300])
    assert not any(k[0].startswith("ml_model_comparison") for k in g)
    assert not e.models  # the per-event analytics path never ran for plain predictions


def test_configured_baseline_and_auto_off():
    rng = random.Random(2)
    events = ab_events(1500, rng)
    for ev in events:
        ev["model"] = "n"
    other = [dict(ev, model="m") for ev in events]
    s = AnalyticsSettings(comparison=ComparisonSettings(auto=False, baselines=(("n", "v2"),)))
    _, g, _ = run([events + other], s)
    keys = {k[1][:3] for k in g if k[0] == "ml_model_comparison_p_value"}
    assert keys == {("n", "v2", "v1")}


def test_a_vanished_version_leaves_counted_and_its_results_turn_nan():
    rng = random.Random(4)
    s = AnalyticsSettings(comparison=ComparisonSettings(version_ttl=30.0, min_samples=50))
    chunks = [ab_events(300, rng) for _ in range(3)]
    only_v1 = [[ev for ev in ab_events(300, rng) if ev["version"] == "v1"] for _ in range(40)]
    e, g, b = run(chunks + only_v1, s)
    key = ("m", "v1", "v2")
    assert math.isnan(g[("ml_model_comparison_p_value", key + ("latency_seconds",))])
    assert math.isnan(g[("ml_model_comparison_samples", ("m", "v2"))])
    assert b.counters[(DROPPED, ("version_vanished",))] == 1
    assert set(e.comparisons.models["m"].versions) == {"v1"}
    # it comes back: compared again, from an empty window
    back = [ab_events(400, rng) for _ in range(3)]
    _, g2, _ = run(chunks + only_v1 + back, s)
    assert not math.isnan(g2[("ml_model_comparison_p_value", key + ("latency_seconds",))])


def test_time_window_forgets_old_predictions():
    rng = random.Random(5)
    s = AnalyticsSettings(comparison=ComparisonSettings(window_seconds=10.0, min_samples=20))
    chunks = [ab_events(100, rng) for _ in range(30)]  # one chunk per second
    _, g, _ = run(chunks, s)
    events = [ev for c in chunks[-11:] for ev in c]  # chunks stamped >= now - 10 s
    v1 = [ev["latency_s"] for ev in events if ev["version"] == "v1"]
    v2 = [ev["latency_s"] for ev in events if ev["version"] == "v2"]
    assert g[("ml_model_comparison_samples", ("m", "v1"))] == len(v1)
    ref = stats.ttest_ind(v2, v1, equal_var=False)
    assert g[("ml_model_comparison_p_value", ("m", "v1", "v2", "latency_seconds"))] == pytest.approx(
        ref.pvalue, abs=TOL)


def test_versions_beyond_the_limit_are_counted():
    events = [{"event": "prediction", "model": "m", "version": f"v{i % 5}", "latency_s": 0.01}
              for i in range(100)]
    e, _, b = run([events], AnalyticsSettings(comparison=ComparisonSettings(max_versions=3)))
    assert len(e.comparisons.models["m"].versions) == 3
    assert b.counters[(DROPPED, ("too_many_versions",))] >= 1


@pytest.mark.parametrize("table,key", [
    ({"min_samples": 1}, "analytics.comparison.min_samples"),
    ({"confidence_level": 1.0}, "analytics.comparison.confidence_level"),
    ({"window_size": 10, "min_samples": 20}, "analytics.comparison.min_samples"),
    ({"baselines": {"m": ""}}, "analytics.comparison.baselines.m"),
    ({"bogus": 1}, "analytics.comparison.bogus"),
])
def test_config_errors_name_the_key(table, key):
    with pytest.raises(ConfigError) as exc:
        from_dict({"analytics": {"comparison": table}}, "sidecar.toml")
    assert key in str(exc.value) and "sidecar.toml" in str(exc.value)


def test_config_reads_baselines():
    cfg = from_dict({"analytics": {"comparison": {"baselines": {"resnet50": "v3"}, "min_samples": 50}}})
    assert cfg.analytics.comparison.baselines == (("resnet50", "v3"),)
    assert cfg.analytics.comparison.min_samples == 50
