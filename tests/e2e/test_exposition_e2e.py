"""One port serves everything: our series, a workload's own prometheus_client files, valid always."""

import os
import struct
import subprocess
import sys

from tests.harness import parse, require_tool, total

WORKLOAD = r"""
import os, sys
from prometheus_client import Counter, Gauge, Histogram
c = Counter("app_requests", "Requests served.", ["route"])
g = Gauge("app_inflight", "In flight.", multiprocess_mode="livesum")
h = Histogram("app_request_seconds", "Request time.", buckets=(0.1, 1.0))
for i in range(int(sys.argv[1])):
    c.labels(route="/predict").inc()
    h.observe(0.05 if i % 2 else 0.5)
g.set(3)
"""


def run_workload(mp_dir, n):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    subprocess.run([sys.executable, "-c", WORKLOAD, str(n)], check=True, env=env)


def test_workload_multiprocess_dir_is_served_and_bad_files_are_skipped(tmp_path, sidecar_factory):
    mp = tmp_path / "mp"
    mp.mkdir()
    run_workload(mp, 10)
    run_workload(mp, 5)  # a second worker process, another pid file
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"event":"prediction","model":"m","latency_s":0.1}\n')
    sc = sidecar_factory("--tail", str(log), "--multiproc-dir", str(mp)).start()
    s = sc.wait_value("app_requests_total", 15)
    assert total(s, "app_request_seconds_count") == 15
    assert total(s, "app_request_seconds_bucket", le="0.1") == 7
    assert total(s, "app_inflight") == 6
    assert total(s, "ml_predictions_total") == 1
    # A worker killed mid-write leaves a truncated file and an empty one: skipped, counted.
    (mp / "counter_999999.db").write_bytes(struct.pack("i", 4096) + b"\0" * 100)
    (mp / "counter_999998.db").write_bytes(b"")
    status, _, body = sc.get("/metrics")
    assert status == 200
    s = parse(body.decode())
    assert total(s, "app_requests_total") == 15
    assert total(s, "mlsidecar_multiproc_files_skipped_total") >= 2


def test_hostile_events_never_break_the_exposition(tmp_path, sidecar_factory):
    promtool = require_tool("promtool")
    log = tmp_path / "events.jsonl"
    nasty = ['a"b', "new\nline", "back\\slash", "ünïcødé", "}{", "x" * 500, "tab\there", "\u2028"]
    lines = []
    for v in nasty:
        lines.append({"event": "prediction", "model": v, "version": v, "status": v, "latency_s": 0.1})
        lines.append({"event": "metric", "name": "app_kpi", "value": 1, "labels": {"k": v}})
        lines.append({"event": "queue", "pipeline": v, "queues": {v: 1}})
    import orjson
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("ml_predictions_total", len(nasty))
    text = sc.metrics_text()
    s = parse(text)  # prometheus_client's parser accepts it
    assert total(s, "app_kpi", k='a"b') == 1
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    om = sc.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})[2].decode()
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    assert any(f.name == "app_kpi" for f in text_string_to_metric_families(om))


def test_series_limit_and_static_labels_through_the_daemon(tmp_path, sidecar_factory):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[limits]\nmax_series_per_metric = 3\n[labels]\ncluster = "gpu-a"\n'
                   '[labels_from_env]\npod = "MY_POD"\n')
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(b'{"event":"deployment","model":"m%d"}\n' % i for i in range(10)))
    sc = sidecar_factory("--tail", str(log), config=str(cfg), env={"MY_POD": "pod-7"}).start()
    s = sc.wait_value("mlsidecar_series_limited_total", 7, metric="ml_model_deployments_total")
    assert total(s, "ml_model_deployments_total") == 3
    assert total(s, "ml_model_deployments_total", cluster="gpu-a", pod="pod-7") == 3
    assert "reached its limit of 3 series" in sc.log()
    assert sc.log().count("reached its limit") == 1  # logged once, not per event


