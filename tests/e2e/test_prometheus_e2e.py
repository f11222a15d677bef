"""A real Prometheus scraping the real sidecar fed by the demo workload, with our rules loaded.

- deploy/prometheus/prometheus.yml itself is used: its Kubernetes job discovers a fake pod from a
  file (same relabelling; Debian's prometheus has no Kubernetes discovery), and its static job
  points at the sidecar too;
- every recording and alert rule evaluates without error;
- every dashboard panel's query returns data, apart from the commented allow-list below (for those,
  the query must still be accepted by the Prometheus HTTP API);
- an injected accuracy drop makes ModelAccuracyDrop go pending, then firing (its `for:` shortened
  to 5s in the test's copy of the rules), and it is silent before the drop.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson

from mlsidecar.demo import DEMO_COST_TOML, DemoWorkload
from tests import test_deploy_grafana as grafana
from tests.harness import free_port, require_tool, wait_for
from tests.test_deploy_prometheus import without_kubernetes_sd

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"

E2E_INTERVALS = {"$__rate_interval": "20s", "$__interval": "5s", "$__range": "5m"}
DATA_WAIT = 50.0

# Metrics that cannot have series in this environment. A panel whose query uses one of them may
# come back empty; its query must still be accepted by Prometheus.
MAY_BE_EMPTY = {
    # Fed for a training job's own processes/GPUs; the demo's "training job" is simulated events.
    "ml_training_gpu_utilization_percent": "no real training process on a GPU",
    "ml_training_memory_usage_bytes": "no real training process",
    # Created only by what this test does not provoke: socket overflow, series limit, a broken
    # multiprocess file.
    "mlsidecar_events_dropped_total": "only socket sources drop events",
    "mlsidecar_series_limited_total": "only when a metric reaches its series limit",
    "mlsidecar_multiproc_files_skipped_total": "only with --multiproc-dir and an unreadable file",
    # Extrapolates only from an hour of history (a fit over minutes reads anything).
    "namespace_model_dataset:ml_model_accuracy_score:predict_24h": "needs an hour of history",
    # Per-process GPU memory needs a process using the GPU; ECC/retired pages/remapped rows and the
    # DCGM-style activity ratios are not supported on every board.
    "ml_gpu_process_memory_used_bytes": "no process uses the GPU here",
    "ml_gpu_ecc_errors_total": "board-dependent", "ml_gpu_retired_pages": "board-dependent",
    "ml_gpu_remapped_rows": "board-dependent", "ml_gpu_xid_errors_total": "no XID error happened",
    "ml_gpu_sm_activity_ratio": "board-dependent", "ml_gpu_sm_occupancy_ratio": "board-dependent",
    "ml_gpu_tensor_activity_ratio": "board-dependent", "ml_gpu_clock_event_reasons": "no throttling",
    "ml_gpu_pcie_tx_bytes_per_second": "board-dependent", "ml_gpu_pcie_rx_bytes_per_second": "board-dependent",
    "ml_gpu_energy_joules_total": "board-dependent",
}
# Collector metrics: may be empty when the collector is missing or reports up=0 here (no GPU /
# NVML on CI machines; no process to watch).
COLLECTOR_PREFIXES = {"gpu": "ml_gpu_", "process": "ml_process_", "host": "ml_host_"}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ml|mlsidecar)_[a-z0-9_]+?)(?:_bucket|_sum|_count)?\b(?=\s*[{\[)])", expr))


def collector_flags() -> list[str]:
    import sys

    out = subprocess.run([sys.executable, "-m", "mlsidecar", "run", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT).stdout
    return [f"--collector.{n}" for n in COLLECTOR_PREFIXES if f"--collector.{n}" in out]


def process_config(tmp_path: Path) -> str | None:
    """A config that points the process collector at this test's process, if the config accepts it."""
    import sys

    pid_file = tmp_path / "workload.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    cfg = tmp_path / "sidecar.toml"
    # The demo's prices and business facts (the Cost & health dashboard), anomaly scores soon.
    cfg.write_text(f'[collectors.process]\nenabled = true\npid_file = "{pid_file}"\n' + DEMO_COST_TOML
                   + "[analytics.anomaly]\ninterval = 1.0\nmin_points = 3\n")
    ok = subprocess.run([sys.executable, "-m", "mlsidecar", "check-config", str(cfg)],
                        capture_output=True, timeout=60, cwd=ROOT).returncode == 0
    return str(cfg) if ok else None


