"""The demo's /metrics passes `promtool check metrics`; OpenMetrics carries # UNIT lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.harness import free_port, parse, require_tool, total, wait_for


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`mlsidecar demo` on a free loopback port, until its predictions and process readings show."""
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    log = open(tmp / "demo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlsidecar", "demo", "--listen", f"127.0.0.1:{port}",
                             "--state-dir", str(tmp / "state"), "--rate", "200", "--duration", "60"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def get(accept: str = "") -> str:
        req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def full() -> bool:
        s = parse(get())
        return total(s, "ml_predictions_total") > 0 and total(s, "ml_process_processes") > 0
    try:
        wait_for(full, timeout=30, what=f"demo metrics (log {tmp / 'demo.log'})")
        yield get
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_promtool_check_metrics_finds_nothing_in_the_demo_output(demo):
    promtool = require_tool("promtool")
    text = demo()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    assert "ml_process_count" not in text  # renamed: _count is for histograms and summaries


def test_openmetrics_names_the_unit_of_families_whose_name_ends_in_one(demo):
    text = demo("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in parse_openmetrics(text)}  # the parser checks UNIT against the name
    assert families["ml_prediction_latency_seconds"].unit == "seconds"
    assert families["ml_process_cpu_seconds"].unit == "seconds"
    assert families["ml_process_resident_memory_bytes"].unit == "bytes"
    assert "# UNIT ml_prediction_latency_seconds seconds" in text
    for fam in families.values():
        if fam.unit:
            assert fam.name.endswith("_" + fam.unit), fam.name
    # A family without a unit in its name gets no UNIT line.
    assert families["ml_process_processes"].unit == ""
