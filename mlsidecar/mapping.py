"""Events to metric updates: the built-in kinds, then the user's mappings.

A :class:`Mapper` validates one event and adds its updates to a
:class:`~mlsidecar.store.Batch`; nothing here touches a file. Each kind has a
small handler that reads its fields through :mod:`mlsidecar.events` helpers,
so a wrong field is rejected with the same reasons everywhere.
"""

from __future__ import annotations

import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from . import catalogue as C
from . import events
from .analytics.scores import classification_scores
from .analytics.window import SlidingRatio
from .catalogue import Catalogue, Family, UserFamilies
from .events import (
    BAD_NAME,
    INVALID_VALUE,
    LABEL_MISMATCH,
    MAX_AMOUNT,
    MISSING_FIELD,
    MISSING_KIND,
    NAME_CLASH,
    TOO_MANY_METRICS,
    UNKNOWN_KIND,
    WRONG_TYPE,
    Rejected,
    amount,
    check_number,
    check_ts,
    label,
    loss_value,
    losses_field,
    mapping_of_numbers,
    number,
    timestamp,
)
from .exemplars import ExemplarStore, check_trace_id
from .fileformat import family_name
from .logs import RateLimitedLog
from .runs import STATUSES as RUN_STATUSES
from .runs import TrainingRuns
from .store import Batch

PREDICTIONS, LATENCY, CONFIDENCE = C.PREDICTIONS, C.PREDICTION_LATENCY, C.PREDICTION_CONFIDENCE
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_EVAL_SAMPLES = 1_000_000
ERROR_RATE_INTERVAL = 1.0  # seconds between recomputations of ml_pipeline_error_rate
INTERNAL = "internal_error"  # a bug of ours (as the workers count it)
_bug_log = RateLimitedLog(logging.getLogger("mlsidecar.mapping"))


