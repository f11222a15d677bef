"""Worker processes: ingest (file tail or socket) and collectors.

An ingest worker parses chunks of lines with orjson, maps them into a
:class:`~mlsidecar.store.Batch` (plain dicts), and flushes each touched series
once per chunk through its :class:`~mlsidecar.store.SeriesWriter`, together
with the source positions, so a line shows on /metrics well within a second
and a crash neither loses nor re-counts it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback

import orjson

from .. import catalogue as C
from .. import events
from ..config import Config
from ..events import NOT_OBJECT, OVERSIZED, Rejected, parse_line
from ..logs import RateLimitedLog
from ..mapping import Mapper
from ..store import FAULT_POSITIONS, FAULT_WRITE, Batch, SeriesWriter, StateWriteError
from .state import StateDir

log = logging.getLogger("mlsidecar.worker")

INTERNAL = "internal_error"
READ_PAUSE = 0.05  # seconds between reads of a file that is written slowly
CAUGHT_UP_FLUSH = 0.1  # seconds between flushes once the files are read to their end after a burst
BURST_BYTES = 1 << 20  # read since the last flush: a burst, whose last lines are flushed at once
STATUS_EVERY = 3.0  # seconds between status writes when only counts changed (the server's STALE_AFTER is 10)
GAUGE_REFRESH = 60.0  # an unchanged gauge is written again this often (it must not expire)
IDLE_TICK = 1.0  # seconds between analytics ticks with nothing read (windows expire; nothing is new)


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
        # The event the worker's loop waits on; a worker hands in its own (the tailer's, the
        # socket reader's) so that a SIGTERM ends the wait at once.
        self.wake = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads, not us

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True
        self.wake.set()


def make_writer(cfg: Config, state: StateDir, identity: str, journal: bool = True) -> SeriesWriter:
    writer = SeriesWriter(
        state.metrics, identity, state.journal(identity) if journal else None,
        static_labels=cfg.static_labels(), series_limit=cfg.limits.max_series_per_metric,
        expiry=C.builtin().expiry(dict(cfg.expire)),
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

    def flush(self, state=None, **kw) -> bool:
        try:
            self.writer.flush(state, **kw)
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
    from ..analytics import engine

    length = cfg.limits.label_value_length
    analytics = engine.build(cfg.analytics, length)  # None settings: the defaults
    return Mapper(batch, metric_prefix=cfg.metric_prefix, user_mappings=cfg.mappings,
                  label_value_length=length,
                  metric_buckets=cfg.metric_buckets or C.LATENCY_BUCKETS, analytics=analytics,
                  error_rate_window=getattr(cfg.analytics, "error_rate_window", 300.0),
                  max_user_metrics=cfg.limits.max_user_metrics,
                  # An error-rate window beyond what the worker may export would be kept for nothing.
                  max_error_rates=min(cfg.limits.max_series_per_metric, cfg.series_share()))


class Ingest:
    """Lines in, batch updates out: shared by the file and socket workers."""

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
                    if not line.strip():
                        continue  # blank lines are not events
                    raise Rejected(NOT_OBJECT, f"got {type(ev).__name__}")
                if prediction is not None and ev.get("event") == "prediction":
                    prediction(ev)
                    predictions += 1
                    continue
                kind = handle(ev)
            except orjson.JSONDecodeError:
                if not line.strip():
                    continue
                try:
                    parse_line(line)
                except Rejected as r:
                    reasons[r.reason] = reasons.get(r.reason, 0) + 1
                    self.rejects.warning(r.reason, "%s: rejected line (%s): %s", source, r, preview(line))
                continue
            except Rejected as r:
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
                self.rejects.warning(r.reason, "%s: rejected event (%s): %s", source, r, preview(line))
                continue
            except Exception:  # noqa: BLE001 - a bug of ours must not stop the stream
                reasons[INTERNAL] = reasons.get(INTERNAL, 0) + 1
                self.rejects.warning(INTERNAL, "%s: internal error on %s\n%s", source, preview(line),
                                     traceback.format_exc())
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

    def zero_source(self, source: str) -> None:
        """Every rejection reason of a new source, at 0."""
        self.sources_seen.add(source)
        for reason in events.REASONS + (INTERNAL,):
            self.batch.inc(C.EVENTS_REJECTED, (source, reason), 0)

    def reject(self, source: str, reason: str, n: int = 1) -> None:
        if source not in self.sources_seen:
            self.zero_source(source)
        self.batch.inc(C.EVENTS_REJECTED, (source, reason), n)
        self.rejected += n


def run_tail_worker(identity: str, cfg: Config, patterns: list[str]) -> None:
    """Follow ``patterns`` until SIGTERM; the body of a ``tail-*`` worker process."""
    from ..exemplars import ExemplarStore
    from ..sources.tail import Tailer

    stop = Stop()
    state = StateDir(cfg.state_dir)
    writer = make_writer(cfg, state, identity)
    health = StateHealth(identity, writer)
    batch = Batch()
    mapper = make_mapper(cfg, batch)
    mapper.exemplars = ExemplarStore(cfg.state_dir, identity, cfg.static_labels())
    ingest = Ingest(cfg, mapper, batch, writer)
    journal = writer.journal_state or {}
    # The positions: the journal's entries (or, from an older version, its state's "files").
    saved = writer.journal_entries if writer.journal_entries is not None else journal.get("files", {})
    # Values on disk but no positions for them (journal deleted or moved aside as corrupt):
    # reading the files from their start would count every line again. Start at their end.
    positions_lost = writer.journal_status != "ok" and writer.restored_values
    if positions_lost:
        log.warning("%s: metric values exist but the positions they belong to are gone (journal %s); "
                    "reading the files on from their end: lines written while stopped are not "
                    "counted, and nothing is counted twice", identity, writer.journal_status)
        writer.inc(C.STATE_FAULTS, (identity, FAULT_POSITIONS))
    oversized_sources: list[str] = []

    def on_gap(path: str, reason: str) -> None:
        batch.inc(C.SOURCE_GAPS, (path, reason))

    tailer = Tailer(patterns, max_line_bytes=cfg.sources.max_line_bytes, positions=saved,
                    saved_at=journal.get("time", 0.0), start_at_end=positions_lost,
                    watch=cfg.sources.watch, on_oversized=oversized_sources.append, on_gap=on_gap,
                    follow_symlinked_dirs=cfg.sources.follow_symlinked_dirs,
                    max_open_files=cfg.sources.max_open_files)
    stop.wake = tailer.wake
    flush_every = cfg.sources.flush_interval
    poll = cfg.sources.poll_interval
    last_flush = last_scan = last_status = last_status_write = 0.0
    last_flush_bytes = 0
    last_shape: tuple = ()
    behind_written: dict[str, tuple[int, float]] = {}
    bytes_read: dict[str, int] = {}
    log.info("%s following %s (%s)", identity, ", ".join(patterns), tailer.watch_mode)

    def flush(now: float, final: bool = False) -> None:
        mapper.tick(now)
        if not (batch or bytes_read or oversized_sources or writer.has_pending() or final):
            return
        for path in oversized_sources:
            ingest.reject(path, OVERSIZED)
        oversized_sources.clear()
        for path, n in bytes_read.items():
            batch.inc(C.LINES_READ, (path,), n)
        bytes_read.clear()
        writer.apply(batch, now)
        # "time": when the directories were last listed; generations newer than that were
        # not seen by this run, and a restart reads them. Only the positions that changed are
        # handed on: with thousands of files, a flush writes what was read, not every position.
        # At the stop the journal is written whole (one record).
        if not health.flush({"time": tailer.listed_at}, entries=tailer.position_changes(), rewrite=final):
            tailer.shed(16)  # if it was the descriptor limit (EMFILE), the next try finds one

    try:
        while not stop.requested:
            now = time.time()
            scanned = now - last_scan >= poll or tailer.rescan
            if scanned:
                tailer.scan()
                last_scan = now
            progressed = False
            for tf in tailer.due(scanned):
                before = tf.read_to
                lines = tailer.read(tf)
                if tf.read_to != before:
                    progressed = True
                    bytes_read[tf.path] = bytes_read.get(tf.path, 0) + tf.read_to - before
                if lines:
                    tf.lines += len(lines)
                    ingest.lines(lines, tf.path)
                if stop.requested:
                    break
            now = time.time()
            pending = bool(batch or bytes_read or oversized_sources)
            # Busy: flush every flush_interval. Caught up after a burst: flush what is pending now
            # (at most every CAUGHT_UP_FLUSH), so its last lines show at once. A trickle is flushed
            # every flush_interval: each flush writes the journal, most of the cost at a steady load.
            unflushed = sum(bytes_read.values())
            burst = unflushed >= BURST_BYTES or last_flush_bytes >= BURST_BYTES  # in one, or just after
            due = CAUGHT_UP_FLUSH if pending and not progressed and burst else flush_every
            if not (pending or progressed or writer.has_pending()):
                due = IDLE_TICK
            if now - last_flush >= due and (pending or not last_flush or mapper.analytics):
                # With analytics on, flush (and so tick) even when idle: windows keep expiring.
                flush(now)
                last_flush, last_flush_bytes = now, unflushed
                pending = False
            if now - last_status >= 1.0:
                tailer.retire_quiet(time.monotonic(), max(5.0, 5 * poll))
                writer.forget_expired(now)
                for tf in tailer.files.values():
                    # Written when it changes (and now and then, so it does not expire): an
                    # unchanged gauge would otherwise make a flush, and a journal write, per second.
                    behind = tailer.behind(tf)
                    old = behind_written.get(tf.path)
                    if old is None or old[0] != behind or now - old[1] >= GAUGE_REFRESH:
                        writer.set_gauge(C.BYTES_BEHIND, (tf.path,), behind, now)
                        behind_written[tf.path] = (behind, now)
                if len(behind_written) > len(tailer.files):  # files retired: forget them here too
                    behind_written = {tf.path: behind_written[tf.path] for tf in tailer.files.values()
                                      if tf.path in behind_written}
                shape = (tailer.watch_mode, health.error, tailer.file_changes)
                # Counts alone change every second under load: they are written every STATUS_EVERY
                # (the heartbeat /readyz reads); a new source, a rotation or an error at once.
                if shape != last_shape or now - last_status_write >= STATUS_EVERY:
                    write_status(state, identity, "tail", tail_status(tailer, patterns, ingest, health))
                    last_shape, last_status_write = shape, now
                last_status = now
            if not progressed:
                # Idle: sleep until a file changes, a pending flush is due, or the rescan.
                wake_in = last_flush + due - time.time() if pending else min(poll, IDLE_TICK)
                tailer.wait(max(0.0, wake_in))
                # A chatty writer wakes us per line; reading at most every READ_PAUSE
                # turns a thousand wake-ups a second into a few reads of many lines.
                if not stop.requested:
                    time.sleep(READ_PAUSE)
        flush(time.time(), final=True)
    finally:
        tailer.stop()
        writer.close()
        log.info("%s stopped after %d events (%d rejected)", identity, ingest.accepted, ingest.rejected)


STATUS_SOURCES = 100  # files listed one by one in a tail worker's status; the rest are counted


def tail_status(tailer, patterns: list[str], ingest: Ingest, health: StateHealth) -> dict:
    """What a tail worker reports: its totals, and the files one by one up to STATUS_SOURCES
    (rotated ones first, then those read most recently), so that with thousands of files
    the status a worker writes every few seconds stays small."""
    readable = tailer.readable()
    listed = readable if len(readable) <= STATUS_SOURCES else \
        sorted(readable, key=lambda tf: (not tf.draining, -tf.last_data))[:STATUS_SOURCES]
    return {"patterns": patterns, "watch": tailer.watch_mode,
            "sources": [{"name": tf.path, "open": True, "lines": tf.lines,
                         "bytes_behind": tailer.behind(tf), "rotated": tf.draining} for tf in listed],
            "files": len(tailer.files) + len(tailer.parked), "rotated": len(tailer.retired),
            "sources_not_listed": len(readable) - len(listed),
            # sources.max_open_files: how many are open, how many closed while idle.
            "open_files": tailer.open_count(), "closed_idle": len(tailer.parked),
            "max_open_files": tailer.max_open, "open_refused": tailer.fd_refused,
            "accepted": ingest.accepted, "rejected": ingest.rejected,
            **({"error": health.error} if health.error else {})}


def write_status(state: StateDir, identity: str, role: str, extra: dict) -> None:
    """Report for /readyz and the status page; a state dir that refuses it is logged, not fatal."""
    try:
        state.write_status(identity, {"identity": identity, "role": role, "pid": os.getpid(),
                                      "updated": time.time(), **extra})
    except OSError as exc:
        _status_log.warning("status", "%s: cannot write its status: %s", identity, exc)


_status_log = RateLimitedLog(log, interval=60.0)
