"""A real Prometheus scrapes the sidecar through its limits: negotiation, gzip, basic auth, coalescing."""

import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request

import bcrypt

from tests.harness import free_port, require_tool, wait_for


def query(prom_url: str, expr: str) -> list:
    url = prom_url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def test_prometheus_scrapes_through_auth_and_negotiation(tmp_path, sidecar_factory):
    prometheus = require_tool("prometheus")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: {bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}\n")
    sc = sidecar_factory("--web.config.file", str(web)).start()
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 900ms}}
scrape_configs:
  - job_name: sidecar
    basic_auth: {{username: prom, password: pw}}
    static_configs: [{{targets: ["127.0.0.1:{sc.port}"]}}]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def scraped_three_times():
            r = query(url, 'max_over_time(mlsidecar_scrapes_total{job="sidecar"}[1m])')
            return r and float(r[0]["value"][1]) >= 3
        wait_for(scraped_three_times, timeout=40, interval=0.5, what="three scrapes by Prometheus")
        assert float(query(url, 'up{job="sidecar"}')[0]["value"][1]) == 1
        # Prometheus asks for OpenMetrics by q-value and gzip: the # EOF-terminated format parsed.
        assert query(url, 'mlsidecar_http_rejected_total{reason="auth_failed"}')[0]["value"][1] == "0"
        assert float(query(url, 'scrape_samples_scraped{job="sidecar"}')[0]["value"][1]) > 10
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