class Mapper:
    """Maps events of every built-in kind, and user mappings, into a batch.

    ``user_mappings`` is a list of :class:`mlsidecar.usermap.UserMapping`;
    ``metric_prefix`` is put in front of the names of ``metric`` events;
    ``analytics`` (optional) sees every accepted event and sets derived gauges.

    ``catalogue`` holds the built-in families (:func:`mlsidecar.catalogue.builtin` unless
    given); the families of user metrics live in this mapper's own ``user_families``
    (``restore`` adds those a writer found in its files).
    """

    def __init__(self, batch: Batch, *, metric_prefix: str = "", user_mappings=(),
                 metric_buckets: tuple[float, ...] = C.LATENCY_BUCKETS, analytics=None,
                 error_rate_window: float = 300.0, clock: Callable[[], float] = time.time,
                 max_user_metrics: int = 500, max_error_rates: int = 10000,
                 label_value_length: int = events.DEFAULT_LABEL_LENGTH,
                 catalogue: Catalogue | None = None):
        self.catalogue = catalogue if catalogue is not None else C.builtin()
        self.user_families = UserFamilies(self.catalogue)
        self.batch = batch
        self.label_length = label_value_length  # limits.label_value_length
        self.metric_prefix = metric_prefix
        self.user_mappings: dict[str, list[Any]] = {}
        for m in user_mappings:
            self.user_mappings.setdefault(m.event, []).append(m)
        self.metric_buckets = metric_buckets
        self.analytics = analytics
        self.error_rate_window = error_rate_window
        self.clock = clock
        self.now = clock()
        self._error_rates: dict[tuple[str, str], SlidingRatio] = {}
        # This chunk's predictions per series: (latencies, confidences); see prediction().
        self._records: dict[tuple[str, str, str], tuple[list, list]] = {}
        # The latest traced latency per bucket (a prediction's trace_id); set by the ingest worker.
        self.exemplars: ExemplarStore | None = None
        self._dynamic: dict[str, Family] = {}
        self.max_user_metrics = max_user_metrics
        self.max_error_rates = max_error_rates
        self._error_rates_due = 0.0
        self._evict_due = 0.0
        self._error_rates_dirty: set[tuple[str, str]] = set()
        self.runs = TrainingRuns()
        # This chunk's optional payload sizes per (model, version): (request bytes, response bytes).
        self._sizes: dict[tuple[str, str], tuple[list, list]] = {}
        self.handlers: dict[str, Callable[[dict], None]] = {
            "prediction": self.prediction, "evaluation": self.evaluation, "drift": self.drift,
            "data_quality": self.data_quality, "deployment": self.deployment,
            "training": self.training, "batch": self.batch_event, "checkpoint": self.checkpoint,
            "pipeline": self.pipeline, "queue": self.queue, "freshness": self.freshness,
            "schema_violation": self.schema_violation, "metric": self.metric,
        }
        if analytics is not None:
            for kind, handler in analytics.handlers().items():
                self.handlers.setdefault(kind, handler)

    def _label(self, ev: dict, name: str, default: str | None = None) -> str:
        return label(ev, name, default, self.label_length)

    def _cap(self, v: str) -> str:
        """A label value from a name inside an event (a loss type, a queue), cut to the limit."""
        if type(v) is not str:
            raise Rejected(WRONG_TYPE, "names must be strings")
        return v[:self.label_length]

    def restore(self, values: dict, user_families: Iterable[Family] = ()) -> None:
        """Pick up what a previous worker left in the metric files: training runs in progress,
        and the user families the writer rebuilt from its keys (the very objects its restored
        series are keyed by)."""
        self.runs.restore(values)
        for fam in user_families:
            try:
                self.user_families.add(fam)
            except ValueError as exc:  # defined here first, differently: this mapper's stands
                _bug_log.warning("restore", "user metric %s not restored: %s", fam.name, exc)

    def handle(self, ev: dict) -> str:
        """Map one event; return its kind. Raises :class:`Rejected`."""
        kind = ev.get("event")
        if type(kind) is not str:
            if kind is None:
                raise Rejected(MISSING_KIND, "'event' is required")
            raise Rejected(WRONG_TYPE, "'event' must be a string")
        handler = self.handlers.get(kind)
        if handler is None:
            users = self.user_mappings.get(kind)
            if users:
                return self._user(kind, ev, users)
            raise Rejected(UNKNOWN_KIND, f"unknown event kind {kind[:60]!r}")
        check_ts(ev)
        handler(ev)
        users = self.user_mappings.get(kind)
        if users:
            self._user(kind, ev, users)
        return kind

    def tick(self, now: float) -> None:
        """Called once per chunk, before the batch is applied: fold the per-chunk
        prediction records into the batch, refresh the clock and the derived gauges.

        Never raises: the lines of the chunk are already read, so an exception here
        would make the worker re-read (and fail on) them for ever. A bug is logged,
        the chunk's unfolded predictions are counted as ``internal_error`` and dropped.
        """
        try:
            if self.analytics is not None and self._records:  # version comparisons read them first
                self.analytics.records(self._records, now)
            self._fold_predictions()
            if self.exemplars is not None:
                self.exemplars.flush()
            self.now = now
            self._error_rates_tick(now)
            if self.analytics is not None:
                self.analytics.tick(self.batch, now)
        except Exception:  # noqa: BLE001 - see the docstring
            lost = sum(len(lat) for lat, _ in self._records.values())
            self._records.clear()
            self.now = now
            self.batch.inc(C.EVENTS_REJECTED, ("mapper", INTERNAL), max(lost, 1))
            _bug_log.warning("tick", "internal error while folding a chunk (%d predictions "
                             "dropped)\n%s", lost, traceback.format_exc())

    # --- model -----------------------------------------------------------------
    def prediction(self, ev: dict) -> None:
        # The hot path: most events are predictions. Per event only the values are checked and
        # appended to this chunk's record of the series; tick() turns them into counts, bucket
        # counts and sums with C-level Counter/sum. Label values are checked when a series is
        # first seen in a chunk: only checked values ever become a record's key.
        get = ev.get
        labels: tuple[Any, Any, Any] = (get("model"), get("version", "unknown"), get("status", "success"))
        try:
            rec = self._records.get(labels)
        except TypeError:  # an unhashable label value: a list or an object
            rec = None
        latency = get("latency_s")
        if type(latency) is not float or not 0.0 <= latency <= MAX_AMOUNT:
            latency = amount(ev, "latency_s")
        conf = get("confidence")
        if conf is not None and (type(conf) is not float or not 0.0 <= conf <= 1.0):
            conf = check_number(conf, "confidence", 0.0, 1.0)
        check_ts(ev)
        trace_id = get("trace_id")
        if trace_id is not None:
            check_trace_id(trace_id)
        if rec is None:
            labels = (self._label(ev, "model"), self._label(ev, "version", "unknown"),
                      self._label(ev, "status", "success"))
            rec = self._records.get(labels)
        req, resp = get("request_bytes"), get("response_bytes")
        if req is not None or resp is not None:
            req, resp = amount(ev, "request_bytes", False), amount(ev, "response_bytes", False)
        if self.analytics is not None:  # it may reject the event: before anything is counted
            self.analytics.on_prediction(ev, labels[0], labels[1], self.now)
        if rec is None:
            rec = self._records[labels] = ([], [])
        rec[0].append(latency)
        if conf is not None:
            rec[1].append(conf)
        if trace_id is not None and self.exemplars is not None:
            self.exemplars.record(LATENCY, labels[:2], latency, trace_id, self.clock())
        if req is not None or resp is not None:
            sizes = self._sizes.get(labels[:2])
            if sizes is None:
                sizes = self._sizes[labels[:2]] = ([], [])
            if req is not None:
                sizes[0].append(req)
            if resp is not None:
                sizes[1].append(resp)

    def _fold_predictions(self) -> None:
        """This chunk's prediction records into the batch: counts, bucket counts, sums."""
        batch = self.batch
        for mv, (requests, responses) in self._sizes.items():
            if requests:
                batch.observe_all(C.PREDICTION_REQUEST_SIZE, mv, requests)
            if responses:
                batch.observe_all(C.PREDICTION_RESPONSE_SIZE, mv, responses)
        self._sizes.clear()
        for labels, (latencies, confidences) in self._records.items():
            if not latencies:
                continue
            mv = labels[:2]
            if not batch.has_counter(PREDICTIONS, labels):
                batch.ensure(PREDICTIONS, (*mv, "success"))
                batch.ensure(PREDICTIONS, (*mv, "error"))
            batch.inc(PREDICTIONS, labels, len(latencies))
            batch.observe_all(LATENCY, mv, latencies)
            if confidences:
                batch.observe_all(CONFIDENCE, mv, confidences)
        self._records.clear()

    def evaluation(self, ev: dict) -> None:
        key = (self._label(ev, "model"), self._label(ev, "version", "unknown"),
               self._label(ev, "dataset", "unknown"))
        y_true, y_pred = ev.get("y_true"), ev.get("y_pred")
        if y_true is not None or y_pred is not None:
            if type(y_true) is not list or type(y_pred) is not list:
                raise Rejected(WRONG_TYPE, "'y_true' and 'y_pred' must both be arrays")
            if len(y_true) != len(y_pred) or not y_true:
                raise Rejected(INVALID_VALUE, "'y_true' and 'y_pred' must be non-empty and of equal length")
            if len(y_true) > MAX_EVAL_SAMPLES:
                raise Rejected(INVALID_VALUE, f"at most {MAX_EVAL_SAMPLES} samples per evaluation")
            for v in y_true + y_pred:
                if type(v) not in (str, int, bool):
                    raise Rejected(WRONG_TYPE, "class labels must be strings or integers")
            acc, prec, rec = classification_scores(y_true, y_pred)
            self.batch.set(C.ACCURACY, key, acc)
            self.batch.set(C.PRECISION, key, prec)
            self.batch.set(C.RECALL, key, rec)
            return
        scores = [(fam, number(ev, f, required=False, minimum=0.0, maximum=1.0))
                  for fam, f in ((C.ACCURACY, "accuracy"), (C.PRECISION, "precision"), (C.RECALL, "recall"))]
        if all(v is None for _, v in scores):
            raise Rejected(MISSING_FIELD, "one of accuracy/precision/recall or y_true+y_pred is required")
        for fam, v in scores:
            if v is not None:
                self.batch.set(fam, key, v)

    def drift(self, ev: dict) -> None:
        key = (self._label(ev, "model"), self._label(ev, "version", "unknown"), self._label(ev, "feature"))
        self.batch.set(C.FEATURE_DRIFT, key, number(ev, "score"))

    def data_quality(self, ev: dict) -> None:
        model, version = self._label(ev, "model"), self._label(ev, "version", "unknown")
        scores = mapping_of_numbers(ev, "scores")
        for metric, v in scores.items():
            self.batch.set(C.DATA_QUALITY, (model, version, self._cap(metric)), v)

    def deployment(self, ev: dict) -> None:
        key = (self._label(ev, "model"), self._label(ev, "version", "unknown"))
        size = amount(ev, "size_bytes", required=False)
        self.batch.inc(C.DEPLOYMENTS, key)
        if size is not None:
            self.batch.set(C.MODEL_SIZE, key, size)

    # --- training ----------------------------------------------------------------
    def training(self, ev: dict) -> None:
        job = (self._label(ev, "job"),)
        epoch = number(ev, "epoch", required=False, minimum=0)
        lr = number(ev, "learning_rate", required=False, minimum=0)
        losses = losses_field(ev, "losses")
        loss = ev.get("loss")
        loss = None if loss is None else loss_value(loss, "loss")
        status = ev.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise Rejected(INVALID_VALUE if type(status) is str else WRONG_TYPE,
                           f"'status' must be one of {', '.join(RUN_STATUSES)}")
        run_duration = amount(ev, "duration_s", required=False)
        if epoch is None and lr is None and losses is None and loss is None and status is None:
            raise Rejected(MISSING_FIELD, "one of epoch, losses, loss, learning_rate, status is required")
        if status is not None:
            self.runs.event(self.batch, job[0], status, timestamp(ev) or self.now, run_duration)
        if epoch is not None:
            self.batch.set(C.TRAINING_EPOCH, job, epoch)
        if lr is not None:
            self.batch.set(C.TRAINING_LR, job, lr)
        if loss is not None:
            self._loss(job + ("train",), loss)
        for loss_type, v in (losses or {}).items():
            self._loss(job + (self._cap(loss_type),), v)

    def _loss(self, key: tuple, v: float) -> None:
        """Export the loss as it is (NaN and infinities too) and count the non-finite ones,
        from 0 so that increase() sees the first."""
        self.batch.set(C.TRAINING_LOSS, key, v)
        self.batch.inc(C.TRAINING_LOSS_NONFINITE, key, 0 if math.isfinite(v) else 1)

    def batch_event(self, ev: dict) -> None:
        job = (self._label(ev, "job"),)
        duration = amount(ev, "duration_s")
        size = amount(ev, "batch_size", required=False)
        self.batch.observe(C.TRAINING_BATCH, job, duration)
        self.batch.inc(C.TRAINING_ITERATIONS, job)
        if size is not None:
            self.batch.inc(C.TRAINING_SAMPLES, job, size)

    def checkpoint(self, ev: dict) -> None:
        job = (self._label(ev, "job"),)
        size = number(ev, "size_bytes", minimum=0)
        duration = amount(ev, "duration_s", required=False)
        self.batch.set(C.CHECKPOINT_SIZE, job, size)
        if duration is not None:
            self.batch.observe(C.CHECKPOINT_DURATION, job, duration)

    # --- pipeline ------------------------------------------------------------------
    def pipeline(self, ev: dict) -> None:
        pipe, stage = self._label(ev, "pipeline"), self._label(ev, "stage")
        status = self._label(ev, "status", "success")
        records = amount(ev, "records", required=False)
        records = 1 if records is None else records
        duration = amount(ev, "duration_s", required=False)
        if not self.batch.has_counter(C.PIPELINE_RECORDS, (pipe, stage, status)):
            self.batch.ensure(C.PIPELINE_RECORDS, (pipe, stage, "success"))
            self.batch.ensure(C.PIPELINE_RECORDS, (pipe, stage, "error"))
        self.batch.inc(C.PIPELINE_RECORDS, (pipe, stage, status), records)
        if duration is not None:
            self.batch.observe(C.PIPELINE_LATENCY, (pipe, stage), duration)
        ratio = self._error_rates.get((pipe, stage))
        if ratio is None:
            ratio = self._new_error_rate((pipe, stage))
            if ratio is None:
                return
        ratio.add(self.now, records, records if status == "error" else 0)
        self._error_rates_dirty.add((pipe, stage))

    def _new_error_rate(self, key: tuple[str, str]) -> SlidingRatio | None:
        """A window for a new stage; None (counted as limited) when there are too many."""
        rates = self._error_rates
        if len(rates) >= self.max_error_rates:
            if self.now >= self._evict_due:  # forget the windows that saw nothing lately
                self._evict_due = self.now + ERROR_RATE_INTERVAL
                for idle in [k for k, r in rates.items() if r.ratio(self.now) is None]:
                    del rates[idle]
            if len(rates) >= self.max_error_rates:
                self.batch.inc(C.SERIES_LIMITED, (C.PIPELINE_ERROR_RATE.name,))
                return None
        ratio = self._error_rates[key] = SlidingRatio(self.error_rate_window)
        return ratio

    def _error_rates_tick(self, now: float) -> None:
        """Set the error-rate gauges that changed: those of this chunk's stages at once, the
        others (whose old records leave the window) at most every ERROR_RATE_INTERVAL. A
        window that saw nothing for a whole window length is forgotten (its gauge stays)."""
        if now < self._error_rates_due:
            keys: Iterable[tuple[str, str]] = self._error_rates_dirty
        else:
            self._error_rates_due = now + ERROR_RATE_INTERVAL
            keys = list(self._error_rates)
        idle = []
        for key in keys:
            ratio = self._error_rates.get(key)
            if ratio is None:
                continue
            r = ratio.ratio(now)
            if r is None:
                idle.append(key)
            elif r != ratio.published:
                ratio.published = r
                self.batch.set(C.PIPELINE_ERROR_RATE, key, r)
        for key in idle:
            del self._error_rates[key]
        self._error_rates_dirty.clear()

    def queue(self, ev: dict) -> None:
        pipe = self._label(ev, "pipeline")
        for name, size in mapping_of_numbers(ev, "queues").items():
            if size < 0:
                raise Rejected(INVALID_VALUE, f"queue {name!r} has a negative size")
            self.batch.set(C.PIPELINE_QUEUE, (pipe, self._cap(name)), size)

    def freshness(self, ev: dict) -> None:
        key = (self._label(ev, "pipeline"), self._label(ev, "source"))
        data_ts = timestamp(ev, "data_ts")
        if data_ts is None:
            age = number(ev, "age_s", required=False, minimum=0.0)
            if age is None:
                raise Rejected(MISSING_FIELD, "'data_ts' or 'age_s' is required")
            data_ts = (timestamp(ev) or self.now) - age
        self.batch.set(C.PIPELINE_DATA_TS, key, data_ts)

    def schema_violation(self, ev: dict) -> None:
        key = (self._label(ev, "pipeline"), self._label(ev, "violation_type"))
        count = amount(ev, "count", required=False)
        self.batch.inc(C.SCHEMA_VIOLATIONS, key, 1 if count is None else count)

    # --- user metrics ----------------------------------------------------------------
    def metric(self, ev: dict) -> None:
        name = ev.get("name")
        if type(name) is not str:
            raise Rejected(MISSING_FIELD if name is None else WRONG_TYPE, "'name' must be a string")
        name = self.metric_prefix + name
        typ = ev.get("type", "gauge")
        if typ not in (C.COUNTER, C.GAUGE, C.HISTOGRAM):
            raise Rejected(INVALID_VALUE, "'type' must be counter, gauge or histogram")
        # Counter increments and histogram observations are added up: non-negative and bounded
        # (a negative observation would make a histogram's _sum negative, which OpenMetrics forbids).
        value = number(ev, "value") if typ == C.GAUGE else amount(ev, "value")
        labels = ev.get("labels") or {}
        if type(labels) is not dict:
            raise Rejected(WRONG_TYPE, "'labels' must be an object")
        fam = self._family(name, typ, tuple(sorted(labels)))
        values = tuple(self._label(labels, n) for n in fam.labels)
        self._update(fam, values, value)

    def _family(self, name: str, typ: str, label_names: tuple[str, ...], help_text: str = "",
                buckets: tuple[float, ...] | None = None) -> Family:
        """A user family, made on first use (in ``user_families``); its name, type and labels
        are then fixed."""
        name = family_name(name, typ)
        fam = self._dynamic.get(name)
        if fam is None:
            if not METRIC_NAME.match(name):
                raise Rejected(BAD_NAME, f"{name[:80]!r} is not a valid metric name")
            if name in self.catalogue:
                raise Rejected(BAD_NAME, f"{name} is a built-in metric; send its own event kind")
            for n in label_names:
                if not LABEL_NAME.match(n) or n.startswith("__") or n == "le":
                    raise Rejected(BAD_NAME, f"{n[:80]!r} is not a usable label name")
            existing = self.user_families.get(name)
            if existing is not None and (existing.type != typ or existing.labels != label_names):
                raise Rejected(LABEL_MISMATCH, f"{name} exists with type {existing.type} "
                                               f"and labels {list(existing.labels)}")
            if len(self._dynamic) >= self.max_user_metrics:
                raise Rejected(TOO_MANY_METRICS, f"{name}: already {len(self._dynamic)} metrics "
                                                 f"from events (limits.max_user_metrics)")
            if existing is None:
                clash = self.user_families.name_clash(name, typ)
                if clash is not None:
                    raise Rejected(NAME_CLASH, clash)
            fam = existing or self.user_families.add(Family(
                name, typ, help_text or f"User metric {name}.", label_names,
                (buckets or self.metric_buckets) if typ == C.HISTOGRAM else (), fed_by="metric"))
            self._dynamic[name] = fam
        if fam.type != typ or fam.labels != label_names:
            raise Rejected(LABEL_MISMATCH, f"{fam.name} has type {fam.type} and labels {list(fam.labels)}")
        return fam

    def _update(self, fam: Family, values: tuple[str, ...], value: float) -> None:
        if fam.type == C.COUNTER:
            self.batch.inc(fam, values, value)
        elif fam.type == C.GAUGE:
            self.batch.set(fam, values, value)
        else:
            self.batch.observe(fam, values, value)

    def _user(self, kind: str, ev: dict, mappings) -> str:
        matched = False
        for m in mappings:
            if m.matches(ev):
                matched = True
                for out in m.metrics:
                    fam = self._family(out.name, out.type, out.label_names, out.help, out.buckets)
                    self._update(fam, out.label_values(ev, self.label_length), out.value(ev))
        if not matched and kind not in self.handlers:
            raise Rejected(UNKNOWN_KIND, f"no mapping matches this {kind[:60]!r} event")
        return kind
