"""limits.label_value_length reaches every label the ingest path makes, and nothing else.

The limit is passed to the mapper and the analytics engine; no module global is
assigned, so one worker's limit cannot change another mapper in the same process.
"""

from __future__ import annotations

from mlsidecar import catalogue as C
from mlsidecar.analytics.importance import IMPORTANCE
from mlsidecar.analytics.performance import CONFUSION
from mlsidecar.analytics.quality import RATE
from mlsidecar.config import from_dict
from mlsidecar.mapping import Mapper
from mlsidecar.runtime.ingest import make_mapper
from mlsidecar.store import Batch

LONG = "abcdefghij" * 20  # 200 characters


def _labels(batch: Batch, family) -> set[tuple[str, ...]]:
    keys = set(batch.counters) | set(batch.gauges) | set(batch.histograms)
    return {labels for fam, labels in keys if fam is family}


def test_the_configured_length_cuts_mapped_and_analytics_labels():
    cfg = from_dict({"limits": {"label_value_length": 8}})
    m = make_mapper(cfg, Batch())
    m.handle({"event": "prediction", "model": "model-" + LONG, "version": "v1", "latency_s": 0.1,
              "y_true": "class-" + LONG, "y_pred": "class-" + LONG, "features": {"feature-" + LONG: 1.0}})
    m.handle({"event": "feature_importance", "model": "m", "version": "v1", "importances": {"imp-" + LONG: 0.5}})
    m.handle({"event": "training", "job": "j", "losses": {"loss-" + LONG: 0.5}})
    m.handle({"event": "metric", "name": "cut_gauge", "value": 1.0, "labels": {"k": "metric-" + LONG}})
    m.tick(1000.0)
    b = m.batch
    assert ("model-ab", "v1", "success") in _labels(b, C.PREDICTIONS)
    assert ("model-ab", "v1", "class-ab", "class-ab") in _labels(b, CONFUSION)
    assert {lv[2] for lv in _labels(b, RATE)} == {"feature-"}
    assert ("m", "v1", "imp-abcd") in _labels(b, IMPORTANCE)
    assert ("j", "loss-abc") in _labels(b, C.TRAINING_LOSS)
    assert ("metric-a",) in _labels(b, m.user_families["cut_gauge"])


def test_one_mappers_limit_does_not_change_another():
    make_mapper(from_dict({"limits": {"label_value_length": 8}}), Batch())
    m = Mapper(Batch())  # the default length: 128
    m.handle({"event": "queue", "pipeline": LONG, "queues": {LONG: 1}})
    assert _labels(m.batch, C.PIPELINE_QUEUE) == {(LONG[:128], LONG[:128])}
