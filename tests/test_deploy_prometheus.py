"""deploy/prometheus and deploy/alertmanager: promtool check config / check rules / test rules.

- the specification's 15 alerts exist under their names with its threshold, `for`, severity and a
  description (listed below, independently of the rules file);
- every alert has a promtool unit-test case where it fires and one where it must not;
- each signal that used to lie has a case that fails on the old rule: the old expression is put
  back and `promtool test rules` must fail;
- runbook and dashboard links are absolute; Alertmanager inhibitions can match the alerts they
  name; the PrometheusRule manifest is the rule files' current content.
"""

from __future__ import annotations

import importlib.util
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
UNIT_CONFIG = PROM / "tests" / "ml_config_test_rules.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "alerts.md"

SEVERITIES = {"critical", "warning", "info"}
SERVICES = {"ml-model", "ml-inference", "ml-training", "ml-pipeline", "ml-infrastructure", "mlsidecar"}

# The specification's alerts: name -> (threshold as written in its expression, for, severity).
SPEC_ALERTS = {
    "ModelAccuracyDrop": ("0.85", "5m", "critical"),
    "HighPredictionLatency": ("0.5", "2m", "warning"),
    "PredictionErrorRate": ("0.05", "3m", "critical"),
    "FeatureDriftDetected": ("0.7", "10m", "warning"),
    "TrainingJobStalled": ("== 0", "30m", "warning"),
    "TrainingLossExplosion": ("1000", "1m", "critical"),
    "GPUUtilizationLow": ("30", "15m", "warning"),
    "TrainingOOM": ("0.9", "1m", "critical"),
    "DataPipelineStalled": ("== 0", "10m", "critical"),
    "DataQualityDegraded": ("0.8", "5m", "warning"),
    "DataFreshnessIssue": ("3600", "5m", "warning"),
    "HighPipelineErrorRate": ("0.1", "5m", "critical"),
    "MLNodeResourceExhaustion": ("0.9", "5m", "critical"),
    "GPUTemperatureHigh": ("85", "5m", "warning"),
    "StorageSpaceRunningOut": ("0.1", "5m", "critical"),
}
SPEC_GROUPS = ("ml_model_performance", "ml_training_jobs", "ml_data_pipelines", "ml_infrastructure")


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    tool = require_tool("promtool")
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_blocks(text: str, kind: str = "alert") -> dict[str, str]:
    """Rule name -> its block (up to the next rule), with the comment lines just above it."""
    out = {}
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- (alert|record):", line)]
    for n, i in enumerate(starts):
        m = re.match(rf"\s*- {kind}:\s*(\S+)", lines[i])
        if not m:
            continue
        j = i
        while j > 0 and lines[j - 1].strip().startswith("#"):
            j -= 1
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        out.setdefault(m.group(1), "".join(lines[j:end]))
    return out


def alert_names() -> list[str]:
    return re.findall(r"(?m)^\s*- alert:\s*(\S+)\s*$", ALERTS.read_text())


def unit_cases() -> list[tuple[str, bool]]:
    """(alertname, fires?) for every alert_rule_test case of the unit-test file."""
    text = UNIT_TESTS.read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    assert len(cases) == text.count("alertname:"), "unit-test layout: alertname then exp_alerts"
    return [(name, not empty) for name, empty in cases]


def expected_alert_labels() -> list[dict[str, str]]:
    """The label sets of every alert the unit tests expect to fire (alertname included)."""
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    out = []
    for t in doc["tests"]:
        for case in t.get("alert_rule_test", []):
            for a in case.get("exp_alerts") or []:
                out.append({"alertname": case["alertname"], **{k: str(v) for k, v in a["exp_labels"].items()}})
    return out


def without_kubernetes_sd(text: str, pods_file: str = "pods.json", endpoints_file: str = "endpoints.json") -> str:
    """The config with each kubernetes_sd_configs block discovering from a file instead.

    Debian's prometheus and promtool are built without Kubernetes discovery; relabelling, rule files
    and everything else stay as they are."""
    pattern = re.compile(r"    kubernetes_sd_configs:\n      - role: (\w+)\n(?:        .*\n)*")

    def repl(m):
        f = endpoints_file if m.group(1) == "endpoints" else pods_file
        return f"    file_sd_configs:\n      - files: [{f}]\n"

    out, n = pattern.subn(repl, text)
    assert n == text.count("kubernetes_sd_configs:")
    return out


