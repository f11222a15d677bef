"""deploy/grafana: generated dashboards are committed as generated, use current panel types and
template variables, and every PromQL expression in them parses (promtool)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
PANEL_TYPES = {"row", "timeseries", "stat", "table", "heatmap", "xychart", "bargauge"}

# Concrete values for Grafana's variables: multi-value variables are only used as =~"$var".
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def load_generator():
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def substitute(expr: str, intervals: dict[str, str] = GRAFANA_INTERVALS, value: str = ".*") -> str:
    for k, v in intervals.items():
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?(\w+)\}?", value, expr)


def label_values_to_promql(query: str) -> str | None:
    """label_values(metric{...}, label) -> group by (label) (metric{...})."""
    m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
    if not m:
        return None
    return f"group by ({m.group(2)}) ({m.group(1)})"


def panel_queries(dash: dict) -> list[tuple[str, str]]:
    """(panel title, raw expr) for every target of every panel, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))

    walk(dash["panels"])
    return out


def other_queries(dash: dict) -> list[tuple[str, str]]:
    """Template variable and annotation queries, as PromQL."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = label_values_to_promql(v["definition"])
            assert q, f"variable {v['name']}: unexpected query {v['definition']!r}"
            out.append((f"variable {v['name']}", q))
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']}", a["expr"]))
    return out


def promtool_parse(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Write each expr as a recording rule and run `promtool check rules` on the file."""
    tool = require_tool("promtool")
    lines = ["groups:", "  - name: dashboard_queries", "    rules:"]
    for i, e in enumerate(exprs):
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(e)}"]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_committed_json_is_the_generator_output():
    rendered = load_generator().render()
    committed = {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")}
    assert set(committed) == set(rendered), "run python3 deploy/grafana/generate.py"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} differs from generate.py's output; regenerate it"


def test_generator_check_mode(tmp_path):
    gen = load_generator()
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    victim = next(tmp_path.glob("*.json"))
    victim.write_text(victim.read_text().replace('"title"', '"titel"', 1))
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


def test_expected_dashboards_and_variables():
    # Named after the labels they filter, so that includeVars links and alerts' dashboard_url
    # (var-model_name=...) carry them; namespace and cluster everywhere.
    scope = {"datasource", "cluster", "namespace"}
    wanted = {
        "ml-model-performance.json": scope | {"model_name", "model_version"},
        "ml-training.json": scope | {"job_name"},
        "ml-data-pipeline.json": scope | {"pipeline_name"},
        "gpu-host.json": scope | {"instance", "gpu"},
        "mlsidecar-health.json": scope | {"instance"},
        "ml-model-comparison.json": scope | {"model_name", "model_version"},
        "ml-cost.json": scope | {"model_name"},
    }
    dash = dashboards()
    assert set(dash) == set(wanted)
    uids = [d["uid"] for d in dash.values()]
    assert len(set(uids)) == len(uids)
    for name, d in dash.items():
        names = {v["name"] for v in d["templating"]["list"]}
        assert names == wanted[name], name
        ds = next(v for v in d["templating"]["list"] if v["name"] == "datasource")
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"


def test_panels_use_current_types_and_the_datasource_variable():
    for name, d in dashboards().items():
        ids = []
        for p in d["panels"]:
            ids.append(p["id"])
            assert p["type"] in PANEL_TYPES, f"{name}: {p['title']} is a {p['type']} panel"
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{name}: {p['title']} overflows the grid"
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], f"{name}: {p['title']} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}"
        assert len(ids) == len(set(ids)), name


def test_variables_only_used_as_regex_matchers():
    for name, d in dashboards().items():
        for title, expr in panel_queries(d) + other_queries(d):
            for m in re.finditer(r"\$(?!__)(\w+)", expr):
                before = expr[max(0, m.start() - 3):m.start()]
                assert before == '=~"', f"{name} / {title}: ${m.group(1)} outside =~\"...\": {expr}"


