"""Random good and bad analytics fields (score, labels, ids, features, importances) through the
real mapper: every event is accepted or rejected with a reason, and no tick ever fails."""

from __future__ import annotations

import random

from mlsidecar import catalogue as C
from mlsidecar.config import Config
from mlsidecar.events import Rejected
from mlsidecar.runtime.ingest import make_mapper
from mlsidecar.store import Batch

VALUES = [None, 0, 1, -1, 0.5, 1.5, -0.0, 1e308, -1e308, 5e-324, True, False, "1", "x", [], {},
          [1], {"a": 1}, 2 ** 70, float("inf"), float("nan"), "error", "success"]


def test_random_analytics_fields_are_accepted_or_rejected_and_ticks_never_fail():
    rng = random.Random(11)
    batch = Batch()
    mapper = make_mapper(Config(), batch)
    accepted = rejected = 0
    internal = 0.0
    for i in range(30_000):
        ev = {"event": rng.choice(["prediction", "prediction", "label", "feature_importance"]),
              "model": rng.choice(["m", "n", 3]), "version": rng.choice(["v1", "v2", "v3", 7]),
              "latency_s": rng.random() / 10}
        for k in ("score", "y_true", "y_pred", "prediction_id", "confidence", "status"):
            if rng.random() < 0.4:
                ev[k] = rng.choice(VALUES + [rng.random()] * 4)
        if rng.random() < 0.5:
            ev["features"] = {rng.choice("abcd"): rng.choice(VALUES + [rng.gauss(0, 1)] * 8)
                              for _ in range(4)}
        if rng.random() < 0.3:
            ev["importances"] = rng.choice(VALUES + [{"a": 0.3}, {"a": "x"}, {"b": 1e308}])
        try:
            mapper.handle(ev)
            accepted += 1
        except Rejected:
            rejected += 1
        if i % 500 == 499:
            mapper.tick(1000.0 + i / 50)
            internal += batch.counters.get((C.EVENTS_REJECTED, ("mapper", "internal_error")), 0.0)
            batch.clear()
    assert accepted > 1000 and rejected > 1000
    assert internal == 0.0
    e = mapper.analytics
    assert set(e.comparisons.models) >= {"m", "n"}  # compared despite the garbage around them
