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
}


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("rules", FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rules):
    res = promtool("check", "rules", rules)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("rules", FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(rules):
    res = promtool("test", "rules", *FILES[rules])
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
