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
    wanted = {
        "ml-model-performance.json": {"datasource", "model", "version"},
        "ml-training.json": {"datasource", "job"},
        "ml-data-pipeline.json": {"datasource", "pipeline"},
        "gpu-host.json": {"datasource", "instance", "gpu"},
        "mlsidecar-health.json": {"datasource", "instance"},
        "ml-model-comparison.json": {"datasource", "model", "version"},
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
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{name}: {p['title']} overflows the grid"
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


def test_what_users_expect_is_there():
    d = dashboards()
    model = d["ml-model-performance.json"]
    types = {p["type"] for p in model["panels"]}
    assert {"heatmap", "table", "stat", "timeseries"} <= types
    titles = {p["title"]: p for p in model["panels"]}
    assert "p95 latency by model" in titles
    drift = titles["Feature drift (PSI; 0.1 watch, 0.25 alert)"]
    assert drift["type"] == "table"
    assert [s["value"] for s in drift["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.1, 0.25]
    loss = next(p for p in d["ml-training.json"]["panels"] if p["title"] == "Loss (log scale)")
    assert loss["fieldConfig"]["defaults"]["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    business = [p["title"] for p in model["panels"]]
    assert "Business impact" in business and "KPI / quality correlation (1h)" in business


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
