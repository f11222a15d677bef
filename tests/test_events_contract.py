"""The event contract: docs, JSON Schema and parser say the same thing."""

import json
import pathlib
import re

import jsonschema
import orjson
import pytest

from mlsidecar import events
from mlsidecar.config import Config
from mlsidecar.events import Rejected
from mlsidecar.runtime.ingest import make_mapper
from mlsidecar.store import Batch

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "mlsidecar" / "events.schema.json").read_text())
DOC = (ROOT / "docs" / "events.md").read_text()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def accepted_by_parser(ev) -> bool:
    mapper = make_mapper(Config(), Batch())
    try:
        mapper.handle(ev)
        return True
    except Rejected:
        return False


def doc_examples():
    blocks = re.findall(r"```json\n(.*?)```", DOC, re.S)
    return [orjson.loads(line) for b in blocks for line in b.splitlines() if line.strip()]


def test_every_kind_is_documented_and_in_the_schema():
    documented = re.findall(r"^### (\w+)$", DOC, re.M)
    assert documented == list(events.KINDS)
    assert SCHEMA["properties"]["event"]["enum"] == list(events.KINDS)
    for reason in events.REASONS:
        assert f"`{reason}`" in DOC, f"docs/events.md does not explain reason {reason}"


@pytest.mark.parametrize("ev", doc_examples(), ids=lambda e: e["event"])
def test_doc_examples_are_valid_for_schema_and_parser(ev):
    VALIDATOR.validate(ev)
    if ev["event"] == "label":
        mapper = make_mapper(Config(), Batch())
        mapper.handle({"event": "prediction", "model": "m", "latency_s": 0.1,
                       "prediction_id": ev["prediction_id"], "y_pred": "cat"})
        mapper.handle(ev)
    else:
        assert accepted_by_parser(ev)


CORPUS = [
    {"event": "prediction", "model": "m", "latency_s": 0},
    {"event": "prediction", "model": 7, "version": 3, "latency_s": 1.5, "ts": 1764000000},
    {"event": "prediction", "model": "m", "latency_s": 0.1, "ts": "2026-11-26T07:00:00.25+05:30"},
    {"event": "prediction", "model": "m", "latency_s": 0.1, "ts": "2026-11-26T07:00:00"},
    {"event": "prediction", "model": "m", "latency_s": 0.1, "ts": "26/11/2026"},
    {"event": "prediction", "model": "m", "latency_s": 0.1, "ts": -5},
    {"event": "prediction", "model": "m", "latency_s": -0.1},
    {"event": "prediction", "model": "m", "latency_s": "1"},
    {"event": "prediction", "model": "m", "latency_s": True},
    {"event": "prediction", "model": True, "latency_s": 0.1},
    {"event": "prediction", "model": None, "latency_s": 0.1},
    {"event": "prediction", "model": "m"},
    {"event": "prediction", "model": "m", "latency_s": 0.1, "confidence": 1.01},
    {"event": "prediction", "model": "m", "latency_s": 0.1, "confidence": 0},
    {"event": "evaluation", "model": "m", "accuracy": 0.5},
    {"event": "evaluation", "model": "m", "recall": 1},
    {"event": "evaluation", "model": "m", "precision": -0.1},
    {"event": "evaluation", "model": "m"},
    {"event": "evaluation", "model": "m", "y_true": [1, 0], "y_pred": [1, 1]},
    {"event": "evaluation", "model": "m", "y_true": [], "y_pred": []},
    {"event": "evaluation", "model": "m", "y_true": [[1]], "y_pred": [1]},
    {"event": "drift", "model": "m", "feature": "f", "score": -3},
    {"event": "drift", "model": "m", "feature": "f"},
    {"event": "data_quality", "model": "m", "scores": {}},
    {"event": "data_quality", "model": "m", "scores": {"a": "b"}},
    {"event": "data_quality", "model": "m", "scores": [1]},
    {"event": "deployment", "model": "m"},
    {"event": "deployment"},
    {"event": "training", "job": "j", "loss": 0.1},
    {"event": "training", "job": "j", "epoch": -1},
    {"event": "training", "job": "j"},
    {"event": "training", "job": "j", "learning_rate": 0.1, "losses": {"a": None}},
    {"event": "batch", "job": "j", "duration_s": 1, "batch_size": 3},
    {"event": "batch", "job": "j", "batch_size": 3},
    {"event": "checkpoint", "job": "j", "size_bytes": 0},
    {"event": "checkpoint", "job": "j", "size_bytes": 1, "duration_s": -1},
    {"event": "pipeline", "pipeline": "p", "stage": "s"},
    {"event": "pipeline", "pipeline": "p", "stage": "s", "records": -1},
    {"event": "queue", "pipeline": "p", "queues": {"q": 0}},
    {"event": "queue", "pipeline": "p", "queues": {"q": -1}},
    {"event": "queue", "pipeline": "p"},
    {"event": "freshness", "pipeline": "p", "source": "s", "data_ts": 1764000000},
    {"event": "freshness", "pipeline": "p", "source": "s", "data_ts": "yesterday"},
    {"event": "freshness", "pipeline": "p", "source": "s", "age_s": 1},
    {"event": "freshness", "pipeline": "p", "source": "s"},
    {"event": "schema_violation", "pipeline": "p", "violation_type": "v"},
    {"event": "schema_violation", "pipeline": "p", "violation_type": "v", "count": -2},
    {"event": "metric", "name": "a_b", "value": -1},
    {"event": "metric", "name": "a_b_total", "type": "counter", "value": -1},
    {"event": "metric", "name": "a b", "value": 1},
    {"event": "metric", "name": "c", "value": 1, "labels": {"__x": "1"}},
    {"event": "metric", "name": "c", "value": 1, "labels": {"x": None}},
    {"event": "metric", "name": "d", "type": "summary", "value": 1},
    {"event": "metric", "name": "e", "type": "histogram", "value": 0.3, "labels": {"k": 1}},
    {"event": "nope"},
    {"event": 1},
    {"model": "m"},
]


@pytest.mark.parametrize("ev", CORPUS, ids=lambda e: json.dumps(e)[:60])
def test_schema_and_parser_agree(ev):
    schema_ok = VALIDATOR.is_valid(ev)
    assert schema_ok == accepted_by_parser(ev), (
        f"schema says {'valid' if schema_ok else 'invalid'}: {list(VALIDATOR.iter_errors(ev))[:1]}")
