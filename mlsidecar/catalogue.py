"""Every metric family the sidecar can expose, in one place.

Names, types, labels and buckets are the contract with dashboards and alert
rules (see docs/metrics.md, which a test keeps in step with this module).
The core families are declared here; each collector, analytics, cost, impact and
self-metrics module declares its own in a ``FAMILIES`` tuple. :func:`builtin`
puts them all into one immutable :class:`Catalogue`, which is handed to the
mapper, the writer and the reader. User metrics live in a per-process
:class:`UserFamilies` table that the mapper owns and the writer restores.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass, field
from types import MappingProxyType

from .fileformat import stored_name

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


# Sample suffixes of counters, histograms and info metrics: a new family whose own name ends in
# one could be read as a sample of another family (now, or when that one appears later).
SAMPLE_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")


def exposed_names(name: str, typ: str) -> tuple[str, ...]:
    """The names a family takes in the text format and in OpenMetrics: its family name(s)
    and the names of its samples."""
    if typ == COUNTER:
        base = stored_name(name, typ)
        return (base, base + "_total", base + "_created")
    if typ == HISTOGRAM:
        return (name, name + "_bucket", name + "_count", name + "_sum", name + "_created")
    return (name,)


def suffix_clash(name: str, typ: str) -> str | None:
    """Why ``name`` reads as a sample of some other family (it ends in a sample suffix), or None."""
    base = stored_name(name, typ)
    for suffix in SAMPLE_SUFFIXES:
        if base.endswith(suffix):
            return f"{name} ends in {suffix}, which is how samples of other families are named"
    return None


def taken_clash(taken: Mapping[str, Family], name: str, typ: str) -> str | None:
    """Why family ``name`` would share an exposed name with another family in ``taken``."""
    for n in exposed_names(name, typ):
        other = taken.get(n)
        if other is not None and other.name != name:
            return f"{name} would take the name {n} of {other.type} {other.name}"
    return None


class Catalogue(Mapping[str, Family]):
    """The metric families of a process, by name: built once, never changed.

    Made from declared families (:func:`builtin` collects the sidecar's own); the mapper,
    the writer and the reader are handed one. User metrics are not in it: they live in the
    mapper's :class:`UserFamilies`, checked against it.
    """

    __slots__ = ("_families", "_taken")
    _families: Mapping[str, Family]
    _taken: Mapping[str, Family]

    def __init__(self, families: Iterable[Family] = ()) -> None:
        by_name: dict[str, Family] = {}
        taken: dict[str, Family] = {}
        for fam in families:
            old = by_name.get(fam.name)
            if old is not None:
                if astuple(old) != astuple(fam):
                    raise ValueError(f"metric {fam.name} is declared twice, differently")
                continue
            by_name[fam.name] = fam
            for n in exposed_names(fam.name, fam.type):
                taken.setdefault(n, fam)
        object.__setattr__(self, "_families", MappingProxyType(by_name))
        object.__setattr__(self, "_taken", MappingProxyType(taken))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Catalogue cannot be changed; build another one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Catalogue cannot be changed; build another one")

    def __getitem__(self, name: str) -> Family:
        return self._families[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._families)

    def __len__(self) -> int:
        return len(self._families)

    def __repr__(self) -> str:
        return f"Catalogue({len(self)} families)"

    def stored(self, metric_name: str) -> Family | None:
        """The family of a key's metric name in a multiprocess file (counters without _total)."""
        return self._families.get(metric_name) or self._families.get(metric_name + "_total")

    exposed_names = staticmethod(exposed_names)

    def name_clash(self, name: str, typ: str) -> str | None:
        """Why a new family ``name`` of type ``typ`` cannot be exposed beside these families
        (a shared family or sample name, in either format), or None when it can."""
        return suffix_clash(name, typ) or taken_clash(self._taken, name, typ)

    def expiry(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """Seconds without an update after which a family's series are hidden (inf: never).

        ``overrides`` come from the config's ``[expire]`` table; 0 there means never.
        """
        out = {name: fam.expire_after for name, fam in self._families.items()}
        for name, seconds in (overrides or {}).items():
            out[name] = NEVER if seconds == 0 else seconds
        return out


class UserFamilies:
    """The families of user metrics (``metric`` events, ``[[mappings]]``) of one process.

    Owned by the mapper, which adds a family on its first event; the writer fills it at start
    from the keys it finds in its files, so a restart carries on with the same families. Each
    table is its own: two mappers in one process share nothing. A family is checked against
    the built-in :class:`Catalogue` and the families already here.
    """

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._families: dict[str, Family] = {}
        self._taken: dict[str, Family] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._families

    def __iter__(self) -> Iterator[Family]:
        """The families (not their names: the writer hands them to a mapper as they are)."""
        return iter(list(self._families.values()))

    def __len__(self) -> int:
        return len(self._families)

    def __getitem__(self, name: str) -> Family:
        return self._families[name]

    def get(self, name: str) -> Family | None:
        return self._families.get(name)

    def stored(self, metric_name: str) -> Family | None:
        """The family of a key's metric name (counters without _total), built-in or user."""
        return (self.catalogue.stored(metric_name) or self._families.get(metric_name)
                or self._families.get(metric_name + "_total"))

    def name_clash(self, name: str, typ: str) -> str | None:
        """Why a new user family cannot be exposed beside the built-in and user families."""
        return self.catalogue.name_clash(name, typ) or taken_clash(self._taken, name, typ)

    def add(self, family: Family) -> Family:
        """Keep a family; the same definition twice is harmless, another one is refused."""
        if family.name in self.catalogue:
            raise ValueError(f"{family.name} is a built-in metric")
        old = self._families.get(family.name)
        if old is not None:
            if astuple(old) != astuple(family):
                raise ValueError(f"metric {family.name} is already defined differently")
            return old
        self._families[family.name] = family
        for n in exposed_names(family.name, family.type):
            self._taken.setdefault(n, family)
        return family


@functools.cache
def builtin() -> Catalogue:
    """The sidecar's own families: the core ones below, each collector's, the analytics',
    cost's, impact's and the server's self-metrics (each module declares a ``FAMILIES``
    tuple). Built once per process, the same in the supervisor, the workers and the server."""
    from . import cost, impact, selfmetrics
    from .analytics import anomaly, comparison, correlation, drift, engine, importance, performance, quality, roc
    from .collectors import gpu, host, process

    modules = (gpu, host, process, engine, performance, drift, quality, comparison, correlation,
               importance, roc, anomaly, cost, impact, selfmetrics)
    return Catalogue(itertools.chain(FAMILIES, *(m.FAMILIES for m in modules)))


# Older names of the built-in catalogue, read-only. Only the golden exposition tests
# (tests/golden/build.py, tests/test_golden_exposition.py) still use them: they must stay
# unchanged across the move to an immutable catalogue. New code calls builtin().
def load_builtins() -> Catalogue:
    """The built-in catalogue (the older name of :func:`builtin`)."""
    return builtin()


def expiry(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The built-in catalogue's expiry with ``[expire]`` overrides (see :meth:`Catalogue.expiry`)."""
    return builtin().expiry(overrides)


def __getattr__(name: str) -> Catalogue:
    # ``REGISTRY``: the built-in catalogue (built on first use: the modules it collects import
    # this one).
    if name == "REGISTRY":
        return builtin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
PREDICTIONS = Family(
    "ml_predictions_total", COUNTER, "Predictions served, by outcome.",
    MODEL + ("status",), fed_by="prediction",
    zero_siblings=(("status", ("success", "error")),),
)
PREDICTION_LATENCY = Family(
    "ml_prediction_latency_seconds", HISTOGRAM, "Time to serve one prediction.",
    MODEL, LATENCY_BUCKETS, unit="seconds", fed_by="prediction",
)
PREDICTION_CONFIDENCE = Family(
    "ml_prediction_confidence_score", HISTOGRAM, "Model confidence of served predictions (0-1).",
    MODEL, CONFIDENCE_BUCKETS, fed_by="prediction (confidence)",
)
PREDICTION_REQUEST_SIZE = Family(
    "ml_prediction_request_size_bytes", HISTOGRAM, "Size of prediction requests (payload bytes).",
    MODEL, PAYLOAD_BUCKETS, unit="bytes", fed_by="prediction (request_bytes)",
)
PREDICTION_RESPONSE_SIZE = Family(
    "ml_prediction_response_size_bytes", HISTOGRAM, "Size of prediction responses (payload bytes).",
    MODEL, PAYLOAD_BUCKETS, unit="bytes", fed_by="prediction (response_bytes)",
)
ACCURACY = Family(
    "ml_model_accuracy_score", GAUGE, "Model accuracy (0-1) on a dataset or live window.",
    MODEL + ("dataset",), fed_by="evaluation, labelled prediction", expire_after=24 * HOUR,
)
PRECISION = Family(
    "ml_model_precision_score", GAUGE, "Weighted precision (0-1), as scikit-learn average='weighted'.",
    MODEL + ("dataset",), fed_by="evaluation, labelled prediction", expire_after=24 * HOUR,
)
RECALL = Family(
    "ml_model_recall_score", GAUGE, "Weighted recall (0-1), as scikit-learn average='weighted'.",
    MODEL + ("dataset",), fed_by="evaluation, labelled prediction", expire_after=24 * HOUR,
)
FEATURE_DRIFT = Family(
    "ml_feature_drift_score", GAUGE, "Drift of one input feature against its reference.",
    MODEL + ("feature_name",), fed_by="drift, prediction (features)", expire_after=6 * HOUR,
)
DATA_QUALITY = Family(
    "ml_data_quality_score", GAUGE, "Data quality score (1.0 is perfect).",
    MODEL + ("quality_metric",), fed_by="data_quality", expire_after=6 * HOUR,
)
DEPLOYMENTS = Family(
    "ml_model_deployments_total", COUNTER, "Model deployments.", MODEL, fed_by="deployment",
)
MODEL_SIZE = Family(
    "ml_model_size_bytes", GAUGE, "Size of the deployed model (its artefact), from deployment events.",
    MODEL, unit="bytes", fed_by="deployment (size_bytes)",
)

# --- training ------------------------------------------------------------------
JOB = ("job_name",)
TRAINING_EPOCH = Family(
    "ml_training_current_epoch", GAUGE, "Current training epoch.", JOB, fed_by="training",
)
TRAINING_LOSS = Family(
    "ml_training_loss", GAUGE, "Latest training loss, by loss type.", JOB + ("loss_type",),
    fed_by="training",
)
TRAINING_LOSS_NONFINITE = Family(
    "ml_training_loss_nonfinite_total", COUNTER,
    "Losses reported as NaN or infinite (\"NaN\", \"Infinity\", \"-Infinity\"), by loss type.",
    JOB + ("loss_type",), fed_by="training",
)
TRAINING_LR = Family(
    "ml_training_learning_rate", GAUGE, "Current learning rate.", JOB, fed_by="training",
)
TRAINING_BATCH = Family(
    "ml_training_batch_duration_seconds", HISTOGRAM, "Time to process one training batch.",
    JOB, BATCH_BUCKETS, unit="seconds", fed_by="batch",
)
TRAINING_SAMPLES = Family(
    "ml_training_samples_processed_total", COUNTER, "Training samples processed.", JOB,
    fed_by="batch",
)
TRAINING_ITERATIONS = Family(
    "ml_training_iterations_total", COUNTER, "Training iterations (batches) completed.", JOB,
    fed_by="batch",
)
TRAINING_GPU_UTIL = Family(
    "ml_training_gpu_utilization_percent", GAUGE, "GPU utilisation seen by a training job.",
    JOB + ("gpu_id",), unit="percent", fed_by="gpu collector", expire_after=300.0,
)
TRAINING_MEMORY = Family(
    "ml_training_memory_usage_bytes", GAUGE, "Memory used by a training job, by memory type.",
    JOB + ("memory_type",), unit="bytes", fed_by="gpu and process collectors", expire_after=300.0,
)
CHECKPOINT_SIZE = Family(
    "ml_training_checkpoint_size_bytes", GAUGE, "Size of the latest checkpoint.", JOB,
    unit="bytes", fed_by="checkpoint",
)
CHECKPOINT_DURATION = Family(
    "ml_training_checkpoint_save_duration_seconds", HISTOGRAM, "Time to save a checkpoint.",
    JOB, CHECKPOINT_BUCKETS, unit="seconds", fed_by="checkpoint",
)
TRAINING_ACTIVE_JOBS = Family(
    "ml_training_active_jobs", GAUGE,
    "Training jobs with a run in progress (started, not yet completed or failed) seen by this sidecar.",
    (), fed_by="training (status)",
)
TRAINING_RUN_ACTIVE = Family(
    "ml_training_run_active", GAUGE, "1 while the job's run is in progress, 0 once it completed or failed.",
    JOB, fed_by="training (status)",
)
TRAINING_RUN_START = Family(
    "ml_training_run_start_timestamp_seconds", GAUGE,
    "Unix time the job's current (or last) run started; its age is time() minus this.",
    JOB, unit="seconds", fed_by="training (status)",
)
TRAINING_RUN_DURATION = Family(
    "ml_training_run_duration_seconds", HISTOGRAM, "Duration of finished training runs, by outcome.",
    JOB + ("status",), RUN_BUCKETS, unit="seconds", fed_by="training (status)",
)

# --- data pipeline -------------------------------------------------------------
PIPE = ("pipeline_name",)
PIPELINE_RECORDS = Family(
    "ml_pipeline_records_processed_total", COUNTER, "Records processed by a pipeline stage.",
    PIPE + ("stage", "status"), fed_by="pipeline",
    zero_siblings=(("status", ("success", "error")),),
)
PIPELINE_LATENCY = Family(
    "ml_pipeline_processing_latency_seconds", HISTOGRAM, "Time a pipeline stage took for one batch.",
    PIPE + ("stage",), PIPELINE_BUCKETS, unit="seconds", fed_by="pipeline",
)
PIPELINE_QUEUE = Family(
    "ml_pipeline_queue_size", GAUGE, "Items waiting in a pipeline queue.", PIPE + ("queue_name",),
    fed_by="queue",
)
PIPELINE_ERROR_RATE = Family(
    "ml_pipeline_error_rate", GAUGE, "Share of records in error over the sliding window (0-1).",
    PIPE + ("stage",), fed_by="pipeline (derived)",
)
PIPELINE_FRESHNESS = Family(
    "ml_pipeline_data_freshness_seconds", GAUGE,
    "Age of the newest data seen, computed at scrape time so it keeps rising when data stops.",
    PIPE + ("data_source",), unit="seconds", fed_by="freshness",
)
PIPELINE_DATA_TS = Family(
    "ml_pipeline_data_timestamp_seconds", GAUGE, "Unix time of the newest data seen.",
    PIPE + ("data_source",), unit="seconds", fed_by="freshness",
)
SCHEMA_VIOLATIONS = Family(
    "ml_pipeline_schema_violations_total", COUNTER, "Schema violations found by a pipeline.",
    PIPE + ("violation_type",), fed_by="schema_violation",
)

# --- the sidecar's own health ------------------------------------------------
EVENTS = Family(
    "mlsidecar_events_total", COUNTER, "Events accepted, by source and kind.", ("source", "kind"),
    fed_by="every source",
)
EVENTS_REJECTED = Family(
    "mlsidecar_events_rejected_total", COUNTER, "Events rejected, by source and reason.",
    ("source", "reason"), fed_by="every source",
)
EVENTS_DROPPED = Family(
    "mlsidecar_events_dropped_total", COUNTER, "Events dropped before parsing, by source and reason.",
    ("source", "reason"), fed_by="socket source",
)
LINES_READ = Family(
    "mlsidecar_source_bytes_read_total", COUNTER, "Bytes read from a source.", ("source",),
    unit="bytes", fed_by="every source",
)
BYTES_BEHIND = Family(
    "mlsidecar_source_bytes_behind", GAUGE, "Bytes written to a tailed file but not read yet.",
    ("source",), unit="bytes", fed_by="file source", expire_after=600.0,
)
SOURCE_GAPS = Family(
    "mlsidecar_source_gaps_total", COUNTER,
    "Parts of a source that could not be read and were skipped, never guessed (a generation deleted "
    "or truncated before it was read, logrotate's copytruncate window, positions lost), by reason.",
    ("source", "reason"), fed_by="file source",
)
STATE_FAULTS = Family(
    "mlsidecar_state_faults_total", COUNTER,
    "Faults found in the state directory and handled (a file moved aside, values found without "
    "positions, a write refused), by worker and kind.", ("worker", "kind"), fed_by="every worker",
)
SERIES_LIMITED = Family(
    "mlsidecar_series_limited_total", COUNTER,
    "Updates not applied because the metric reached its series limit.", ("metric",),
    fed_by="mapping",
)
WORKER_RESTARTS = Family(
    "mlsidecar_worker_restarts_total", COUNTER, "Worker processes restarted by the supervisor.",
    ("worker",), fed_by="supervisor",
)
WORKER_UP = Family(
    "mlsidecar_worker_up", GAUGE, "1 when the worker process is running.", ("worker",),
    fed_by="supervisor",
)
BUILD_INFO = Family(
    "mlsidecar_build_info", GAUGE, "Always 1; labels say which build is running.",
    ("version", "python"), fed_by="supervisor",
)
COLLECTOR_UP = Family(
    "mlsidecar_collector_up", GAUGE, "1 when the collector's last run succeeded.", ("collector",),
    fed_by="collectors",
)
COLLECTOR_DURATION = Family(
    "mlsidecar_collector_duration_seconds", GAUGE, "How long the collector's last run took.",
    ("collector",), unit="seconds", fed_by="collectors",
)
SCRAPE_FILES_SKIPPED = Family(
    "mlsidecar_multiproc_files_skipped_total", COUNTER,
    "Times a metric file was skipped while serving a scrape (empty, truncated or corrupt).",
    (), fed_by="server",
)
SCRAPE_KEYS_SKIPPED = Family(
    "mlsidecar_multiproc_keys_skipped_total", COUNTER,
    "Series keys in a multiprocess file left out of the exposition, by reason (bad key, invalid name, "
    "clashing family).", ("reason",), fed_by="server",
)
SCRAPES = Family(
    "mlsidecar_scrapes_total", COUNTER, "Scrapes of /metrics answered.", (), fed_by="server",
)
SCRAPE_RENDERS = Family(
    "mlsidecar_scrape_renders_total", COUNTER,
    "Times the exposition was rendered; concurrent scrapes share one render.", (), fed_by="server",
)
HTTP_REJECTED = Family(
    "mlsidecar_http_rejected_total", COUNTER,
    "HTTP connections or requests refused by a server limit, by reason.", ("reason",), fed_by="server",
)
SOCKET_CONNECTIONS_REJECTED = Family(
    "mlsidecar_socket_connections_rejected_total", COUNTER,
    "Stream connections closed at accept because a limit was reached, by source and reason.",
    ("source", "reason"), fed_by="socket source",
)

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (PREDICTIONS, PREDICTION_LATENCY, PREDICTION_CONFIDENCE,
    PREDICTION_REQUEST_SIZE, PREDICTION_RESPONSE_SIZE, ACCURACY, PRECISION, RECALL, FEATURE_DRIFT,
    DATA_QUALITY, DEPLOYMENTS, MODEL_SIZE, TRAINING_EPOCH, TRAINING_LOSS, TRAINING_LOSS_NONFINITE,
    TRAINING_LR, TRAINING_BATCH, TRAINING_SAMPLES, TRAINING_ITERATIONS, TRAINING_GPU_UTIL, TRAINING_MEMORY,
    CHECKPOINT_SIZE, CHECKPOINT_DURATION, TRAINING_ACTIVE_JOBS, TRAINING_RUN_ACTIVE, TRAINING_RUN_START,
    TRAINING_RUN_DURATION, PIPELINE_RECORDS, PIPELINE_LATENCY, PIPELINE_QUEUE, PIPELINE_ERROR_RATE,
    PIPELINE_FRESHNESS, PIPELINE_DATA_TS, SCHEMA_VIOLATIONS, EVENTS, EVENTS_REJECTED, EVENTS_DROPPED,
    LINES_READ, BYTES_BEHIND, SOURCE_GAPS, STATE_FAULTS, SERIES_LIMITED, WORKER_RESTARTS, WORKER_UP,
    BUILD_INFO, COLLECTOR_UP, COLLECTOR_DURATION, SCRAPE_FILES_SKIPPED, SCRAPE_KEYS_SKIPPED, SCRAPES,
    SCRAPE_RENDERS, HTTP_REJECTED, SOCKET_CONNECTIONS_REJECTED)
