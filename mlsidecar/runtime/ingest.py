"""The ingest path: lines from any source to the metric files, one way.

A source (the file tailer, the unix sockets) only produces: chunks of lines
``(source name, lines)``, the positions it has (a tailer's, for the journal),
the counts only it can make (lines dropped by a full queue, lines over
``sources.max_line_bytes``, bytes read) and a wait it can be woken from.
:func:`run` drives any of them: :class:`Ingest` decodes each line once,
validates and maps it into a :class:`~mlsidecar.store.Batch` (a chunk's
predictions pre-aggregated by the mapper); a flush applies the batch to the
:class:`~mlsidecar.store.SeriesWriter` and journals it together with the
source's positions, so a crash neither loses nor re-counts a line. The flush
cadence, the analytics tick, the status report and the counting of oversized
lines are the same for every source.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import catalogue as C
from .. import events
from ..catalogue import Family
from ..config import Config
from ..events import OVERSIZED, Rejected, not_an_object, undecodable
from ..logs import RateLimitedLog
from ..mapping import Mapper
from ..store import FAULT_WRITE, Batch, Labels, SeriesWriter, StateWriteError
from .state import StateDir

log = logging.getLogger("mlsidecar.worker")

INTERNAL = "internal_error"  # the rejection reason of a line that met a bug of ours
CAUGHT_UP_FLUSH = 0.1  # seconds between flushes once a source is read to its end after a burst
BURST_BYTES = 1 << 20  # read since the last flush: a burst, whose last lines are flushed at once
STATUS_EVERY = 3.0  # seconds between status writes when only counts changed (the server's STALE_AFTER is 10)
IDLE_TICK = 1.0  # seconds between analytics ticks with nothing read (windows expire; nothing is new)
# Seconds between walks of the writer's series for expired ones: a walk visits every series (with
# 10,000 files, 130,000 of them: 0.2 s), and expiry times are minutes.
FORGET_EVERY = 30.0
PREVIEW_BYTES = 32


def preview(line: bytes) -> str:
    """What a log line may show of a workload's line: a short, escaped prefix and its length.

    Event lines can carry what must not reach a log pipeline (a token, a password hash in a
    line that was never meant for us); the reason and the length are what an operator needs.
    """
    head = repr(bytes(line[:PREVIEW_BYTES]))
    return f"{head}{'...' if len(line) > PREVIEW_BYTES else ''} ({len(line)} bytes)"


class Stop:
    """Set by SIGTERM/SIGINT: finish the chunk in hand, flush, exit."""

    def __init__(self) -> None:
        self.requested = False
        # The event the worker's loop waits on; a worker hands in its source's (the tailer's,
        # the socket reader's) so that a SIGTERM ends the wait at once.
        self.wake = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads, not us

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True
        self.wake.set()


def make_writer(cfg: Config, state: StateDir, identity: str, journal: bool = True) -> SeriesWriter:
    """The series writer of a worker, with the configured limits and expiry."""
    writer = SeriesWriter(
        state.metrics, identity, state.journal(identity) if journal else None,
        static_labels=cfg.static_labels(), series_limit=cfg.limits.max_series_per_metric,
        catalogue=C.builtin(), expiry=C.builtin().expiry(dict(cfg.expire)),
        # Ingest workers share limits.max_series; collectors' series are bounded by the hardware.
        total_limit=cfg.series_share() if identity.startswith("tail-") or identity == "socket" else None,
    )
    limited_log = RateLimitedLog(log)

    def on_limited(name: str) -> None:
        if name == C.SERIES_LIMITED.name:
            return  # the counter of refused series is itself full: counting it would recurse
        writer.inc(C.SERIES_LIMITED, (name,))
        limited_log.warning(name, "%s reached its limit of %d series (limits.max_series_per_metric), "
                            "or this worker's share of limits.max_series (%d) is used; new series "
                            "are dropped", name, cfg.limits.max_series_per_metric,
                            writer.total_limit or 0)

    writer.on_limited = on_limited
    for kind, _message in writer.faults:  # already logged by the writer
        writer.inc(C.STATE_FAULTS, (identity, kind))
    return writer


class StateHealth:
    """Flushes that the state dir refuses (full disk, read-only): logged, counted, reported.

    The flush is kept in memory and tried again at the next one, so nothing is lost and
    nothing counted twice; meanwhile the worker's status carries the error, which makes
    /readyz fail with it.
    """

    def __init__(self, identity: str, writer: SeriesWriter):
        self.identity = identity
        self.writer = writer
        self.error = ""
        self.log = RateLimitedLog(log, interval=60.0)

    def flush(self, state: Any = None, entries: dict[str, dict[str, Any] | None] | None = None,
              rewrite: bool = False) -> bool:
        try:
            self.writer.flush(state, entries=entries, rewrite=rewrite)
        except StateWriteError as exc:
            if not self.error:
                self.writer.inc(C.STATE_FAULTS, (self.identity, FAULT_WRITE))
            self.error = f"state dir: {exc.strerror or exc}; values kept in memory, retrying"
            self.log.warning("state", "%s: %s; nothing is lost, retrying at every flush", self.identity,
                             exc.strerror or exc)
            return False
        if self.error:
            log.warning("%s: the state dir takes writes again; flushed", self.identity)
            self.error = ""
        return True


def make_mapper(cfg: Config, batch: Batch) -> Mapper:
    """The mapper of an ingest worker: the built-in catalogue, the user's mappings, analytics."""
    from ..analytics import engine

    length = cfg.limits.label_value_length
    analytics = engine.build(cfg.analytics, length)  # None settings: the defaults
    return Mapper(batch, metric_prefix=cfg.metric_prefix, user_mappings=cfg.mappings,
                  label_value_length=length, catalogue=C.builtin(),
                  metric_buckets=cfg.metric_buckets or C.LATENCY_BUCKETS, analytics=analytics,
                  error_rate_window=getattr(cfg.analytics, "error_rate_window", 300.0),
                  max_user_metrics=cfg.limits.max_user_metrics,
                  # An error-rate window beyond what the worker may export would be kept for nothing.
                  max_error_rates=min(cfg.limits.max_series_per_metric, cfg.series_share()))


