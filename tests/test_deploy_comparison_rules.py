"""deploy/prometheus/rules/ml_comparison.yml: promtool checks, unit tests that fire and stay
silent, and each condition of ModelCandidateWorse proven necessary by a mutation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "ml_comparison.yml"
UNIT = PROM / "tests" / "ml_comparison_test.yml"


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_rules_are_valid_and_loaded_by_the_scrape_config():
    res = promtool("check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    patterns = re.findall(r"(?m)^  - (rules/\S+\.yml)$", (PROM / "prometheus.yml").read_text())
    assert any(RULES in PROM.glob(p) for p in patterns), f"prometheus.yml does not load {RULES.name}"


def test_unit_tests_pass_with_a_firing_and_a_silent_case():
    res = promtool("test", "rules", UNIT)
    assert res.returncode == 0, res.stdout + res.stderr
    text = UNIT.read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    for alert in re.findall(r"(?m)^\s*- alert:\s*(\S+)", RULES.read_text()):
        kinds = {bool(empty) for name, empty in cases if name == alert}
        assert kinds == {True, False}, f"{alert} needs a silent and a firing case"


MUTATIONS = {
    "no p-value condition": (r"          and on \(namespace, model_name, baseline_version, candidate_version, "
                             r"metric\)\n          \(\n(?:.*\n){3}          \)\n", ""),
    "no sample condition": (r"          and on \(namespace, model_name, candidate_version\)\n(?:.*\n){4}", ""),
    "no margin": (r"expr: vector\(0\.02\)", "expr: vector(0)"),
    "p-value of the best replica": (r"max by \(namespace, model_name, baseline_version, candidate_version, metric\)",
                                    "min by (namespace, model_name, baseline_version, candidate_version, metric)"),
    "accuracy sign lost": (r"-ml_model_comparison_difference\{metric=\"accuracy\"\}",
                           "ml_model_comparison_difference{metric=\"accuracy\"}"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_condition_is_needed(tmp_path, name):
    pattern, repl = MUTATIONS[name]
    text, n = re.subn(pattern, repl, RULES.read_text(), count=1)
    assert n == 1, f"mutation {name!r} found nothing to change"
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "ml_comparison.yml").write_text(text)
    shutil.copy(PROM / "rules" / "ml_recording.yml", tmp_path / "rules")
    shutil.copy(UNIT, tmp_path / "tests")
    res = promtool("check", "rules", tmp_path / "rules" / "ml_comparison.yml")
    assert res.returncode == 0, f"{name}: the mutated rule must still be valid: {res.stdout}{res.stderr}"
    res = promtool("test", "rules", tmp_path / "tests" / "ml_comparison_test.yml")
    assert res.returncode != 0, f"the unit tests do not notice: {name}"
