"""Every metric family the sidecar can expose, in one place.

Names, types, labels and buckets are the contract with dashboards and alert
rules (see docs/metrics.md, which a test keeps in step with this module).
Collectors and user mappings register their own families through
:func:`register`; nothing else creates metric names.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, field
from typing import Any

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# Series that have not been updated for this long disappear from /metrics.
NEVER = math.inf
HOUR = 3600.0


@dataclass(frozen=True, eq=False)
class Family:
    """One metric family: what it is called, what it measures, how it is labelled.

    Compared and hashed by identity: families are dict keys on the hot path.
    """

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    unit: str = ""
    fed_by: str = ""
    # How long a series may go without an update before it is hidden.
    expire_after: float = NEVER
    # How gauges from several processes combine (prometheus_client's modes).
    gauge_mode: str = "mostrecent"
    # Label values that are created at zero with the first series (see mapping).
    zero_siblings: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.type not in (COUNTER, GAUGE, HISTOGRAM):
            raise ValueError(f"{self.name}: unknown type {self.type!r}")
        if self.type == HISTOGRAM:
            if not self.buckets or list(self.buckets) != sorted(self.buckets):
                raise ValueError(f"{self.name}: histogram needs sorted buckets")
            if "le" in self.labels:
                raise ValueError(f"{self.name}: 'le' is reserved for histogram buckets")

    @property
    def sample_name(self) -> str:
        """The name of the sample for a plain counter or gauge."""
        return self.name


REGISTRY: dict[str, Family] = {}
# Every name a registered family takes in either format -> the family (see exposed_names).
_TAKEN: dict[str, Family] = {}

# Sample suffixes of counters, histograms and info metrics: a new family whose own name ends in
# one could be read as a sample of another family (now, or when that one appears later).
SAMPLE_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")


def register(family: Family) -> Family:
    """Add a family to the catalogue; registering the same definition twice is harmless."""
    old = REGISTRY.get(family.name)
    if old is not None:
        if astuple(old) != astuple(family):
            raise ValueError(f"metric {family.name} is already defined differently")
        return old
    REGISTRY[family.name] = family
    for n in exposed_names(family.name, family.type):
        _TAKEN.setdefault(n, family)
    return family


def exposed_names(name: str, typ: str) -> tuple[str, ...]:
    """The names a family takes in the text format and in OpenMetrics: its family name(s)
    and the names of its samples."""
    if typ == COUNTER:
        base = name[:-6] if name.endswith("_total") else name
        return (base, base + "_total", base + "_created")
    if typ == HISTOGRAM:
        return (name, name + "_bucket", name + "_count", name + "_sum", name + "_created")
    return (name,)


def name_clash(name: str, typ: str) -> str | None:
    """Why a new family ``name`` of type ``typ`` cannot be exposed beside the registered
    families (a shared family or sample name, in either format), or None when it can."""
    base = name[:-6] if typ == COUNTER and name.endswith("_total") else name
    for suffix in SAMPLE_SUFFIXES:
        if base.endswith(suffix):
            return f"{name} ends in {suffix}, which is how samples of other families are named"
    for n in exposed_names(name, typ):
        other = _TAKEN.get(n)
        if other is not None and REGISTRY.get(other.name) is not other:
            del _TAKEN[n]  # the catalogue was reset since (tests do)
            other = None
        if other is None:
            other = next((f for f in REGISTRY.values() if n in exposed_names(f.name, f.type)), None)
        if other is not None and other.name != name:
            return f"{name} would take the name {n} of {other.type} {other.name}"
    return None


def load_builtins() -> None:
    """Import every module that registers built-in families, so that a user family is
    checked against all of them (collectors, analytics, cost, impact and the server's
    self-metrics register theirs on import)."""
    import importlib
    import pkgutil

    from . import analytics, collectors, cost, impact, selfmetrics  # noqa: F401  (they register families)

    collectors.load_all()
    for info in pkgutil.iter_modules(analytics.__path__):
        importlib.import_module(f"{analytics.__name__}.{info.name}")


def expiry(overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds without an update after which a family's series are hidden (inf: never).

    ``overrides`` come from the config's ``[expire]`` table; 0 there means never.
    """
    out = {name: fam.expire_after for name, fam in REGISTRY.items()}
    for name, seconds in (overrides or {}).items():
        out[name] = NEVER if seconds == 0 else seconds
    return out