def test_user_mappings_through_the_daemon(tmp_path, sidecar_factory):
    cfg = tmp_path / "c.toml"
    cfg.write_text('''
[[mappings]]
event = "cache_lookup"
match = { tier = "redis" }
[[mappings.metrics]]
name = "app_cache_lookups_total"
type = "counter"
labels = { result = "result" }
[[mappings.metrics]]
name = "app_cache_latency_seconds"
type = "histogram"
value = "timing.latency_s"
buckets = [0.001, 0.01, 0.1]
''')
    log = tmp_path / "events.jsonl"
    log.write_bytes(
        b'{"event":"cache_lookup","tier":"redis","result":"hit","timing":{"latency_s":0.002}}\n'
        b'{"event":"cache_lookup","tier":"redis","result":"miss","timing":{"latency_s":0.05}}\n'
        b'{"event":"cache_lookup","tier":"memcached","result":"hit","timing":{"latency_s":0.05}}\n'
        b'{"event":"cache_lookup","tier":"redis","timing":{"latency_s":0.05}}\n')
    sc = sidecar_factory("--tail", str(log), config=str(cfg)).start()
    s = sc.wait_value("app_cache_lookups_total", 2)
    assert total(s, "app_cache_lookups_total", result="hit") == 1
    assert total(s, "app_cache_latency_seconds_bucket", le="0.01") == 1
    assert total(s, "mlsidecar_events_rejected_total", reason="unknown_event") == 1  # memcached: no match
    assert total(s, "mlsidecar_events_rejected_total", reason="missing_field") == 1  # no result


def write_raw_db(path, entries) -> None:
    """A multiprocess file in prometheus_client's layout, with keys as given (bytes, maybe not JSON)."""
    body = b""
    for key, value in entries:
        pad = 8 - (len(key) + 4) % 8
        body += struct.pack("i", len(key)) + key + b" " * pad + struct.pack("dd", value, 1.0)
    path.write_bytes(struct.pack("i", 8 + len(body)) + b"\0" * 4 + body)


def key(name, sample, labels, help_text="h") -> bytes:
    import json
    return json.dumps([name, sample, labels, help_text], sort_keys=True).encode()


def test_bad_keys_in_a_workload_dir_are_skipped_and_counted(tmp_path, sidecar_factory):
    promtool = require_tool("promtool")
    mp = tmp_path / "mp"
    mp.mkdir()
    write_raw_db(mp / "gauge_max_1.db", [
        (key("app_ok_before", "app_ok_before", {"a": "1"}), 1.0),
        (b'["app_list", "app_list", ["not", "a", "mapping"], "h"]', 2.0),  # a label field that is a list
        (b'["app_short", "app_short"]', 2.0),
        (b'{"app_dict": 1}', 2.0),
        (b"not json at all", 2.0),
        (b'["app_utf", "app_utf", {"a": "\xff\xfe"}, "h"]', 2.0),  # not UTF-8
        (key("app_num", "app_num", {"a": [1]}), 2.0),  # a label value that is not a string
        (key("app-dash", "app-dash", {}), 3.0),  # invalid metric name
        (key("app_lbl", "app_lbl", {"caf\u00e9": "x"}), 3.0),  # invalid label name
        (key("app_res", "app_res", {"__name__": "x"}), 3.0),  # reserved label name
        (key("app_le", "app_le", {"le": "1"}), 3.0),  # le outside a histogram
        (key("app_samp", "other_sample", {}), 3.0),  # a sample outside its family
        (key("ml_predictions", "ml_predictions", {}), 4.0),  # a built-in counter's name, as a gauge
        (key("ml_predictions_total", "ml_predictions_total", {}), 4.0),
        (key("mlsidecar_scrapes_total", "mlsidecar_scrapes_total", {}), 4.0),  # the server's own
        (key("app_ok_after", "app_ok_after", {"a": "2"}), 5.0),
    ])
    write_raw_db(mp / "counter_2.db", [
        (key("app_req", "app_req_total", {}), 7.0),
        (key("app_both", "app_both_total", {}), 1.0),
        (key("process_cpu_seconds", "process_cpu_seconds_total", {}), 9.0),  # the server writes this one
    ])
    write_raw_db(mp / "gauge_max_3.db", [
        (key("app_req_total", "app_req_total", {}), 8.0),  # clashes with counter app_req
        (key("app_both", "app_both", {}), 1.0),  # the same family as another type
    ])
    sc = sidecar_factory("--multiproc-dir", str(mp)).start()
    status, _, body = sc.get("/metrics")
    assert status == 200
    text = body.decode()
    s = parse(text)
    assert total(s, "app_ok_before", a="1") == 1 and total(s, "app_ok_after", a="2") == 5
    assert total(s, "app_req_total") == 7
    assert total(s, "ml_predictions_total") == 0
    assert total(s, "mlsidecar_multiproc_keys_skipped_total", reason="bad_key") == 6
    assert total(s, "mlsidecar_multiproc_keys_skipped_total", reason="invalid_name") == 5
    assert total(s, "mlsidecar_multiproc_keys_skipped_total", reason="clashing_family") == 6
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    om = sc.get("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})[2].decode()
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    names = [f.name for f in text_string_to_metric_families(om)]  # raises on a clashing name
    assert len(names) == len(set(names)) and "app_ok_after" in names
    assert "Traceback" not in sc.log()
