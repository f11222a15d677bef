"""The whole path: lines appended to a real file, the real daemon, a real HTTP scrape."""

import gzip
import random
import signal

import orjson

from tests.harness import parse, total, wait_for

LAT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def expected_buckets(values, bounds):
    return {b: sum(1 for v in values if v <= b) for b in bounds}


def test_ten_thousand_predictions_counted_exactly(tmp_path, sidecar_factory):
    log = tmp_path / "events.jsonl"
    log.touch()
    sc = sidecar_factory("--tail", str(log)).start()
    rng = random.Random(1)
    latencies, confidences = [], []
    with open(log, "ab") as fh:
        for i in range(10_000):
            lat = round(rng.uniform(0, 0.6), 6)
            conf = round(rng.random(), 4)
            latencies.append(lat)
            confidences.append(conf)
            ev = {"event": "prediction", "model": "resnet50", "version": "v3",
                  "status": "error" if i % 10 == 0 else "success", "latency_s": lat, "confidence": conf}
            fh.write(orjson.dumps(ev) + b"\n")
            if i % 2500 == 0:
                fh.flush()
    s = sc.wait_value("ml_predictions_total", 10_000)
    assert total(s, "ml_predictions_total", status="error") == 1000
    assert total(s, "ml_prediction_latency_seconds_count") == 10_000
    assert total(s, "ml_prediction_confidence_score_count") == 10_000
    assert abs(total(s, "ml_prediction_latency_seconds_sum") - sum(latencies)) < 1e-6
    assert abs(total(s, "ml_prediction_confidence_score_sum") - sum(confidences)) < 1e-6
    for bound, n in expected_buckets(latencies, LAT_BUCKETS).items():
        assert total(s, "ml_prediction_latency_seconds_bucket", le=repr(bound)) == n, bound
    assert total(s, "mlsidecar_events_total", kind="prediction") == 10_000


def test_bad_lines_are_counted_by_reason_and_the_stream_goes_on(tmp_path, sidecar_factory):
    log = tmp_path / "events.jsonl"
    log.touch()
    sc = sidecar_factory("--tail", str(log)).start()
    good = b'{"event":"prediction","model":"m","latency_s":0.1}\n'
    bad = [
        (b"{not json\n", "malformed_json"),
        (b"[1,2,3]\n", "not_an_object"),
        (b'{"event":"prediction","latency_s":0.1}\n', "missing_field"),
        (b'{"event":"prediction","model":"m","latency_s":"fast"}\n', "wrong_type"),
        (b'{"event":"prediction","model":"m","latency_s":-1}\n', "invalid_value"),
        (b'{"event":"teleport","model":"m"}\n', "unknown_event"),
        (b'{"model":"m"}\n', "missing_event"),
        (b'{"event":"prediction","model":"m","latency_s":0.1,"ts":"yesterday"}\n', "bad_timestamp"),
        (b'{"event":"prediction","model":"\xff\xfe","latency_s":0.1}\n', "invalid_utf8"),
    ]
    with open(log, "ab") as fh:
        for line, _ in bad:
            fh.write(line)
            fh.write(good)
    s = sc.wait_value("ml_predictions_total", len(bad))
    for _, reason in bad:
        assert total(s, "mlsidecar_events_rejected_total", reason=reason) == 1, reason
    assert sc.proc.poll() is None


def test_timestamps_in_both_forms_are_accepted(tmp_path, sidecar_factory):
    log = tmp_path / "events.jsonl"
    log.write_bytes(
        b'{"event":"prediction","model":"m","latency_s":0.1,"ts":1764000000.5}\n'
        b'{"event":"prediction","model":"m","latency_s":0.1,"ts":"2026-11-26T07:00:00Z"}\n'
        b'{"event":"prediction","model":"m","latency_s":0.1,"ts":"2026-11-26T07:00:00.123+01:00"}\n')
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 3)


def test_known_series_start_at_zero_and_defaults_apply(tmp_path, sidecar_factory):
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"event":"prediction","model":"m","latency_s":0.2}\n')
    sc = sidecar_factory("--tail", str(log)).start()
    s = sc.wait_value("ml_predictions_total", 1)
    key_err = ("ml_predictions_total", (("model_name", "m"), ("model_version", "unknown"), ("status", "error")))
    assert s[key_err] == 0.0
    assert total(s, "ml_predictions_total", status="success") == 1
    # confidence is optional: no confidence histogram for this model
    assert total(s, "ml_prediction_confidence_score_count") == 0


def test_content_negotiation_gzip_and_pages(tmp_path, sidecar_factory):
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"event":"prediction","model":"m","latency_s":0.2}\n')
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 1)
    status, headers, body = sc.get("/metrics", {"Accept": "application/openmetrics-text;version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    names = {f.name for f in om_parse(text)}
    assert "ml_predictions" in names
    status, headers, body = sc.get("/metrics", {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert total(parse(gzip.decompress(body).decode()), "ml_predictions_total") == 1
    assert sc.get("/healthz")[0] == 200
    page = sc.get("/")[2].decode()
    assert str(log) in page and "/metrics" in page
    assert total(sc.scrape(), "mlsidecar_build_info") == 1


def test_sigterm_stops_everything_cleanly(tmp_path, sidecar_factory):
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"event":"prediction","model":"m","latency_s":0.2}\n')
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", 1)
    pid = sc.proc.pid
    assert sc.stop(signal.SIGTERM) == 0
    wait_for(lambda: not _group_alive(pid), 10, what="all processes gone")


def _group_alive(pgid: int) -> bool:
    import os
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