def _f(*args: Any, **kwargs: Any) -> Family:
    return register(Family(*args, **kwargs))


LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
PIPELINE_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Bytes: 64 B to 64 MiB in steps of 4 (request and response payloads).
PAYLOAD_BUCKETS = tuple(float(64 * 4 ** i) for i in range(11))
# Training runs: a minute to a week.
RUN_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0)

MODEL = ("model_name", "model_version")

# --- model ---------------------------------------------------------------------
PREDICTIONS = _f(
    "ml_predictions_total", COUNTER, "Predictions served, by outcome.",
    MODEL + ("status",), fed_by="prediction",
    zero_siblings=(("status", ("success", "error")),),
)
PREDICTION_LATENCY = _f(
    "ml_prediction_latency_seconds", HISTOGRAM, "Time to serve one prediction.",
    MODEL, LATENCY_BUCKETS, unit="seconds", fed_by="prediction",
)
PREDICTION_CONFIDENCE = _f(
    "ml_prediction_confidence_score", HISTOGRAM, "Model confidence of served predictions (0-1).",
    MODEL, CONFIDENCE_BUCKETS, fed_by="prediction (confidence)",
)
PREDICTION_REQUEST_SIZE = _f(
    "ml_prediction_request_size_bytes", HISTOGRAM, "Size of prediction requests (payload bytes).",
    MODEL, PAYLOAD_BUCKETS, unit="bytes", fed_by="prediction (request_bytes)",
)
PREDICTION_RESPONSE_SIZE = _f(
    "ml_prediction_response_size_bytes", HISTOGRAM, "Size of prediction responses (payload bytes).",
    MODEL, PAYLOAD_BUCKETS, unit="bytes", fed_by="prediction (response_bytes)",
)
ACCURACY = _f(
    "ml_model_accuracy_score", GAUGE, "Model accuracy (0-1) on a dataset or live window.",
    MODEL + ("dataset",), fed_by="evaluation, labelled prediction", expire_after=24 * HOUR,
)
PRECISION = _f(
    "ml_model_precision_score", GAUGE, "Weighted precision (0-1), as scikit-learn average='weighted'.",
    MODEL + ("dataset",), fed_by="evaluation, labelled prediction", expire_after=24 * HOUR,
)
RECALL = _f(
    "ml_model_recall_score", GAUGE, "Weighted recall (0-1), as scikit-learn average='weighted'.",
    MODEL + ("dataset",), fed_by="evaluation, labelled prediction", expire_after=24 * HOUR,
)
FEATURE_DRIFT = _f(
    "ml_feature_drift_score", GAUGE, "Drift of one input feature against its reference.",
    MODEL + ("feature_name",), fed_by="drift, prediction (features)", expire_after=6 * HOUR,
)
DATA_QUALITY = _f(
    "ml_data_quality_score", GAUGE, "Data quality score (1.0 is perfect).",
    MODEL + ("quality_metric",), fed_by="data_quality", expire_after=6 * HOUR,
)
DEPLOYMENTS = _f(
    "ml_model_deployments_total", COUNTER, "Model deployments.", MODEL, fed_by="deployment",
)
MODEL_SIZE = _f(
    "ml_model_size_bytes", GAUGE, "Size of the deployed model (its artefact), from deployment events.",
    MODEL, unit="bytes", fed_by="deployment (size_bytes)",
)

