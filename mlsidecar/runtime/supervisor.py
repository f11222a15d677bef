"""The supervisor: starts the workers, restarts a crashed one with backoff, stops cleanly.

Process tree::

    mlsidecar run (supervisor)       owns the state dir and the listening socket
      ├─ server                      aiohttp on the one scrape port
      ├─ tail-<hash>                 one per --tail pattern
      ├─ socket                      when a socket source is configured
      └─ collect                     collectors; the GPU's on a thread of its own, as identity
                                     ``gpu`` (a hung driver call stalls nothing else)

SIGTERM or SIGINT: the workers flush and exit, then the server, then the
supervisor. SIGHUP: the config file is read again; a bad one is refused with a
log line and the running config stays.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import socket
import time
from dataclasses import dataclass, field, replace

from .. import __version__, cost, impact
from .. import catalogue as C
from ..config import Config, ConfigError
from ..logs import RateLimitedLog
from ..store import SeriesWriter
from .state import StateDir

log = logging.getLogger("mlsidecar.supervisor")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long starts over from the shortest backoff
STOP_GRACE = 10.0
INGEST_NICENESS = 5  # ingest workers yield the CPU to the server and the collectors


@dataclass
class WorkerSpec:
    identity: str
    role: str
    args: tuple = ()


@dataclass
class Worker:
    spec: WorkerSpec
    process: multiprocessing.process.BaseProcess | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0
    extra: dict = field(default_factory=dict)


def tail_identity(pattern: str) -> str:
    """A stable identity per pattern, so positions and values follow the pattern across restarts."""
    return "tail-" + hashlib.sha1(pattern.encode()).hexdigest()[:10]


def _sources(cfg: Config) -> tuple:
    src = cfg.sources
    return src.tail + tuple(p for p in (src.socket, src.socket_datagram) if p)


def identities(spec: WorkerSpec) -> tuple[str, ...]:
    """The identities a worker writes as (files, status): a collect worker has one per group."""
    if spec.role == "collect":
        return tuple(ident for ident, _names in spec.args)
    return (spec.identity,)


def plan(cfg: Config) -> list[WorkerSpec]:
    """The workers a config needs (the server is added by the supervisor)."""
    specs = [WorkerSpec(tail_identity(p), "tail", (p,)) for p in dict.fromkeys(cfg.sources.tail)]
    if cfg.sources.socket or cfg.sources.socket_datagram:
        specs.append(WorkerSpec("socket", "socket"))
    enabled = [(name, s) for name, s in cfg.collectors if s.enabled]
    if enabled:
        from .. import collectors

        classes = collectors.load_all()
        shared = [name for name, _ in enabled if not classes[name].own_process]
        own = [name for name, _ in enabled if classes[name].own_process]
        # One process for all of them (each Python process costs ~10 MB): the shared ones as
        # "collect", each own_process one (the GPU) on a thread of its own under its own identity.
        groups = ([("collect", tuple(shared))] if shared else []) + [(name, (name,)) for name in own]
        specs.append(WorkerSpec(groups[0][0], "collect", tuple(groups)))
    return specs


def _worker_main(spec: WorkerSpec, cfg: Config, sock: socket.socket | None, expected: list[str]) -> None:
    """Entry point of every child process."""
    import gc

    # What the child inherited stays shared with the supervisor: without this, the first full
    # collection writes to every inherited object's header and copies all their pages (about
    # 20 MiB per process, seen as PSS growth after a burst of new series).
    gc.freeze()
    from .. import logs

    logs.setup(cfg.log_level)
    multiprocessing.current_process().name = spec.identity
    if spec.role == "server":
        from ..server import run_server

        if sock is None:
            raise RuntimeError("the server worker is started with the listening socket")
        run_server(cfg, sock, expected)
        return
    if sock is not None:
        sock.close()
    if spec.role in ("tail", "socket"):
        # Ingest may use a whole core; on a small box the scrape must still win it.
        os.nice(INGEST_NICENESS)
    if spec.role == "tail":
        from .worker import run_tail_worker

        run_tail_worker(spec.identity, cfg, list(spec.args))
    elif spec.role == "socket":
        from .worker import run_socket_worker

        run_socket_worker(spec.identity, cfg)
    elif spec.role == "collect":
        from .collect import run_collector_groups

        run_collector_groups(cfg, [(ident, list(names)) for ident, names in spec.args])
    else:
        raise ValueError(f"unknown worker role {spec.role}")


class Supervisor:
    def __init__(self, cfg: Config, sock: socket.socket, config_path: str | None = None,
                 overrides: dict | None = None, notify=None):
        self.cfg = cfg
        self.sock = sock
        self.config_path = config_path
        self.overrides = overrides or {}
        self.notify = notify
        self.state = StateDir(cfg.state_dir)
        self.ctx = multiprocessing.get_context("fork")
        self.workers: dict[str, Worker] = {}
        self.server: Worker | None = None
        self.stopping = False
        self.reload_requested = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.writer: SeriesWriter | None = None
        self._state_log = RateLimitedLog(log, interval=60.0)

    @property
    def series(self) -> SeriesWriter:
        """The supervisor's own series (mlsidecar_worker_*, build info, cost and impact config)."""
        if self.writer is None:
            raise RuntimeError("the supervisor's writer is opened by start()")
        return self.writer

    # --- signals ------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.state.create()
        specs = plan(self.cfg)
        self.state.tidy({i for s in specs for i in identities(s)} | {"server", "supervisor"})
        self._open_writer(specs)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._start_workers(specs)

    def _open_writer(self, specs: list[WorkerSpec]) -> None:
        """The supervisor's own series (opened again on reload: static labels may change)."""
        if self.writer is not None:
            self.series.close()
        self.writer = SeriesWriter(self.state.metrics, "supervisor",
                                   static_labels=self.cfg.static_labels(), catalogue=C.builtin())
        for kind, _message in self.series.faults:
            self.series.inc(C.STATE_FAULTS, ("supervisor", kind))
        self.series.set_gauge(C.BUILD_INFO, (__version__, platform.python_version()), 1)
        for spec in specs:
            self.series.inc(C.WORKER_RESTARTS, (spec.identity,), 0)
        # Currency, prices and budgets from [cost]: what the cost rules and dashboards divide by.
        cost.export_config(self.writer, self.cfg.cost)
        # Per-model criticality, revenue, users and the severity/health weights from [impact].
        impact.export_config(self.writer, self.cfg.impact)
        self._flush()

    def _flush(self) -> None:
        """Write the supervisor's own series; a state dir that refuses is logged, not fatal:
        the supervisor must outlive a full or read-only disk to restart the workers after it."""
        try:
            self.series.flush()
        except OSError as exc:
            self._state_log.warning("flush", "cannot write the supervisor's series: %s", exc)

    def _expected(self) -> list[str]:
        return [i for w in self.workers.values() for i in identities(w.spec)]

    def _spawn(self, w: Worker) -> None:
        for ident in identities(w.spec):
            self.state.clear_status(ident)
        # What the child inherits stays shared: frozen objects are never traversed by the
        # collector here, so a collection in the supervisor does not copy the pages under them.
        gc.freeze()
        p = self.ctx.Process(target=_worker_main, name=w.spec.identity,
                             args=(w.spec, self.cfg, self.sock, self._expected()), daemon=False)
        p.start()
        w.process = p
        w.started = time.monotonic()
        w.restart_at = None
        self.series.set_gauge(C.WORKER_UP, (w.spec.identity,), 1)
        self._flush()
        log.info("started %s (pid %d)", w.spec.identity, p.pid)

    def _all(self) -> list[Worker]:
        return list(self.workers.values()) + ([self.server] if self.server else [])

    def run(self) -> int:
        """Watch the children until asked to stop; returns the exit code."""
        self.start()
        ready_sent = False
        last_watchdog = 0.0
        while not self.stopping:
            now = time.monotonic()
            waitables = [self._wake_r] + [w.process.sentinel for w in self._all()
                                          if w.process is not None and w.process.is_alive()]
            timeouts = [w.restart_at - now for w in self._all() if w.restart_at is not None]
            timeout = max(0.05, min(timeouts + [1.0]))
            ready = multiprocessing.connection.wait(waitables, timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self.stopping:
                break
            try:
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                self._reap_and_restart()
            except OSError as exc:  # the state dir went bad under us: keep supervising
                self._state_log.warning("loop", "supervisor: %s; carrying on", exc)
            if self.notify is not None:
                if not ready_sent and self._ready():
                    self.notify.ready()
                    ready_sent = True
                if time.monotonic() - last_watchdog >= self.notify.watchdog_interval:
                    self.notify.watchdog()
                    last_watchdog = time.monotonic()
        self.stop()
        return 0

    def _ready(self) -> bool:
        statuses = self.state.read_statuses()
        return all(i in statuses for i in self._expected())

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for w in self._all():
            p = w.process
            if p is not None and not p.is_alive():
                p.join()
                code = p.exitcode
                ran = now - w.started
                w.failures = 0 if ran >= STABLE_AFTER else w.failures + 1
                delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** max(0, w.failures - 1))
                log.warning("%s exited with code %s after %.1fs; restarting in %.1fs",
                            w.spec.identity, code, ran, delay)
                w.process = None
                w.restart_at = now + delay
                self.series.set_gauge(C.WORKER_UP, (w.spec.identity,), 0)
                self._flush()
            if w.process is None and w.restart_at is not None and now >= w.restart_at:
                w.restarts += 1
                self.series.inc(C.WORKER_RESTARTS, (w.spec.identity,))
                self._spawn(w)

    def reload(self) -> None:
        """SIGHUP: read the config again; restart the workers only if it is good."""
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        from .. import config

        try:
            new = config.with_overrides(config.load(self.config_path), **self.overrides)
            config.check_environment(new, state_dir=False)  # socket group, web config file
        except (ConfigError, ValueError) as exc:
            log.error("SIGHUP: new config refused, keeping the running one: %s", exc)
            return
        if _sources(self.cfg) and not _sources(new):
            log.error("SIGHUP: new config refused, keeping the running one: %s has no sources "
                      "(tail, socket) and would stop every one of the running ones", self.config_path)
            return
        if new.server.listen != self.cfg.server.listen or new.state_dir != self.cfg.state_dir:
            log.warning("SIGHUP: listen address and state_dir changes need a restart; keeping the old ones")
            new = replace(new, state_dir=self.cfg.state_dir,
                          server=replace(new.server, listen=self.cfg.server.listen))
        log.info("SIGHUP: config reloaded from %s; restarting workers", self.config_path)
        self._stop_workers(list(self.workers.values()))
        self._stop_workers([self.server] if self.server else [])
        self.cfg = new
        self.workers = {}
        specs = plan(self.cfg)
        self.state.tidy({i for s in specs for i in identities(s)} | {"server", "supervisor"})
        self._open_writer(specs)
        self._start_workers(specs)

    def _start_workers(self, specs: list[WorkerSpec]) -> None:
        for spec in specs:
            self.workers[spec.identity] = Worker(spec)
            self._spawn(self.workers[spec.identity])
        self.server = Worker(WorkerSpec("server", "server"))
        self._spawn(self.server)

    def _stop_workers(self, workers: list[Worker]) -> None:
        procs = [w.process for w in workers if w.process is not None and w.process.is_alive()]
        for p in procs:
            p.terminate()  # SIGTERM: flush, then exit
        deadline = time.monotonic() + STOP_GRACE
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("%s did not stop in %.0fs; killing it", p.name, STOP_GRACE)
                p.kill()
                p.join()
        for w in workers:
            w.process = None
            w.restart_at = None

    def stop(self) -> None:
        """Workers first (they flush), the server last, so the final values can still be scraped."""
        log.info("stopping")
        self._stop_workers(list(self.workers.values()))
        if self.server is not None:
            self._stop_workers([self.server])
        for w in self._all():
            self.series.set_gauge(C.WORKER_UP, (w.spec.identity,), 0)
        self._flush()
        self.series.close()
        if self.notify is not None:
            self.notify.stopping()
        log.info("stopped")
