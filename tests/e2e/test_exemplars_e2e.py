"""Exemplars: a prediction's trace_id on its latency bucket, stored by a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import orjson
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.harness import free_port, require_tool, total, wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def prediction(latency: float, trace_id: str | None = None, model: str = "m") -> bytes:
    ev = {"event": "prediction", "model": model, "version": "v1", "latency_s": latency}
    if trace_id is not None:
        ev["trace_id"] = trace_id
    return orjson.dumps(ev) + b"\n"


def exemplars(sc) -> dict[tuple[str, str], tuple[str, float]]:
    """{(model, le): (trace_id, value)} from the OpenMetrics exposition (the parser checks the syntax)."""
    text = sc.get("/metrics", {"Accept": OPENMETRICS})[2].decode()
    out = {}
    for fam in parse_openmetrics(text):
        if fam.name != "ml_prediction_latency_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket") and s.exemplar is not None:
                out[(s.labels["model_name"], s.labels["le"])] = (s.exemplar.labels["trace_id"],
                                                                 s.exemplar.value)
    return out


def test_the_latest_traced_latency_is_its_buckets_exemplar(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.touch()
    sc = sidecar_factory("--tail", str(events)).start()
    with open(events, "ab") as fh:
        fh.write(prediction(0.012, "aaaa0001") + prediction(0.013, "aaaa0002") + prediction(0.3, "bbbb0001")
                 + prediction(0.011) + prediction(7.0, "cccc0001", model="other"))
    sc.wait_value("ml_predictions_total", 5)
    got = wait_for(lambda: len(exemplars(sc)) == 3 and exemplars(sc), what="three exemplars")
    # 0.012 and 0.013 fall in le=0.025: the latest one wins; an untraced event changes nothing.
    assert got == {("m", "0.025"): ("aaaa0002", 0.013), ("m", "0.5"): ("bbbb0001", 0.3),
                   ("other", "10.0"): ("cccc0001", 7.0)}, got
    # The Prometheus text format has no exemplars.
    assert "trace_id" not in sc.metrics_text()
    # A trace_id that is not a short string is a rejected event, counted, never a broken exposition.
    with open(events, "ab") as fh:
        fh.write(b'{"event":"prediction","model":"m","latency_s":0.1,"trace_id":5}\n')
        fh.write(orjson.dumps({"event": "prediction", "model": "m", "latency_s": 0.1, "trace_id": "x" * 65})
                 + b"\n")
    s = sc.wait_value("mlsidecar_events_rejected_total", 1, reason="wrong_type")
    assert total(s, "mlsidecar_events_rejected_total", reason="invalid_value") == 1
    assert total(s, "ml_predictions_total") == 5


def test_prometheus_stores_the_exemplars(tmp_path, sidecar_factory):
    prometheus = require_tool("prometheus")
    events = tmp_path / "events.jsonl"
    events.touch()
    sc = sidecar_factory("--tail", str(events)).start()
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                   "scrape_configs:\n  - job_name: mlsidecar\n    static_configs:\n"
                   f"      - targets: ['127.0.0.1:{sc.port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/v1"

    def api(path: str, **params) -> dict:
        with urllib.request.urlopen(f"{base}/{path}?{urllib.parse.urlencode(params)}", timeout=5) as r:
            return json.loads(r.read())

    try:
        start = time.time() - 60
        with open(events, "ab") as fh:
            fh.write(prediction(0.04, "4bf92f3577b34da6a3ce929d0e0e4736"))
        sc.wait_value("ml_predictions_total", 1)

        def stored():
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            data = api("query_exemplars", query="ml_prediction_latency_seconds_bucket",
                       start=start, end=time.time() + 60)["data"]
            return [(series["seriesLabels"].get("le"), e["labels"].get("trace_id"), float(e["value"]))
                    for series in data for e in series["exemplars"]]
        got = wait_for(stored, timeout=40, interval=0.5, what="exemplars in Prometheus")
        assert ("0.05", "4bf92f3577b34da6a3ce929d0e0e4736", 0.04) in got, got
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