# --- training ------------------------------------------------------------------
JOB = ("job_name",)
TRAINING_EPOCH = _f(
    "ml_training_current_epoch", GAUGE, "Current training epoch.", JOB, fed_by="training",
)
TRAINING_LOSS = _f(
    "ml_training_loss", GAUGE, "Latest training loss, by loss type.", JOB + ("loss_type",),
    fed_by="training",
)
TRAINING_LOSS_NONFINITE = _f(
    "ml_training_loss_nonfinite_total", COUNTER,
    "Losses reported as NaN or infinite (\"NaN\", \"Infinity\", \"-Infinity\"), by loss type.",
    JOB + ("loss_type",), fed_by="training",
)
TRAINING_LR = _f(
    "ml_training_learning_rate", GAUGE, "Current learning rate.", JOB, fed_by="training",
)
TRAINING_BATCH = _f(
    "ml_training_batch_duration_seconds", HISTOGRAM, "Time to process one training batch.",
    JOB, BATCH_BUCKETS, unit="seconds", fed_by="batch",
)
TRAINING_SAMPLES = _f(
    "ml_training_samples_processed_total", COUNTER, "Training samples processed.", JOB,
    fed_by="batch",
)
TRAINING_ITERATIONS = _f(
    "ml_training_iterations_total", COUNTER, "Training iterations (batches) completed.", JOB,
    fed_by="batch",
)
TRAINING_GPU_UTIL = _f(
    "ml_training_gpu_utilization_percent", GAUGE, "GPU utilisation seen by a training job.",
    JOB + ("gpu_id",), unit="percent", fed_by="gpu collector", expire_after=300.0,
)
TRAINING_MEMORY = _f(
    "ml_training_memory_usage_bytes", GAUGE, "Memory used by a training job, by memory type.",
    JOB + ("memory_type",), unit="bytes", fed_by="gpu and process collectors", expire_after=300.0,
)
CHECKPOINT_SIZE = _f(
    "ml_training_checkpoint_size_bytes", GAUGE, "Size of the latest checkpoint.", JOB,
    unit="bytes", fed_by="checkpoint",
)
CHECKPOINT_DURATION = _f(
    "ml_training_checkpoint_save_duration_seconds", HISTOGRAM, "Time to save a checkpoint.",
    JOB, CHECKPOINT_BUCKETS, unit="seconds", fed_by="checkpoint",
)
TRAINING_ACTIVE_JOBS = _f(
    "ml_training_active_jobs", GAUGE,
    "Training jobs with a run in progress (started, not yet completed or failed) seen by this sidecar.",
    (), fed_by="training (status)",
)
TRAINING_RUN_ACTIVE = _f(
    "ml_training_run_active", GAUGE, "1 while the job's run is in progress, 0 once it completed or failed.",
    JOB, fed_by="training (status)",
)
TRAINING_RUN_START = _f(
    "ml_training_run_start_timestamp_seconds", GAUGE,
    "Unix time the job's current (or last) run started; its age is time() minus this.",
    JOB, unit="seconds", fed_by="training (status)",
)
TRAINING_RUN_DURATION = _f(
    "ml_training_run_duration_seconds", HISTOGRAM, "Duration of finished training runs, by outcome.",
    JOB + ("status",), RUN_BUCKETS, unit="seconds", fed_by="training (status)",
)

# --- data pipeline -------------------------------------------------------------
PIPE = ("pipeline_name",)
PIPELINE_RECORDS = _f(
    "ml_pipeline_records_processed_total", COUNTER, "Records processed by a pipeline stage.",
    PIPE + ("stage", "status"), fed_by="pipeline",
    zero_siblings=(("status", ("success", "error")),),
)
PIPELINE_LATENCY = _f(
    "ml_pipeline_processing_latency_seconds", HISTOGRAM, "Time a pipeline stage took for one batch.",
    PIPE + ("stage",), PIPELINE_BUCKETS, unit="seconds", fed_by="pipeline",
)
PIPELINE_QUEUE = _f(
    "ml_pipeline_queue_size", GAUGE, "Items waiting in a pipeline queue.", PIPE + ("queue_name",),
    fed_by="queue",
)
PIPELINE_ERROR_RATE = _f(
    "ml_pipeline_error_rate", GAUGE, "Share of records in error over the sliding window (0-1).",
    PIPE + ("stage",), fed_by="pipeline (derived)",
)
PIPELINE_FRESHNESS = _f(
    "ml_pipeline_data_freshness_seconds", GAUGE,
    "Age of the newest data seen, computed at scrape time so it keeps rising when data stops.",
    PIPE + ("data_source",), unit="seconds", fed_by="freshness",
)
PIPELINE_DATA_TS = _f(
    "ml_pipeline_data_timestamp_seconds", GAUGE, "Unix time of the newest data seen.",
    PIPE + ("data_source",), unit="seconds", fed_by="freshness",
)
SCHEMA_VIOLATIONS = _f(
    "ml_pipeline_schema_violations_total", COUNTER, "Schema violations found by a pipeline.",
    PIPE + ("violation_type",), fed_by="schema_violation",
)

