"""deploy/prometheus and deploy/alertmanager: promtool check config / check rules / test rules.

Every alert must have a promtool unit-test case where it fires and one where it must not, and the
unit tests must catch the seed's bugs: each mutation below puts a seed-style expression back and
expects `promtool test rules` to fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules"
ALERTS = RULES / "ml_alerts.yml"
RECORDING = RULES / "ml_recording.yml"
UNIT_TESTS = PROM / "tests" / "ml_alerts_test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "alerts.md"

SEVERITIES = {"critical", "warning", "info"}
SERVICES = {"ml-model", "ml-training", "ml-pipeline", "ml-infrastructure", "mlsidecar"}


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    tool = require_tool("promtool")
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_blocks(text: str) -> dict[str, str]:
    """Alert name -> its block of rules/ml_alerts.yml (up to the next rule)."""
    parts = re.split(r"(?m)^\s*- (?:alert|record):\s*", text)
    out = {}
    for part in parts[1:]:
        name = part.split("\n", 1)[0].strip()
        if text.count(f"- alert: {name}\n"):
            out[name] = part
    return out


def alert_names() -> list[str]:
    return re.findall(r"(?m)^\s*- alert:\s*(\S+)\s*$", ALERTS.read_text())


def unit_cases() -> list[tuple[str, bool]]:
    """(alertname, fires?) for every alert_rule_test case of the unit-test file."""
    text = UNIT_TESTS.read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    assert len(cases) == text.count("alertname:"), "unit-test layout: alertname then exp_alerts"
    return [(name, not empty) for name, empty in cases]


def test_promtool_check_config(tmp_path):
    res = promtool("check", "config", PROM / "prometheus.yml")
    if res.returncode and "kubernetes_sd_configs not found" in res.stdout + res.stderr:
        # Debian's prometheus is built without Kubernetes service discovery; check everything else
        # (relabelling, rule files) with the same job discovering from a file instead.
        text = (PROM / "prometheus.yml").read_text()
        k8s = "    kubernetes_sd_configs:\n      - role: pod\n"
        assert k8s in text
        shutil.copytree(RULES, tmp_path / "rules")
        (tmp_path / "prometheus.yml").write_text(
            text.replace(k8s, "    file_sd_configs:\n      - files: [pods.json]\n"))
        res = promtool("check", "config", tmp_path / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 2 rule files found" in res.stdout


def test_promtool_check_rules():
    res = promtool("check", "rules", RECORDING, ALERTS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass():
    res = promtool("test", "rules", UNIT_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_case():
    names = alert_names()
    assert len(names) == len(set(names)) >= 20
    cases = unit_cases()
    for name in names:
        assert (name, True) in cases, f"{name}: no unit-test case where it fires"
        assert (name, False) in cases, f"{name}: no unit-test case where it must stay silent"
    unknown = {n for n, _ in cases} - set(names)
    assert not unknown, f"unit tests for alerts that do not exist: {unknown}"


def test_seed_groups_present():
    text = ALERTS.read_text()
    for group in ("ml_model_performance", "ml_training_jobs", "ml_data_pipelines", "ml_infrastructure"):
        assert f"- name: {group}\n" in text


def test_every_alert_is_routable_and_has_a_runbook():
    runbook = RUNBOOK.read_text()
    anchors = {h.strip().lower() for h in re.findall(r"(?m)^## (.+)$", runbook)}
    for name, block in alert_blocks(ALERTS.read_text()).items():
        sev = re.search(r"severity:\s*(\S+)", block)
        svc = re.search(r"service:\s*(\S+)", block)
        assert sev and sev.group(1) in SEVERITIES, name
        assert svc and svc.group(1) in SERVICES, name
        assert f'runbook_url: "docs/alerts.md#{name.lower()}"' in block, name
        assert name.lower() in anchors, f"docs/alerts.md has no section for {name}"
        assert "summary:" in block, name


def _mutate(text: str, alert: str, expr: str) -> str:
    pat = re.compile(r"(- alert: " + alert + r"\n\s+expr: )(\|\n(?:\s{10,}.*\n)+|.*\n)")
    assert pat.search(text), alert
    return pat.sub(lambda m: m.group(1) + expr + "\n", text, count=1)


# Each seed bug, put back: the unit tests must fail on it.
SEED_BUGS = {
    "error ratio without sum by (never matches)": (
        "HighPredictionErrorRate",
        "rate(ml_predictions_total{status=\"error\"}[5m]) / rate(ml_predictions_total[5m]) > 0.05"),
    "rate == 0 misses vanished series": (
        "ModelNotServing", "sum by (namespace, model_name) (rate(ml_predictions_total[15m])) == 0"),
    "pipeline rate == 0 misses vanished series": (
        "PipelineStalled",
        "sum by (namespace, pipeline_name) (rate(ml_pipeline_records_processed_total[15m])) == 0"),
    "stalled training fires on a finished job": (
        "TrainingJobStalled",
        "max by (namespace, job_name, instance) (rate(ml_training_iterations_total[15m])) == 0"),
    "OOM: 5m increase compared with a level": (
        "TrainingOOMRisk", "increase(ml_gpu_memory_used_bytes[5m]) > ml_gpu_memory_total_bytes"),
    "increase() misses the first violation": (
        "SchemaViolationsDetected",
        "sum by (namespace, pipeline_name, violation_type) "
        "(increase(ml_pipeline_schema_violations_total[15m])) > 0"),
    "per-pod quantiles": (
        "HighPredictionLatency",
        "histogram_quantile(0.95, rate(ml_prediction_latency_seconds_bucket[5m])) > 1"),
    "collector alert on a box that never had a GPU": (
        "MLSidecarCollectorFailing", "mlsidecar_collector_up == 0"),
}


@pytest.mark.parametrize("bug", sorted(SEED_BUGS))
def test_unit_tests_catch_the_seed_bug(tmp_path, bug):
    alert, expr = SEED_BUGS[bug]
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RECORDING, rules / RECORDING.name)
    (rules / ALERTS.name).write_text(_mutate(ALERTS.read_text(), alert, expr))
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(UNIT_TESTS, tests / UNIT_TESTS.name)
    assert promtool("check", "rules", rules / ALERTS.name).returncode == 0
    res = promtool("test", "rules", tests / UNIT_TESTS.name)
    assert res.returncode != 0, f"the unit tests did not notice: {bug}"
    assert alert in res.stdout + res.stderr


def test_podmonitor_and_alertmanager_config():
    yaml = pytest.importorskip("yaml")
    pm = yaml.safe_load((PROM / "podmonitor.yaml").read_text())
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pm["spec"]["podTargetLabels"]) == {"ml_component", "model_name", "model_version", "job_name"}

    am = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"] for r in am["receivers"]}
    routes = am["route"]["routes"]
    assert am["route"]["receiver"] in receivers
    assert all(r["receiver"] in receivers for r in routes)
    matchers = " ".join(m for r in routes for m in r["matchers"])
    for sev in SEVERITIES:
        assert f'severity="{sev}"' in matchers
    for svc in SERVICES:
        assert svc in matchers, f"no route for service {svc}"
    amtool = shutil.which("amtool")
    if amtool:
        res = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


METRIC_REF = re.compile(r"(?<![\w:])((?:ml|mlsidecar)_[a-z0-9_]+)(?![\w:])")


def catalogue_names() -> set[str]:
    """Every sample name the sidecar can expose: the catalogue plus the collectors' families."""
    from mlsidecar import catalogue, collectors

    collectors.load_all()
    names = set()
    for fam in catalogue.REGISTRY.values():
        names.add(fam.name)
        if fam.type == catalogue.HISTOGRAM:
            names |= {fam.name + "_bucket", fam.name + "_sum", fam.name + "_count"}
    return names


def rule_exprs(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"expr: (\|\n(?:\s{10,}.*\n)+|.*\n)", text)]


def test_rules_only_use_metric_names_the_sidecar_exposes():
    known = catalogue_names()
    for path in (RECORDING, ALERTS):
        exprs = rule_exprs(path.read_text())
        assert len(exprs) == path.read_text().count("expr:")
        for expr in exprs:
            unknown = set(METRIC_REF.findall(expr)) - known
            assert not unknown, f"{path.name}: {unknown} in {expr.strip()}"