class Ingest:
    """Lines in, batch updates out: decode, validate, map, count accepted kinds and rejections."""

    def __init__(self, cfg: Config, mapper: Mapper, batch: Batch, writer: SeriesWriter):
        self.cfg = cfg
        self.mapper = mapper
        # Training runs in progress before a restart, and the user families found in the files.
        mapper.restore(writer.values, writer.user_families)
        self.batch = batch
        self.writer = writer
        self.max_line = cfg.sources.max_line_bytes
        self.rejects = RateLimitedLog(log)
        self.accepted = 0
        self.rejected = 0
        # Counters whose labels are a fixed set start at 0, so that rate() and increase() see the
        # first rejection and the first refused series: every reason per source, every built-in
        # family the series limit can refuse.
        self.sources_seen: set[str] = set()
        for fam in [*writer.catalogue.values(), *writer.user_families]:
            if fam.fed_by.split(" ", 1)[0] in events.KINDS:
                writer.inc(C.SERIES_LIMITED, (fam.name,), 0)

    def lines(self, lines: list[bytes], source: str) -> None:
        """Map a chunk of lines; count accepted kinds and rejection reasons in the batch."""
        handle = self.mapper.handle
        # Predictions are most lines: straight to their handler unless a user mapping extends them.
        prediction = None if "prediction" in self.mapper.user_mappings else self.mapper.prediction
        loads = orjson.loads
        max_line = self.max_line
        kinds: dict[str, int] = {}
        reasons: dict[str, int] = {}
        predictions = 0
        for line in lines:
            if len(line) > max_line:
                reasons[OVERSIZED] = reasons.get(OVERSIZED, 0) + 1
                self.rejects.warning(OVERSIZED, "%s: line of %d bytes over the %d-byte limit skipped",
                                     source, len(line), max_line)
                continue
            try:
                ev = loads(line)
                if type(ev) is not dict:
                    raise not_an_object(ev)
                if prediction is not None and ev.get("event") == "prediction":
                    prediction(ev)
                    predictions += 1
                    continue
                kind = handle(ev)
            except Exception as exc:  # noqa: BLE001 - classified in rejection(); nothing stops the stream
                reason = self.rejection(line, exc, source)
                if reason is not None:
                    reasons[reason] = reasons.get(reason, 0) + 1
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
        if predictions:
            kinds["prediction"] = kinds.get("prediction", 0) + predictions
        batch = self.batch
        for kind, n in kinds.items():
            batch.inc(C.EVENTS, (source, kind), n)
            self.accepted += n
        if source not in self.sources_seen:
            self.zero_source(source)
        for reason, n in reasons.items():
            batch.inc(C.EVENTS_REJECTED, (source, reason), n)
            self.rejected += n

    def rejection(self, line: bytes, exc: Exception, source: str) -> str | None:
        """The one place a failed line is classified, from the exception of its one parse and
        mapping: the reason it is counted under (None: a blank line, which is no event), logged
        at most once a minute per reason with a short preview of the line."""
        if isinstance(exc, orjson.JSONDecodeError):
            if not line.strip():
                return None
            rejected, what = undecodable(exc), "line"
        elif isinstance(exc, Rejected):
            rejected, what = exc, "event"
        else:  # a bug of ours: counted, logged with its traceback, and the stream goes on
            self.rejects.warning(INTERNAL, "%s: internal error on %s\n%s", source, preview(line),
                                 traceback.format_exc())
            return INTERNAL
        self.rejects.warning(rejected.reason, "%s: rejected %s (%s): %s", source, what, rejected,
                             preview(line))
        return rejected.reason

    def zero_source(self, source: str) -> None:
        """Every rejection reason of a new source, at 0."""
        self.sources_seen.add(source)
        for reason in events.REASONS + (INTERNAL,):
            self.batch.inc(C.EVENTS_REJECTED, (source, reason), 0)

    def reject(self, source: str, reason: str, n: int = 1) -> None:
        """Count ``n`` lines the source itself refused (over the line limit) for ``reason``."""
        if source not in self.sources_seen:
            self.zero_source(source)
        self.batch.inc(C.EVENTS_REJECTED, (source, reason), n)
        self.rejected += n


