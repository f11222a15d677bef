"""The cost and severity rules (deploy/prometheus/rules/ml_cost.yml, ml_severity.yml): promtool
check rules, promtool test rules with hand-computed values, and for every alert a unit case where
it fires and one where it must stay silent, a runbook section, and a route in Alertmanager."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
FILES = {  # rule file -> its promtool unit tests
    PROM / "rules" / "ml_cost.yml": [PROM / "tests" / "ml_cost_test.yml", PROM / "tests" / "ml_cost_forecast_test.yml"],
    PROM / "rules" / "ml_health.yml": [PROM / "tests" / "ml_health_test.yml",
                                       PROM / "tests" / "ml_health_seasonal_test.yml"],
}
# Unit tests over a week of history run against the rule groups they need only (the same rules,
# fewer of them), so that they take seconds.
NEEDED_GROUPS = {
    "ml_health_seasonal_test.yml": {"ml_config", "ml_model_advanced_recording", "ml_alert_score_recording"},
}


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("rules", FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rules):
    res = promtool("check", "rules", rules)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("unit", [t for ts in FILES.values() for t in ts], ids=lambda p: p.name)
def test_promtool_unit_tests_pass(unit, tmp_path):
    groups = NEEDED_GROUPS.get(unit.name)
    if groups is not None:
        yaml = pytest.importorskip("yaml")
        (tmp_path / "rules").mkdir()
        (tmp_path / "tests").mkdir()
        for ref in yaml.safe_load(unit.read_text())["rule_files"]:
            src = yaml.safe_load((unit.parent / ref).read_text())
            kept = [g for g in src["groups"] if g["name"] in groups]
            (tmp_path / "tests" / ref).resolve().write_text(yaml.safe_dump({"groups": kept}))
        (tmp_path / "tests" / unit.name).write_text(unit.read_text())
        unit = tmp_path / "tests" / unit.name
    res = promtool("test", "rules", unit)
    assert res.returncode == 0, res.stdout + res.stderr


def alert_names(rules: Path) -> list[str]:
    return re.findall(r"(?m)^\s*- alert:\s*(\S+)\s*$", rules.read_text())


@pytest.mark.parametrize("rules", FILES, ids=lambda p: p.name)
def test_every_alert_fires_and_stays_silent_in_a_unit_case(rules):
    text = "\n".join(p.read_text() for p in FILES[rules])
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    assert len(cases) == text.count("alertname:")
    names = alert_names(rules)
    assert names
    for name in names:
        assert (name, "") in cases, f"{name}: no unit case where it fires"
        assert (name, "[]") in cases, f"{name}: no unit case where it stays silent"


@pytest.mark.parametrize("rules", FILES, ids=lambda p: p.name)
def test_every_alert_has_a_runbook_section_and_a_route(rules):
    runbook = (ROOT / "docs" / "alerts.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"(?m)^## (.+)$", runbook)}
    am = (ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text()
    for name in alert_names(rules):
        assert name.lower() in anchors, f"docs/alerts.md has no section for {name}"
    for service in set(re.findall(r"(?m)^\s+service: (\S+)$", rules.read_text())):
        assert re.search(rf"service=~?\"[^\"]*{re.escape(service)}", am), f"no Alertmanager route for {service}"


def test_a_wrong_attribution_is_caught(tmp_path):
    """The unit tests must catch a cost per prediction that ignores how a pod's predictions split."""
    rules = (PROM / "rules" / "ml_cost.yml").read_text()
    good = """          sum by (namespace, model_name, model_version) (
            instance_model:ml_predictions:rate5m
            / on (namespace, instance) group_left ()"""
    assert good in rules
    bad = rules.replace(good, """          sum by (namespace, model_name, model_version) (
            instance_model:ml_predictions:rate5m > 0
            / on (namespace, instance) group_left ()""", 1)
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "ml_cost.yml").write_text(bad)
    (tmp_path / "rules" / "ml_recording.yml").write_text((PROM / "rules" / "ml_recording.yml").read_text())
    (tmp_path / "tests" / "t.yml").write_text((PROM / "tests" / "ml_cost_test.yml").read_text())
    res = promtool("test", "rules", tmp_path / "tests" / "t.yml")
    assert res.returncode != 0, "the unit tests did not notice a broken attribution"


def test_alertmanager_routes_each_severity_to_its_receiver():
    """The composite alert's computed severity decides where it goes (amtool, the real router)."""
    am = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    cases = {("critical", "ml-model"): "ml-serving-pager", ("warning", "ml-model"): "ml-models-chat",
             ("info", "ml-model"): "ml-default", ("critical", "ml-cost"): "ml-platform-pager",
             ("warning", "ml-cost"): "ml-finops-chat", ("info", "ml-cost"): "ml-finops-chat"}
    for (severity, service), receiver in cases.items():
        res = subprocess.run([require_tool("amtool"), "config", "routes", "test", f"--config.file={am}",
                              "alertname=ModelCompositeScoreHigh", f"severity={severity}", f"service={service}"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == receiver, (severity, service, res.stdout)
