"""The collector worker: runs the collectors, each on its own interval.

Every collector runs in this one process. A collector that may hang in a driver call (the GPU's
NVML: ``own_process``) runs on a thread of its own, with its own identity, files and status, so
a hung call stalls nothing else (ctypes releases the GIL while NVML is called); a thread that
fails ends the process, and the supervisor restarts it.

A collector that cannot start (no NVML, no GPU, nothing to watch) is logged
once and exported as ``mlsidecar_collector_up{collector} 0``; it is tried
again now and then, and the rest of the sidecar runs on.

Collectors only read (``collect() -> readings``); :class:`CollectorRun` is the one
place that writes their series, here and in ``mlsidecar probe``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .. import catalogue as C
from .. import collectors, cost
from ..catalogue import COUNTER
from ..collectors import Collector, Reading
from ..config import Config
from ..logs import RateLimitedLog
from ..store import SeriesKey, SeriesWriter
from .ingest import Stop, make_writer, write_status
from .state import StateDir

log = logging.getLogger("mlsidecar.collect")

RETRY_SETUP_EVERY = 60.0
HEARTBEAT = 5.0


def run_collector_groups(cfg: Config, groups: list[tuple[str, list[str]]]) -> None:
    """Run groups of collectors until SIGTERM: (identity, names), the first on this thread,
    each other one on a thread of its own."""
    stop = Stop()
    stop.wake = threading.Event()
    failed: list[str] = []

    def run(identity: str, names: list[str]) -> None:
        try:
            _collector_loop(identity, cfg, names, stop)
        except BaseException:  # noqa: BLE001 - the whole worker restarts, not one thread silently gone
            log.exception("%s: collectors stopped by an error; restarting the worker", identity)
            failed.append(identity)
            stop.requested = True
            stop.wake.set()

    threads = [threading.Thread(target=run, args=(ident, list(names)), name=ident, daemon=True)
               for ident, names in groups[1:]]
    for t in threads:
        t.start()
    try:
        run(groups[0][0], list(groups[0][1]))
    finally:
        stop.requested = True
        stop.wake.set()
        for t in threads:
            t.join(5.0)  # one hung in a driver call is a daemon thread: it does not hold the exit
    if failed:
        raise SystemExit(1)


def run_collector_worker(identity: str, cfg: Config, names: list[str], handles: dict[str, Any] | None = None,
                         max_runs: int | None = None) -> None:
    """Run the named collectors until SIGTERM (or ``max_runs`` rounds, for tests)."""
    stop = Stop()
    stop.wake = threading.Event()  # SIGTERM sets it: the wait below ends at once, no polling
    _collector_loop(identity, cfg, names, stop, handles, max_runs)


def _collector_loop(identity: str, cfg: Config, names: list[str], stop: Stop, handles: dict[str, Any] | None = None,
                    max_runs: int | None = None) -> None:
    state = StateDir(cfg.state_dir)
    writer = make_writer(cfg, state, identity, journal=False)
    classes = collectors.load_all()
    errors = RateLimitedLog(log, interval=300.0)
    runs: list[CollectorRun] = []
    for name in names:
        settings = cfg.collector(name)
        if settings is None:
            raise ValueError(f"no collector {name!r}")
        # The sidecar's sources: the process collector finds the workload by them.
        found_by = {"sources": cfg.sources, "state_dir": cfg.state_dir}
        runs.append(CollectorRun(name, classes[name](settings, **{**found_by, **(handles or {})}), writer,
                                 errors))
    meter = _cost_meter(cfg, state, identity, writer)
    rounds = 0
    try:
        while not stop.requested and (max_runs is None or rounds < max_runs):
            now = time.monotonic()
            for run in runs:
                if now < run.next_at:
                    continue
                run.next_at = now + run.collector.settings.interval
                if run.run(now) and meter is not None:
                    _charge(meter, run, errors)
            writer.flush()
            write_status(state, identity, "collect", {
                "sources": [{"name": f"collector {run.name}", "open": run.ready,
                             "error": run.error} for run in runs]})
            rounds += 1
            if max_runs is not None and rounds >= max_runs:
                break
            # At most HEARTBEAT between status writes: /readyz calls an older status stale (10 s),
            # and a collector may run less often than that (host: every 15 s).
            stop.wake.wait(min(HEARTBEAT, max(0.05, min(run.next_at for run in runs) - time.monotonic())))
    finally:
        for run in runs:
            run.close()
        writer.flush()
        writer.close()


def _cost_meter(cfg: Config, state: StateDir, identity: str, writer: SeriesWriter) -> cost.CostMeter | None:
    """A CostMeter for this worker's collectors when [cost] sets prices (see mlsidecar/cost.py)."""
    if not cfg.cost.enabled:
        return None
    return cost.CostMeter(cfg.cost, writer, cost.state_path(state.root, identity))


