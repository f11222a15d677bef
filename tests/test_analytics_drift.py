"""PSI and KS against a direct formula and SciPy; the reference summary and its file."""

import json
import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from mlsidecar import catalogue as C
from mlsidecar.analytics import engine, reference
from mlsidecar.analytics.drift import DRIFT_KS, DRIFT_PSI, FeatureDrift, ks_statistic, psi
from mlsidecar.analytics.settings import AnalyticsSettings, DriftSettings
from mlsidecar.store import Batch

EPS = 1e-4


def direct_psi(ref_sample, window, edges, eps=EPS):
    """PSI written out with numpy: quantile bins plus under/overflow, shares floored at eps."""
    bins = np.concatenate(([-np.inf], edges, [np.inf]))
    def shares(x):
        x = np.asarray(x, float)
        counts = [np.sum(x < edges[0])]
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            last = i == len(edges) - 2
            counts.append(np.sum((x >= lo) & ((x <= hi) if last else (x < hi))))
        counts.append(np.sum(x > edges[-1]))
        return np.array(counts, float) / len(x)
    e, a = shares(ref_sample), shares(window)
    both_zero = (e == 0) & (a == 0)
    e, a = np.maximum(e, eps), np.maximum(a, eps)
    terms = (a - e) * np.log(a / e)
    terms[both_zero] = 0.0
    assert len(bins) == len(e) + 1
    return float(terms.sum())


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def drift_for(ref_sample, window, **kw):
    ref = reference.summarise_numeric(ref_sample.tolist(), **kw)
    d = FeatureDrift("numeric", ref, window_size=len(window))
    for v in window:
        d.add(float(v))
    return ref, d.compute(EPS)


@pytest.mark.parametrize("shift,expect", [(0.0, "stable"), (0.4, "moderate"), (1.5, "significant")])
def test_psi_matches_direct_formula_and_reads_as_expected(rng, shift, expect):
    ref_sample = rng.normal(0, 1, 20000)
    window = rng.normal(shift, 1, 5000)
    ref, (p, ks) = drift_for(ref_sample, window)
    assert p == pytest.approx(direct_psi(ref_sample, window, np.array(ref["edges"])), rel=1e-9)
    band = "stable" if p < 0.1 else "moderate" if p <= 0.25 else "significant"
    assert band == expect, p
    # KS against scipy on the raw samples, within 1/Q + 2/n_ref
    want = ks_2samp(ref_sample, window).statistic
    assert abs(ks - want) <= 1 / 100 + 2 / len(ref_sample), (ks, want)


def test_ks_exact_when_the_reference_is_stored_in_full(rng):
    # With quantiles at every order statistic of a small sample, F_ref interpolates the ECDF.
    ref_sample = np.sort(rng.uniform(0, 1, 201))
    window = rng.uniform(0.2, 1.2, 300)
    q = reference.summarise_numeric(ref_sample.tolist(), quantiles=200)["quantiles"]
    assert np.allclose(q, ref_sample)
    assert abs(ks_statistic(q, window.tolist()) - ks_2samp(ref_sample, window).statistic) <= 1 / 200


def test_ks_with_ties_and_discrete_values(rng):
    ref_sample = rng.integers(0, 5, 5000).astype(float)
    window = rng.integers(1, 6, 2000).astype(float)
    ref, (_, ks) = drift_for(ref_sample, window)
    assert abs(ks - ks_2samp(ref_sample, window).statistic) <= 0.01 + 2 / 5000


def test_bin_with_zero_reference_mass_uses_epsilon(rng):
    ref_sample = rng.uniform(0, 1, 1000)
    window = np.concatenate([rng.uniform(0, 1, 900), rng.uniform(2, 3, 100)])  # 10% in overflow
    ref, (p, _) = drift_for(ref_sample, window)
    assert ref["proportions"][-1] == 0.0
    assert p == pytest.approx(direct_psi(ref_sample, window, np.array(ref["edges"])), rel=1e-9)
    overflow_term = (0.1 - EPS) * math.log(0.1 / EPS)
    assert p >= overflow_term  # the overflow bin alone contributes ~0.92


