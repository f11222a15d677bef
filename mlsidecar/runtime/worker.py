"""Worker processes: the file tail and the socket worker, each a source driven by the one
ingest loop (:func:`mlsidecar.runtime.ingest.run`).

An ingest worker parses chunks of lines with orjson, maps them into a
:class:`~mlsidecar.store.Batch` (plain dicts), and flushes each touched series
once per chunk through its :class:`~mlsidecar.store.SeriesWriter`, together
with the source positions, so a line shows on /metrics well within a second
and a crash neither loses nor re-counts it.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .. import catalogue as C
from ..config import Config
from ..exemplars import ExemplarStore
from ..sources.socket import (
    BACKPRESSURE,
    BUFFER_LIMIT,
    CONNECTION_LIMIT,
    CRASH,
    FD_LIMIT,
    SocketError,
    SocketReader,
    bind_unix,
    unbind,
)
from ..store import FAULT_POSITIONS, Batch
from . import ingest as ingest_loop
from .ingest import (
    IDLE_TICK,
    Chunk,
    Counts,
    Ingest,
    Positions,
    Sample,
    StateHealth,
    Stop,
    make_mapper,
    make_writer,
    write_status,
)
from .state import SocketLedger, StateDir

log = logging.getLogger("mlsidecar.worker")

READ_PAUSE = 0.05  # seconds between reads of a file that is written slowly
GAUGE_REFRESH = 60.0  # an unchanged gauge is written again this often (it must not expire)
SOCKET_IDLE_WAIT = 0.2  # seconds the socket worker sleeps with nothing queued and nothing to flush
SOCKET_TAKE = 64  # queued chunks taken per read, between the loop's flush checks


def run_tail_worker(identity: str, cfg: Config, patterns: list[str]) -> None:
    """Follow ``patterns`` until SIGTERM; the body of a ``tail-*`` worker process."""
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
    src = cfg.sources
    source = TailSource(patterns, src.poll_interval, max_line_bytes=src.max_line_bytes, positions=saved,
                        saved_at=journal.get("time", 0.0), start_at_end=bool(positions_lost),
                        watch=src.watch, follow_symlinked_dirs=src.follow_symlinked_dirs,
                        max_open_files=src.max_open_files)
    stop.wake = source.wake
    log.info("%s following %s (%s)", identity, ", ".join(patterns), source.tailer.watch_mode)
    ingest_loop.run(identity, source, ingest, health, state, stop, src.flush_interval)


class TailSource:
    """The tailed files as a source: what is due is read, with the bytes read per file, the
    lines over the limit and the gaps the tailer reports, and its positions for the journal.

    ``tailer_options`` go to :class:`~mlsidecar.sources.tail.Tailer` (positions, limits, watch).
    """

    role = "tail"
    settle = READ_PAUSE  # a chatty writer wakes us per line: a few reads of many lines instead

    def __init__(self, patterns: list[str], poll: float, **tailer_options: Any):
        from ..sources.tail import Tailer

        self.patterns = patterns
        self.poll = poll
        self.idle_wait = min(poll, IDLE_TICK)
        self._oversized: list[str] = []
        self._gaps: list[tuple[str, str]] = []
        self.tailer = Tailer(patterns, on_oversized=self._oversized.append, on_gap=self._gap,
                             **tailer_options)
        self.wake = self.tailer.wake
        self._last_scan = 0.0
        self._read: dict[str, int] = {}  # bytes read per file since the last counts()
        self._progressed = False
        self._behind_written: dict[str, tuple[int, float]] = {}

    def _gap(self, path: str, reason: str) -> None:
        self._gaps.append((path, reason))

    def read(self) -> Iterator[Chunk]:
        tailer = self.tailer
        now = time.time()
        scanned = now - self._last_scan >= self.poll or tailer.rescan
        if scanned:
            tailer.scan()
            self._last_scan = now
        for tf in tailer.due(scanned):
            before = tf.read_to
            lines = tailer.read(tf)
            if tf.read_to != before:
                self._progressed = True
                self._read[tf.path] = self._read.get(tf.path, 0) + tf.read_to - before
            if lines:
                tf.lines += len(lines)
                yield tf.path, lines

    def drain(self) -> Iterator[Chunk]:
        return iter(())  # what is not read yet stays in the files, for the next start

    def counts(self) -> Counts:
        oversized: dict[str, int] = {}
        for path in self._oversized:
            oversized[path] = oversized.get(path, 0) + 1
        increments: list[Sample] = [(C.LINES_READ, (path,), n) for path, n in self._read.items()]
        increments += [(C.SOURCE_GAPS, (path, reason), 1) for path, reason in self._gaps]
        counts = Counts(progressed=self._progressed, nbytes=sum(self._read.values()),
                        oversized=oversized, increments=increments)
        self._oversized.clear()
        self._gaps.clear()
        self._read = {}
        self._progressed = False
        return counts

    def positions(self, final: bool) -> Positions:
        # "time": when the directories were last listed; generations newer than that were
        # not seen by this run, and a restart reads them. Only the positions that changed are
        # handed on: with thousands of files, a flush writes what was read, not every position.
        # At the stop the journal is written whole (one record).
        return {"time": self.tailer.listed_at}, self.tailer.position_changes()

    def flushed(self, ok: bool) -> None:
        if not ok:
            self.tailer.shed(16)  # if it was the descriptor limit (EMFILE), the next try finds one

    def every_second(self, now: float) -> list[Sample]:
        tailer = self.tailer
        tailer.retire_quiet(time.monotonic(), max(5.0, 5 * self.poll))
        gauges: list[Sample] = []
        written = self._behind_written
        for tf in tailer.files.values():
            # Written when it changes (and now and then, so it does not expire): an unchanged
            # gauge would otherwise make a flush, and a journal write, per second.
            behind = tailer.behind(tf)
            old = written.get(tf.path)
            if old is None or old[0] != behind or now - old[1] >= GAUGE_REFRESH:
                gauges.append((C.BYTES_BEHIND, (tf.path,), behind))
                written[tf.path] = (behind, now)
        if len(written) > len(tailer.files):  # files retired: forget them here too
            self._behind_written = {tf.path: written[tf.path] for tf in tailer.files.values()
                                    if tf.path in written}
        return gauges

    def status(self) -> dict[str, Any]:
        return tail_status(self.tailer, self.patterns)

    def status_shape(self) -> tuple[Any, ...]:
        return (self.tailer.watch_mode, self.tailer.file_changes)

    def wait(self, timeout: float) -> None:
        self.tailer.wait(timeout)

    def close(self) -> None:
        self.tailer.stop()


STATUS_SOURCES = 100  # files listed one by one in a tail worker's status; the rest are counted


def tail_status(tailer: Any, patterns: list[str]) -> dict[str, Any]:
    """What a tail worker reports (the loop adds the accepted and rejected totals and a state dir
    error, as for every source): its files' totals, and the files one by one up to STATUS_SOURCES
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
            "max_open_files": tailer.max_open, "open_refused": tailer.fd_refused}


