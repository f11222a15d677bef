"""The demo's canary, end to end: a real sidecar tails the demo workload, a real Prometheus scrapes it
with every rule file loaded, and

- every query of the "ML model comparison" dashboard returns data (variables included; the alert
  annotation only has to be accepted);
- the healthy canary (resnet50 v4, 20% faster) is significantly faster than v3 (p < 0.01, interval
  below 0), which is no alert; fraud-detector's ROC AUC and the age/income correlation are numbers;
- once the canary turns worse (`canary-worse` injected), ModelCandidateWorse goes pending for its
  accuracy.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import math
import shutil
import threading
import time

from mlsidecar.demo import DemoWorkload
from tests import test_deploy_grafana as grafana
from tests.e2e.test_prometheus_e2e import E2E_INTERVALS, PROM_DIR, Prometheus
from tests.harness import require_tool, wait_for

DATA_WAIT = 60.0
INJECT_AFTER = 15.0  # seconds of healthy demo


class MinimalPrometheus(Prometheus):
    """Scrapes one sidecar every second and loads every rule file of deploy/prometheus/rules."""

    def write_config(self):
        shutil.copytree(PROM_DIR / "rules", self.tmp / "rules")
        path = self.tmp / "prometheus.yml"
        path.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {self.tmp / 'rules'}/*.yml\n"
            "scrape_configs:\n  - job_name: mlsidecar\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.sidecar_port}']\n")
        return path


def comparison_queries() -> list[tuple[str, str]]:
    d = grafana.dashboards()["ml-model-comparison.json"]
    out = [(t, grafana.substitute(e, E2E_INTERVALS)) for t, e in grafana.panel_queries(d)]
    out += [(t, grafana.substitute(e, E2E_INTERVALS)) for t, e in grafana.other_queries(d)]
    return out


def test_demo_canary_is_significant_and_every_comparison_panel_has_data(tmp_path, sidecar_factory):
    require_tool("prometheus")
    demo_log = tmp_path / "demo.jsonl"
    stop = threading.Event()
    demo = DemoWorkload(str(demo_log), rate=250, inject=("canary-worse",), inject_after=INJECT_AFTER)
    started = time.monotonic()
    thread = threading.Thread(target=demo.run, kwargs={"stop": stop.is_set}, daemon=True)
    thread.start()
    prom = None
    try:
        wait_for(demo_log.exists, 10, what="demo events file")
        sc = sidecar_factory("--tail", str(demo_log)).start()
        prom = MinimalPrometheus(tmp_path, sc.port).start()

        queries = comparison_queries()
        assert len(queries) >= 25
        for title, expr in queries:
            if expr.startswith("ALERTS"):  # empty while nothing fires; must still be accepted
                assert prom.query(expr)["status"] == "success", (title, expr)
        pending = {q for q in queries if not q[1].startswith("ALERTS")}
        errors = {}
        deadline = time.monotonic() + DATA_WAIT
        while pending and time.monotonic() < deadline:
            for q in sorted(pending):
                res = prom.query(q[1])
                if res["status"] != "success":
                    errors[q] = res
                    pending.discard(q)
                elif res["data"]["result"]:
                    pending.discard(q)
            if pending:
                time.sleep(1)
        assert not errors, errors
        assert not pending, "comparison dashboard queries without data:\n" + "\n".join(
            f"  {t}: {e}" for t, e in sorted(pending))

        pair = 'model_name="resnet50", baseline_version="v3", candidate_version="v4"'

        def significant(metric):
            sel = f'{pair}, metric="{metric}"'
            p = prom.query(f"ml_model_comparison_p_value{{{sel}}}")["data"]["result"]
            hi = prom.query(f"ml_model_comparison_ci_upper{{{sel}}}")["data"]["result"]
            return p and hi and float(p[0]["value"][1]) < 0.01 and float(hi[0]["value"][1]) < 0

        wait_for(lambda: significant("latency_seconds"), INJECT_AFTER, 0.5,
                 what="the healthy canary resnet50 v4 significantly faster than v3")
        assert time.monotonic() - started < INJECT_AFTER, "the healthy phase ended before the check"
        assert not prom.query('ALERTS{alertname="ModelCandidateWorse", metric="latency_seconds"}')[
            "data"]["result"], "a faster canary raised ModelCandidateWorse"

        # the canary turns worse: less accurate (0.88 against 0.95) and slower
        wait_for(lambda: significant("accuracy"), 60, 1, what="resnet50 v4 significantly less accurate")
        wait_for(lambda: prom.query(f'ALERTS{{alertname="ModelCandidateWorse", {pair}, metric="accuracy"}}')
                 ["data"]["result"], 30, 1, what="ModelCandidateWorse pending for resnet50 v4")
        auc = prom.query('ml_model_roc_auc{model_name="fraud-detector"}')["data"]["result"]
        assert auc and 0.8 < float(auc[0]["value"][1]) <= 1.0, auc
        corr = prom.query('ml_feature_correlation{model_name="resnet50", model_version="v3", '
                          'feature_a="age", feature_b="income"}')["data"]["result"]
        assert corr and not math.isnan(float(corr[0]["value"][1])), corr
        rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
        assert not bad, bad
    finally:
        stop.set()
        thread.join(10)
        if prom:
            prom.stop()
