"""Training runs (status on training events), model size (deployment events) and prediction payload
sizes: the families, their values, their rejections, and runs in progress across a restart."""

from __future__ import annotations

import time

import pytest

from mlsidecar import catalogue as C
from mlsidecar.config import Config
from mlsidecar.events import Rejected
from mlsidecar.mapping import Mapper
from mlsidecar.runtime.ingest import Ingest
from mlsidecar.store import Batch, SeriesWriter

NOW = 1_700_000_000.0


@pytest.fixture
def m():
    return Mapper(Batch(), clock=lambda: NOW)


def hist(m, fam, labels):
    return m.batch.histograms[(fam, labels)]


def test_a_run_from_start_to_completion(m):
    m.handle({"event": "training", "job": "bert", "status": "started", "ts": NOW - 5400.0})
    assert m.batch.gauges[(C.TRAINING_RUN_START, ("bert",))] == NOW - 5400.0
    assert m.batch.gauges[(C.TRAINING_RUN_ACTIVE, ("bert",))] == 1.0
    m.handle({"event": "training", "job": "gpt", "status": "running", "epoch": 2})
    assert m.batch.gauges[(C.TRAINING_ACTIVE_JOBS, ())] == 2.0
    assert m.batch.gauges[(C.TRAINING_RUN_START, ("gpt",))] == NOW, "first heard of mid-run: starts now"
    m.handle({"event": "training", "job": "gpt", "status": "running", "epoch": 3, "ts": NOW + 60})
    assert m.batch.gauges[(C.TRAINING_RUN_START, ("gpt",))] == NOW, "running does not restart a run"
    m.handle({"event": "training", "job": "bert", "status": "completed", "ts": NOW})
    h = hist(m, C.TRAINING_RUN_DURATION, ("bert", "completed"))
    # 5400 s: the 7200 s bucket (le is inclusive), sum 5400.
    assert h[C.RUN_BUCKETS.index(7200.0)] == 1 and sum(h[:-1]) == 1 and h[-1] == 5400.0
    assert m.batch.gauges[(C.TRAINING_RUN_ACTIVE, ("bert",))] == 0.0
    assert m.batch.gauges[(C.TRAINING_ACTIVE_JOBS, ())] == 1.0
    # failed with its own duration; a second end of a run already ended only sets active 0.
    m.handle({"event": "training", "job": "gpt", "status": "failed", "duration_s": 30.0})
    h = hist(m, C.TRAINING_RUN_DURATION, ("gpt", "failed"))
    assert h[0] == 1 and h[-1] == 30.0
    m.handle({"event": "training", "job": "gpt", "status": "failed"})
    assert hist(m, C.TRAINING_RUN_DURATION, ("gpt", "failed"))[-1] == 30.0
    assert m.batch.gauges[(C.TRAINING_ACTIVE_JOBS, ())] == 0.0


def test_events_without_status_have_no_run_series(m):
    m.handle({"event": "training", "job": "bert", "epoch": 1, "loss": 0.5})
    assert not [k for k in m.batch.gauges if k[0] in (C.TRAINING_ACTIVE_JOBS, C.TRAINING_RUN_ACTIVE)]


@pytest.mark.parametrize("ev,reason", [
    ({"event": "training", "job": "j", "status": "done"}, "invalid_value"),
    ({"event": "training", "job": "j", "status": 1}, "wrong_type"),
    ({"event": "training", "job": "j", "status": "completed", "duration_s": -1}, "invalid_value"),
    ({"event": "training", "job": "j"}, "missing_field"),
    ({"event": "deployment", "model": "m", "size_bytes": "big"}, "wrong_type"),
    ({"event": "deployment", "model": "m", "size_bytes": -5}, "invalid_value"),
    ({"event": "prediction", "model": "m", "latency_s": 0.1, "request_bytes": -1}, "invalid_value"),
    ({"event": "prediction", "model": "m", "latency_s": 0.1, "response_bytes": "1k"}, "wrong_type"),
])
def test_bad_fields_are_rejected_by_reason_and_count_nothing(m, ev, reason):
    with pytest.raises(Rejected) as err:
        m.handle(ev)
    assert err.value.reason == reason
    m.tick(NOW)
    assert not m.batch.counters and not m.batch.histograms
    mine = (C.MODEL_SIZE, C.TRAINING_ACTIVE_JOBS, C.TRAINING_RUN_ACTIVE, C.TRAINING_RUN_START)
    assert not [k for k in m.batch.gauges if k[0] in mine]


def test_model_size_from_deployments(m):
    m.handle({"event": "deployment", "model": "r", "version": "v5", "size_bytes": 102483968})
    assert m.batch.gauges[(C.MODEL_SIZE, ("r", "v5"))] == 102483968
    assert m.batch.counters[(C.DEPLOYMENTS, ("r", "v5"))] == 1
    m.handle({"event": "deployment", "model": "r", "version": "v6"})
    assert (C.MODEL_SIZE, ("r", "v6")) not in m.batch.gauges


def test_prediction_payload_sizes(m):
    for req, resp in ((64, 10), (65, None), (None, 5000), (70_000_000, 64)):
        ev = {"event": "prediction", "model": "r", "version": "v1", "latency_s": 0.01}
        if req is not None:
            ev["request_bytes"] = req
        if resp is not None:
            ev["response_bytes"] = resp
        m.handle(ev)
    m.handle({"event": "prediction", "model": "r", "version": "v1", "latency_s": 0.01})
    m.tick(NOW)
    req = hist(m, C.PREDICTION_REQUEST_SIZE, ("r", "v1"))
    b = C.PAYLOAD_BUCKETS
    assert req[b.index(64.0)] == 1 and req[b.index(256.0)] == 1 and req[len(b)] == 1  # +Inf
    assert sum(req[:-1]) == 3 and req[-1] == 64 + 65 + 70_000_000
    resp = hist(m, C.PREDICTION_RESPONSE_SIZE, ("r", "v1"))
    assert resp[b.index(64.0)] == 2 and resp[b.index(16384.0)] == 1 and resp[-1] == 10 + 5000 + 64
    assert m.batch.counters[(C.PREDICTIONS, ("r", "v1", "success"))] == 5


def test_runs_in_progress_survive_a_restart(tmp_path):
    now = time.time()
    writer = SeriesWriter(str(tmp_path), "tail-x")
    batch = Batch()
    ingest = Ingest(Config(), Mapper(batch, clock=lambda: now), batch, writer)
    ingest.mapper.handle({"event": "training", "job": "bert", "status": "started", "ts": now - 600})
    ingest.mapper.handle({"event": "training", "job": "gpt", "status": "started", "ts": now - 60})
    writer.apply(batch)
    writer.flush()
    writer.close()
    # A new worker: its mapper learns the runs in progress from the metric files.
    writer = SeriesWriter(str(tmp_path), "tail-x")
    batch = Batch()
    ingest = Ingest(Config(), Mapper(batch, clock=lambda: now), batch, writer)
    ingest.mapper.handle({"event": "training", "job": "bert", "status": "running", "epoch": 4})
    assert (C.TRAINING_RUN_START, ("bert",)) not in batch.gauges, "the run goes on; it is not restarted"
    assert batch.gauges[(C.TRAINING_ACTIVE_JOBS, ())] == 2.0
    ingest.mapper.handle({"event": "training", "job": "bert", "status": "completed", "ts": now})
    h = batch.histograms[(C.TRAINING_RUN_DURATION, ("bert", "completed"))]
    assert h[-1] == pytest.approx(600.0) and h[C.RUN_BUCKETS.index(900.0)] == 1
    writer.close()