# --- the sidecar's own health ------------------------------------------------
EVENTS = _f(
    "mlsidecar_events_total", COUNTER, "Events accepted, by source and kind.", ("source", "kind"),
    fed_by="every source",
)
EVENTS_REJECTED = _f(
    "mlsidecar_events_rejected_total", COUNTER, "Events rejected, by source and reason.",
    ("source", "reason"), fed_by="every source",
)
EVENTS_DROPPED = _f(
    "mlsidecar_events_dropped_total", COUNTER, "Events dropped before parsing, by source and reason.",
    ("source", "reason"), fed_by="socket source",
)
LINES_READ = _f(
    "mlsidecar_source_bytes_read_total", COUNTER, "Bytes read from a source.", ("source",),
    unit="bytes", fed_by="every source",
)
BYTES_BEHIND = _f(
    "mlsidecar_source_bytes_behind", GAUGE, "Bytes written to a tailed file but not read yet.",
    ("source",), unit="bytes", fed_by="file source", expire_after=600.0,
)
SOURCE_GAPS = _f(
    "mlsidecar_source_gaps_total", COUNTER,
    "Parts of a source that could not be read and were skipped, never guessed (a generation deleted "
    "or truncated before it was read, logrotate's copytruncate window, positions lost), by reason.",
    ("source", "reason"), fed_by="file source",
)
STATE_FAULTS = _f(
    "mlsidecar_state_faults_total", COUNTER,
    "Faults found in the state directory and handled (a file moved aside, values found without "
    "positions, a write refused), by worker and kind.", ("worker", "kind"), fed_by="every worker",
)
SERIES_LIMITED = _f(
    "mlsidecar_series_limited_total", COUNTER,
    "Updates not applied because the metric reached its series limit.", ("metric",),
    fed_by="mapping",
)
WORKER_RESTARTS = _f(
    "mlsidecar_worker_restarts_total", COUNTER, "Worker processes restarted by the supervisor.",
    ("worker",), fed_by="supervisor",
)
WORKER_UP = _f(
    "mlsidecar_worker_up", GAUGE, "1 when the worker process is running.", ("worker",),
    fed_by="supervisor",
)
BUILD_INFO = _f(
    "mlsidecar_build_info", GAUGE, "Always 1; labels say which build is running.",
    ("version", "python"), fed_by="supervisor",
)
COLLECTOR_UP = _f(
    "mlsidecar_collector_up", GAUGE, "1 when the collector's last run succeeded.", ("collector",),
    fed_by="collectors",
)
COLLECTOR_DURATION = _f(
    "mlsidecar_collector_duration_seconds", GAUGE, "How long the collector's last run took.",
    ("collector",), unit="seconds", fed_by="collectors",
)
SCRAPE_FILES_SKIPPED = _f(
    "mlsidecar_multiproc_files_skipped_total", COUNTER,
    "Times a metric file was skipped while serving a scrape (empty, truncated or corrupt).",
    (), fed_by="server",
)
SCRAPE_KEYS_SKIPPED = _f(
    "mlsidecar_multiproc_keys_skipped_total", COUNTER,
    "Series keys in a multiprocess file left out of the exposition, by reason (bad key, invalid name, "
    "clashing family).", ("reason",), fed_by="server",
)
SCRAPES = _f(
    "mlsidecar_scrapes_total", COUNTER, "Scrapes of /metrics answered.", (), fed_by="server",
)
SCRAPE_RENDERS = _f(
    "mlsidecar_scrape_renders_total", COUNTER,
    "Times the exposition was rendered; concurrent scrapes share one render.", (), fed_by="server",
)
HTTP_REJECTED = _f(
    "mlsidecar_http_rejected_total", COUNTER,
    "HTTP connections or requests refused by a server limit, by reason.", ("reason",), fed_by="server",
)
SOCKET_CONNECTIONS_REJECTED = _f(
    "mlsidecar_socket_connections_rejected_total", COUNTER,
    "Stream connections closed at accept because a limit was reached, by source and reason.",
    ("source", "reason"), fed_by="socket source",
)