class Prometheus:
    def __init__(self, tmp_path: Path, sidecar_port: int):
        self.binary = require_tool("prometheus")
        self.tmp = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sidecar_port = sidecar_port
        self.proc = None
        self.log_path = tmp_path / "prometheus.log"
        self.extra_args: list[str] = []

    def write_config(self) -> Path:
        rules = self.tmp / "rules"
        shutil.copytree(PROM_DIR / "rules", rules)
        alerts = rules / "ml_alerts.yml"
        text, n = re.subn(r"(- alert: ModelAccuracyDrop\n(?:.*\n)*?\s+for: )5m", r"\g<1>5s",
                          alerts.read_text(), count=1)
        assert n == 1, "ModelAccuracyDrop has no 'for: 5m' to shorten"
        alerts.write_text(text)

        cfg = (PROM_DIR / "prometheus.yml").read_text()
        replacements = [
            ("  scrape_interval: 15s\n  scrape_timeout: 10s\n  evaluation_interval: 15s\n",
             "  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"),
            ("    scrape_interval: 15s\n", "    scrape_interval: 1s\n"),
            ('        - targets: ["alertmanager:9093"]\n', '        - targets: []\n'),
            ('      - targets: ["gpu-node-01:9877", "gpu-node-02:9877"]\n',
             f'      - targets: ["127.0.0.1:{self.sidecar_port}"]\n'),
            ('      - targets: ["gpu-exporter:9400"]\n', '      - targets: []\n'),
        ]
        for old, new in replacements:
            assert old in cfg, f"deploy/prometheus/prometheus.yml changed: {old!r}"
            cfg = cfg.replace(old, new)
        cfg = re.sub(r"(?ms)^remote_write:.*", "", cfg)  # tests/e2e/test_remote_write_e2e.py
        (self.tmp / "endpoints.json").write_text("[]")
        cfg = without_kubernetes_sd(cfg, str(self.tmp / "pods.json"), str(self.tmp / "endpoints.json"))
        pod = {
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(self.sidecar_port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_namespace": "ml-e2e",
            "__meta_kubernetes_pod_name": "demo-0",
            "__meta_kubernetes_pod_node_name": "node-1",
            "__meta_kubernetes_pod_label_ml_component": "inference",
        }
        pods = [
            # The pod's own address carries the workload's port; the annotation picks the sidecar's.
            {"targets": ["127.0.0.1:8080"], "labels": pod},
            {"targets": ["127.0.0.2:8080"],
             "labels": {**pod, "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "false",
                        "__meta_kubernetes_pod_name": "not-annotated"}},
            {"targets": ["127.0.0.3:8080"],
             "labels": {**pod, "__meta_kubernetes_pod_phase": "Succeeded",
                        "__meta_kubernetes_pod_name": "finished-job"}},
        ]
        (self.tmp / "pods.json").write_text(json.dumps(pods))
        path = self.tmp / "prometheus.yml"
        path.write_text(cfg)
        return path

    def start(self) -> Prometheus:
        cfg = self.write_config()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
        wait_for(self.ready, 30, 0.2, what=f"prometheus ready (log: {self.log_path})")
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()


def evaluation(accuracy: float) -> bytes:
    return orjson.dumps({"event": "evaluation", "model": "m", "version": "v1", "dataset": "live",
                         "accuracy": accuracy}) + b"\n"


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel or variable, expr with Grafana variables substituted)."""
    out = []
    for name, d in grafana.dashboards().items():
        for title, expr in grafana.panel_queries(d):
            out.append((name, title, grafana.substitute(expr, E2E_INTERVALS)))
        for title, expr in grafana.other_queries(d):
            if title.startswith("variable"):
                out.append((name, title, grafana.substitute(expr, E2E_INTERVALS)))
    return out


def test_prometheus_scrapes_sidecar_dashboards_have_data_and_accuracy_alert_fires(tmp_path, sidecar_factory):
    require_tool("prometheus")
    demo_log = tmp_path / "demo.jsonl"
    eval_log = tmp_path / "eval.jsonl"
    # One good evaluation, and one bad line so that the rejection counter exists.
    eval_log.write_bytes(evaluation(0.95) + b"this line is not JSON\n")
    stop = threading.Event()
    # The healthy demo has no schema violations: inject them, for the schema panels.
    demo = DemoWorkload(str(demo_log), rate=50, inject=("schema-violations",))
    thread = threading.Thread(target=demo.run, kwargs={"stop": stop.is_set}, daemon=True)
    thread.start()
    prom = None
    try:
        wait_for(demo_log.exists, 10, what="demo events file")
        cfg = process_config(tmp_path)
        flags = collector_flags()
        sc = sidecar_factory("--tail", str(demo_log), "--tail", str(eval_log), *flags, config=cfg).start()
        prom = Prometheus(tmp_path, sc.port).start()

        # --- the scrape config: the annotated running pod is kept, relabelled; the others dropped.
        def targets_up():
            t = prom.api("targets")["data"]
            active = {(a["labels"]["job"], a["labels"].get("pod", "")): a for a in t["activeTargets"]}
            return (len(active) == 2 and all(a["health"] == "up" for a in active.values())
                    and (active, t["droppedTargets"]))

        active, dropped = wait_for(targets_up, 20, 0.2, what=f"both scrape jobs up ({prom.log()})")
        pod = active[("mlsidecar-pods", "demo-0")]["labels"]
        assert pod["instance"] == f"127.0.0.1:{sc.port}"
        assert pod["namespace"] == "ml-e2e" and pod["ml_component"] == "inference" and pod["node"] == "node-1"
        assert active[("mlsidecar-hosts", "")]["labels"]["ml_component"] == "training"
        dropped_pods = {d["discoveredLabels"].get("__meta_kubernetes_pod_name") for d in dropped}
        assert {"not-annotated", "finished-job"} <= dropped_pods

        # --- the accuracy is in Prometheus at 0.95, and ModelAccuracyDrop is silent.
        wait_for(lambda: prom.query('ml_model_accuracy_score{model_name="m", dataset="live"} == 0.95')
                 ["data"]["result"], 20, 0.2, what="accuracy 0.95 of model m in Prometheus")

        # --- every dashboard query returns data (or is allowed to be empty here, and parses).
        up = {c: bool(prom.query(f'mlsidecar_collector_up{{collector="{c}"}} == 1')["data"]["result"])
              for c in COLLECTOR_PREFIXES}
        may_be_empty = set(MAY_BE_EMPTY)

        def allowed_empty(expr: str) -> bool:
            names = metric_names(expr)
            for c, prefix in COLLECTOR_PREFIXES.items():
                if not up[c] and any(n.startswith(prefix) for n in names):
                    return True
            return bool(names & may_be_empty) or any(k in expr for k in may_be_empty if ":" in k)

        queries = all_queries()
        assert len(queries) > 80
        pending = {q for q in queries if not allowed_empty(q[2])}
        for dash, title, expr in queries:
            if allowed_empty(expr):
                res = prom.query(expr)
                assert res["status"] == "success", f"{dash} / {title}: {expr}: {res}"
        deadline = time.monotonic() + DATA_WAIT
        errors = {}
        while pending and time.monotonic() < deadline:
            for q in sorted(pending):
                res = prom.query(q[2])
                if res["status"] != "success":
                    errors[q] = res
                    pending.discard(q)
                elif res["data"]["result"]:
                    pending.discard(q)
            if pending:
                time.sleep(1)
        assert not errors, "queries Prometheus rejected:\n" + "\n".join(f"{k}: {v}" for k, v in errors.items())
        missing = "\n".join(f"  {d} / {t}: {e}" for d, t, e in sorted(pending))
        assert not pending, f"dashboard queries without data after {DATA_WAIT}s:\n{missing}"

        # --- every rule evaluates without error.
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        # every rule of every file prometheus.yml loads
        patterns = re.findall(r"(?m)^  - (rules/\S+\.yml)$", (PROM_DIR / "prometheus.yml").read_text())
        listed = sorted({str(p.relative_to(PROM_DIR)) for pat in patterns for p in PROM_DIR.glob(pat)})
        assert "rules/ml_alerts.yml" in listed and "rules/ml_recording.yml" in listed
        expected = sum(len(re.findall(r"(?m)^\s*- (?:alert|record):", (PROM_DIR / f).read_text()))
                       for f in listed)
        assert "rules/ml_comparison.yml" in listed
        assert len(rules) == expected, (len(rules), expected, listed)
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
        assert not bad, bad
        firing_for_m = prom.query('ALERTS{alertname="ModelAccuracyDrop", model_name="m"}')["data"]["result"]
        assert firing_for_m == [], "ModelAccuracyDrop fired at accuracy 0.95"

        # --- the drop: pending, then firing, with the expected labels and annotations.
        with open(eval_log, "ab") as fh:
            fh.write(evaluation(0.6))
        states = []

        def state():
            res = prom.query('ALERTS{alertname="ModelAccuracyDrop", model_name="m"}')["data"]["result"]
            s = {r["metric"]["alertstate"] for r in res}
            if s and (not states or states[-1] != s):
                states.append(s)
            # Two alerts (one per scrape job's namespace, see below), both firing.
            return len(res) == 2 and s == {"firing"}

        wait_for(state, 30, 0.2, what=f"ModelAccuracyDrop firing for model m (states: {states})")
        assert any("pending" in st for st in states), f"never seen pending before firing: {states}"
        alerts = [a for a in prom.api("alerts")["data"]["alerts"]
                  if a["labels"]["alertname"] == "ModelAccuracyDrop" and a["labels"].get("model_name") == "m"]
        # One per namespace: the pod job adds namespace="ml-e2e", the static (systemd) job none.
        assert sorted(a["labels"].get("namespace", "") for a in alerts) == ["", "ml-e2e"]
        for alert in alerts:
            assert alert["state"] == "firing"
            ns = {"namespace": "ml-e2e"} if "namespace" in alert["labels"] else {}
            assert alert["labels"] == {"alertname": "ModelAccuracyDrop", "severity": "critical",
                                       "service": "ml-model", "model_name": "m", "model_version": "v1",
                                       "dataset": "live", **ns}
            q = "&var-namespace=ml-e2e" if ns else ""
            assert alert["annotations"] == {
                "summary": "Model m accuracy dropped",
                "description": "Model m version v1 accuracy on live is 60%, below its floor of 85%",
                "runbook_url": "https://runbooks.example.com/mlsidecar/alerts#modelaccuracydrop",
                "dashboard_url": f"https://grafana.example.com/d/mlsidecar-model?orgId=1{q}"
                                 "&var-model_name=m&var-model_version=v1"}
            assert float(alert["value"]) == 0.6
    finally:
        stop.set()
        thread.join(10)
        if prom:
            prom.stop()
