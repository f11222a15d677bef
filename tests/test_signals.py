"""Signals that used to lie, on the sidecar's side (docs/alerts.md, "Signals that used to lie").

- NaN and infinite losses are accepted, exported as they are and counted (item 8), and
  EventClient writes them instead of dropping them;
- the workload's data_quality scores and the sidecar's own feature checks never write the same
  series (item 5);
- the rejection counters and the series-limit counter start at 0 for their fixed label sets
  (item 9), end to end against the real daemon.
"""

from __future__ import annotations

import math

import orjson
import pytest

from mlsidecar import catalogue as C
from mlsidecar.analytics import engine
from mlsidecar.analytics.settings import AnalyticsSettings
from mlsidecar.client import EventClient
from mlsidecar.events import REASONS, Rejected
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch
from tests.harness import parse, wait_for


def handle(*events) -> Batch:
    b = Batch()
    m = Mapper(b)
    for ev in events:
        m.handle(ev)
    return b


def test_nan_and_infinite_losses_are_exported_and_counted():
    b = handle({"event": "training", "job": "j", "losses": {"train": "NaN", "val": "Infinity", "aux": 0.5}},
               {"event": "training", "job": "j", "loss": "-Infinity"})
    assert b.gauges[(C.TRAINING_LOSS, ("j", "train"))] == -math.inf
    assert b.gauges[(C.TRAINING_LOSS, ("j", "val"))] == math.inf
    assert b.gauges[(C.TRAINING_LOSS, ("j", "aux"))] == 0.5
    counted = b.counters
    assert counted[(C.TRAINING_LOSS_NONFINITE, ("j", "train"))] == 2
    assert counted[(C.TRAINING_LOSS_NONFINITE, ("j", "val"))] == 1
    # A finite loss creates its counter at 0: increase() then sees the first NaN.
    assert counted[(C.TRAINING_LOSS_NONFINITE, ("j", "aux"))] == 0


def test_a_nan_loss_alone_is_exported_as_nan():
    b = handle({"event": "training", "job": "j", "loss": "NaN"})
    assert math.isnan(b.gauges[(C.TRAINING_LOSS, ("j", "train"))])


@pytest.mark.parametrize("bad", ["nan?", "", "1e999x", [1], {"x": 1}])
def test_other_loss_values_are_still_rejected(bad):
    with pytest.raises(Rejected):
        handle({"event": "training", "job": "j", "losses": {"train": bad}})


def test_event_client_writes_nan_losses_instead_of_dropping_them(tmp_path):
    path = tmp_path / "events.jsonl"
    c = EventClient(path=str(path))
    assert c.training("j", epoch=3, losses={"train": float("nan"), "val": float("inf"), "aux": -math.inf})
    assert c.dropped == 0
    c.close()
    (line,) = path.read_bytes().splitlines()
    ev = orjson.loads(line)  # valid JSON
    assert ev["losses"] == {"train": "NaN", "val": "Infinity", "aux": "-Infinity"}
    b = handle(ev)
    assert math.isnan(b.gauges[(C.TRAINING_LOSS, ("j", "train"))])


def test_workload_and_sidecar_quality_scores_are_separate_series():
    e = engine.build(AnalyticsSettings())
    b = Batch()
    m = Mapper(b, analytics=e)
    m.handle({"event": "data_quality", "model": "m", "version": "v", "scores": {"completeness": 0.5}})
    for _ in range(20):
        m.handle({"event": "prediction", "model": "m", "version": "v", "latency_s": 0.01,
                  "features": {"age": 30}})
    e.tick(b, 1.0)
    q = {k[1][2]: v for k, v in b.gauges.items() if k[0] is C.DATA_QUALITY}
    assert q["completeness"] == 0.5  # the workload's, untouched by the sidecar's checks
    assert q["sidecar_completeness"] == 1.0
    assert all(name.startswith("sidecar_") for name in q if name != "completeness")


def test_rejection_and_series_limit_counters_start_at_zero(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps({"event": "deployment", "model": "m", "version": "v"}) + b"\n")
    sc = sidecar_factory("--tail", str(events)).start()

    def zeros():
        s = parse(sc.metrics_text())
        rejected = {dict(lv)["reason"]: v for (n, lv), v in s.items()
                    if n == "mlsidecar_events_rejected_total" and dict(lv).get("source") == str(events)}
        limited = {dict(lv)["metric"]: v for (n, lv), v in s.items() if n == "mlsidecar_series_limited_total"}
        return (set(REASONS) <= set(rejected) and "ml_predictions_total" in limited) and (rejected, limited)

    rejected, limited = wait_for(zeros, 20, what="rejection reasons and series-limit counters at 0")
    assert set(rejected.values()) == {0.0}
    assert set(limited.values()) == {0.0}
    assert {"ml_training_loss", "ml_pipeline_records_processed_total"} <= set(limited)
