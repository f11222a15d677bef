"""A million events through the analytics engine: comparison, ROC and correlation state stays
within the bound docs/analytics.md states, and the interpreter's allocated blocks stop growing."""

from __future__ import annotations

import gc
import random
import sys

from mlsidecar.analytics import engine
from mlsidecar.analytics.settings import (
    AnalyticsSettings,
    AnomalySettings,
    ComparisonSettings,
    CorrelationSettings,
    DriftSettings,
    PerformanceSettings,
    QualitySettings,
    RocSettings,
)
from mlsidecar.store import Batch

EVENTS = 1_000_000
CHUNK = 2000
W = 500  # every window


def bound(s: AnalyticsSettings, versions: int) -> dict[str, int]:
    """docs/analytics.md, "Bounds": bytes per version of each part."""
    return {
        "comparison": versions * s.comparison.window_size * (8 + 1 + 8),
        "roc": versions * s.roc.window_size * (8 + 1),
        "correlation": versions * s.correlation.max_features * s.correlation.window_size * 8,
    }


def test_a_million_events_stay_within_the_stated_bound():
    s = AnalyticsSettings(
        performance=PerformanceSettings(window_size=W, max_pending=1000),
        drift=DriftSettings(enabled=False), quality=QualitySettings(enabled=False),
        anomaly=AnomalySettings(enabled=False),
        comparison=ComparisonSettings(window_size=W, min_samples=50, window_seconds=30.0),
        roc=RocSettings(window_size=W), correlation=CorrelationSettings(window_size=W, max_features=4))
    e = engine.Engine(s)
    rng = random.Random(7)
    versions = ("v1", "v2", "v3")
    batch = Batch()
    now = 1000.0
    samples = []
    for c in range(EVENTS // CHUNK):
        records: dict = {}
        for i in range(CHUNK):
            v = versions[i % 3]
            y = rng.random() < 0.5
            sc = rng.random()
            ev = {"score": sc, "y_pred": int(sc > 0.5),
                  "features": {"a": sc, "b": rng.random(), "c": i, "d": -sc, "e": 1.0, "x": "cat"}}
            if i % 4:
                ev["y_true"] = int(y)
            else:  # joined later (or never: bounded by max_pending)
                ev["prediction_id"] = c * CHUNK + i
            e.on_prediction(ev, "m", v, now)
            if i % 8 == 0:
                e.label({"event": "label", "prediction_id": c * CHUNK + i, "y_true": 1})
            status = "error" if i % 50 == 0 else "success"
            rec = records.setdefault(("m", v, status), ([], []))
            rec[0].append(0.01 + sc / 10)
            rec[1].append(sc)
        now += 0.25
        e.records(records, now)
        e.tick(batch, now)
        batch.clear()
        if c % 50 == 49:
            held = e.state_bytes()
            limit = bound(s, len(versions))
            for part in limit:
                assert held[part] <= limit[part], (part, held, limit)
            mc = e.comparisons.models["m"]
            assert len(mc.versions) == 3
            for vs in mc.versions.values():
                assert len(vs.stamps) <= s.comparison.window_size + 1
                assert vs.latency.count <= W and len(vs.latency.data) == W
            assert len(e.join.pending) <= s.performance.max_pending
            gc.collect()
            samples.append(sys.getallocatedblocks())
    # After the windows filled (the first samples), the allocated blocks do not grow.
    assert max(samples[2:]) <= samples[1] * 1.02 + 2000, samples
    # and the results are there
    assert e.state_bytes()["comparison"] == bound(s, 3)["comparison"]