class SocketSource:
    """The unix sockets as a source: the reader thread's queue, its drop counts, the ledger.

    The ledger learns of every line taken (and of every line dropped when the queue is full)
    and, after each flush, that they are on disk; so the next start counts lines lost to a
    crash as dropped (reason ``crash``).
    """

    role = "socket"
    idle_wait = SOCKET_IDLE_WAIT
    settle = 0.0

    def __init__(self, reader: SocketReader, ledger: SocketLedger, ingest: Ingest,
                 listeners: list[tuple[socket.socket, str]]):
        self.reader = reader
        self.wake = reader.wake
        self.ledger = ledger
        self.ingest = ingest
        self.listeners = listeners
        self.names = [str(n) for n in reader.names.values()]
        self.stream = str(reader.names["stream"]) if "stream" in reader.names else ""
        self._nbytes = 0
        self._took = False

    def _take(self, limit: int | None) -> Iterator[Chunk]:
        n = 0
        while limit is None or n < limit:
            item = self.reader.take()
            if item is None:
                return
            name, lines, nbytes = item
            n += 1
            self._nbytes += nbytes
            self._took = True
            self.ledger.took(str(name), len(lines))  # in the batch once the loop has mapped them
            yield str(name), lines

    def read(self) -> Iterator[Chunk]:
        return self._take(SOCKET_TAKE)

    def drain(self) -> Iterator[Chunk]:
        # What the reader queued is mapped and flushed; what it reads after this is not taken.
        return self._take(None)

    def counts(self) -> Counts:
        dropped, oversized, rejected = self.reader.drain_counts()
        counts = Counts(progressed=self._took, nbytes=self._nbytes,
                        oversized={str(s): n for s, n in oversized.items()})
        for (s, reason), n in dropped.items():
            counts.increments.append((C.EVENTS_DROPPED, (str(s), reason), n))
            if reason == BACKPRESSURE:  # offered, then dropped: accounted for
                self.ledger.took(str(s), n)
        for reason, n in rejected.items():
            counts.increments.append((C.SOCKET_CONNECTIONS_REJECTED, (self.stream, reason), n))
        self._nbytes, self._took = 0, False
        return counts

    def positions(self, final: bool) -> Positions | None:
        return None  # a socket cannot be read again: the ledger accounts for what a crash loses

    def flushed(self, ok: bool) -> None:
        if ok:
            self.ledger.flushed()

    def every_second(self, now: float) -> Iterable[Sample]:
        return ()

    def status(self) -> dict[str, Any]:
        lines = self.ingest.accepted + self.ingest.rejected
        return {"sources": [{"name": s, "open": True, "lines": lines} for s in self.names],
                "peers": self.reader.peers()}

    def status_shape(self) -> tuple[Any, ...]:
        # Written each second while lines arrive or peers change (as a socket worker always did).
        return (self.ingest.accepted, self.ingest.rejected, tuple(self.reader.peers()))

    def wait(self, timeout: float) -> None:
        self.wake.wait(timeout)
        self.wake.clear()

    def close(self) -> None:
        self.reader.stopping = True
        for listener, path in self.listeners:
            unbind(listener, path)


