"""The [impact] table: per-model criticality, revenue and users, the severity and health weights,
exported for the rules (what they compute is tested with promtool in tests/test_deploy_cost.py)."""

from __future__ import annotations

import pytest

from mlsidecar import config as configmod
from mlsidecar import impact
from mlsidecar.config import ConfigError
from mlsidecar.store import SeriesWriter


def test_defaults_follow_criticality_and_real_time():
    cfg = configmod.from_dict({"impact": {"models": {
        "fraud": {"critical": True, "real_time": True, "revenue_per_hour": 10000, "active_users": 100000},
        "batch": {"seasonal": True, "impact": 0.2}}}})
    fraud, batch = cfg.impact.models
    assert (fraud.impact, fraud.urgency, fraud.revenue_per_hour, fraud.active_users) == (1.0, 1.0, 10000.0, 100000.0)
    assert (batch.impact, batch.urgency, batch.seasonal, batch.critical) == (0.2, 0.5, True, False)
    assert cfg.impact.severity_weights == impact.DEFAULT_SEVERITY_WEIGHTS
    assert not configmod.from_dict({}).impact.configured


@pytest.mark.parametrize("table,key", [
    ({"severity_weights": {"impact": 0.5, "urgency": 0.3, "confidence": 0.3}}, "impact.severity_weights"),
    ({"severity_weights": {"impact": 1.5}}, "impact.severity_weights.impact"),
    ({"health_weights": {"infra": 1.0}}, "impact.health_weights.infra"),
    ({"models": {"m": {"impact": 2}}}, "impact.models.m.impact"),
    ({"models": {"m": {"critical": "yes"}}}, "impact.models.m.critical"),
    ({"models": {"m": {"active_users": -1}}}, "impact.models.m.active_users"),
    ({"weights": {}}, "impact.weights"),
])
def test_errors_name_the_key(table, key):
    with pytest.raises(ConfigError) as err:
        configmod.from_dict({"impact": table}, "c.toml")
    assert err.value.key == key, str(err.value)


def test_exported_series_follow_the_config(tmp_path):
    w = SeriesWriter(str(tmp_path), "supervisor")
    cfg = configmod.from_dict({"impact": {"severity_weights": {"impact": 0.6, "urgency": 0.2, "confidence": 0.2},
                                          "models": {"fraud": {"critical": True, "revenue_per_hour": 500.0}}}})
    impact.export_config(w, cfg.impact)
    assert w.values[(impact.INFO, ("fraud", "true", "false", "false"))] == 1.0
    assert w.values[(impact.IMPACT, ("fraud",))] == 1.0
    assert w.values[(impact.REVENUE, ("fraud",))] == 500.0
    assert w.values[(impact.SEVERITY_WEIGHT, ("impact",))] == 0.6
    assert w.values[(impact.HEALTH_WEIGHT, ("model",))] == 0.25
    w.flush()
    w.close()
    # A reload without the model: its series go, also from the files.
    w = SeriesWriter(str(tmp_path), "supervisor")
    impact.export_config(w, configmod.from_dict({"impact": {"models": {"other": {}}}}).impact)
    w.flush()
    w.close()
    w = SeriesWriter(str(tmp_path), "supervisor")
    assert w.series(impact.INFO) == [("other", "false", "false", "false")]
    assert w.series(impact.REVENUE) == [("other",)]
    w.close()
