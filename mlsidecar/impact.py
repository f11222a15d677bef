"""How much an alert on a model matters: the ``[impact]`` config table, exported as series that the
severity and health rules (deploy/prometheus/rules/ml_severity.yml) read.

The specification weighs an alert as ``Alert_Severity = w1*Impact + w2*Urgency + w3*Confidence``
(each score 0-1), raises the weight of some conditions for critical and real-time models, and
estimates revenue at risk and affected users from an impact score. Which model is critical, how
much revenue it carries and the weights are business facts, so they live in config; the sidecar
exports them and the rules do the arithmetic where the model's other series are (docs/severity.md)::

    [impact]
    severity_weights = { impact = 0.5, urgency = 0.3, confidence = 0.2 }
    health_weights = { infrastructure = 0.25, data_quality = 0.25, model = 0.25, business = 0.25 }
    [impact.models.fraud]
    critical = true            # impact 1.0 unless set
    real_time = true           # urgency 1.0 unless set
    seasonal = true            # dynamic threshold from the same hour last week
    revenue_per_hour = 10000.0
    active_users = 100000
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalogue import GAUGE, Family
from .section import Section

SEVERITY_COMPONENTS = ("impact", "urgency", "confidence")
HEALTH_COMPONENTS = ("infrastructure", "data_quality", "model", "business")
DEFAULT_SEVERITY_WEIGHTS = (("impact", 0.5), ("urgency", 0.3), ("confidence", 0.2))
DEFAULT_HEALTH_WEIGHTS = tuple((c, 0.25) for c in HEALTH_COMPONENTS)


def _f(name: str, help_: str, labels: tuple[str, ...]) -> Family:
    return Family(name, GAUGE, help_, labels, fed_by="[impact] config")


INFO = _f("ml_model_impact_info", "Always 1; labels say whether the model is critical, serves in real "
          "time, and wants a seasonal (same hour last week) dynamic threshold.",
          ("model_name", "critical", "real_time", "seasonal"))
IMPACT = _f("ml_model_impact_score", "Business impact (0-1) of an issue with this model: Impact_Score.",
            ("model_name",))
URGENCY = _f("ml_model_urgency_score", "Time sensitivity (0-1) of an issue with this model: Urgency_Score.",
             ("model_name",))
REVENUE = _f("ml_business_revenue_per_hour", "Revenue per hour that depends on this model (config currency).",
             ("model_name",))
USERS = _f("ml_business_active_users", "Active users of this model.", ("model_name",))
SEVERITY_WEIGHT = _f("ml_alert_severity_weight", "Weight of a component of Alert_Severity (w1, w2, w3).",
                     ("component",))
HEALTH_WEIGHT = _f("ml_system_health_weight", "Weight of a component of System_Health.", ("component",))

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (INFO, IMPACT, URGENCY, REVENUE, USERS, SEVERITY_WEIGHT, HEALTH_WEIGHT)


@dataclass(frozen=True)
class ModelImpact:
    name: str
    critical: bool = False
    real_time: bool = False
    seasonal: bool = False
    impact: float = 0.5
    urgency: float = 0.5
    revenue_per_hour: float = 0.0
    active_users: float = 0.0


@dataclass(frozen=True)
class ImpactSettings:
    severity_weights: tuple[tuple[str, float], ...] = DEFAULT_SEVERITY_WEIGHTS
    health_weights: tuple[tuple[str, float], ...] = DEFAULT_HEALTH_WEIGHTS
    models: tuple[ModelImpact, ...] = ()
    configured: bool = False


def _weights(section: Section, name: str, components: tuple[str, ...],
             default: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    if name not in section.data:
        section.used.add(name)
        return default
    sub = section.table(name)
    out = []
    for c in components:
        v = sub.get(c, float, 0.0)
        if not 0 <= v <= 1:
            raise sub.error(c, f"must be between 0 and 1, got {v}")
        out.append((c, v))
    sub.finish()
    total = sum(v for _, v in out)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise section.error(name, f"weights must add up to 1, they add up to {total:g}")
    return tuple(out)


def parse(section: Section) -> ImpactSettings:
    """Validate the ``[impact]`` table; errors name the key."""
    configured = bool(section.data)
    sev = _weights(section, "severity_weights", SEVERITY_COMPONENTS, DEFAULT_SEVERITY_WEIGHTS)
    health = _weights(section, "health_weights", HEALTH_COMPONENTS, DEFAULT_HEALTH_WEIGHTS)
    models_sec = section.table("models")
    models = []
    for name in models_sec.data:
        sub = models_sec.table(name)
        critical = sub.get("critical", bool, False)
        real_time = sub.get("real_time", bool, False)
        seasonal = sub.get("seasonal", bool, False)
        scores = {}
        for key, default in (("impact", 1.0 if critical else 0.5), ("urgency", 1.0 if real_time else 0.5)):
            v = sub.get(key, float, default)
            if not 0 <= v <= 1:
                raise sub.error(key, f"must be between 0 and 1, got {v}")
            scores[key] = v
        revenue = sub.get("revenue_per_hour", float, 0.0)
        users = sub.get("active_users", int, 0)
        if revenue < 0 or not math.isfinite(revenue):
            raise sub.error("revenue_per_hour", f"must be >= 0, got {revenue}")
        if users < 0:
            raise sub.error("active_users", f"must be >= 0, got {users}")
        sub.finish()
        models.append(ModelImpact(name, critical, real_time, seasonal, scores["impact"], scores["urgency"],
                                  revenue, float(users)))
    models_sec.finish()
    section.finish()
    return ImpactSettings(sev, health, tuple(models), configured)


def export_config(writer, settings: ImpactSettings | None) -> None:
    """The [impact] series (stale ones from an earlier config removed)."""
    want: dict[tuple[Family, tuple[str, ...]], float] = {}
    if settings is not None and settings.configured:
        for c, w in settings.severity_weights:
            want[(SEVERITY_WEIGHT, (c,))] = w
        for c, w in settings.health_weights:
            want[(HEALTH_WEIGHT, (c,))] = w
        for m in settings.models:
            flags = tuple("true" if f else "false" for f in (m.critical, m.real_time, m.seasonal))
            want[(INFO, (m.name,) + flags)] = 1.0
            want[(IMPACT, (m.name,))] = m.impact
            want[(URGENCY, (m.name,))] = m.urgency
            want[(REVENUE, (m.name,))] = m.revenue_per_hour
            want[(USERS, (m.name,))] = m.active_users
    for fam in (INFO, IMPACT, URGENCY, REVENUE, USERS, SEVERITY_WEIGHT, HEALTH_WEIGHT):
        for labels in list(writer.series(fam)):
            if (fam, labels) not in want:
                writer.remove(fam, labels)
    for (fam, labels), v in want.items():
        writer.set_gauge(fam, labels, v)
