"""The README's first commands: `mlsidecar demo` shows real ml_* series within seconds, tells what
to run next once its port is bound, cleans up after itself, and `--prometheus` starts a real
Prometheus with our rules beside it."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

from tests.harness import free_port, parse, require_tool, total, wait_for

FAMILIES = ("ml_predictions_total", "ml_prediction_latency_seconds_count", "ml_prediction_confidence_score_count",
            "ml_model_accuracy_score", "ml_training_loss", "ml_training_current_epoch",
            "ml_training_batch_duration_seconds_count", "ml_pipeline_records_processed_total",
            "ml_pipeline_queue_size", "ml_pipeline_data_freshness_seconds", "ml_process_resident_memory_bytes",
            "ml_host_memory_available_bytes")


def demo(*args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlsidecar", "demo", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, **(env or {})}, text=True, **kw)


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse(r.read().decode())


def test_demo_serves_live_ml_metrics_with_the_host_collector_and_removes_its_temp_dir(tmp_path):
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = demo("--listen", f"127.0.0.1:{port}", "--duration", "30", "--rate", "100", env={"TMPDIR": str(tmp)})
    try:
        def families():
            s = scrape(port)
            missing = [f for f in FAMILIES if not any(k[0] == f for k in s)]
            return s if not missing else None
        s = wait_for(families, timeout=25, what="every demo family on /metrics")
        assert total(s, "ml_predictions_total") > 0
        assert total(s, "ml_process_resident_memory_bytes") > 0
        assert total(s, "mlsidecar_collector_up", collector="host") == 1
        (made,) = list(tmp.iterdir())  # the demo's state dir, while it runs
        assert made.name.startswith("mlsidecar-demo-")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert list(tmp.iterdir()) == [], "the demo left its temporary directory behind"
    assert f"serving on http://127.0.0.1:{port}/" in err and "--inject accuracy-drop" in err


def test_demo_says_nothing_about_next_steps_when_its_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = demo("--listen", f"127.0.0.1:{port}", "--duration", "20", env={"TMPDIR": str(tmp_path)})
        _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "cannot listen on" in err
    assert "curl" not in err and "serving on" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_demo_rejects_an_unknown_injection(tmp_path):
    proc = demo("--inject", "accuracy-drop,meteor-strike", env={"TMPDIR": str(tmp_path)})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "meteor-strike" in err
    assert list(tmp_path.iterdir()) == []


def test_demo_prometheus_scrapes_the_demo_with_our_rules(tmp_path):
    require_tool("prometheus")
    port, prom_port = free_port(), free_port()
    proc = demo("--listen", f"127.0.0.1:{port}", "--prometheus", "--prometheus-listen", f"127.0.0.1:{prom_port}",
                "--duration", "60", "--rate", "100", env={"TMPDIR": str(tmp_path)})

    def api(path, **params):
        url = f"http://127.0.0.1:{prom_port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]

    try:
        groups = wait_for(lambda: api("rules")["groups"], 30, 0.5, what="Prometheus up with our rules")
        names = {g["name"] for g in groups}
        assert {"ml_model_performance", "ml_training_jobs", "ml_data_pipelines", "ml_infrastructure"} <= names
        assert {"ModelAccuracyDrop", "StorageSpaceRunningOut"} <= {r["name"] for g in groups for r in g["rules"]}
        # The first scrape comes within one interval (15s) of the start.
        res = wait_for(lambda: api("query", query='sum(ml_predictions_total{job="mlsidecar"})')["result"],
                       40, 0.5, what="the demo's predictions in Prometheus")
        assert float(res[0]["value"][1]) > 0
        up = api("query", query="up")["result"]
        assert [(r["metric"]["instance"], r["value"][1]) for r in up] == [(f"127.0.0.1:{port}", "1")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{prom_port}/alerts" in err
    assert list(tmp_path.iterdir()) == [], "Prometheus' data stayed behind"
