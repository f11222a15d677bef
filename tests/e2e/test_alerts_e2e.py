"""Our alert rules on a real Prometheus scraping the real `mlsidecar demo`.

The rules' windows and `for` durations are compressed 60 times in the test's copy of every rule
file (5m -> 5s, 1h -> 1m, predict_linear's horizon likewise), with a 1s scrape and evaluation
interval: one second of the test is one minute of rule time. Rates stay per second (the data is
real). So the healthy phase of 30 s stands for 30 minutes of the shipped rules (the longest `for:`
of the alerts):

1. the healthy demo raises no alert, pending or firing (after 10 s for the windows to fill);
   alerts about the test machine itself (its CPU, memory, disks) are left out: they judge the
   machine, not the demo;
2. then `--inject accuracy-drop,pipeline-stalled,training-stalled` makes ModelAccuracyDrop,
   DataPipelineStalled and TrainingJobStalled fire;
3. the sidecar is killed (SIGKILL): MLSidecarDown fires, although the scrape job is named as
   prometheus-operator names a PodMonitor's job (`<namespace>/<name>`, not "mlsidecar...").

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.test_prometheus_e2e import Prometheus
from tests.harness import free_port, require_tool, wait_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
FACTOR = 60
HEALTHY_S = 30
WARMUP_S = 10
OPERATOR_JOB = "ml-serving/inference-pods"
MACHINE_ALERTS = {"HostHighCPU", "MLNodeResourceExhaustion", "StorageSpaceRunningOut"}
INJECTED = {"ModelAccuracyDrop", "DataPipelineStalled", "TrainingJobStalled"}

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(d: str) -> float:
    return sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w)", d))


def duration(s: float) -> str:
    return f"{int(s)}s" if s >= 1 and s == int(s) else f"{int(round(s * 1000))}ms"


def compress(text: str, factor: int = FACTOR) -> str:
    """Every duration in rule expressions and `for:` divided by ``factor``; so are the horizons of
    predict_linear (seconds, given as numbers)."""
    def dur(m):
        return duration(seconds(m.group(0)) / factor)

    token = r"(?<![\w.])(?:\d+(?:ms|s|m|h|d|w))+(?![\w.])"
    out = []
    for line in text.splitlines(keepends=True):
        # Comments and annotation texts stay as they are.
        if line.lstrip().startswith("#") or re.match(r"\s+(summary|description|runbook_url|dashboard_url):", line):
            out.append(line)
            continue
        line = re.sub(token, dur, line)
        line = re.sub(r"(\]\s*,\s*)(\d+)(\s*\))",
                      lambda m: f"{m.group(1)}{int(m.group(2)) // factor}{m.group(3)}", line)
        out.append(line)
    return "".join(out)


def test_compress():
    text = ("        expr: rate(x[5m]) > 0 and y offset 1h\n"
            "          or predict_linear(z:rate5m[6h], 86400) < p95_5m\n"
            "        for: 30m\n"
            "          description: \"for 30m\"\n")
    assert compress(text) == ("        expr: rate(x[5s]) > 0 and y offset 60s\n"
                              "          or predict_linear(z:rate5m[360s], 1440) < p95_5m\n"
                              "        for: 30s\n"
                              "          description: \"for 30m\"\n")
    assert duration(seconds("1d") / FACTOR) == "1440s" and duration(seconds("30s") / FACTOR) == "500ms"


class CompressedPrometheus(Prometheus):
    """Prometheus scraping the demo every second as an operator-style job, with compressed rules."""

    def write_config(self) -> Path:
        rules = self.tmp / "rules"
        rules.mkdir()
        for path in sorted(RULES.glob("*.yml")):
            (rules / path.name).write_text(compress(path.read_text()))
        cfg = self.tmp / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}/*.yml\n"
            "scrape_configs:\n"
            f"  - job_name: {OPERATOR_JOB}\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{self.sidecar_port}']\n"
            "        labels: {namespace: ml-serving, pod: inference-0}\n")
        return cfg


def alerts(prom: Prometheus) -> list[dict]:
    return prom.api("alerts")["data"]["alerts"]


def test_healthy_demo_raises_no_alert_then_injected_failures_and_a_killed_sidecar_fire(tmp_path):
    require_tool("prometheus")
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "mlsidecar", "demo", "--listen", f"127.0.0.1:{port}", "--state-dir",
         str(tmp_path / "state"), "--rate", "200", "--inject", "accuracy-drop,pipeline-stalled,training-stalled",
         "--inject-after", str(HEALTHY_S + WARMUP_S)],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "demo.log", "wb"), start_new_session=True)
    started = time.monotonic()
    prom = None
    try:
        prom = CompressedPrometheus(tmp_path, port).start()
        groups = prom.api("rules")["data"]["groups"]
        assert {"ml_model_performance", "ml_training_jobs", "ml_data_pipelines", "ml_infrastructure"} <= \
            {g["name"] for g in groups}
        wait_for(lambda: prom.query("up == 1")["data"]["result"], 30, 0.5, what="the demo scraped")

        # 1. healthy: nothing pending, nothing firing.
        time.sleep(max(0.0, started + WARMUP_S - time.monotonic()))
        seen: dict[str, dict] = {}
        while time.monotonic() < started + WARMUP_S + HEALTHY_S - 2:
            for a in alerts(prom):
                if a["labels"]["alertname"] not in MACHINE_ALERTS:
                    seen.setdefault(a["labels"]["alertname"], a)
            time.sleep(1)
        assert not seen, f"the healthy demo raised alerts: {seen}"
        bad = [(r["name"], r.get("lastError")) for g in prom.api("rules")["data"]["groups"]
               for r in g["rules"] if r["health"] == "err"]
        assert not bad, bad

        # 2. the injected failures fire their alerts.
        def injected():
            firing = {a["labels"]["alertname"]: a for a in alerts(prom) if a["state"] == "firing"}
            return set(firing) >= INJECTED and firing

        firing = wait_for(injected, 100, 1, what=f"{sorted(INJECTED)} firing ({prom.log()})")
        assert firing["TrainingJobStalled"]["labels"]["job_name"] == "demo-train"
        assert firing["DataPipelineStalled"]["labels"]["pipeline_name"] == "features"
        assert firing["ModelAccuracyDrop"]["labels"]["dataset"] == "live"
        assert firing["ModelAccuracyDrop"]["annotations"]["runbook_url"].endswith("#modelaccuracydrop")

        # 3. the sidecar dies: MLSidecarDown, under a job name without "mlsidecar" in front.
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait(10)

        def down():
            return [a for a in alerts(prom) if a["labels"]["alertname"] == "MLSidecarDown" and a["state"] == "firing"]

        (a,) = wait_for(down, 30, 0.5, what="MLSidecarDown firing")
        assert a["labels"]["job"] == OPERATOR_JOB and a["labels"]["instance"] == f"127.0.0.1:{port}"
        assert a["labels"]["namespace"] == "ml-serving"
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        if prom:
            prom.stop()