def _charge(meter: cost.CostMeter, run: CollectorRun, errors: RateLimitedLog) -> None:
    """Feed the collector's last reading to the cost meter; a failure here never stops collecting."""
    usage = cost.usage_of(run.collector)
    if usage is None:
        return
    try:
        meter.observe(run.name, usage)
    except Exception as exc:  # noqa: BLE001
        errors.warning(f"{run.name}:cost", "cost of collector %s not counted: %s", run.name, exc)


class DeadlinePassed(TimeoutError):
    """A collect did not return within the collector's deadline."""


class CollectorRun:
    """One collector under the runner; the only code that writes a collector's series.

    It sets the collector up (again, now and then, while it is unavailable), runs each
    ``collect()`` on a thread of its own within the collector's deadline (a call stuck in a
    driver is not started again until it returns), publishes the readings, removes the series
    that were not read this time, continues counters from the metric files after a restart
    (see the kinds in mlsidecar/collectors/__init__.py) and records
    ``mlsidecar_collector_up`` and ``mlsidecar_collector_duration_seconds``.
    """

    def __init__(self, name: str, collector: Collector, writer: SeriesWriter,
                 errors: RateLimitedLog | None = None):
        self.name = name
        self.collector = collector
        self.writer = writer
        self.errors = errors or RateLimitedLog(log, interval=300.0)
        self.ready = False
        self.error = ""
        self.next_at = 0.0
        self.setup_at = 0.0
        self.took = 0.0
        # What this run published last, by series: the ones not read next time are removed.
        self.published: dict[SeriesKey, float] = {}
        # Counter totals in the metric files from before this run (a worker restart).
        self._earlier: dict[SeriesKey, float] = {
            key: float(v) for key, v in writer.values.items()
            if key[0].type == COUNTER and isinstance(v, (int, float))}
        self._offsets: dict[SeriesKey, float] = {}  # "total" readings: what is added to them
        self._totals: dict[SeriesKey, float] = {}  # "increment" readings: their sums
        self._stuck: threading.Thread | None = None
        self._stuck_since = 0.0

    # --- one round ----------------------------------------------------------
    def run(self, now: float) -> bool:
        """Set up when due, collect, publish; log what failed. True when it collected."""
        if not self.ready:
            if now < self.setup_at:
                self._record(False, 0.0, self.error)  # up=0 stays fresh until it is tried again
                return False
            self.setup_at = now + RETRY_SETUP_EVERY
            try:
                self.setup()
            except collectors.CollectorUnavailable as exc:
                self._failed(str(exc), unavailable=True)
                return False
            except Exception as exc:  # noqa: BLE001 - one broken collector must not stop the others
                self._failed(f"{type(exc).__name__}: {exc}")
                return False
            log.info("collector %s is up", self.name)
        try:
            self.collect()
        except collectors.CollectorUnavailable as exc:
            self.errors.warning(f"{self.name}:unavailable", "collector %s unavailable: %s", self.name, exc)
            return False
        except Exception:  # noqa: BLE001 - logged below, from self.error
            self.errors.warning(f"{self.name}:error", "collector %s failed: %s", self.name, self.error)
            return False
        return True

    def setup(self) -> None:
        """The collector's setup; a failure is recorded (``up=0``) and raised."""
        t0 = time.perf_counter()
        try:
            self.collector.setup()
        except collectors.CollectorUnavailable as exc:
            self._record(False, time.perf_counter() - t0, str(exc))
            raise
        except Exception as exc:
            self._record(False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
            raise
        self.ready = True

    def collect(self) -> None:
        """One collect, published; what the collector raised is recorded (``up=0``) and raised."""
        t0 = time.perf_counter()
        try:
            readings = self._collect_within_deadline()
        except collectors.Partial as exc:
            self._publish(exc.readings)
            self._record(False, time.perf_counter() - t0, str(exc))
            raise
        except collectors.CollectorUnavailable as exc:
            self.ready = False
            self.clear()
            self._record(False, time.perf_counter() - t0, str(exc))
            raise
        except DeadlinePassed as exc:
            self.clear()
            self._record(False, time.perf_counter() - t0, str(exc))
            raise
        except Exception as exc:
            self._record(False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
            raise
        self._publish(readings)
        self._record(True, time.perf_counter() - t0, "")

    def clear(self) -> None:
        """Remove every series this run published (the collector cannot read them now)."""
        for key in self.published:
            self.writer.remove(*key)
        self.published = {}

    def close(self) -> None:
        if self._stuck is not None and self._stuck.is_alive():
            return  # a call is stuck in a driver; do not wait on it at exit
        try:
            self.collector.close()
        except Exception:  # noqa: BLE001
            pass

    # --- inside -------------------------------------------------------------
    def _failed(self, error: str, unavailable: bool = False) -> None:
        self.ready = False
        kind = "unavailable" if unavailable else "error"
        self.errors.warning(f"{self.name}:{kind}", "collector %s %s: %s", self.name,
                            "unavailable" if unavailable else "failed", error)

    def _record(self, ok: bool, took: float, error: str) -> None:
        self.error = error
        self.took = took
        self.writer.set_gauge(C.COLLECTOR_UP, (self.name,), 1.0 if ok else 0.0)
        self.writer.set_gauge(C.COLLECTOR_DURATION, (self.name,), took)

    def _collect_within_deadline(self) -> list[Reading]:
        if self._stuck is not None:
            if self._stuck.is_alive():
                raise TimeoutError(f"a collect has not returned for {time.monotonic() - self._stuck_since:.0f}s "
                                   "(hung driver?); readings paused")
            self._stuck = None
        box: dict[str, Any] = {}

        def read() -> None:
            try:
                box["readings"] = self.collector.collect()
            except BaseException as exc:  # noqa: BLE001 - handed to the runner's thread
                box["error"] = exc

        deadline = self.collector.deadline()
        t = threading.Thread(target=read, name=f"collect-{self.name}", daemon=True)
        since = time.monotonic()
        t.start()
        t.join(deadline)
        if t.is_alive():
            self._stuck, self._stuck_since = t, since
            raise DeadlinePassed(f"{self.name} did not answer within {deadline:g}s (hung driver?); "
                                 "readings paused")
        if "error" in box:
            raise box["error"]
        readings: list[Reading] = box["readings"]
        return readings

    def _publish(self, readings: list[Reading]) -> None:
        now = time.time()
        published: dict[SeriesKey, float] = {}
        for r in readings:
            key = (r.family, r.labels)
            if r.kind == "gauge":
                value = r.value
                self.writer.set_gauge(r.family, r.labels, value, now)
            else:
                value = self._counter_value(key, r)
                self.writer.set_counter(r.family, r.labels, value, now)
            published[key] = value
        for key in self.published.keys() - published.keys():
            self.writer.remove(*key)
        self.published = published

    def _counter_value(self, key: SeriesKey, r: Reading) -> float:
        if r.kind == collectors.INCREMENT:
            total = self._totals.get(key)
            if total is None:
                total = self._earlier.pop(key, 0.0)
            total += max(0.0, r.value)
            self._totals[key] = total
            return total
        offset = self._offsets.get(key)
        if offset is None:
            # First seen in this run: continue from the metric files, the reading as baseline.
            before = self._earlier.pop(key, None)
            offset = self._offsets[key] = max(0.0, before - r.value) if before is not None else 0.0
        return r.value + offset