def run_socket_worker(identity: str, cfg: Config) -> None:
    """Listen on the configured sockets until SIGTERM; the body of the ``socket`` worker."""
    stop = Stop()
    src = cfg.sources
    stream = dgram = None
    try:
        if src.socket:
            stream = bind_unix(src.socket, socket.SOCK_STREAM, src.socket_mode, src.socket_group)
        if src.socket_datagram:
            dgram = bind_unix(src.socket_datagram, socket.SOCK_DGRAM, src.socket_mode, src.socket_group)
    except (SocketError, OSError, KeyError) as exc:
        log.error("cannot open socket source: %s", exc)
        write_status(StateDir(cfg.state_dir), identity, "socket", {"error": str(exc)})
        raise SystemExit(1) from exc
    state = StateDir(cfg.state_dir)
    writer = make_writer(cfg, state, identity, journal=False)
    health = StateHealth(identity, writer)
    batch = Batch()
    mapper = make_mapper(cfg, batch)
    mapper.exemplars = ExemplarStore(cfg.state_dir, identity, cfg.static_labels())
    ingest = Ingest(cfg, mapper, batch, writer)
    reader = SocketReader(stream, dgram, src.max_line_bytes, src.socket_queue, src.socket_queue_bytes,
                          src.socket_max_connections, src.socket_buffer_bytes)
    reader.ledger = ledger = SocketLedger(state, identity)
    listeners = [(sock, path) for sock, path in ((stream, src.socket), (dgram, src.socket_datagram))
                 if sock is not None]
    source = SocketSource(reader, ledger, ingest, listeners)
    stop.wake = source.wake
    # Zero-started counters, and the lines the last run took but never flushed (a crash).
    for s in source.names:
        batch.inc(C.EVENTS_DROPPED, (s, BACKPRESSURE), 0)
        lost = ledger.lost_at_last_stop(s)
        batch.inc(C.EVENTS_DROPPED, (s, CRASH), lost)
        if lost:
            log.warning("%s: %d lines taken off the socket before the last crash were never counted "
                        "(queued or not flushed yet); counted as dropped (reason %s)", s, lost, CRASH)
    reader.start()
    if source.stream:
        batch.inc(C.EVENTS_DROPPED, (source.stream, BUFFER_LIMIT), 0)
        for reason in (CONNECTION_LIMIT, FD_LIMIT):
            batch.inc(C.SOCKET_CONNECTIONS_REJECTED, (source.stream, reason), 0)
    log.info("listening for events on %s", ", ".join(source.names))
    ingest_loop.run(identity, source, ingest, health, state, stop, src.flush_interval)
