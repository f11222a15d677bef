#!/usr/bin/env python3
"""Generate the mlsidecar Grafana dashboards (standard library only).

    python3 deploy/grafana/generate.py          # write deploy/grafana/dashboards/*.json
    python3 deploy/grafana/generate.py --check  # exit 1 if the committed JSON is not the output

The JSON files are committed and provisioned from files (provisioning/dashboards/mlsidecar.yaml);
edit this file, not the JSON. tests/test_deploy_grafana.py checks that the committed JSON equals
this output and that promtool parses every query; tests/e2e/test_prometheus_e2e.py runs every
panel's query against a real Prometheus scraping a real sidecar.

Conventions, so that the dashboards stay consistent:
- every panel reads the `$datasource` variable (a Prometheus datasource picker);
- template variables (model, version, job, pipeline, instance, gpu) are multi-value with "All" = .*,
  and are only ever used as `label=~"$var"`;
- current panel types only: timeseries, stat, table, heatmap (no graph / singlestat);
- rates use $__rate_interval; the recording rules of deploy/prometheus/rules/ml_recording.yml are
  used where they exist (same numbers as the alerts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "dashboards")
DS = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["mlsidecar", "ml"]


# --- panel builders -----------------------------------------------------------------------------

SCOPE = 'namespace=~"$namespace", cluster=~"$cluster"'
SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


def scoped(expr: str) -> str:
    """Every selector `name{...}` also matches the dashboard's namespace and cluster variables
    (`.*` under "All", which also matches series without the label: systemd hosts, and a
    Prometheus whose external labels are only added on remote_write)."""
    def add(m):
        inner = m.group(2).strip()
        extra = [f'{k}=~"${k}"' for k in ("namespace", "cluster") if not re.search(rf"\b{k}\s*=", inner)]
        return f"{m.group(1)}{{{', '.join(extra + ([inner] if inner else []))}}}"
    expr = BARE.sub(lambda m: m.group(0) if _in_label_list(expr, m.start()) else m.group(1) + "{}", expr)
    return SELECTOR.sub(add, expr)


# A metric or recording-rule name without braces (`count by (x) (ml_cost_info)`, `ns:rule:rate5m`).
BARE = re.compile(r"(?<![\w:$\"])((?:ml_|mlsidecar_)[\w:]*|[a-z_]+:[\w:]+)(?![\w:{(\"])")


def _in_label_list(expr: str, pos: int) -> bool:
    """Whether ``pos`` lies inside by (...), without (...), on (...), ignoring (...), group_x (...)."""
    open_ = expr.rfind("(", 0, pos)
    if open_ < 0 or ")" in expr[open_:pos]:
        return False
    return bool(re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*$", expr[:open_]))


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series"):
    expr = scoped(expr)
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "format": fmt}
    return t


def _targets(queries):
    """[(expr, legend), ...] -> targets with refIds A, B, ..."""
    out = []
    for i, q in enumerate(queries):
        expr, legend = (q, "") if isinstance(q, str) else q
        out.append(target(expr, legend, chr(ord("A") + i)))
    return out


def thresholds(*steps):
    """thresholds((None, 'green'), (0.05, 'red'))"""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(title, queries, unit="short", desc="", log=False, th=None, stack=False, min_=None,
               max_=None):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
              "spanNulls": False, "axisPlacement": "auto",
              "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"},
              "stacking": {"mode": "normal" if stack else "none", "group": "A"},
              "thresholdsStyle": {"mode": "line+area" if th else "off"}}
    defaults = {"unit": unit, "custom": custom,
                "thresholds": th or thresholds((None, "green")), "color": {"mode": "palette-classic"}}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    return {"type": "timeseries", "title": title, "description": desc, "datasource": DS,
            "targets": _targets(queries),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"], "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title, expr, unit="short", desc="", th=None, decimals=None, legend=""):
    defaults = {"unit": unit, "thresholds": th or thresholds((None, "green")),
                "color": {"mode": "thresholds"}, "mappings": []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": desc, "datasource": DS,
            "targets": [target(expr, legend, ref="A")],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto",
                        "justifyMode": "auto", "orientation": "auto"}}


def table(title, queries, unit="short", desc="", th=None, hide=("Time",), rename=None):
    targets = []
    for i, q in enumerate(queries):
        expr, legend = (q, "") if isinstance(q, str) else q
        targets.append(target(expr, legend, chr(ord("A") + i), instant=True, fmt="table"))
    transformations = [{"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True),
                                                       "renameByName": dict(rename or {})}}]
    if len(targets) > 1:
        transformations.insert(0, {"id": "merge", "options": {}})
    return {"type": "table", "title": title, "description": desc, "datasource": DS,
            "targets": targets, "transformations": transformations,
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": th or thresholds((None, "green")),
                                         "color": {"mode": "thresholds"},
                                         "custom": {"align": "auto",
                                                    "cellOptions": {"type": "color-background"
                                                                    if th else "auto"}}},
                            "overrides": []},
            "options": {"showHeader": True, "cellHeight": "sm",
                        "footer": {"show": False, "reducer": ["sum"], "fields": ""}}}


def heatmap(title, expr, unit="s", desc=""):
    return {"type": "heatmap", "title": title, "description": desc, "datasource": DS,
            "targets": [dict(target(expr, "{{le}}", "A", fmt="heatmap"))],
            "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False,
                                                                 "viz": False},
                                                    "scaleDistribution": {"type": "linear"}}},
                            "overrides": []},
            "options": {"calculate": False, "cellGap": 1, "cellValues": {},
                        "color": {"mode": "scheme", "scheme": "Spectral", "steps": 64,
                                  "exponent": 0.5, "fill": "dark-orange", "reverse": False},
                        "exemplars": {"color": "rgba(255,0,255,0.7)"},
                        "filterValues": {"le": 1e-9}, "legend": {"show": True},
                        "rowsFrame": {"layout": "auto"},
                        "tooltip": {"show": True, "yHistogram": False},
                        "yAxis": {"axisPlacement": "left", "unit": unit, "reverse": False}}}


# --- template variables ---------------------------------------------------------------------------

def datasource_var():
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [],
            "refresh": 1, "regex": "", "skipUrlSync": False}


def query_var(name, label, query, scope=True):
    if scope and name not in ("namespace", "cluster"):
        m = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*(\w+)\)", query)
        if m and "$namespace" not in query:
            query = scoped(f"label_values({m.group(1)}{m.group(2) or '{}'}, {m.group(3)})")
    return {"type": "query", "name": name, "label": label, "datasource": DS,
            "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor"},
            "current": {}, "hide": 0, "includeAll": True, "allValue": ".*", "multi": True,
            "options": [], "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1}


def scope_vars(variables):
    """cluster (an external label: present in Thanos, Mimir, Cortex) and namespace, first."""
    names = {v["name"] for v in variables}
    out = []
    if "cluster" not in names:
        out.append(query_var("cluster", "Cluster", "label_values(mlsidecar_build_info, cluster)", scope=False))
    if "namespace" not in names:
        out.append(query_var("namespace", "Namespace",
                             'label_values(mlsidecar_build_info{cluster=~"$cluster"}, namespace)', scope=False))
    return out


def alerts_annotation(variables):
    """Prometheus' alerts (the ALERTS series) as annotations, for the dashboard's variables."""
    label_vars = [v["name"] for v in variables if v["name"] in ("model_name", "model_version", "job_name",
                                                                 "pipeline_name", "instance")]
    matchers = "".join(f', {n}=~"${n}"' for n in label_vars)
    return {"name": "Alerts", "datasource": DS, "enable": True, "hide": False, "iconColor": "red",
            "expr": f'ALERTS{{alertstate="firing", {SCOPE}{matchers}}}', "step": "1m",
            "titleFormat": "{{alertname}}", "textFormat": "{{severity}} {{model_name}}{{job_name}}{{pipeline_name}}",
            "tagKeys": "alertname,severity", "useValueForTime": False}


# --- layout -----------------------------------------------------------------------------------------

class Dashboard:
    def __init__(self, uid, title, description, variables, annotations=()):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.annotations = list(annotations)
        self.panels = []
        self.x = self.y = 0
        self.row_h = 0

    def row(self, title):
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel, w=12, h=8):
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0

    def json(self):
        panels = []
        for i, p in enumerate(self.panels, 1):
            panels.append({"id": i, **p})
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": TAGS,
            "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
            "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "timezone": "browser",
            "refresh": "30s", "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
            # includeVars: the other dashboards open on the same namespace, model, job, pipeline.
            "links": [{"type": "dashboards", "tags": ["mlsidecar"], "asDropdown": True,
                       "title": "mlsidecar dashboards", "includeVars": True, "keepTime": True}],
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard"}] + self.annotations
                + [alerts_annotation(self.variables)]},
            "templating": {"list": [datasource_var()] + scope_vars(self.variables) + self.variables},
            "panels": panels,
        }


# --- the dashboards --------------------------------------------------------------------------------

M = 'model_name=~"$model_name", model_version=~"$model_version"'
PCT_085 = thresholds((None, "red"), (0.85, "yellow"), (0.9, "green"))


def model_dashboard():
    d = Dashboard(
        "mlsidecar-model", "ML model performance",
        "Serving traffic, errors, latency, quality, drift and business impact of models "
        "instrumented with mlsidecar.",
        [query_var("model_name", "Model", "label_values(ml_predictions_total, model_name)"),
         query_var("model_version", "Version",
                   'label_values(ml_predictions_total{model_name=~"$model_name"}, model_version)')],
        annotations=[{"name": "Deployments", "datasource": DS, "enable": True, "hide": False,
                      "iconColor": "purple", "titleFormat": "Deployed {{model_name}} {{model_version}}",
                      # A new version's first deployment creates its series at 1: changes()
                      # and increase() miss it, so a series absent a step before counts too.
                      "expr": f"(ml_model_deployments_total{{{M}}} - ml_model_deployments_total{{{M}}} "
                              f"offset $__interval) > 0 or (ml_model_deployments_total{{{M}}} unless "
                              f"ml_model_deployments_total{{{M}}} offset $__interval)",
                      "step": "1m", "tagKeys": "model_name,model_version", "useValueForTime": False}])
    d.row("Overview")
    d.add(stat("Predictions / s", f"sum(namespace_model:ml_predictions:rate5m{{{M}}})", "reqps"), 6, 4)
    d.add(stat("Error ratio",
               f"sum(namespace_model:ml_prediction_errors:rate5m{{{M}}}) / "
               f"sum(namespace_model:ml_predictions:rate5m{{{M}}})", "percentunit",
               th=thresholds((None, "green"), (0.01, "yellow"), (0.05, "red")), decimals=2), 6, 4)
    d.add(stat("p95 latency (worst model)",
               f"max(namespace_model:ml_prediction_latency_seconds:p95_5m{{{M}}})", "s",
               th=thresholds((None, "green"), (0.5, "yellow"), (1, "red"))), 6, 4)
    d.add(stat("Accuracy (worst model, dataset)", f"min(ml_model_accuracy_score{{{M}}})",
               "percentunit", th=PCT_085, decimals=1), 6, 4)
    d.add(stat("Model Accuracy Over Time",
               f"ml_model_accuracy_score{{{M}}}", "percentunit",
               th=thresholds((None, "red"), (0.8, "yellow"), (0.9, "green")), decimals=1,
               legend="{{model_name}} {{model_version}} {{dataset}} accuracy",
               desc="One value per model, version and dataset, with its sparkline."), 12, 6)

    d.row("Traffic and latency")
    d.add(timeseries("Predictions per Second",
                     [(f"sum by (model_name, model_version, status) "
                       f"(rate(ml_predictions_total{{{M}}}[$__rate_interval]))",
                       "{{model_name}} {{model_version}} {{status}} predictions/sec")], "reqps", stack=True,
                     min_=0))
    d.add(timeseries("Error ratio by model",
                     [(f"namespace_model:ml_prediction_error_ratio:rate5m{{{M}}}",
                       "{{model_name}} {{model_version}}")], "percentunit",
                     th=thresholds((None, "transparent"), (0.05, "red")), min_=0))
    d.add(timeseries("Latency p50 / p95 / p99",
                     [(f"namespace_model:ml_prediction_latency_seconds:p50_5m{{{M}}}",
                       "p50 {{model_name}} {{model_version}}"),
                      (f"namespace_model:ml_prediction_latency_seconds:p95_5m{{{M}}}",
                       "p95 {{model_name}} {{model_version}}"),
                      (f"namespace_model:ml_prediction_latency_seconds:p99_5m{{{M}}}",
                       "p99 {{model_name}} {{model_version}}")], "s"))
    d.add(timeseries("p95 latency by model",
                     [(f"histogram_quantile(0.95, sum by (model_name, le) "
                       f"(rate(ml_prediction_latency_seconds_bucket{{{M}}}[$__rate_interval])))",
                       "{{model_name}}")], "s",
                     th=thresholds((None, "transparent"), (1, "red"))))
    d.add(heatmap("Prediction Latency Distribution",
                  f"sum by (le) (increase(ml_prediction_latency_seconds_bucket{{{M}}}[$__rate_interval]))",
                  "s", "Histogram buckets as Prometheus stores them (le upper bounds)."))
    d.add(heatmap("Confidence distribution (buckets)",
                  f"sum by (le) (increase(ml_prediction_confidence_score_bucket{{{M}}}[$__rate_interval]))",
                  "percentunit"))

    d.row("Quality and drift")
    d.add(timeseries("Accuracy, precision, recall",
                     [(f"ml_model_accuracy_score{{{M}}}", "accuracy {{model_name}} {{model_version}} {{dataset}}"),
                      (f"ml_model_precision_score{{{M}}}", "precision {{model_name}} {{model_version}} {{dataset}}"),
                      (f"ml_model_recall_score{{{M}}}", "recall {{model_name}} {{model_version}} {{dataset}}")],
                     "percentunit", th=thresholds((None, "red"), (0.85, "transparent")), max_=1))
    d.add(table("Feature Drift Detection",
                [(f"max by (model_name, model_version, feature_name) (ml_feature_drift_score{{{M}}})", "")],
                "none", th=thresholds((None, "green"), (0.3, "yellow"), (0.7, "red")),
                rename={"feature_name": "Feature", "Value": "Drift Score"},
                desc="0.3 watch, 0.7 alert (FeatureDriftDetected)."))
    d.add(timeseries("Data quality",
                     [(f"ml_data_quality_score{{{M}}}",
                       "{{model_name}} {{model_version}} {{quality_metric}}")],
                     "percentunit", th=thresholds((None, "red"), (0.9, "transparent")), max_=1))
    d.add(timeseries("Deployments",
                     [(f"sum by (model_name, model_version) (ml_model_deployments_total{{{M}}})",
                       "{{model_name}} {{model_version}}")], "short"))

    d.row("Advanced alerting signals (recording rules)")
    acc = "namespace_model_dataset:ml_model_accuracy_score"
    d.add(timeseries("Accuracy against its dynamic threshold (mean - 3 sd, 1 day)",
                     [(f"{acc}:min{{{M}}}", "accuracy {{model_name}} {{model_version}} {{dataset}}"),
                      (f"{acc}:avg_1d{{{M}}}", "1d mean {{model_name}} {{model_version}} {{dataset}}"),
                      (f"{acc}:lower_bound_1d{{{M}}}", "lower bound {{model_name}} {{model_version}} {{dataset}}")],
                     "percentunit"))
    d.add(timeseries("Accuracy trend (change per hour) and 24h prediction",
                     [(f"{acc}:change_1h{{{M}}}", "per hour {{model_name}} {{model_version}} {{dataset}}"),
                      (f"{acc}:predict_24h{{{M}}}", "in 24h {{model_name}} {{model_version}} {{dataset}}")],
                     "short"))
    d.add(timeseries("Composite degradation severity (0-3)",
                     [(f"namespace_model_dataset:ml_model_degradation:severity{{{M}}}",
                       "{{model_name}} {{model_version}} {{dataset}}")], "none",
                     th=thresholds((None, "transparent"), (2, "red")), min_=0, max_=3))
    d.add(table("Degradation signals now",
                [(f"namespace_model_dataset:ml_model_degradation:severity{{{M}}}", "")], "none",
                th=thresholds((None, "green"), (1, "yellow"), (2, "red"))))
    d.add(timeseries("Anomaly scores (robust z; |z| > 3 alerts)",
                     [(f"ml_anomaly_score{{{M}}}", "{{model_name}} {{model_version}} {{signal}}")], "none",
                     th=thresholds((None, "transparent"), (3, "red"))))
    d.add(timeseries("Payload sizes p95 (request, response) and model size",
                     [(f"histogram_quantile(0.95, sum by (model_name, le) "
                       f"(rate(ml_prediction_request_size_bytes_bucket{{{M}}}[$__rate_interval])))",
                       "request {{model_name}}"),
                      (f"histogram_quantile(0.95, sum by (model_name, le) "
                       f"(rate(ml_prediction_response_size_bytes_bucket{{{M}}}[$__rate_interval])))",
                       "response {{model_name}}"),
                      (f"max by (model_name, model_version) (ml_model_size_bytes{{{M}}})",
                       "model {{model_name}} {{model_version}}")], "bytes", log=True))

    d.row("Business impact")
    B = 'model_name=~"$model_name"'
    d.add(timeseries("Business KPI (conversions / s) and model quality",
                     [(f"namespace_model_name:business_kpi:rate5m{{{B}}}", "KPI {{model_name}}"),
                      (f"namespace_model_name:ml_model_quality:ratio{{{B}}}", "quality {{model_name}}")],
                     "short", desc="business_conversions_total (a `metric` event) next to the model's "
                                   "quality (live accuracy, or the share of successful predictions)."))
    d.add(stat("KPI / quality correlation (1h)",
               f"avg(namespace_model_name:business_kpi_ml_model_quality:correlation_1h{{{B}}})", "none",
               th=thresholds((None, "blue")), decimals=2,
               desc="Pearson correlation over the last hour; empty or NaN while a side is constant."), 6)
    d.add(stat("Estimated revenue at risk / h",
               f"sum(namespace_model_name:ml_business_revenue_at_risk:per_hour{{{B}}})", "currencyUSD",
               th=thresholds((None, "green"), (100, "yellow"), (1000, "red")),
               desc="quality drop under its 1-day baseline x share of users affected x revenue per "
                    "hour (constants in ml_recording.yml)."), 6)
    d.add(timeseries("Revenue at risk per hour by model",
                     [(f"namespace_model_name:ml_business_revenue_at_risk:per_hour{{{B}}}",
                       "{{model_name}}")], "currencyUSD"))
    d.add(timeseries("Estimated impact of the current issue ([impact] config)",
                     [(f"namespace_model_name:ml_business_revenue_at_risk:estimate_per_hour{{{B}}}",
                       "revenue at risk/h {{model_name}}"),
                      (f"namespace_model_name:ml_business_users_affected:estimate{{{B}}}",
                       "users affected {{model_name}}")], "short",
                     desc="composite alert score x the model's Impact x 50 % of its revenue per hour, "
                          "x 30 % of its active users (docs/severity.md)."))
    return d


def training_dashboard():
    J = 'job_name=~"$job_name"'
    d = Dashboard("mlsidecar-training", "ML training jobs",
                  "Progress, loss curves, throughput and checkpoints of training jobs.",
                  [query_var("job_name", "Training job", "label_values(ml_training_current_epoch, job_name)")])
    d.row("Progress")
    d.add(stat("Epoch", f"max(ml_training_current_epoch{{{J}}})", "none"), 6, 4)
    d.add(stat("Samples / s", f"sum(namespace_job:ml_training_samples:rate5m{{{J}}})", "short"), 6, 4)
    d.add(stat("Learning rate", f"max(ml_training_learning_rate{{{J}}})", "sci"), 6, 4)
    d.add(stat("Last checkpoint size", f"max(ml_training_checkpoint_size_bytes{{{J}}})", "bytes"), 6, 4)
    d.add(timeseries("Training Loss",
                     [(f"ml_training_loss{{{J}}}", "{{job_name}} {{loss_type}}")], "none", log=True,
                     desc="Log scale. NaN or infinite losses leave gaps; they are counted below."))
    d.add(timeseries("Non-finite losses (NaN, Infinity)",
                     [(f"sum by (job_name, loss_type) (increase(ml_training_loss_nonfinite_total{{{J}}}"
                       f"[$__rate_interval]))", "{{job_name}} {{loss_type}}")], "short", min_=0))
    d.add(timeseries("Learning rate (log scale)",
                     [(f"ml_training_learning_rate{{{J}}}", "{{job_name}}")], "sci", log=True))
    d.add(timeseries("Epoch", [(f"ml_training_current_epoch{{{J}}}", "{{job_name}}")], "none"))
    d.add(timeseries("Throughput",
                     [(f"sum by (job_name) (rate(ml_training_samples_processed_total{{{J}}}[$__rate_interval]))",
                       "samples/s {{job_name}}"),
                      (f"sum by (job_name) (rate(ml_training_iterations_total{{{J}}}[$__rate_interval]))",
                       "iterations/s {{job_name}}")], "short"))
    d.row("Batches and resources")
    d.add(timeseries("Batch Processing Time",
                     [(f"histogram_quantile(0.5, sum by (job_name, le) "
                       f"(rate(ml_training_batch_duration_seconds_bucket{{{J}}}[$__rate_interval])))",
                       "p50 {{job_name}}"),
                      (f"namespace_job:ml_training_batch_duration_seconds:p95_5m{{{J}}}", "p95 {{job_name}}")],
                     "s"))
    d.add(heatmap("Batch duration distribution",
                  f"sum by (le) (increase(ml_training_batch_duration_seconds_bucket{{{J}}}[$__rate_interval]))"))
    d.add(timeseries("GPU Utilization",
                     [(f"ml_training_gpu_utilization_percent{{{J}}}", "{{job_name}} GPU {{gpu_id}}")],
                     "percent", min_=0, max_=100))
    d.add(timeseries("Memory Usage",
                     [(f"ml_training_memory_usage_bytes{{{J}}}", "{{job_name}} {{memory_type}}")], "bytes"))
    d.row("Checkpoints")
    d.add(timeseries("Checkpoint size",
                     [(f"ml_training_checkpoint_size_bytes{{{J}}}", "{{job_name}}")], "bytes"))
    d.add(timeseries("Checkpoint save duration p95",
                     [(f"histogram_quantile(0.95, sum by (job_name, le) "
                       f"(rate(ml_training_checkpoint_save_duration_seconds_bucket{{{J}}}[$__rate_interval])))",
                       "{{job_name}}")], "s"))
    d.row("Runs (training events with a status)")
    d.add(stat("Jobs with a run in progress", "sum(ml_training_active_jobs)", "none"), 6, 4)
    d.add(stat("Age of the current run (oldest)", f"max(namespace_job:ml_training_run_age_seconds{{{J}}})",
               "s"), 6, 4)
    d.add(stat("Runs finished (24h)",
               f"sum(increase(ml_training_run_duration_seconds_count{{{J}}}[1d]))", "none"), 6, 4)
    d.add(stat("Runs failed (24h)",
               f'sum(increase(ml_training_run_duration_seconds_count{{{J}, status="failed"}}[1d])) or vector(0)',
               "none", th=thresholds((None, "green"), (1, "red"))), 6, 4)
    d.add(timeseries("Run duration p50 / p95 by outcome",
                     [(f"histogram_quantile(0.5, sum by (status, le) "
                       f"(rate(ml_training_run_duration_seconds_bucket{{{J}}}[1d])))", "p50 {{status}}"),
                      (f"histogram_quantile(0.95, sum by (status, le) "
                       f"(rate(ml_training_run_duration_seconds_bucket{{{J}}}[1d])))", "p95 {{status}}")], "s"), 24)
    return d


def pipeline_dashboard():
    P = 'pipeline_name=~"$pipeline_name"'
    d = Dashboard("mlsidecar-pipeline", "ML data pipelines",
                  "Throughput, errors, latency, queues, freshness and schema violations of data "
                  "pipelines.",
                  [query_var("pipeline_name", "Pipeline",
                             "label_values(ml_pipeline_records_processed_total, pipeline_name)")])
    d.row("Overview")
    d.add(stat("Records / s", f"sum(namespace_pipeline_stage:ml_pipeline_records:rate5m{{{P}}})", "short"), 6, 4)
    d.add(stat("Error Rate",
               f"sum(namespace_pipeline_stage:ml_pipeline_record_errors:rate5m{{{P}}}) / "
               f"sum(namespace_pipeline_stage:ml_pipeline_records:rate5m{{{P}}})", "percentunit",
               th=thresholds((None, "green"), (0.01, "yellow"), (0.05, "red")), decimals=2), 6, 4)
    d.add(stat("Oldest data (max freshness)", f"max(ml_pipeline_data_freshness_seconds{{{P}}})", "s",
               th=thresholds((None, "green"), (900, "yellow"), (3600, "red"))), 6, 4)
    d.add(stat("Items queued", f"sum(ml_pipeline_queue_size{{{P}}})", "short"), 6, 4)
    d.row("Stages")
    d.add(timeseries("Pipeline Throughput",
                     [(f"sum by (pipeline_name, stage, status) "
                       f"(rate(ml_pipeline_records_processed_total{{{P}}}[$__rate_interval]))",
                       "{{pipeline_name}} {{stage}} {{status}} records/sec")], "short", stack=True, min_=0))
    d.add(timeseries("Error ratio by stage",
                     [(f"namespace_pipeline_stage:ml_pipeline_error_ratio:rate5m{{{P}}}",
                       "{{pipeline_name}} {{stage}} (5m)"),
                      (f"ml_pipeline_error_rate{{{P}}}", "{{pipeline_name}} {{stage}} (sidecar window)")],
                     "percentunit", th=thresholds((None, "transparent"), (0.05, "red")), min_=0))
    d.add(timeseries("Processing Latency by Stage",
                     [(f"namespace_pipeline_stage:ml_pipeline_processing_latency_seconds:p95_5m{{{P}}}",
                       "{{pipeline_name}} {{stage}} - 95th percentile")], "s"))
    d.add(heatmap("Processing latency distribution",
                  f"sum by (le) (increase(ml_pipeline_processing_latency_seconds_bucket{{{P}}}[$__rate_interval]))"))
    d.row("Queues, freshness, schema")
    d.add(timeseries("Queue size", [(f"ml_pipeline_queue_size{{{P}}}", "{{pipeline_name}} {{queue_name}}")],
                     "short"))
    d.add(timeseries("Data Freshness",
                     [(f"ml_pipeline_data_freshness_seconds{{{P}}}", "{{pipeline_name}} {{data_source}}")],
                     "s", th=thresholds((None, "transparent"), (3600, "red"))))
    d.add(timeseries("Schema violations",
                     [(f"sum by (pipeline_name, violation_type) "
                       f"(increase(ml_pipeline_schema_violations_total{{{P}}}[$__rate_interval]))",
                       "{{pipeline_name}} {{violation_type}}")], "short"))
    d.add(table("Schema violations (counter totals)",
                [(f"sum by (pipeline_name, violation_type) "
                  f"(ml_pipeline_schema_violations_total{{{P}}})", "")], "short"))
    return d


def gpu_host_dashboard():
    G = 'instance=~"$instance", gpu=~"$gpu"'
    INST = 'instance=~"$instance"'
    d = Dashboard("mlsidecar-gpu-host", "GPU & host",
                  "NVML readings per GPU, the workload's processes and the host, from mlsidecar's "
                  "collectors.",
                  [query_var("instance", "Instance", "label_values(mlsidecar_build_info, instance)"),
                   query_var("gpu", "GPU", 'label_values(ml_gpu_info{instance=~"$instance"}, gpu)')])
    d.row("GPUs")
    d.add(table("GPUs", [(f"ml_gpu_info{{{G}}}", "")], hide=("Time", "Value", "__name__")), 24, 5)
    d.add(timeseries("GPU utilisation", [(f"ml_gpu_utilization_ratio{{{G}}}", "{{instance}} GPU {{gpu}}")],
                     "percentunit", min_=0, max_=1), 8)
    d.add(timeseries("Memory-controller utilisation",
                     [(f"ml_gpu_memory_utilization_ratio{{{G}}}", "{{instance}} GPU {{gpu}}")],
                     "percentunit", min_=0, max_=1), 8)
    d.add(timeseries("SM / tensor activity",
                     [(f"ml_gpu_sm_activity_ratio{{{G}}}", "SM active {{instance}} GPU {{gpu}}"),
                      (f"ml_gpu_sm_occupancy_ratio{{{G}}}", "SM occupancy {{instance}} GPU {{gpu}}"),
                      (f"ml_gpu_tensor_activity_ratio{{{G}}}", "tensor {{instance}} GPU {{gpu}}")],
                     "percentunit", min_=0, max_=1), 8)
    d.add(timeseries("GPU memory used / total",
                     [(f"ml_gpu_memory_used_bytes{{{G}}}", "used {{instance}} GPU {{gpu}}"),
                      (f"ml_gpu_memory_total_bytes{{{G}}}", "total {{instance}} GPU {{gpu}}")], "bytes"), 8)
    d.add(timeseries("GPU memory free",
                     [(f"ml_gpu_memory_free_bytes{{{G}}}", "{{instance}} GPU {{gpu}}")], "bytes"), 8)
    d.add(timeseries("GPU memory by process",
                     [(f"ml_gpu_process_memory_used_bytes{{{G}}}",
                       "{{instance}} GPU {{gpu}} pid {{pid}} {{process_name}}")],
                     "bytes"), 8)
    d.add(timeseries("Temperature", [(f"ml_gpu_temperature_celsius{{{G}}}", "{{instance}} GPU {{gpu}}")],
                     "celsius", th=thresholds((None, "transparent"), (85, "red"))), 8)
    d.add(timeseries("Power usage and limit",
                     [(f"ml_gpu_power_usage_watts{{{G}}}", "usage {{instance}} GPU {{gpu}}"),
                      (f"ml_gpu_power_limit_watts{{{G}}}", "limit {{instance}} GPU {{gpu}}"),
                      (f"rate(ml_gpu_energy_joules_total{{{G}}}[$__rate_interval])",
                       "from energy {{instance}} GPU {{gpu}}")], "watt"), 8)
    d.add(timeseries("Clocks",
                     [(f"ml_gpu_sm_clock_hertz{{{G}}}", "SM {{instance}} GPU {{gpu}}"),
                      (f"ml_gpu_memory_clock_hertz{{{G}}}", "memory {{instance}} GPU {{gpu}}")], "hertz"), 8)
    d.add(timeseries("Clock event (throttle) reasons",
                     [(f"ml_gpu_clock_event_reasons{{{G}}} > 0", "{{instance}} GPU {{gpu}} {{reason}}")],
                     "none"), 8)
    d.add(timeseries("PCIe throughput",
                     [(f"ml_gpu_pcie_tx_bytes_per_second{{{G}}}", "tx {{instance}} GPU {{gpu}}"),
                      (f"ml_gpu_pcie_rx_bytes_per_second{{{G}}}", "rx {{instance}} GPU {{gpu}}")], "Bps"), 8)
    d.add(timeseries("ECC and XID errors",
                     [("sum by (instance, gpu, error_type) "
                       f"(increase(ml_gpu_ecc_errors_total{{{G}}}[$__rate_interval]))",
                       "ECC {{error_type}} {{instance}} GPU {{gpu}}"),
                      (f"sum by (instance, gpu, xid) (increase(ml_gpu_xid_errors_total{{{G}}}[$__rate_interval]))",
                       "XID {{xid}} {{instance}} GPU {{gpu}}")], "short"), 8)
    d.add(table("Retired pages and remapped rows",
                [(f"ml_gpu_retired_pages{{{G}}}", ""), (f"ml_gpu_remapped_rows{{{G}}}", "")],
                hide=("Time", "__name__")), 8)
    d.row("Workload processes")
    d.add(timeseries("Process CPU",
                     [(f"sum by (instance, mode) (rate(ml_process_cpu_seconds_total{{{INST}}}[$__rate_interval]))",
                       "{{instance}} {{mode}}")], "percentunit", stack=True), 6)
    d.add(timeseries("Process resident memory",
                     [(f"ml_process_resident_memory_bytes{{{INST}}}", "{{instance}}")], "bytes"), 6)
    d.add(timeseries("Open file descriptors",
                     [(f"ml_process_open_fds{{{INST}}}", "open {{instance}}"),
                      (f"ml_process_max_fds{{{INST}}}", "max {{instance}}")], "short"), 6)
    d.add(timeseries("Processes watched", [(f"ml_process_processes{{{INST}}}", "{{instance}}")], "short"), 6)
    d.row("Host")
    d.add(timeseries("Host CPU", [(f"ml_host_cpu_utilization_ratio{{{INST}}}", "{{instance}}")],
                     "percentunit", min_=0, max_=1), 8)
    d.add(timeseries("Host memory",
                     [(f"ml_host_memory_total_bytes{{{INST}}} - ml_host_memory_available_bytes{{{INST}}}",
                       "used {{instance}}"),
                      (f"ml_host_memory_total_bytes{{{INST}}}", "total {{instance}}")], "bytes"), 8)
    d.add(table("Filesystems (share available)",
                [(f"ml_host_filesystem_avail_bytes{{{INST}}} / ml_host_filesystem_size_bytes{{{INST}}}", "")],
                "percentunit", th=thresholds((None, "red"), (0.1, "yellow"), (0.2, "green"))), 8)
    return d


def sidecar_dashboard():
    INST = 'instance=~"$instance"'
    d = Dashboard("mlsidecar-health", "mlsidecar health",
                  "The sidecar's own health: scrapes, events read and rejected, backlog, workers, "
                  "collectors.",
                  [query_var("instance", "Instance", "label_values(mlsidecar_build_info, instance)")])
    d.row("Overview")
    # Sidecars are the targets that export mlsidecar_build_info, whatever their job is called
    # (prometheus-operator names a PodMonitor's job "<namespace>/<name>").
    d.add(stat("Targets up", f'sum(up{{{INST}}} and on (job, instance) mlsidecar_build_info{{{INST}}})', "none",
               th=thresholds((None, "red"), (1, "green"))), 6, 4)
    d.add(stat("Events / s", f"sum(rate(mlsidecar_events_total{{{INST}}}[$__rate_interval]))", "short"), 6, 4)
    d.add(stat("Rejected / s",
               f"sum(rate(mlsidecar_events_rejected_total{{{INST}}}[$__rate_interval])) or vector(0)", "short",
               th=thresholds((None, "green"), (0.01, "yellow"), (1, "red")),
               desc="Events rejected per second (every reason starts at 0)."), 6, 4)
    d.add(stat("Bytes behind", f"max(mlsidecar_source_bytes_behind{{{INST}}}) or vector(0)", "bytes",
               th=thresholds((None, "green"), (1e6, "yellow"), (50e6, "red"))), 6, 4)
    d.row("Sources")
    d.add(timeseries("Events / s by kind",
                     [(f"sum by (instance, kind) (rate(mlsidecar_events_total{{{INST}}}[$__rate_interval]))",
                       "{{instance}} {{kind}}")], "short", stack=True), 8)
    d.add(timeseries("Rejected / s by reason",
                     [(f"sum by (instance, reason) (rate(mlsidecar_events_rejected_total{{{INST}}}[$__rate_interval]))",
                       "{{instance}} {{reason}}")], "short"), 8)
    d.add(timeseries("Dropped / s by reason (socket sources)",
                     [(f"sum by (instance, reason) (rate(mlsidecar_events_dropped_total{{{INST}}}[$__rate_interval]))",
                       "{{instance}} {{reason}}")], "short"), 8)
    d.add(timeseries("Bytes read / s",
                     [(f"rate(mlsidecar_source_bytes_read_total{{{INST}}}[$__rate_interval])",
                       "{{instance}} {{source}}")], "Bps"))
    d.add(timeseries("Bytes behind (tailed files)",
                     [(f"mlsidecar_source_bytes_behind{{{INST}}}", "{{instance}} {{source}}")], "bytes"))
    d.row("Workers and collectors")
    d.add(table("Workers", [(f"mlsidecar_worker_up{{{INST}}}", "")], "none",
                th=thresholds((None, "red"), (1, "green")), hide=("Time", "__name__")), 8)
    d.add(timeseries("Worker restarts",
                     [(f"increase(mlsidecar_worker_restarts_total{{{INST}}}[$__rate_interval])",
                       "{{instance}} {{worker}}")], "short"), 8)
    d.add(table("Build", [(f"mlsidecar_build_info{{{INST}}}", "")], hide=("Time", "Value", "__name__")), 8)
    d.add(timeseries("Collector up", [(f"mlsidecar_collector_up{{{INST}}}", "{{instance}} {{collector}}")],
                     "none", min_=0, max_=1), 8)
    d.add(timeseries("Collector duration",
                     [(f"mlsidecar_collector_duration_seconds{{{INST}}}", "{{instance}} {{collector}}")], "s"), 8)
    d.add(timeseries("Updates refused by the series limit",
                     [("sum by (instance, metric) "
                       f"(increase(mlsidecar_series_limited_total{{{INST}}}[$__rate_interval]))",
                       "{{instance}} {{metric}}")], "short"), 8)
    d.row("Scrapes")
    d.add(timeseries("Scrape duration",
                     [(f'scrape_duration_seconds{{{INST}}} and on (job, instance) mlsidecar_build_info{{{INST}}}',
                       "{{instance}}")], "s"), 8)
    d.add(timeseries("Samples per scrape",
                     [(f'scrape_samples_scraped{{{INST}}} and on (job, instance) mlsidecar_build_info{{{INST}}}',
                       "{{instance}}")], "short"), 8)
    d.add(timeseries("Multiprocess files skipped",
                     [(f"increase(mlsidecar_multiproc_files_skipped_total{{{INST}}}[$__rate_interval])",
                       "{{instance}}")], "short"), 8)
    return d


# --- model comparison and feature views (docs/analytics.md) ---------------------------------------

def matrix_table(title, expr, row_field, column_field, unit="short", desc="", th=None):
    """An instant query drawn as a matrix (Grafana's "Grouping to matrix" transformation)."""
    panel = table(title, [(expr, "")], unit, desc, th)
    panel["transformations"] = [{"id": "groupingToMatrix", "options": {
        "columnField": column_field, "rowField": row_field, "valueField": "Value",
        "emptyValue": "null"}}]
    return panel


def roc_curve_panel(title, fpr_expr, tpr_expr, desc=""):
    """ROC points (one row per threshold) as an XY chart: false positive rate against true."""
    targets = [target(fpr_expr, "", "A", instant=True, fmt="table"),
               target(tpr_expr, "", "B", instant=True, fmt="table")]
    return {"type": "xychart", "title": title, "description": desc, "datasource": DS,
            "targets": targets,
            "transformations": [
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {"excludeByName": {"Time": True},
                                               "renameByName": {"Value #A": "False positive rate",
                                                                "Value #B": "True positive rate"}}},
                {"id": "sortBy", "options": {"sort": [{"field": "False positive rate"}]}}],
            "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1,
                                         "color": {"mode": "palette-classic"},
                                         "custom": {"show": "points+lines", "pointSize": {"fixed": 6},
                                                    "lineWidth": 2}},
                            "overrides": []},
            "options": {"seriesMapping": "auto", "dims": {"x": "False positive rate"},
                        "series": [], "legend": {"showLegend": True, "displayMode": "list",
                                                 "placement": "bottom", "calcs": []},
                        "tooltip": {"mode": "single", "sort": "none"}}}