# --- the loop ------------------------------------------------------------------------------

Chunk = tuple[str, list[bytes]]  # (source name: a file path, a socket path; its lines)
Positions = tuple[dict[str, Any], dict[str, dict[str, Any] | None]]  # journal state, changed entries
Sample = tuple[Family, Labels, float]


@dataclass
class Counts:
    """What a source counted itself since it was last asked."""

    progressed: bool = False  # something was read (lines, or part of one): not idle
    nbytes: int = 0  # bytes read, for the burst rule of the flush cadence
    oversized: dict[str, int] = field(default_factory=dict)  # lines over max_line_bytes, per source name
    increments: list[Sample] = field(default_factory=list)  # its own counters (dropped, lines read)


class Source(Protocol):
    """What :func:`run` needs of a source. A source never touches the batch or the writer."""

    role: str  # "tail" or "socket": the role in the worker's status
    idle_wait: float  # longest wait, in seconds, with nothing to flush
    settle: float  # seconds slept after a wake-up, so that many small writes are read as one chunk

    @property
    def wake(self) -> threading.Event:
        """Set when there is something to read; SIGTERM sets it too."""
        ...

    def read(self) -> Iterator[Chunk]:
        """The chunks ready now (bounded: the loop flushes and reports between reads)."""
        ...

    def drain(self) -> Iterator[Chunk]:
        """At the stop: the chunks already taken in, which must still be counted."""
        ...

    def counts(self) -> Counts:
        """Its own counts since the last call (then reset)."""
        ...

    def positions(self, final: bool) -> Positions | None:
        """What the journal keeps with this flush's values (None: a source without positions);
        ``final``: the last flush before the stop."""
        ...

    def flushed(self, ok: bool) -> None:
        """The flush that followed the last :meth:`counts` is on disk (``ok``) or was refused."""
        ...

    def every_second(self, now: float) -> Iterable[Sample]:
        """Housekeeping once a second; gauges to write (a file's bytes behind)."""
        ...

    def status(self) -> dict[str, Any]:
        """Its part of the worker's status (/readyz, the status page)."""
        ...

    def status_shape(self) -> tuple[Any, ...]:
        """What, when it changes, makes the status be written at once (not only every STATUS_EVERY)."""
        ...

    def wait(self, timeout: float) -> None:
        """Sleep until :attr:`wake` is set or ``timeout`` passes."""
        ...

    def close(self) -> None:
        ...


