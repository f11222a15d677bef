"""The ``[analytics]`` config table (live scores, drift, quality, anomaly, comparison, ROC,
correlation windows).

Every window is bounded (by count, and for live scores optionally by time);
see docs/analytics.md for the keys and their defaults::

    [analytics]
    error_rate_window = 300.0      # seconds, ml_pipeline_error_rate
    compute_interval = 1.0         # seconds between recomputations of derived gauges
    max_models = 100               # model versions tracked
    max_features = 100             # features tracked per model version

    [analytics.performance]
    enabled = true
    window_size = 1000             # last N labelled predictions
    window_seconds = 0.0           # and/or last T seconds (0: count only)
    label_ttl = 3600.0             # how long a prediction waits for its label event
    max_pending = 20000            # predictions waiting for labels, at most
    max_classes = 50               # classes per model; more fold into "__other__"

    [analytics.drift]
    enabled = true
    statistic = "psi"              # primary statistic for ml_feature_drift_score: psi | ks
    window_size = 1000             # last W values per feature
    min_samples = 100              # values in the window before drift is exported
    reference_size = 1000          # first N values as the reference when no file names one
    bins = 10                      # quantile bins (first-N references)
    quantiles = 100                # quantiles kept for KS (first-N references)
    max_categories = 50
    epsilon = 1e-4                 # floor of a bin share in PSI

    [analytics.quality]
    enabled = true
    window_size = 1000             # last N checks per feature

    [analytics.anomaly]
    enabled = true
    signals = ["latency_p95", "error_rate", "accuracy"]
    interval = 10.0                # seconds per baseline point
    baseline_points = 60
    min_points = 10

    [analytics.comparison]         # versions of one model side by side (A/B, canary)
    enabled = true
    auto = true                    # every model with two live versions
    window_size = 1000             # last N predictions per version
    window_seconds = 0.0
    min_samples = 100              # per side; NaN below
    confidence_level = 0.95
    version_ttl = 300.0            # seconds without predictions before a version leaves
    max_versions = 10
    [analytics.comparison.baselines]
    fraud = "v3"                   # else the version with the most traffic

    [analytics.roc]                # prediction events with `score` and a label
    window_size = 1000
    min_samples = 50
    positive_class = ["1", "true"]
    thresholds = [0.0, 0.1, ..., 1.0]

    [analytics.correlation]        # Pearson r of numeric features
    features = []                  # empty: the first max_features numeric ones seen
    max_features = 10
    window_size = 1000
    min_samples = 30
    interval = 10.0                # seconds between recomputations

    [analytics.features.amount]    # declared for every model
    type = "numeric"
    min = 0.0
    max = 10000.0

    [analytics.models.fraud]       # per model name (all its versions)
    reference = "fraud-reference.json"   # relative to the config file
    [analytics.models.fraud.features.country]
    type = "categorical"
    categories = ["DE", "FR"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..section import N, Section

MAX_WINDOW = 1_000_000
MAX_DRIFT_WINDOW = 100_000


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: str = ""            # "numeric", "categorical" or "" (from the reference or first value)
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    reference: str = ""       # absolute path of a reference JSON, or ""
    features: tuple[FeatureSpec, ...] = ()


@dataclass(frozen=True)
class PerformanceSettings:
    enabled: bool = True
    window_size: int = 1000
    window_seconds: float = 0.0
    label_ttl: float = 3600.0
    max_pending: int = 20000
    max_classes: int = 50


@dataclass(frozen=True)
class DriftSettings:
    enabled: bool = True
    statistic: str = "psi"
    window_size: int = 1000
    min_samples: int = 100
    reference_size: int = 1000
    bins: int = 10
    quantiles: int = 100
    max_categories: int = 50
    epsilon: float = 1e-4


@dataclass(frozen=True)
class QualitySettings:
    enabled: bool = True
    window_size: int = 1000


@dataclass(frozen=True)
class AnomalySettings:
    enabled: bool = True
    signals: tuple[str, ...] = ("latency_p95", "error_rate", "accuracy")
    interval: float = 10.0
    baseline_points: int = 60
    min_points: int = 10


@dataclass(frozen=True)
class ComparisonSettings:
    enabled: bool = True
    auto: bool = True                  # compare every model with two live versions
    window_size: int = 1000            # last N predictions per version (latency, errors)
    window_seconds: float = 0.0        # and only those of the last T seconds (0: count only)
    min_samples: int = 100             # per side, else NaN
    confidence_level: float = 0.95
    version_ttl: float = 300.0         # seconds without predictions before a version leaves
    max_versions: int = 10             # per model
    baselines: tuple[tuple[str, str], ...] = ()   # (model, baseline version)


DEFAULT_THRESHOLDS = tuple(i / 10 for i in range(11))


@dataclass(frozen=True)
class RocSettings:
    enabled: bool = True
    window_size: int = 1000            # last N scored, labelled predictions per version
    min_samples: int = 50
    positive_class: tuple[str, ...] = ("1", "true")
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS


@dataclass(frozen=True)
class CorrelationSettings:
    enabled: bool = True
    features: tuple[str, ...] = ()     # empty: the first max_features numeric features seen
    max_features: int = 10
    window_size: int = 1000
    min_samples: int = 30
    interval: float = 10.0             # seconds between recomputations (O(k^2 * window) each)


@dataclass(frozen=True)
class AnalyticsSettings:
    error_rate_window: float = 300.0
    compute_interval: float = 1.0
    max_models: int = 100
    max_features: int = 100
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    comparison: ComparisonSettings = field(default_factory=ComparisonSettings)
    roc: RocSettings = field(default_factory=RocSettings)
    correlation: CorrelationSettings = field(default_factory=CorrelationSettings)
    features: tuple[FeatureSpec, ...] = ()
    models: tuple[ModelSpec, ...] = ()

    @property
    def anything(self) -> bool:
        """Whether there is anything for the analytics engine to compute."""
        return (self.performance.enabled or self.drift.enabled or self.quality.enabled
                or self.anomaly.enabled or self.comparison.enabled or self.roc.enabled
                or self.correlation.enabled)

    def model(self, name: str) -> ModelSpec | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


def _bounded(section: Section, name: str, kind: type[N], default: N, maximum: N) -> N:
    v = section.positive(name, kind, default)
    if v > maximum:
        raise section.error(name, f"must be <= {maximum}, got {v}")
    return v


def _non_negative(section: Section, name: str, kind: type[N], default: N) -> N:
    v = section.get(name, kind, default)
    if v < 0:
        raise section.error(name, f"must be >= 0, got {v}")
    return v


def _features(section: Section) -> tuple[FeatureSpec, ...]:
    out = []
    for name in section.data:
        f = section.table(name)
        typ = f.get("type", str, "")
        if typ not in ("", "numeric", "categorical"):
            raise f.error("type", "must be 'numeric' or 'categorical'")
        lo = f.get("min", float, None)
        hi = f.get("max", float, None)
        cats = f.get("categories", tuple, ())
        for i, c in enumerate(cats):
            if type(c) not in (str, int, bool):
                raise f.error(f"categories[{i}]", "must be a string, an integer or a boolean")
        cats = tuple(("true" if c else "false") if type(c) is bool else str(c) for c in cats)
        if (lo is not None or hi is not None) and typ == "categorical":
            raise f.error("min" if lo is not None else "max", "applies to numeric features only")
        if cats and typ == "numeric":
            raise f.error("categories", "applies to categorical features only")
        if lo is not None and hi is not None and lo > hi:
            raise f.error("min", f"must be <= max ({hi}), got {lo}")
        if not typ:
            typ = "categorical" if cats else ("numeric" if lo is not None or hi is not None else "")
        f.finish()
        out.append(FeatureSpec(name, typ, lo, hi, cats))
    section.finish()
    return tuple(out)


def _comparison(c: Section) -> ComparisonSettings:
    level = c.get("confidence_level", float, 0.95)
    if not 0.5 <= level < 1.0:
        raise c.error("confidence_level", f"must be >= 0.5 and < 1, got {level}")
    b = c.table("baselines")
    baselines = []
    for model in b.data:
        version = b.get(model, str, "")
        if not version:
            raise b.error(model, "must name the baseline version")
        baselines.append((model, version))
    b.finish()
    out = ComparisonSettings(
        enabled=c.get("enabled", bool, True),
        auto=c.get("auto", bool, True),
        window_size=_bounded(c, "window_size", int, 1000, MAX_DRIFT_WINDOW),
        window_seconds=_non_negative(c, "window_seconds", float, 0.0),
        min_samples=_bounded(c, "min_samples", int, 100, MAX_DRIFT_WINDOW),
        confidence_level=level,
        version_ttl=c.positive("version_ttl", float, 300.0),
        max_versions=_bounded(c, "max_versions", int, 10, 1000),
        baselines=tuple(baselines),
    )
    if out.min_samples < 2:
        raise c.error("min_samples", "must be >= 2")
    if out.min_samples > out.window_size:
        raise c.error("min_samples", f"must be <= window_size ({out.window_size})")
    c.finish()
    return out


def _roc(r: Section) -> RocSettings:
    # One class or a list of them ("1" and "true" by default).
    raw = r.data.get("positive_class")
    positive = (raw,) if raw is not None and not isinstance(raw, list) else \
        r.get("positive_class", tuple, RocSettings.positive_class)
    r.used.add("positive_class")
    labels = []
    for i, c in enumerate(positive):
        if type(c) not in (str, int, bool):
            raise r.error("positive_class", f"[{i}] must be a string, an integer or a boolean")
        labels.append(("true" if c else "false") if type(c) is bool else str(c))
    if not labels:
        raise r.error("positive_class", "must name at least one class")
    thresholds = r.get("thresholds", tuple, DEFAULT_THRESHOLDS)
    for i, t in enumerate(thresholds):
        if type(t) not in (int, float) or not 0.0 <= t <= 1.0:
            raise r.error(f"thresholds[{i}]", f"must be a number in [0, 1], got {t!r}")
    if not thresholds or len(thresholds) > 101:
        raise r.error("thresholds", "must hold 1 to 101 thresholds")
    out = RocSettings(
        enabled=r.get("enabled", bool, True),
        window_size=_bounded(r, "window_size", int, 1000, MAX_DRIFT_WINDOW),
        min_samples=_bounded(r, "min_samples", int, 50, MAX_DRIFT_WINDOW),
        positive_class=tuple(labels),
        thresholds=tuple(sorted({float(t) for t in thresholds})),
    )
    if out.min_samples > out.window_size:
        raise r.error("min_samples", f"must be <= window_size ({out.window_size})")
    r.finish()
    return out


def _correlation(c: Section) -> CorrelationSettings:
    features = c.get("features", tuple, ())
    for i, f in enumerate(features):
        if type(f) is not str or not f:
            raise c.error(f"features[{i}]", "must be a feature name")
    max_features = _bounded(c, "max_features", int, 10, 30)
    if len(features) > max_features:
        raise c.error("features", f"names {len(features)} features, more than max_features "
                                  f"({max_features})")
    out = CorrelationSettings(
        enabled=c.get("enabled", bool, True),
        features=tuple(dict.fromkeys(features)),
        max_features=max_features,
        window_size=_bounded(c, "window_size", int, 1000, MAX_DRIFT_WINDOW),
        min_samples=_bounded(c, "min_samples", int, 30, MAX_DRIFT_WINDOW),
        interval=c.positive("interval", float, 10.0),
    )
    if out.min_samples < 2:
        raise c.error("min_samples", "must be >= 2")
    if out.min_samples > out.window_size:
        raise c.error("min_samples", f"must be <= window_size ({out.window_size})")
    c.finish()
    return out


def parse(section: Section) -> AnalyticsSettings:
    from . import reference as refmod

    s = section
    error_rate_window = s.positive("error_rate_window", float, 300.0)
    compute_interval = s.positive("compute_interval", float, 1.0)
    max_models = _bounded(s, "max_models", int, 100, 10000)
    max_features = _bounded(s, "max_features", int, 100, 10000)

    p = s.table("performance")
    perf = PerformanceSettings(
        enabled=p.get("enabled", bool, True),
        window_size=_bounded(p, "window_size", int, 1000, MAX_WINDOW),
        window_seconds=_non_negative(p, "window_seconds", float, 0.0),
        label_ttl=p.positive("label_ttl", float, 3600.0),
        max_pending=_bounded(p, "max_pending", int, 20000, MAX_WINDOW),
        max_classes=_bounded(p, "max_classes", int, 50, 10000),
    )
    p.finish()

    d = s.table("drift")
    statistic = d.get("statistic", str, "psi")
    if statistic not in ("psi", "ks"):
        raise d.error("statistic", f"must be 'psi' or 'ks', got {statistic!r}")
    drift = DriftSettings(
        enabled=d.get("enabled", bool, True),
        statistic=statistic,
        window_size=_bounded(d, "window_size", int, 1000, MAX_DRIFT_WINDOW),
        min_samples=_bounded(d, "min_samples", int, 100, MAX_DRIFT_WINDOW),
        reference_size=_bounded(d, "reference_size", int, 1000, MAX_DRIFT_WINDOW),
        bins=_bounded(d, "bins", int, 10, 1000),
        quantiles=_bounded(d, "quantiles", int, 100, 10000),
        max_categories=_bounded(d, "max_categories", int, 50, 10000),
        epsilon=d.positive("epsilon", float, 1e-4),
    )
    if drift.min_samples > drift.window_size:
        raise d.error("min_samples", f"must be <= window_size ({drift.window_size})")
    if drift.quantiles < 2:
        raise d.error("quantiles", "must be >= 2")
    if drift.epsilon >= 0.1:
        raise d.error("epsilon", "must be < 0.1")
    d.finish()

    q = s.table("quality")
    quality = QualitySettings(
        enabled=q.get("enabled", bool, True),
        window_size=_bounded(q, "window_size", int, 1000, MAX_WINDOW),
    )
    q.finish()

    a = s.table("anomaly")
    signals = a.get("signals", tuple, AnomalySettings.signals)
    from .anomaly import SIGNALS

    for i, sig in enumerate(signals):
        if sig not in SIGNALS:
            raise a.error(f"signals[{i}]", f"must be one of {', '.join(SIGNALS)}, got {sig!r}")
    anomaly = AnomalySettings(
        enabled=a.get("enabled", bool, True),
        signals=tuple(dict.fromkeys(signals)),
        interval=a.positive("interval", float, 10.0),
        baseline_points=_bounded(a, "baseline_points", int, 60, 10000),
        min_points=a.positive("min_points", int, 10),
    )
    if anomaly.min_points > anomaly.baseline_points:
        raise a.error("min_points", f"must be <= baseline_points ({anomaly.baseline_points})")
    a.finish()

    comparison = _comparison(s.table("comparison"))
    roc = _roc(s.table("roc"))
    correlation = _correlation(s.table("correlation"))

    features = _features(s.table("features"))

    ms = s.table("models")
    models = []
    base = os.path.dirname(os.path.abspath(s.source)) if s.source and not s.source.startswith("(") \
        else os.getcwd()
    for name in ms.data:
        m = ms.table(name)
        ref = m.get("reference", str, "")
        feats = _features(m.table("features"))
        if ref:
            ref = ref if os.path.isabs(ref) else os.path.join(base, ref)
            try:
                summary = refmod.load(ref)
            except refmod.ReferenceError as exc:
                raise m.error("reference", str(exc)) from None
            for f in feats + features:
                r = summary.get(f.name)
                if r is not None and f.type and r["type"] != f.type:
                    raise m.error("reference", f"feature {f.name!r} is {r['type']} in the reference "
                                               f"but declared {f.type}")
        m.finish()
        models.append(ModelSpec(name, ref, feats))
    ms.finish()

    out = AnalyticsSettings(
        error_rate_window=error_rate_window, compute_interval=compute_interval,
        max_models=max_models, max_features=max_features, performance=perf, drift=drift,
        quality=quality, anomaly=anomaly, comparison=comparison, roc=roc, correlation=correlation,
        features=features, models=tuple(models),
    )
    section.finish()
    return out