def test_psi_formula_edge_cases():
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0  # empty on both sides: no term
    assert psi([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2 * (1 - EPS) * math.log(1 / EPS))
    with pytest.raises(ValueError):
        psi([1.0], [0.5, 0.5])


def test_empty_window_and_constant_reference():
    d = FeatureDrift("numeric", reference.summarise_numeric([3.0] * 50), 100)
    assert d.compute() is None  # empty window: nothing exported
    assert d.ref["edges"] == [3.0, 3.0] and d.ref["proportions"] == [0.0, 1.0, 0.0]
    for v in (3.0, 3.0, 4.0, 2.0):
        d.add(v)
    p, ks = d.compute(EPS)
    assert p == pytest.approx(psi([0, 1, 0], [0.25, 0.5, 0.25]))
    assert ks == pytest.approx(ks_2samp([3.0] * 50, [3.0, 3.0, 4.0, 2.0]).statistic)


def test_categorical_psi_with_unseen_bucket():
    ref_vals = ["a"] * 500 + ["b"] * 300 + ["c"] * 200
    ref = reference.summarise_categorical(ref_vals)
    d = FeatureDrift("categorical", ref, 1000)
    window = ["a"] * 300 + ["b"] * 300 + ["new1"] * 250 + ["new2"] * 150
    for v in window:
        d.add(v)
    p, ks = d.compute(EPS)
    assert ks is None
    e = [0.5, 0.3, 0.2, 0.0]
    a = [0.3, 0.3, 0.0, 0.4]  # c vanished, 40% unseen
    want = sum((max(x, EPS) - max(y, EPS)) * math.log(max(x, EPS) / max(y, EPS)) for x, y in zip(a, e))
    assert p == pytest.approx(want)


def test_categories_beyond_max_fold_into_the_unseen_mass():
    ref = reference.summarise_categorical(["a"] * 5 + ["b"] * 3 + ["c"] * 2, max_categories=2)
    assert ref["categories"] == {"a": 0.5, "b": 0.3} and ref["unseen"] == pytest.approx(0.2)


def test_first_n_events_become_the_reference_then_drift_is_exported(rng):
    s = AnalyticsSettings(drift=DriftSettings(reference_size=500, window_size=500, min_samples=100))
    e = engine.build(s)
    b = Batch()
    for v in rng.normal(0, 1, 1000):
        e.on_prediction({"features": {"x": float(v), "y": float(v)}}, "m", "v", 0.0)
    for v in rng.normal(2, 1, 500):
        e.on_prediction({"features": {"x": float(v), "y": float(rng.normal(0, 1))}}, "m", "v", 0.0)
    e.tick(b, 1.0)
    assert b.gauges[(C.FEATURE_DRIFT, ("m", "v", "x"))] > 0.25
    assert b.gauges[(C.FEATURE_DRIFT, ("m", "v", "y"))] < 0.1
    assert b.gauges[(DRIFT_KS, ("m", "v", "x"))] > 0.5
    assert (DRIFT_PSI, ("m", "v", "x")) in b.gauges


def test_ks_as_primary_statistic(rng, tmp_path):
    s = AnalyticsSettings(drift=DriftSettings(statistic="ks", reference_size=200, window_size=200,
                                              min_samples=50))
    e = engine.build(s)
    b = Batch()
    for v in rng.normal(0, 1, 400):
        e.on_prediction({"features": {"x": float(v), "c": "k"}}, "m", "v", 0.0)
    e.tick(b, 1.0)
    assert b.gauges[(C.FEATURE_DRIFT, ("m", "v", "x"))] == b.gauges[(DRIFT_KS, ("m", "v", "x"))]
    assert b.gauges[(C.FEATURE_DRIFT, ("m", "v", "c"))] == b.gauges[(DRIFT_PSI, ("m", "v", "c"))]


def test_nan_and_missing_values_stay_out_of_the_drift_window():
    e = engine.build(AnalyticsSettings(drift=DriftSettings(reference_size=10, window_size=100,
                                                           min_samples=1)))
    for i in range(10):
        e.on_prediction({"features": {"x": float(i)}}, "m", "v", 0.0)
    for v in (float("nan"), None, "str", 5.0):
        e.on_prediction({"features": {"x": v}}, "m", "v", 0.0)
    e.on_prediction({"features": {}}, "m", "v", 0.0)
    assert list(e.models[("m", "v")].features["x"].drift.window) == [5.0]


def test_reference_file_round_trip_and_subcommand(tmp_path, rng):
    sample = tmp_path / "train.csv"
    xs = rng.normal(10, 2, 2000)
    with open(sample, "w") as fh:
        fh.write("amount,country\n")
        for i, x in enumerate(xs):
            fh.write(f"{x},{'DE' if i % 3 else 'FR'}\n")
        fh.write(",DE\n")  # a missing value
    out = tmp_path / "ref.json"
    assert reference.main([str(sample), "-o", str(out), "--bins", "8"]) == 0
    feats = reference.load(str(out))
    assert feats["amount"]["type"] == "numeric" and feats["amount"]["count"] == 2000
    assert len(feats["amount"]["edges"]) == 9
    assert feats["country"]["categories"]["FR"] == pytest.approx(667 / 2001)
    assert np.allclose(feats["amount"]["quantiles"], np.quantile(xs, np.linspace(0, 1, 101)))
    # JSON lines of prediction events give the same summary
    jl = tmp_path / "train.jsonl"
    jl.write_text("".join(json.dumps({"event": "prediction", "features": {"amount": float(x)}}) + "\n"
                          for x in xs))
    out2 = tmp_path / "ref2.json"
    assert reference.main([str(jl), "-o", str(out2), "--bins", "8"]) == 0
    again = reference.load(str(out2))["amount"]
    assert again.keys() == feats["amount"].keys()
    for key, value in feats["amount"].items():
        if isinstance(value, list):
            assert again[key] == pytest.approx(value), key
        else:
            assert again[key] == value or again[key] == pytest.approx(value), key


@pytest.mark.parametrize("bad", [
    {"format": "other"},
    {"format": reference.FORMAT, "features": {"x": {"type": "numeric", "edges": [1, 0],
                                                    "proportions": [0, 1, 0], "quantiles": [0, 1]}}},
    {"format": reference.FORMAT, "features": {"x": {"type": "categorical", "categories": {"a": 0.5}}}},
    {"format": reference.FORMAT, "features": {"x": {"type": "weird"}}},
])
def test_invalid_references_are_refused(bad):
    with pytest.raises(reference.ReferenceError):
        reference.validate(bad)


def test_memory_is_bounded_whatever_the_rate(rng):
    d = FeatureDrift("numeric", reference.summarise_numeric(rng.normal(0, 1, 100).tolist()), 50)
    for v in rng.normal(0, 1, 10000):
        d.add(float(v))
    assert len(d.window) == 50