def test_promtool_check_config(tmp_path):
    text = (PROM / "prometheus.yml").read_text()
    res = promtool("check", "config", PROM / "prometheus.yml")
    if res.returncode and "kubernetes_sd_configs not found" in res.stdout + res.stderr:
        shutil.copytree(RULES, tmp_path / "rules")
        (tmp_path / "prometheus.yml").write_text(without_kubernetes_sd(text))
        res = promtool("check", "config", tmp_path / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    # rule_files: rules/*.yml, so every rule file there is loaded.
    assert f"SUCCESS: {len(list(RULES.glob('*.yml')))} rule files found" in res.stdout
    res = promtool("check", "config", PROM / "prometheus-local.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_config_has_the_specification_layout():
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert set(cfg["global"]["external_labels"]) == {"cluster", "environment"}
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    training, inference = jobs["ml-training-jobs"], jobs["ml-inference-services"]
    assert training["scrape_interval"] == "30s" and inference["scrape_interval"] == "5s"
    assert any(r.get("target_label") == "training_job" for r in training["relabel_configs"])
    assert any(r.get("target_label") == "inference_service" for r in inference["relabel_configs"])
    namespaces = {n for j in jobs.values() for sd in j.get("kubernetes_sd_configs", [])
                  for n in sd["namespaces"]["names"]}
    assert namespaces == {"ml-training", "ml-inference", "ml-platform"}
    # Scraping a Service's address load-balances over replicas: every pod must be its own target.
    assert inference["kubernetes_sd_configs"][0]["role"] == "endpoints"
    (rw,) = cfg["remote_write"]
    q = rw["queue_config"]
    assert (q["max_samples_per_send"], q["batch_send_deadline"], q["min_shards"], q["max_shards"]) == \
        (10000, "5s", 4, 200)
    assert q["capacity"] >= q["max_samples_per_send"]
    text = (PROM / "prometheus.yml").read_text()
    assert "cost-metrics job" in text and "no cost exporter to scrape" in text
    local = yaml.safe_load((PROM / "prometheus-local.yml").read_text())
    assert "alerting" not in local
    assert local["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9877"]


def test_promtool_check_rules():
    res = promtool("check", "rules", RECORDING, ALERTS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass():
    res = promtool("test", "rules", UNIT_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_specification_alerts_are_all_there():
    blocks = rule_blocks(ALERTS.read_text())
    assert len(SPEC_ALERTS) == 15
    for name, (threshold, for_, severity) in SPEC_ALERTS.items():
        assert name in blocks, f"{name} is missing"
        block = blocks[name]
        assert re.search(rf"(?m)^\s+for: {for_}$", block), f"{name}: for is not {for_}"
        assert re.search(rf"(?m)^\s+severity: {severity}$", block), f"{name}: severity is not {severity}"
        assert re.search(r"(?m)^\s+description: ", block), f"{name}: no description"
        expr = block.split("expr:", 1)[1].split("for:", 1)[0]
        if threshold not in expr:
            # A threshold set elsewhere (the accuracy floor) must be explained by a FIX: comment.
            assert "# FIX:" in block and threshold in block, f"{name}: threshold {threshold} gone unexplained"
    text = ALERTS.read_text()
    for group in SPEC_GROUPS:
        assert f"- name: {group}\n" in text
    # The accuracy floor's default is the specification's 0.85.
    floor = rule_blocks(RECORDING.read_text(), "record")["ml_model:accuracy_floor:config"]
    assert "expr: vector(0.85)" in floor


def test_fix_comments_describe_the_specification_bugs_right():
    blocks = rule_blocks(ALERTS.read_text())
    def comment(block):
        return " ".join(line.strip().lstrip("#").strip() for line in block.splitlines()
                        if line.strip().startswith("#"))

    err = comment(blocks["PredictionErrorRate"])
    assert "divided by itself" in err and "fires on a single failed request" in err
    assert "never fire" not in err and "could never fire" not in err
    loss = blocks["TrainingLossExplosion"]
    assert "> 1000" in loss.split("expr:", 1)[1] and "rate()" not in comment(loss)
    for name, block in blocks.items():
        assert "seed" not in block.lower(), name


def test_every_alert_has_a_firing_and_a_silent_unit_case():
    names = alert_names()
    assert len(names) == len(set(names)) >= 30
    cases = unit_cases()
    for name in names:
        assert (name, True) in cases, f"{name}: no unit-test case where it fires"
        assert (name, False) in cases, f"{name}: no unit-test case where it must stay silent"
    unknown = {n for n, _ in cases} - set(names)
    assert not unknown, f"unit tests for alerts that do not exist: {unknown}"


def test_every_alert_is_routable_and_links_absolutely():
    runbook = RUNBOOK.read_text()
    anchors = {h.strip().lower() for h in re.findall(r"(?m)^## (.+)$", runbook)}
    for name, block in rule_blocks(ALERTS.read_text()).items():
        sev = re.search(r"severity:\s*(\S+)", block)
        svc = re.search(r"service:\s*(\S+)", block)
        assert sev and sev.group(1) in SEVERITIES, name
        assert svc and svc.group(1) in SERVICES, name
        assert name.lower() in anchors, f"docs/alerts.md has no section for {name}"
        for key in ("summary:", "description:", "runbook_url:", "dashboard_url:"):
            assert key in block, f"{name}: no {key}"
        assert re.search(r'runbook_url: .*label "runbook_base".*#' + name.lower() + "'", block), name
        assert 'label "grafana_base"' in block.split("dashboard_url:", 1)[1], name
    # What users get: absolute links, to the alert's runbook section and its dashboard.
    text = UNIT_TESTS.read_text()
    urls = re.findall(r"(runbook_url|dashboard_url): \"([^\"]*)\"", text)
    assert len(urls) >= 60
    for key, url in urls:
        assert re.match(r"https?://[^/]+/", url), f"{key} not absolute: {url}"
    links = rule_blocks(RECORDING.read_text(), "record")["ml_alerting:links:config"]
    assert '"runbook_base", "https://' in links and '"grafana_base", "https://' in links


def test_alertmanager_inhibitions_can_match():
    """An inhibition whose `equal` labels the alerts it names do not carry inhibits nothing."""
    yaml = pytest.importorskip("yaml")
    am = yaml.safe_load(ALERTMANAGER.read_text())
    fired = expected_alert_labels()
    assert fired

    def matches(labels, matchers):
        for m in matchers:
            k, op, v = re.fullmatch(r'(\w+)\s*(=~|!=|=)\s*"(.*)"', m).groups()
            have = labels.get(k, "")
            ok = re.fullmatch(v, have) if op == "=~" else (have == v) if op == "=" else have != v
            if not ok:
                return False
        return True

    assert am["inhibit_rules"]
    for rule in am["inhibit_rules"]:
        sources = [a for a in fired if matches(a, rule["source_matchers"])]
        targets = [a for a in fired if matches(a, rule["target_matchers"]) and a not in sources]
        assert sources and targets, f"inhibition matches no alert of the unit tests: {rule}"
        for a in targets:
            missing = [k for k in rule["equal"] if k not in a]
            assert not missing, f"{a['alertname']} lacks {missing}, so {rule} never applies to it"
        pairs = [(s, a) for s in sources for a in targets if all(s.get(k) == a[k] for k in rule["equal"])]
        assert pairs, f"no source alert of the unit tests shares {rule['equal']} with a target: {rule}"


def test_podmonitor_and_alertmanager_config():
    yaml = pytest.importorskip("yaml")
    pm = yaml.safe_load((PROM / "podmonitor.yaml").read_text())
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pm["spec"]["podTargetLabels"]) == {"ml_component", "model_name", "model_version", "job_name"}
    # The operator names the job "<namespace>/<name>"; ours names it like the static configs.
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert {"targetLabel": "job", "replacement": "mlsidecar"} in endpoint["relabelings"]

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


def load_prometheusrule_generator():
    spec = importlib.util.spec_from_file_location("prometheusrule", PROM / "prometheusrule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prometheusrule_manifest_is_current():
    yaml = pytest.importorskip("yaml")
    gen = load_prometheusrule_generator()
    committed = (PROM / "prometheusrule.yaml").read_text()
    assert committed == gen.render(), "run python3 deploy/prometheus/prometheusrule.py"
    doc = yaml.safe_load(committed)
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    # ml_recording.yml and ml_alerts.yml first, then every other rule file by name.
    files = [RECORDING, ALERTS] + sorted(p for p in RULES.glob("*.yml") if p not in (RECORDING, ALERTS))
    groups = [g for path in files for g in yaml.safe_load(path.read_text())["groups"]]
    assert doc["spec"]["groups"] == groups


def test_prometheusrule_check_mode_notices_a_stale_file(tmp_path):
    gen = load_prometheusrule_generator()
    out = tmp_path / "prometheusrule.yaml"
    assert gen.main(["--out", str(out)]) == 0
    assert gen.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("ModelAccuracyDrop", "ModelAccuracyDip"))
    assert gen.main(["--check", "--out", str(out)]) == 1


def _mutate(text: str, kind: str, name: str, expr: str) -> str:
    pat = re.compile(r"(- " + kind + ": " + re.escape(name) + r"\n\s+expr: )(\|\n(?:\s{10,}.*\n)+|.*\n)")
    assert pat.search(text), name
    return pat.sub(lambda m: m.group(1) + expr + "\n", text, count=1)


# Each old rule, put back: the unit tests must fail on it. (kind, rule, old expression)
OLD_RULES = {
    "the specification's error ratio (error series over itself)": (
        "alert", "PredictionErrorRate",
        "rate(ml_predictions_total{status=\"error\"}[5m]) / rate(ml_predictions_total[5m]) > 0.05"),
    "the specification's pipeline error ratio": (
        "alert", "HighPipelineErrorRate",
        "rate(ml_pipeline_records_processed_total{status=\"error\"}[5m]) "
        "/ rate(ml_pipeline_records_processed_total[5m]) > 0.1"),
    "rate == 0 misses vanished series": (
        "alert", "ModelNotServing", "sum by (namespace, model_name) (rate(ml_predictions_total[15m])) == 0"),
    "the specification's pipeline stall (per series)": (
        "alert", "DataPipelineStalled", "rate(ml_pipeline_records_processed_total[10m]) == 0"),
    "the specification's training stall (epochs)": (
        "alert", "TrainingJobStalled", "increase(ml_training_current_epoch[30m]) == 0"),
    "stalled training fires on a finished job": (
        "alert", "TrainingJobStalled",
        "max by (namespace, job_name, instance) (rate(ml_training_iterations_total[30m])) == 0"),
    "the specification's TrainingOOM (growth against the node's allocatable)": (
        "alert", "TrainingOOM",
        "increase(ml_training_memory_usage_bytes[5m]) > 0.9 * kube_node_status_allocatable{resource=\"memory\"}"),
    "the specification's loss ceiling alone (defect 8: NaN)": (
        "alert", "TrainingLossExplosion", "ml_training_loss > 1000"),
    "the specification's host memory rule (node_exporter only)": (
        "alert", "MLNodeResourceExhaustion",
        "(1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) > 0.9"),
    "the specification's storage rule (node_exporter only)": (
        "alert", "StorageSpaceRunningOut",
        "(node_filesystem_avail_bytes{mountpoint=~\"/data.*\"}"
        " / node_filesystem_size_bytes{mountpoint=~\"/data.*\"}) < 0.1"),
    "the specification's GPU temperature (one exporter)": (
        "alert", "GPUTemperatureHigh", "nvidia_gpu_temperature_celsius > 85"),
    "the specification's GPU utilisation (workload readings only)": (
        "alert", "GPUUtilizationLow", "avg_over_time(ml_training_gpu_utilization_percent[15m]) < 30"),
    "increase() misses the first violation": (
        "alert", "SchemaViolationsDetected",
        "sum by (namespace, pipeline_name, violation_type) "
        "(increase(ml_pipeline_schema_violations_total[15m])) > 0"),
    "per-pod quantiles": (
        "alert", "HighPredictionLatency",
        "histogram_quantile(0.95, rate(ml_prediction_latency_seconds_bucket[5m])) > 0.5"),
    "collector alert on a box that never had a GPU": (
        "alert", "MLSidecarCollectorFailing", "mlsidecar_collector_up == 0"),
    "defect 1: MLSidecarDown only for job names starting with mlsidecar": (
        "alert", "MLSidecarDown", "up{job=~\"mlsidecar.*\"} == 0"),
    "defect 2: 1 - 0/0 = NaN after an idle period": (
        "record", "namespace_model_name:ml_model_quality:ratio",
        "min by (namespace, model_name) (ml_model_accuracy_score{dataset=\"live\"}) or (1 - ("
        "sum by (namespace, model_name) (namespace_model:ml_prediction_errors:rate5m) / "
        "sum by (namespace, model_name) (namespace_model:ml_predictions:rate5m)))"),
    "defect 3: a global floor of 0.85": (
        "record", "namespace_model_dataset:ml_model_accuracy_floor",
        "0 * namespace_model_dataset:ml_model_accuracy_score:min + 0.85"),
    "defect 3: a slope test without tolerance": (
        "record", "namespace_model_dataset:ml_model_degradation:severity",
        "(namespace_model_dataset:ml_model_accuracy_score:min"
        " < bool namespace_model_dataset:ml_model_accuracy_score:lower_bound_1d)"
        " + ((deriv(namespace_model_dataset:ml_model_accuracy_score:min[1h]) < bool 0)"
        " * (namespace_model_dataset:ml_model_accuracy_score:predict_24h"
        " < bool namespace_model_dataset:ml_model_accuracy_floor))"
        " + (namespace_model_dataset:ml_model_accuracy_score:min"
        " < bool namespace_model_dataset:ml_model_accuracy_floor)"),
    "defect 7: an unclamped 24h prediction from a few minutes of history": (
        "record", "namespace_model_dataset:ml_model_accuracy_score:predict_24h",
        "predict_linear(namespace_model_dataset:ml_model_accuracy_score:min[6h], 86400)"),
    "defect 10: GPU memory over 95% (fires on preallocation)": (
        "alert", "TrainingGPUMemoryGrowing",
        "ml_gpu_memory_used_bytes / ml_gpu_memory_total_bytes > 0.95 or "
        "predict_linear(ml_gpu_memory_used_bytes[15m], 600) > ml_gpu_memory_total_bytes"),
}


# The unit-test cases (by the start of their name) about a recording rule.
OLD_RULE_CASES = {
    "namespace_model_name:ml_model_quality:ratio": "model quality after an idle period",
    "namespace_model_dataset:ml_model_accuracy_floor": "Model",
    "namespace_model_dataset:ml_model_degradation:severity": "ModelDegradationSevere",
    "namespace_model_dataset:ml_model_accuracy_score:predict_24h": "predict_24h",
}


@pytest.mark.parametrize("old", sorted(OLD_RULES))
def test_unit_tests_catch_the_old_rule(tmp_path, old):
    kind, name, expr = OLD_RULES[old]
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in (RECORDING, ALERTS):
        text = path.read_text()
        if f"- {kind}: {name}\n" in text:
            text = _mutate(text, kind, name, expr)
        (rules / path.name).write_text(text)
    tests = tmp_path / "tests"
    tests.mkdir()
    shutil.copy(UNIT_CONFIG, tests / UNIT_CONFIG.name)
    # Only the cases about this rule (quicker); the full file passes on the shipped rules.
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    topic = OLD_RULE_CASES.get(name, name)
    doc["tests"] = [t for t in doc["tests"] if t["name"].startswith(topic)]
    assert doc["tests"], f"no unit-test case about {name}"
    (tests / UNIT_TESTS.name).write_text(yaml.safe_dump(doc, allow_unicode=True))
    assert promtool("check", "rules", rules / ALERTS.name, rules / RECORDING.name).returncode == 0
    res = promtool("test", "rules", tests / UNIT_TESTS.name)
    assert res.returncode != 0, f"the unit tests did not notice: {old}"


METRIC_REF = re.compile(r"(?<![\w:])((?:ml|mlsidecar)_[a-z0-9_]+)(?![\w:])")


def catalogue_names() -> set[str]:
    """Every sample name the sidecar can expose: the built-in catalogue (core, collectors,
    analytics, cost, impact, self-metrics)."""
    from mlsidecar import catalogue

    names = set()
    for fam in catalogue.builtin().values():
        names.add(fam.name)
        if fam.type == catalogue.HISTOGRAM:
            names |= {fam.name + "_bucket", fam.name + "_sum", fam.name + "_count"}
    return names


def rule_exprs(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"expr: (\|\n(?:\s{10,}.*\n)+|.*\n)", text)]


def test_rules_only_use_metric_names_the_sidecar_exposes():
    known = catalogue_names()
    for path in (RECORDING, ALERTS, RULES / "ml_comparison.yml"):
        exprs = rule_exprs(path.read_text())
        assert len(exprs) == path.read_text().count("expr:")
        for expr in exprs:
            unknown = set(METRIC_REF.findall(expr)) - known
            assert not unknown, f"{path.name}: {unknown} in {expr.strip()}"


def test_no_internal_words_in_deploy_and_docs():
    for base in (ROOT / "deploy", ROOT / "docs"):
        for path in base.rglob("*"):
            if path.is_file() and path.suffix in {".yml", ".yaml", ".md", ".py", ".json"}:
                assert not re.search(r"\bseed\b|the seed's", path.read_text(), re.I), path