# The specification's dashboards, panel by panel: (dashboard, title, panel type here, what its
# query must contain). docs/deployment.md has the same table for users.
SPEC_PANELS = [
    ("ml-model-performance.json", "Model Accuracy Over Time", "stat", "ml_model_accuracy_score{"),
    ("ml-model-performance.json", "Prediction Latency Distribution", "heatmap",
     "ml_prediction_latency_seconds_bucket{"),
    ("ml-model-performance.json", "Predictions per Second", "timeseries", "rate(ml_predictions_total{"),
    ("ml-model-performance.json", "Feature Drift Detection", "table", "ml_feature_drift_score{"),
    ("ml-training.json", "Training Loss", "timeseries", "ml_training_loss{"),
    ("ml-training.json", "GPU Utilization", "timeseries", "ml_training_gpu_utilization_percent{"),
    ("ml-training.json", "Batch Processing Time", "timeseries", "ml_training_batch_duration_seconds"),
    ("ml-training.json", "Memory Usage", "timeseries", "ml_training_memory_usage_bytes{"),
    ("ml-data-pipeline.json", "Pipeline Throughput", "timeseries", "rate(ml_pipeline_records_processed_total{"),
    ("ml-data-pipeline.json", "Processing Latency by Stage", "timeseries", "ml_pipeline_processing_latency_seconds"),
    ("ml-data-pipeline.json", "Error Rate", "stat", "ml_pipeline_record_errors"),
    ("ml-data-pipeline.json", "Data Freshness", "timeseries", "ml_pipeline_data_freshness_seconds{"),
]


