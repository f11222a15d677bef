"""The analytics engine the Mapper calls: live scores, feature drift, data quality, anomalies,
version comparison, ROC, feature correlation and importance.

Per event (:meth:`Engine.on_prediction`, :meth:`Engine.label`) it only files
values into bounded per-model state: a window append, a few dict increments,
a ring-buffer write per feature. Everything heavier (scores, PSI, KS, quality
rates, anomaly scores) happens in :meth:`Engine.tick`, at most every
``compute_interval`` seconds; counter deltas are handed to the batch on every
tick so the ``_total`` counters are as fresh as the core's.

``build(settings)`` returns None only when every part is switched off, so the
Mapper then never calls into analytics. With the defaults it returns an
engine, and labelled predictions get live scores without any configuration.
An event with none of ``y_true``, ``y_pred``, ``prediction_id``, ``features``,
``score`` costs five dict look-ups. Version comparisons are fed per chunk from
the Mapper's prediction records (:meth:`Engine.records`), never per event.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import catalogue as C
from ..catalogue import COUNTER, Family
from ..events import DEFAULT_LABEL_LENGTH, MISSING_FIELD, WRONG_TYPE, Rejected, check_number
from . import reference as refmod
from .anomaly import AnomalyTracker
from .comparison import Comparisons
from .correlation import FeatureCorrelation
from .drift import DRIFT_KS, DRIFT_PSI, DRIFT_WINDOW, KS_STAT, FeatureDrift
from .importance import ImportanceTracker
from .performance import LabelJoin, LiveWindow, class_label, prediction_key
from .quality import PROBLEMS, RATE, FeatureTracker, flush_counters, model_scores
from .roc import RocWindow, threshold_label
from .settings import AnalyticsSettings

log = logging.getLogger("mlsidecar.analytics")

DROPPED = Family(
    "mlsidecar_analytics_dropped_total", COUNTER,
    "Analytics inputs not tracked because a bound was reached (too_many_models, too_many_features, "
    "too_many_versions), a compared version went quiet (version_vanished), or a class was folded "
    "into __other__ (too_many_classes).",
    ("reason",), fed_by="prediction")

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (DROPPED,)


class ModelState:
    __slots__ = ("labels", "perf", "features", "seq", "spec_features", "reference", "roc", "corr")

    def __init__(self, labels: tuple[str, str]):
        self.labels = labels
        self.perf: LiveWindow | None = None
        self.features: dict[str, FeatureTracker] = {}
        self.seq = 0
        self.roc: RocWindow | None = None
        self.corr: FeatureCorrelation | None = None
        self.spec_features: dict[str, Any] = {}  # declared features: name -> settings
        self.reference: dict[str, Any] = {}  # reference distributions: name -> reference


class Engine:
    def __init__(self, settings: AnalyticsSettings, references: dict[str, dict] | None = None,
                 label_length: int = DEFAULT_LABEL_LENGTH):
        self.s = settings
        self.label_length = label_length  # limits.label_value_length: class and feature names
        self.perf_on = settings.performance.enabled
        self.drift_on = settings.drift.enabled
        self.quality_on = settings.quality.enabled
        self.models: dict[tuple[str, str], ModelState] = {}
        p = settings.performance
        self.join = LabelJoin(p.label_ttl, p.max_pending) if self.perf_on or settings.roc.enabled \
            else None
        a = settings.anomaly
        self.anomaly = (AnomalyTracker(a.signals, a.baseline_points, a.min_points, settings.max_models)
                        if a.enabled else None)
        self.references = references or {}
        self.now = 0.0
        self.last_compute = float("-inf")
        self.last_anomaly: float | None = None
        self.dropped: dict[str, int] = {}
        self._dropped_flushed: dict[str, int] = {}
        self._features_track = self.drift_on or self.quality_on
        # Declared features: global ones, overridden by the model's own.
        self._declared: dict[str, dict[str, object]] = {}
        for m in settings.models:
            self._declared[m.name] = {f.name: f for f in settings.features}
            self._declared[m.name].update({f.name: f for f in m.features})
        self._global = {f.name: f for f in settings.features}
        c = settings.comparison
        self.comparisons = Comparisons(c, settings.max_models, self._drop) if c.enabled else None
        r = settings.roc
        self.roc_on = r.enabled
        self.positive = frozenset(r.positive_class)
        self.thresholds = r.thresholds
        self.threshold_labels = tuple(threshold_label(t) for t in r.thresholds)
        self.corr_on = settings.correlation.enabled
        self.last_correlation = float("-inf")
        self.importance = ImportanceTracker(settings.max_features, settings.max_models, self._drop,
                                            label_length)
        self._class_overflow = 0

    # --- the Mapper's interface ------------------------------------------------------
    def handlers(self) -> dict:
        out = {"feature_importance": self.importance.event}
        if self.perf_on or self.roc_on:
            out["label"] = self.label
        return out

    def records(self, records: dict, now: float) -> None:
        """The Mapper's per-chunk prediction records, before it folds them (comparisons)."""
        if self.comparisons is not None:
            self.comparisons.records(records, now)

    def on_prediction(self, ev: dict, model: str, version: str, now: float) -> None:
        if "features" not in ev and "y_pred" not in ev and "y_true" not in ev and "score" not in ev:
            # Nothing to track (a prediction_id alone cannot be joined without y_pred),
            # but a malformed one is still rejected, as the schema says.
            pid = ev.get("prediction_id")
            if pid is not None and type(pid) is not str:
                prediction_key(pid)
            return
        # Validate everything first, so a rejected event leaves no trace here.
        y_true = ev.get("y_true")
        y_pred = ev.get("y_pred")
        pid = ev.get("prediction_id")
        feats = ev.get("features")
        score = ev.get("score")
        if score is not None and (type(score) is not float or not 0.0 <= score <= 1.0):
            score = check_number(score, "score", 0.0, 1.0)
        if y_true is not None or y_pred is not None:
            if y_pred is None and score is None:
                raise Rejected(MISSING_FIELD, "'y_true' needs 'y_pred' or 'score'")
            if y_pred is not None:
                y_pred = class_label(y_pred, "y_pred", self.label_length)
            if y_true is not None:
                y_true = class_label(y_true, "y_true", self.label_length)
        if pid is not None:
            pid = prediction_key(pid)
        if feats is not None and type(feats) is not dict:
            raise Rejected(WRONG_TYPE, "'features' must be an object of name -> value")
        ms = self.models.get((model, version))
        if ms is None:
            ms = self._new_model(model, version)
            if ms is None:
                return
        roc = None
        if score is not None and self.roc_on:
            roc = ms.roc
            if roc is None:
                roc = ms.roc = RocWindow(self.s.roc.window_size)
        if y_true is not None:
            if y_pred is not None and ms.perf is not None:  # set when performance is on
                ms.perf.add(now, y_true, y_pred)
            if roc is not None and score is not None:  # roc is only set with a score
                roc.add(score, y_true in self.positive)
        elif pid is not None and self.join is not None:
            if y_pred is not None and self.perf_on:
                self.join.wait(pid, now, ms.perf, y_pred, (self._roc_label, roc, score) if roc is not None else None)
            elif roc is not None:
                self.join.wait(pid, now, None, None, (self._roc_label, roc, score))
        if feats is not None:
            if self._features_track:
                self._features(ms, feats)
            if self.corr_on:
                corr = ms.corr
                if corr is None:
                    c = self.s.correlation
                    corr = ms.corr = FeatureCorrelation(c.window_size, c.features, c.max_features)
                corr.observe(feats)

    def _roc_label(self, roc: RocWindow, score: float, y_true: str) -> None:
        roc.add(score, y_true in self.positive)

    def label(self, ev: dict) -> None:
        """A ``label`` event: the true class of an earlier prediction."""
        pid = prediction_key(ev.get("prediction_id"))
        y_true = class_label(ev.get("y_true"), "y_true", self.label_length)
        if self.join is not None:  # there is one whenever this handler is registered
            self.join.label(pid, y_true, self.now)

    def tick(self, batch, now: float) -> None:
        self.now = now
        if self.anomaly is not None:
            self.anomaly.accumulate(batch)
        self.importance.flush(batch)
        for ms in self.models.values():
            if ms.perf is not None:
                ms.perf.flush_counters(batch, ms.labels)
                over = ms.perf.overflow
                if over:
                    ms.perf.overflow = 0
                    self.dropped["too_many_classes"] = self.dropped.get("too_many_classes", 0) + over
            for name, tr in ms.features.items():
                if tr.ring.dirty:
                    flush_counters(batch, ms.labels + (name[:self.label_length],), tr.ring)
        for reason, n in self.dropped.items():
            d = n - self._dropped_flushed.get(reason, 0)
            if d:
                batch.inc(DROPPED, (reason,), d)
                self._dropped_flushed[reason] = n
        if now - self.last_compute >= self.s.compute_interval:
            self.last_compute = now
            self.compute(batch, now)
        if self.anomaly is not None:
            if self.last_anomaly is None:
                self.last_anomaly = now
            elif now - self.last_anomaly >= self.s.anomaly.interval:
                self.last_anomaly = now
                self.anomaly.sample(batch, self._accuracy)
        if self.join is not None:
            self.join.flush(batch)

    # --- state -----------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _new_model(self, model: str, version: str) -> ModelState | None:
        if len(self.models) >= self.s.max_models:
            self._drop("too_many_models")
            return None
        ms = self.models[(model, version)] = ModelState((model, version))
        p = self.s.performance
        if self.perf_on:
            ms.perf = LiveWindow(p.window_size, p.window_seconds, p.max_classes)
        declared = self._declared.get(model, self._global)
        ms.spec_features = declared
        ms.reference = self.references.get(model, {})
        if self._features_track:
            for name in list(declared) + [n for n in ms.reference if n not in declared]:
                self._new_feature(ms, name)
        return ms

    def _new_feature(self, ms: ModelState, name: str) -> FeatureTracker | None:
        if len(ms.features) >= self.s.max_features:
            self._drop("too_many_features")
            return None
        spec = ms.spec_features.get(name)
        ref = ms.reference.get(name)
        kind = (spec.type if spec is not None else "") or (ref["type"] if ref is not None else None)
        d = self.s.drift
        make_drift = None
        if self.drift_on:
            def make_drift(k, ref=ref):
                use = ref if ref is not None and ref["type"] == k else None
                return FeatureDrift(k, use, d.window_size, d.reference_size, d.bins, d.quantiles,
                                    d.max_categories)
        tr = FeatureTracker(kind, self.s.quality.window_size,
                            spec.min if spec is not None else None,
                            spec.max if spec is not None else None,
                            spec.categories if spec is not None else None, make_drift)
        ms.features[name] = tr
        return tr

    def _features(self, ms: ModelState, feats: dict) -> None:
        ms.seq = seq = ms.seq + 1
        trackers = ms.features
        matched = 0
        for name, v in feats.items():
            tr = trackers.get(name)
            if tr is None:
                tr = self._new_feature(ms, name)
                if tr is None:
                    continue
            tr.seen = seq
            tr.observe(v)
            matched += 1
        if matched < len(trackers):
            for tr in trackers.values():
                if tr.seen != seq:
                    tr.seen = seq
                    tr.observe(None)

    def _accuracy_counts(self, model: str, version: str) -> tuple[int, int] | None:
        ms = self.models.get((model, version))
        if ms is None or ms.perf is None:
            return None
        return ms.perf.correct_count(), len(ms.perf.items)

    def _accuracy(self, key) -> float | None:
        ms = self.models.get(key)
        if ms is None or ms.perf is None:
            return None
        return ms.perf.accuracy()

    # --- derived gauges ----------------------------------------------------------------
    def compute(self, batch, now: float) -> None:
        d = self.s.drift
        primary_ks = d.statistic == KS_STAT
        if self.join is not None:
            self.join.expire(now)
        roc = self.s.roc
        corr_min = self.s.correlation.min_samples
        corr_due = now - self.last_correlation >= self.s.correlation.interval
        if corr_due:
            self.last_correlation = now
        for ms in self.models.values():
            labels = ms.labels
            if ms.perf is not None:
                ms.perf.set_gauges(batch, labels, now)
            if ms.roc is not None:
                ms.roc.set_gauges(batch, labels, self.thresholds, self.threshold_labels, roc.min_samples)
            if ms.corr is not None and corr_due:
                ms.corr.set_gauges(batch, labels, corr_min, self.label_length)
            if not ms.features:
                continue
            quality_dirty = False
            for name, tr in ms.features.items():
                flabels = labels + (name[:self.label_length],)
                ring = tr.ring
                if ring.dirty and self.quality_on:
                    ring.dirty = False
                    quality_dirty = True
                    rates = ring.rates()
                    if rates is not None:
                        for problem, r in zip(PROBLEMS, rates):
                            batch.set(RATE, flabels + (problem,), r)
                dr = tr.drift
                if dr is not None and dr.dirty:
                    dr.dirty = False
                    n = len(dr.window)
                    batch.set(DRIFT_WINDOW, flabels, float(n))
                    if n < d.min_samples:
                        continue
                    res = dr.compute(d.epsilon)
                    if res is None:
                        continue
                    p, ks = res
                    batch.set(DRIFT_PSI, flabels, p)
                    if ks is not None:
                        batch.set(DRIFT_KS, flabels, ks)
                    # KS is not defined for categorical features: their primary is PSI.
                    batch.set(C.FEATURE_DRIFT, flabels, ks if (primary_ks and ks is not None) else p)
            if quality_dirty:
                scores = model_scores(tr.ring for tr in ms.features.values())
                if scores is not None:
                    for metric, v in scores.items():
                        batch.set(C.DATA_QUALITY, labels + (metric,), v)
        if self.comparisons is not None:
            self.comparisons.compute(batch, now, self._accuracy_counts)

    def state_bytes(self) -> dict[str, int]:
        """Bytes held in the comparison, ROC and correlation windows (their stated bound)."""
        return {
            "comparison": self.comparisons.nbytes() if self.comparisons is not None else 0,
            "roc": sum(ms.roc.nbytes() for ms in self.models.values() if ms.roc is not None),
            "correlation": sum(ms.corr.nbytes() for ms in self.models.values() if ms.corr is not None),
        }


def load_references(settings: AnalyticsSettings) -> dict[str, dict]:
    out = {}
    for m in settings.models:
        if m.reference:
            try:
                out[m.name] = refmod.load(m.reference)
            except refmod.ReferenceError as exc:
                log.error("model %s: %s; drift uses the first %d values instead", m.name, exc,
                          settings.drift.reference_size)
    return out


def build(settings: AnalyticsSettings | None = None,
          label_value_length: int = DEFAULT_LABEL_LENGTH) -> Engine | None:
    """The engine for these settings (the defaults when None); None when all is switched off.
    ``label_value_length`` is limits.label_value_length (class and feature names are cut to it)."""
    if settings is None:
        settings = AnalyticsSettings()
    if not settings.anything:
        return None
    return Engine(settings, load_references(settings) if settings.drift.enabled else None,
                  label_value_length)