def run(identity: str, source: Source, ingest: Ingest, health: StateHealth, state: StateDir,
        stop: Stop, flush_every: float, clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep) -> None:
    """Drive ``source`` until ``stop``: read, map, flush, tick, report; flush at the end.

    Busy: a flush every ``flush_every``. Caught up after a burst: what is pending is flushed at
    once (at most every CAUGHT_UP_FLUSH), so its last lines show at once. A trickle is flushed
    every ``flush_every``: a flush that journals positions is most of the cost at a steady load.
    With analytics on, the mapper is ticked (and so flushed) every IDLE_TICK even when idle:
    its windows keep expiring.
    """
    batch, writer, mapper = ingest.batch, ingest.writer, ingest.mapper
    last_flush = last_status = last_status_write = last_forget = 0.0
    last_flush_bytes = unflushed = 0
    last_shape: tuple[Any, ...] | None = None

    def fold(counts: Counts) -> None:
        nonlocal unflushed
        unflushed += counts.nbytes
        for name, n in counts.oversized.items():
            ingest.reject(name, OVERSIZED, n)
        for fam, labels, amount in counts.increments:
            batch.inc(fam, labels, amount)

    def flush(now: float, final: bool = False) -> None:
        mapper.tick(now)  # folds the chunk's predictions into the batch, expires windows
        if not (batch or writer.has_pending() or final):
            source.flushed(True)  # nothing new: what the source handed over is on disk already
            return
        writer.apply(batch, now)
        positions = source.positions(final)
        if positions is None:
            ok = health.flush(rewrite=final)
        else:  # the positions go to the journal in the same record as the values read up to them
            ok = health.flush(positions[0], entries=positions[1], rewrite=final)
        source.flushed(ok)

    try:
        while not stop.requested:
            for name, lines in source.read():
                ingest.lines(lines, name)
                if stop.requested:
                    break
            counts = source.counts()
            fold(counts)
            progressed = counts.progressed
            now = clock()
            pending = bool(batch) or unflushed != 0
            burst = unflushed >= BURST_BYTES or last_flush_bytes >= BURST_BYTES  # in one, or just after
            due = CAUGHT_UP_FLUSH if pending and not progressed and burst else flush_every
            if not (pending or progressed or writer.has_pending()):
                due = IDLE_TICK
            if now - last_flush >= due and (pending or not last_flush or mapper.analytics):
                flush(now)
                last_flush, last_flush_bytes, unflushed = now, unflushed, 0
                pending = False
            if now - last_status >= 1.0:
                if now - last_forget >= FORGET_EVERY:
                    writer.forget_expired(now)
                    last_forget = now
                for fam, labels, value in source.every_second(now):
                    writer.set_gauge(fam, labels, value, now)
                shape = (health.error, *source.status_shape())
                # Counts alone change every second under load: they are written every STATUS_EVERY
                # (the heartbeat /readyz reads); a change of shape (a new file, an error) at once.
                if shape != last_shape or now - last_status_write >= STATUS_EVERY:
                    write_status(state, identity, source.role, {
                        **source.status(), "accepted": ingest.accepted, "rejected": ingest.rejected,
                        **({"error": health.error} if health.error else {})})
                    last_shape, last_status_write = shape, now
                last_status = now
            if not progressed:
                # Idle: sleep until the source wakes us, a pending flush is due, or its idle wait.
                wake_in = last_flush + due - clock() if pending else source.idle_wait
                source.wait(max(0.0, wake_in))
                if source.settle and not stop.requested:
                    sleep(source.settle)
        for name, lines in source.drain():
            ingest.lines(lines, name)
        fold(source.counts())
        flush(clock(), final=True)
    finally:
        source.close()
        writer.close()
        log.info("%s stopped after %d events (%d rejected)", identity, ingest.accepted, ingest.rejected)


def write_status(state: StateDir, identity: str, role: str, extra: dict[str, Any]) -> None:
    """Report for /readyz and the status page; a state dir that refuses it is logged, not fatal."""
    try:
        state.write_status(identity, {"identity": identity, "role": role, "pid": os.getpid(),
                                      "updated": time.time(), **extra})
    except OSError as exc:
        _status_log.warning("status", "%s: cannot write its status: %s", identity, exc)


_status_log = RateLimitedLog(log, interval=60.0)