def test_the_specification_panels_are_all_there():
    d = dashboards()
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for dash, title, typ, query in SPEC_PANELS:
        panel = next((p for p in d[dash]["panels"] if p["title"] == title), None)
        assert panel, f"{dash}: no panel {title!r}"
        assert panel["type"] == typ, (dash, title, panel["type"])
        assert any(query in t["expr"] for t in panel["targets"]), (dash, title)
        assert f"| {title} |" in docs, f"docs/deployment.md: {title} missing from the panel table"
    panels = {(dash, p["title"]): p for dash in d for p in d[dash]["panels"]}
    drift = panels["ml-model-performance.json", "Feature Drift Detection"]
    assert [s["value"] for s in drift["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.3, 0.7]
    renamed = drift["transformations"][-1]["options"]["renameByName"]
    assert renamed == {"feature_name": "Feature", "Value": "Drift Score"}
    acc = panels["ml-model-performance.json", "Model Accuracy Over Time"]["fieldConfig"]["defaults"]
    assert [s["value"] for s in acc["thresholds"]["steps"]] == [None, 0.8, 0.9] and acc["unit"] == "percentunit"
    err = panels["ml-data-pipeline.json", "Error Rate"]["fieldConfig"]["defaults"]
    assert [s["value"] for s in err["thresholds"]["steps"]] == [None, 0.01, 0.05]
    loss = panels["ml-training.json", "Training Loss"]
    assert loss["fieldConfig"]["defaults"]["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    batch = panels["ml-training.json", "Batch Processing Time"]
    assert {"p50", "p95"} <= {t["legendFormat"].split()[0] for t in batch["targets"]}


def test_links_carry_the_variables_and_alerts_are_annotations():
    for name, d in dashboards().items():
        assert all(link["includeVars"] for link in d["links"]), name
        (alerts,) = [a for a in d["annotations"]["list"] if a["name"] == "Alerts"]
        assert alerts["expr"].startswith('ALERTS{alertstate="firing", namespace=~"$namespace"'), name
        assert alerts["datasource"]["uid"] == "${datasource}"


def selectors(expr: str) -> list[str]:
    """The metric selectors `name{...}` of an expression (functions and by() clauses left out)."""
    return re.findall(r"(?<![\w:$])([a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\})", expr)


def test_every_selector_follows_namespace_and_cluster():
    for name, d in dashboards().items():
        for title, expr in panel_queries(d):
            sels = selectors(expr)
            assert sels, f"{name} / {title}: no selector in {expr}"
            for s in sels:
                assert 'namespace=~"$namespace"' in s and 'cluster=~"$cluster"' in s, f"{name} / {title}: {s}"


def test_no_query_matches_the_sidecar_by_job_name():
    """prometheus-operator names jobs <namespace>/<name>: a job regex misses its sidecars."""
    for name, d in dashboards().items():
        for title, expr in panel_queries(d) + other_queries(d):
            assert "job=~" not in expr and 'job="' not in expr, f"{name} / {title}: {expr}"


def result_labels(expr: str) -> set[str] | None:
    """The labels a query's series carry, where the query says (by/without aside): None if unknown."""
    from mlsidecar import catalogue

    target = {"instance", "job", "namespace", "pod", "node", "cluster", "ml_component"}
    outer = re.match(r"\s*(?:sum|max|min|avg|count)\s+by\s*\(([^)]*)\)", expr)
    if outer:
        return {x.strip() for x in outer.group(1).split(",")}
    q = re.match(r"\s*histogram_quantile\([^,]+,\s*sum\s+by\s*\(([^)]*)\)", expr)
    if q:
        return {x.strip() for x in q.group(1).split(",")} - {"le"}
    names = re.findall(r"(?<![\w:$])((?:ml|mlsidecar)_[a-z0-9_]+?)(?:_bucket|_sum|_count)?\{", expr)
    fams = {f.name: f for f in catalogue.builtin().values()}
    if not names or any(n not in fams for n in names) or re.search(r"\b(by|without|on|ignoring)\b", expr):
        return None
    labels = set.intersection(*(set(fams[n].labels) for n in names))
    return labels | target


def test_legends_only_name_labels_the_series_have():
    checked = 0
    for name, d in dashboards().items():
        def walk(panels):
            for p in panels:
                yield from walk(p.get("panels", []))
                for t in p.get("targets", []):
                    yield p["title"], t
        for title, t in walk(d["panels"]):
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            have = result_labels(t["expr"])
            if have is None or not used:
                continue
            checked += 1
            assert used <= have, f"{name} / {title}: legend names {used - have}, the series have {sorted(have)}"
    assert checked > 40


def test_legend_check_can_fail():
    skipped = 'increase(mlsidecar_multiproc_files_skipped_total{instance=~"$instance"}[1m])'
    assert "directory" not in result_labels(skipped)
    assert {"pid", "process_name"} <= result_labels('ml_gpu_process_memory_used_bytes{gpu=~"$gpu"}')


def test_deployments_annotation_marks_a_new_versions_first_deployment(tmp_path):
    """A new version's counter appears at 1: `changes() > 0` never marks it; ours does."""
    yaml = pytest.importorskip("yaml")
    tool = require_tool("promtool")
    (annotation,) = [a for a in dashboards()["ml-model-performance.json"]["annotations"]["list"]
                     if a["name"] == "Deployments"]
    ours = substitute(annotation["expr"], {"$__interval": "1m"})
    old = 'changes(ml_model_deployments_total{model_name=~".*"}[1m]) > 0'
    (tmp_path / "empty.yml").write_text("groups: []\n")
    v1 = '{model_name="m", model_version="v1"}'
    v2 = '{model_name="m", model_version="v2"}'

    def run(expr):
        def case(at, marked):
            return {"expr": expr, "eval_time": at,
                    "exp_samples": [{"labels": s, "value": 1} for s in marked]}
        doc = {"rule_files": ["empty.yml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m",
            "input_series": [
                # v1 deployed again at 10m; v2 deployed for the first time at 19m.
                {"series": f"ml_model_deployments_total{v1}", "values": "1x9 2x20"},
                {"series": f"ml_model_deployments_total{v2}", "values": "_x19 1x10"}],
            "promql_expr_test": [case("10m", [v1]), case("19m", [f"ml_model_deployments_total{v2}"]),
                                 case("25m", [])]}]}
        (tmp_path / "t.yml").write_text(yaml.safe_dump(doc))
        return subprocess.run([tool, "test", "rules", str(tmp_path / "t.yml")], capture_output=True,
                              text=True, timeout=60)

    res = run(ours)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run(old)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "time: 19m" in out and "time: 10m" not in out, \
        "the old annotation was expected to mark v1's deployment and miss v2's first"


def test_every_expression_parses_with_promtool(tmp_path):
    exprs = []
    for d in dashboards().values():
        exprs += [substitute(e) for _, e in panel_queries(d) + other_queries(d)]
    assert len(exprs) > 80
    res = promtool_parse(exprs, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout


def test_the_parse_check_can_fail(tmp_path):
    res = promtool_parse(["sum(rate(ml_predictions_total[5m])", "up"], tmp_path)
    assert res.returncode != 0


@pytest.mark.parametrize("path", ["provisioning/dashboards/mlsidecar.yaml",
                                  "provisioning/datasources/prometheus.yaml"])
def test_provisioning_files(path):
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((GRAFANA / path).read_text())
    assert doc["apiVersion"] == 1
    if "providers" in doc:
        (prov,) = doc["providers"]
        assert prov["type"] == "file" and prov["options"]["path"]
    else:
        (ds,) = doc["datasources"]
        assert ds["type"] == "prometheus"


def test_dashboards_only_use_metric_names_the_sidecar_exposes():
    from tests.test_deploy_prometheus import METRIC_REF, catalogue_names

    known = catalogue_names()
    for name, d in dashboards().items():
        for title, expr in panel_queries(d) + other_queries(d):
            unknown = set(METRIC_REF.findall(expr)) - known
            assert not unknown, f"{name} / {title}: {unknown}"
