"""Every built-in kind maps to the catalogue's families; every bad field is rejected by reason."""

import pytest

from mlsidecar import catalogue as C
from mlsidecar.events import Rejected
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch


@pytest.fixture
def m():
    return Mapper(Batch(), clock=lambda: 1000.0)


def test_prediction_counts_histograms_and_zero_siblings(m):
    m.handle({"event": "prediction", "model": "r", "version": "v3", "latency_s": 0.012, "confidence": 0.93})
    m.tick(1000.0)  # folds the chunk's prediction records into the batch
    b = m.batch
    assert b.counters[(C.PREDICTIONS, ("r", "v3", "success"))] == 1
    assert (C.PREDICTIONS, ("r", "v3", "error")) in b.zero
    lat = b.histograms[(C.PREDICTION_LATENCY, ("r", "v3"))]
    assert lat[C.LATENCY_BUCKETS.index(0.025)] == 1 and lat[-1] == 0.012
    conf = b.histograms[(C.PREDICTION_CONFIDENCE, ("r", "v3"))]
    assert conf[C.CONFIDENCE_BUCKETS.index(0.95)] == 1


def test_bucket_bounds_are_inclusive(m):
    m.handle({"event": "prediction", "model": "r", "latency_s": 0.1})
    m.handle({"event": "prediction", "model": "r", "latency_s": 11})
    m.tick(1000.0)
    h = m.batch.histograms[(C.PREDICTION_LATENCY, ("r", "unknown"))]
    assert h[C.LATENCY_BUCKETS.index(0.1)] == 1
    assert h[len(C.LATENCY_BUCKETS)] == 1  # +Inf


@pytest.mark.parametrize("ev,reason", [
    ({"event": "prediction", "latency_s": 1}, "missing_field"),
    ({"event": "prediction", "model": "m", "latency_s": "fast"}, "wrong_type"),
    ({"event": "prediction", "model": "m", "latency_s": True}, "wrong_type"),
    ({"event": "prediction", "model": "m", "latency_s": -0.1}, "invalid_value"),
    ({"event": "prediction", "model": "m", "latency_s": 0.1, "confidence": 1.5}, "invalid_value"),
    ({"event": "prediction", "model": ["x"], "latency_s": 0.1}, "wrong_type"),
    ({"event": "evaluation", "model": "m"}, "missing_field"),
    ({"event": "evaluation", "model": "m", "accuracy": 2}, "invalid_value"),
    ({"event": "evaluation", "model": "m", "y_true": [1, 2], "y_pred": [1]}, "invalid_value"),
    ({"event": "drift", "model": "m", "feature": "f"}, "missing_field"),
    ({"event": "data_quality", "model": "m", "scores": {"a": "x"}}, "wrong_type"),
    ({"event": "training", "job": "j"}, "missing_field"),
    ({"event": "training", "job": "j", "losses": [1]}, "wrong_type"),
    ({"event": "batch", "job": "j", "duration_s": -1}, "invalid_value"),
    ({"event": "checkpoint", "job": "j"}, "missing_field"),
    ({"event": "pipeline", "pipeline": "p"}, "missing_field"),
    ({"event": "queue", "pipeline": "p", "queues": {"q": -1}}, "invalid_value"),
    ({"event": "freshness", "pipeline": "p", "source": "s"}, "missing_field"),
    ({"event": "freshness", "pipeline": "p", "source": "s", "data_ts": "soon"}, "bad_timestamp"),
    ({"event": "schema_violation", "pipeline": "p"}, "missing_field"),
    ({"event": "metric", "name": "9bad", "value": 1}, "invalid_metric_name"),
    ({"event": "metric", "name": "ml_predictions_total", "type": "counter", "value": 1}, "invalid_metric_name"),
    ({"event": "metric", "name": "x", "type": "summary", "value": 1}, "invalid_value"),
    ({"event": "metric", "name": "x", "value": 1, "labels": {"le": "1"}}, "invalid_metric_name"),
    ({"event": "nope"}, "unknown_event"),
    ({"event": 5}, "wrong_type"),
    ({"event": {}}, "wrong_type"),
    ({"event": []}, "wrong_type"),
    ({"event": "metric", "name": "h", "type": "histogram", "value": -1}, "invalid_value"),
    ({"event": "metric", "name": "c", "type": "counter", "value": 1e300}, "invalid_value"),
    ({"event": "prediction", "model": "m", "latency_s": 1e308}, "invalid_value"),
    ({"event": "pipeline", "pipeline": "p", "stage": "s", "records": 1e308}, "invalid_value"),
    ({"event": "batch", "job": "j", "duration_s": 1e300}, "invalid_value"),
    ({"event": "schema_violation", "pipeline": "p", "violation_type": "x", "count": 2.0 ** 60}, "invalid_value"),
    ({}, "missing_event"),
    ({"event": "prediction", "model": "m", "latency_s": 0.1, "ts": "2026-01-01T00:00:00"}, "bad_timestamp"),
])
def test_rejections_name_their_reason_and_leave_the_batch_alone(m, ev, reason):
    with pytest.raises(Rejected) as exc:
        m.handle(ev)
    assert exc.value.reason == reason
    m.tick(1000.0)
    assert not m.batch


