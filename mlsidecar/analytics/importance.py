"""Feature importance reported by the workload, as gauges.

The workload computes importance its own way (permutation importance, mean
|SHAP|, a tree's gain) and reports it with a ``feature_importance`` event::

    {"event": "feature_importance", "model": "fraud", "version": "v3",
     "importances": {"amount": 0.41, "country": 0.22}, "method": "shap"}

Each value becomes ``ml_feature_importance{model_name,model_version,feature_name}``
(the latest report wins). At most ``max_features`` features per model version
are kept; more are counted in ``mlsidecar_analytics_dropped_total{reason="too_many_features"}``.
"""

from __future__ import annotations

from .. import catalogue as C
from ..catalogue import GAUGE, HOUR, Family
from ..events import DEFAULT_LABEL_LENGTH, INVALID_VALUE, WRONG_TYPE, Rejected, label, mapping_of_numbers

IMPORTANCE = Family(
    "ml_feature_importance", GAUGE,
    "Importance of an input feature as last reported by the workload (method as it chose).",
    C.MODEL + ("feature_name",), fed_by="feature_importance", expire_after=24 * HOUR)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (IMPORTANCE,)


class ImportanceTracker:
    """Validates ``feature_importance`` events; the values reach the batch on the next tick."""

    def __init__(self, max_features: int, max_models: int, drop, label_length: int = DEFAULT_LABEL_LENGTH):
        self.label_length = label_length  # limits.label_value_length
        self.max_features = max_features
        self.max_models = max_models
        self.drop = drop
        self.features: dict[tuple[str, str], set[str]] = {}
        self.pending: dict[tuple[str, str, str], float] = {}

    def flush(self, batch) -> None:
        if self.pending:
            for key, v in self.pending.items():
                batch.set(IMPORTANCE, key, v)
            self.pending = {}

    def event(self, ev: dict) -> None:
        model = label(ev, "model", limit=self.label_length)
        version = label(ev, "version", "unknown", self.label_length)
        values = mapping_of_numbers(ev, "importances")
        if not values:
            raise Rejected(INVALID_VALUE, "'importances' must name at least one feature")
        method = ev.get("method")
        if method is not None and type(method) is not str:
            raise Rejected(WRONG_TYPE, "'method' must be a string")
        known = self.features.get((model, version))
        if known is None:
            if len(self.features) >= self.max_models:
                self.drop("too_many_models")
                return
            known = self.features[(model, version)] = set()
        for name, v in values.items():
            name = name[:self.label_length]
            if name not in known:
                if len(known) >= self.max_features:
                    self.drop("too_many_features")
                    continue
                known.add(name)
            self.pending[(model, version, name)] = float(v)