def bars(title, expr, legend, unit="none", desc=""):
    """Horizontal bars of an instant query (feature importance)."""
    return {"type": "bargauge", "title": title, "description": desc, "datasource": DS,
            "targets": [target(expr, legend, "A", instant=True)],
            "fieldConfig": {"defaults": {"unit": unit, "min": 0, "color": {"mode": "continuous-BlPu"},
                                         "thresholds": thresholds((None, "blue"))},
                            "overrides": []},
            "options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                        "valueMode": "color", "namePlacement": "auto", "sizing": "auto",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}}


def comparison_dashboard():
    CM = 'model_name=~"$model_name"'
    d = Dashboard(
        "mlsidecar-comparison", "ML model comparison",
        "Versions of one model side by side (canary, A/B split): accuracy, latency and error rate per "
        "version, the sidecar's significance tests (candidate - baseline with confidence interval "
        "and p-value), ROC curve, confusion matrix and feature views.",
        [query_var("model_name", "Model", "label_values(ml_predictions_total, model_name)"),
         query_var("model_version", "Version",
                   'label_values(ml_predictions_total{model_name=~"$model_name"}, model_version)')])
    d.row("Side by side")
    d.add(timeseries("Traffic share by version",
                     [(f"sum by (model_name, model_version) (namespace_model:ml_predictions:rate5m{{{M}}}) "
                       f"/ on (model_name) group_left () "
                       f"sum by (model_name) (namespace_model:ml_predictions:rate5m{{{CM}}})",
                       "{{model_name}} {{model_version}}")], "percentunit", stack=True, min_=0, max_=1), 8)
    d.add(timeseries("Live accuracy by version",
                     [(f'ml_model_accuracy_score{{{M}, dataset="live"}}', "{{model_name}} {{model_version}}")],
                     "percentunit", max_=1), 8)
    d.add(timeseries("p95 latency by version",
                     [(f"namespace_model:ml_prediction_latency_seconds:p95_5m{{{M}}}",
                       "{{model_name}} {{model_version}}")], "s"), 8)
    d.add(timeseries("Error ratio by version",
                     [(f"namespace_model:ml_prediction_error_ratio:rate5m{{{M}}}",
                       "{{model_name}} {{model_version}}")], "percentunit", min_=0), 8)
    d.add(timeseries("Mean confidence by version",
                     [("sum by (model_name, model_version) "
                       f"(rate(ml_prediction_confidence_score_sum{{{M}}}[$__rate_interval])) "
                       "/ sum by (model_name, model_version) "
                       f"(rate(ml_prediction_confidence_score_count{{{M}}}[$__rate_interval]))",
                       "{{model_name}} {{model_version}}")], "percentunit", max_=1), 8)
    d.add(table("Samples in the comparison windows",
                [(f"max by (model_name, model_version) (ml_model_comparison_samples{{{M}}})", ""),
                 (f"max by (model_name, model_version) (ml_model_live_window_samples{{{M}}})", "")],
                "short", "Value #A: predictions (latency, error rate, confidence); Value #B: labelled "
                         "predictions (accuracy). Below the minimum sample every result is NaN."), 8)

    d.row("Significance: candidate - baseline")
    sig = (f'{CM}, candidate_version=~"$model_version"')
    d.add(table("Significance tests",
                [(f"max by (model_name, baseline_version, candidate_version, metric) "
                  f"(ml_model_comparison_difference{{{sig}}})", ""),
                 (f"max by (model_name, baseline_version, candidate_version, metric) "
                  f"(ml_model_comparison_ci_lower{{{sig}}})", ""),
                 (f"max by (model_name, baseline_version, candidate_version, metric) "
                  f"(ml_model_comparison_ci_upper{{{sig}}})", ""),
                 (f"max by (model_name, baseline_version, candidate_version, metric) "
                  f"(ml_model_comparison_p_value{{{sig}}})", "")],
                "none", "Columns A-D: difference, interval low, interval high, two-sided p-value "
                        "(two-proportion z-test for accuracy and error rate, Welch's t-test for latency "
                        "and confidence). NaN: not enough samples yet."), 24, 8)
    d.add(timeseries("p-value over time (log scale; 0.01 = alert's alpha)",
                     [(f"ml_model_comparison_p_value{{{sig}}}",
                       "{{model_name}} {{candidate_version}} vs {{baseline_version}} {{metric}}")],
                     "none", log=True, th=thresholds((None, "red"), (0.01, "transparent"))), 12)
    for metric, unit in (("accuracy", "percentunit"), ("error_rate", "percentunit"),
                         ("latency_seconds", "s")):
        sel = f'{sig}, metric="{metric}"'
        d.add(timeseries(f"{metric} difference with its confidence interval",
                         [(f"ml_model_comparison_difference{{{sel}}}",
                           "{{candidate_version}} - {{baseline_version}}"),
                          (f"ml_model_comparison_ci_lower{{{sel}}}", "low {{candidate_version}}"),
                          (f"ml_model_comparison_ci_upper{{{sel}}}", "high {{candidate_version}}")],
                         unit), 12 if metric == "accuracy" else 12)

    d.row("Classifier quality")
    d.add(roc_curve_panel("ROC curve (scored binary classifiers)",
                          f"ml_model_roc_fpr{{{M}}}", f"ml_model_roc_tpr{{{M}}}",
                          "False and true positive rate at each configured score threshold, over the "
                          "ROC window."), 8)
    d.add(timeseries("ROC AUC by version",
                     [(f"ml_model_roc_auc{{{M}}}", "{{model_name}} {{model_version}}")], "none",
                     min_=0, max_=1), 8)
    d.add(matrix_table("Confusion matrix over the time range (rows: true class)",
                       f"sum by (true_class, predicted_class) "
                       f"(increase(ml_model_confusion_matrix_total{{{M}}}[$__range]))",
                       "true_class", "predicted_class", "short"), 8)

    d.row("Features")
    d.add(bars("Feature importance (as reported)",
               f"avg by (feature_name) (ml_feature_importance{{{M}}})", "{{feature_name}}"), 8)
    d.add(matrix_table("Feature correlation (Pearson, live window)",
                       f"avg by (feature_a, feature_b) (ml_feature_correlation{{{M}}})",
                       "feature_a", "feature_b", "none",
                       th=thresholds((None, "blue"), (-0.3, "transparent"), (0.3, "orange"),
                                     (0.7, "red"))), 8)
    d.add(timeseries("Feature drift over time (0.1 watch, 0.25 alert)",
                     [(f"max by (model_name, model_version, feature_name) (ml_feature_drift_score{{{M}}})",
                       "{{model_name}} {{model_version}} {{feature_name}}")], "none",
                     th=thresholds((None, "transparent"), (0.25, "red"))), 8)
    return d


def cost_dashboard():
    """What it costs (docs/cost.md) and how bad it is (docs/severity.md)."""
    d = Dashboard(
        "mlsidecar-cost", "ML cost & health",
        "What the workloads cost per prediction, per training sample and epoch, per pipeline record, "
        "while GPUs idle and against budgets (ml_cost.yml); weighted alert severity, business "
        "impact and System_Health (ml_health.yml). Amounts are in the currency of ml_cost_info.",
        [query_var("namespace", "Namespace", "label_values(ml_cost_total, namespace)"),
         query_var("model_name", "Model", "label_values(ml_predictions_total, model_name)")])
    N = 'namespace=~"$namespace"'
    GPUS = "and on () (count(ml_gpu_info) > 0)"  # GPU panels only where there are GPUs
    d.row("Spend")
    d.add(stat("Cost per hour", f"sum(namespace_resource_capacity:ml_cost:per_hour{{{N}}})", "none",
               decimals=2, desc="All resources, in the currency of ml_cost_info."), 6, 4)
    d.add(stat("Share on spot capacity", f"avg(namespace:ml_cost_spot:ratio_rate1h{{{N}}})", "percentunit",
               decimals=1), 6, 4)
    d.add(stat("GPU spend on idle GPUs (< 10 %)",
               f"avg(namespace:ml_cost_gpu_idle:ratio_rate5m{{{N}}}) {GPUS}", "percentunit",
               th=thresholds((None, "green"), (0.2, "yellow"), (0.5, "red")), decimals=1), 6, 4)
    d.add(table("Currency and capacity", [("count by (currency, capacity) (ml_cost_info)", "")], "none"), 6, 4)
    d.add(timeseries("Cost per hour by resource and capacity",
                     [(f"namespace_resource_capacity:ml_cost:per_hour{{{N}}}",
                       "{{namespace}} {{resource}} {{capacity}}")], "none", stack=True))
    d.add(timeseries("Idle GPU cost per hour",
                     [(f"namespace:ml_cost_gpu_idle:rate5m{{{N}}} * 3600 {GPUS}", "{{namespace}}")], "none",
                     desc="Cost of GPUs whose average utilisation over 5 minutes is under 10 %."))

    d.row("Cost per unit of work")
    d.add(timeseries("Cost per 1,000 predictions by model and version",
                     [(f'namespace_model:ml_cost_per_1k_predictions:ratio_rate5m{{{N}, model_name=~"$model_name"}}',
                       "{{model_name}} {{model_version}}")], "none",
                     desc="A pod's cost split by its models' share of its predictions."), 8)
    d.add(timeseries("Cost per training sample and per epoch",
                     [(f"namespace_job:ml_cost_per_sample:ratio_rate5m{{{N}}}", "per sample {{job_name}}"),
                      (f"namespace_job:ml_cost_per_epoch:ratio_rate5m{{{N}}}", "per epoch {{job_name}}")],
                     "none", log=True), 8)
    d.add(timeseries("Cost per pipeline record",
                     [(f"namespace_pipeline:ml_cost_per_record:ratio_rate5m{{{N}}}", "{{pipeline_name}}")],
                     "none"), 8)
    d.add(timeseries("GPU utilisation against GPU cost",
                     [(f"avg by (instance) (ml_gpu_utilization_ratio{{{N}}})", "utilisation {{instance}}"),
                      (f'sum by (instance) (rate(ml_cost_total{{{N}, resource="gpu"}}[$__rate_interval])) * 3600 '
                       "and on (instance) group by (instance) (ml_gpu_info)", "cost/h {{instance}}")], "none"))
    d.add(timeseries("CPU use against CPU cost",
                     [(f"sum by (instance) (rate(ml_process_cpu_seconds_total{{{N}}}[$__rate_interval]))",
                       "cores {{instance}}"),
                      (f'sum by (instance) (rate(ml_cost_total{{{N}, resource="cpu"}}[$__rate_interval])) * 3600 '
                       "and on (instance) group by (instance) (ml_process_processes)", "cost/h {{instance}}")],
                     "none"))

    d.row("Budgets")
    d.add(table("Budgets: monthly, burn rate (1 = on budget), month-end forecast",
                [("scope:ml_cost_budget:monthly", ""), ("scope:ml_cost_budget_burn:rate1h", ""),
                 ("scope:ml_cost_budget:forecast_ratio", "")], "none"), 8)
    d.add(timeseries("Budget burn rate: 5m, 1h, 6h",
                     [("scope:ml_cost_budget_burn:rate5m", "5m {{scope}} {{name}}"),
                      ("scope:ml_cost_budget_burn:rate1h", "1h {{scope}} {{name}}"),
                      ("scope:ml_cost_budget_burn:rate6h", "6h {{scope}} {{name}}")], "none",
                     th=thresholds((None, "transparent"), (6, "yellow"), (14.4, "red"))), 8)
    d.add(timeseries("Month-end forecast and budget",
                     [("scope:ml_cost:forecast_month", "forecast {{scope}} {{name}}"),
                      ("scope:ml_cost_budget:monthly", "budget {{scope}} {{name}}")], "none"), 8)

    d.row("Severity and health")
    d.add(timeseries("System_Health by namespace",
                     [(f"namespace:ml_system_health:score{{{N}}}", "{{namespace}}")], "percentunit",
                     th=thresholds((None, "red"), (0.7, "transparent")), min_=0, max_=1))
    d.add(timeseries("Health parts: infrastructure, data quality, model, business",
                     [(f"namespace:ml_health_infrastructure:score{{{N}}}", "infrastructure {{namespace}}"),
                      (f"namespace:ml_health_data_quality:score{{{N}}}", "data quality {{namespace}}"),
                      (f"namespace:ml_health_model:score{{{N}}}", "model {{namespace}}"),
                      (f"namespace:ml_health_business:score{{{N}}}", "business {{namespace}}")],
                     "percentunit", min_=0, max_=1))
    MM = f'{N}, model_name=~"$model_name"'
    d.add(table("Alert severity and composite score by model",
                [(f"namespace_model_dataset:ml_alert_severity:score{{{MM}}}", ""),
                 (f"namespace_model_dataset:ml_alert_composite:score{{{MM}}}", "")], "none",
                th=thresholds((None, "green"), (0.5, "yellow"), (0.8, "red"))))
    d.add(timeseries("Estimated revenue at risk per hour and users affected",
                     [(f"namespace_model_name:ml_business_revenue_at_risk:estimate_per_hour{{{MM}}}",
                       "revenue/h {{model_name}}"),
                      (f"namespace_model_name:ml_business_users_affected:estimate{{{MM}}}",
                       "users {{model_name}}")], "none"))
    return d


DASHBOARDS = {
    "ml-model-performance.json": model_dashboard,
    "ml-training.json": training_dashboard,
    "ml-data-pipeline.json": pipeline_dashboard,
    "gpu-host.json": gpu_host_dashboard,
    "mlsidecar-health.json": sidecar_dashboard,
    "ml-model-comparison.json": comparison_dashboard,
    "ml-cost.json": cost_dashboard,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build().json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    ap.add_argument("--out", default=OUT_DIR, help="output directory")
    args = ap.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = os.path.join(args.out, name)
        try:
            with open(path, encoding="utf-8") as fh:
                current = fh.read()
        except FileNotFoundError:
            current = None
        if current != text:
            stale.append(name)
            if not args.check:
                os.makedirs(args.out, exist_ok=True)
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(text)
    if args.check and stale:
        print("out of date (run deploy/grafana/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