def test_every_kind_maps_to_its_families(m):
    events = [
        {"event": "evaluation", "model": "m", "version": "v", "dataset": "d", "accuracy": 0.9},
        {"event": "evaluation", "model": "m", "version": "v", "dataset": "arr",
         "y_true": [0, 1, 2, 2], "y_pred": [0, 2, 2, 2]},
        {"event": "drift", "model": "m", "version": "v", "feature": "age", "score": 0.3},
        {"event": "data_quality", "model": "m", "version": "v", "scores": {"completeness": 0.99}},
        {"event": "deployment", "model": "m", "version": "v"},
        {"event": "training", "job": "j", "epoch": 3, "losses": {"train": 0.5}, "learning_rate": 0.01},
        {"event": "batch", "job": "j", "duration_s": 0.7, "batch_size": 32},
        {"event": "checkpoint", "job": "j", "size_bytes": 1000, "duration_s": 2.0},
        {"event": "pipeline", "pipeline": "p", "stage": "s", "records": 10, "duration_s": 0.2, "status": "error"},
        {"event": "queue", "pipeline": "p", "queues": {"raw": 7}},
        {"event": "freshness", "pipeline": "p", "source": "src", "age_s": 30},
        {"event": "schema_violation", "pipeline": "p", "violation_type": "missing", "count": 2},
        {"event": "metric", "name": "revenue_total", "type": "counter", "value": 5, "labels": {"shop": "a"}},
    ]
    for ev in events:
        assert m.handle(ev) == ev["event"]
    m.tick(1000.0)
    b = m.batch
    assert b.gauges[(C.ACCURACY, ("m", "v", "d"))] == 0.9
    assert b.gauges[(C.ACCURACY, ("m", "v", "arr"))] == 0.75
    assert b.gauges[(C.FEATURE_DRIFT, ("m", "v", "age"))] == 0.3
    assert b.gauges[(C.DATA_QUALITY, ("m", "v", "completeness"))] == 0.99
    assert b.counters[(C.DEPLOYMENTS, ("m", "v"))] == 1
    assert b.gauges[(C.TRAINING_EPOCH, ("j",))] == 3
    assert b.gauges[(C.TRAINING_LOSS, ("j", "train"))] == 0.5
    assert b.gauges[(C.TRAINING_LR, ("j",))] == 0.01
    assert b.counters[(C.TRAINING_SAMPLES, ("j",))] == 32
    assert b.counters[(C.TRAINING_ITERATIONS, ("j",))] == 1
    assert b.histograms[(C.TRAINING_BATCH, ("j",))][-1] == 0.7
    assert b.gauges[(C.CHECKPOINT_SIZE, ("j",))] == 1000
    assert b.counters[(C.PIPELINE_RECORDS, ("p", "s", "error"))] == 10
    assert (C.PIPELINE_RECORDS, ("p", "s", "success")) in b.zero
    assert b.gauges[(C.PIPELINE_ERROR_RATE, ("p", "s"))] == 1.0
    assert b.gauges[(C.PIPELINE_QUEUE, ("p", "raw"))] == 7
    assert b.gauges[(C.PIPELINE_DATA_TS, ("p", "src"))] == 970.0
    assert b.counters[(C.SCHEMA_VIOLATIONS, ("p", "missing"))] == 2
    fam = m.user_families["revenue_total"]
    assert b.counters[(fam, ("a",))] == 5


def test_user_metric_keeps_its_first_shape(m):
    m.handle({"event": "metric", "name": "kpi", "value": 1, "labels": {"a": "x"}})
    with pytest.raises(Rejected) as exc:
        m.handle({"event": "metric", "name": "kpi", "value": 1, "labels": {"b": "x"}})
    assert exc.value.reason == "label_mismatch"


def test_prediction_labels_are_checked_even_when_a_series_exists(m):
    m.handle({"event": "prediction", "model": "7", "latency_s": 0.1})
    m.handle({"event": "prediction", "model": 7, "latency_s": 0.1})  # an integer becomes "7"
    m.handle({"event": "prediction", "model": "x" * 300, "latency_s": 0.1})
    m.handle({"event": "prediction", "model": "x" * 300, "latency_s": 0.2})
    for bad in (["7"], {"a": 1}, True, None):
        with pytest.raises(Rejected):
            m.handle({"event": "prediction", "model": bad, "latency_s": 0.1})
    m.tick(1000.0)
    c = m.batch.counters
    assert c[(C.PREDICTIONS, ("7", "unknown", "success"))] == 2
    assert c[(C.PREDICTIONS, ("x" * 128, "unknown", "success"))] == 2
    assert sum(v for (f, _), v in c.items() if f is C.PREDICTIONS) == 4
    h = m.batch.histograms[(C.PREDICTION_LATENCY, ("x" * 128, "unknown"))]
    assert h[-1] == pytest.approx(0.3)


def test_long_label_values_are_capped(m):
    m.handle({"event": "deployment", "model": "x" * 1000})
    (fam, labels), = m.batch.counters
    assert len(labels[0]) == 128


def test_a_bug_while_folding_a_chunk_is_counted_and_never_raises(m, monkeypatch):
    m.handle({"event": "prediction", "model": "r", "latency_s": 0.1})

    def broken(*a):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("mlsidecar.store.Batch.observe_all", broken)
    m.tick(1000.0)  # must not raise: the worker would re-read the chunk for ever
    assert m.batch.counters[(C.EVENTS_REJECTED, ("mapper", "internal_error"))] == 1
    monkeypatch.undo()
    m.batch.clear()
    m.handle({"event": "prediction", "model": "r", "latency_s": 0.1})
    m.tick(1001.0)
    assert m.batch.counters[(C.PREDICTIONS, ("r", "unknown", "success"))] == 1


def test_error_rate_stays_finite_at_the_largest_record_counts(m):
    for status in ("error", "success", "error"):
        m.handle({"event": "pipeline", "pipeline": "p", "stage": "s", "records": 2 ** 53, "status": status})
    m.tick(1000.0)
    assert m.batch.gauges[(C.PIPELINE_ERROR_RATE, ("p", "s"))] == pytest.approx(2 / 3)
