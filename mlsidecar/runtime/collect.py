"""The collector worker: runs the collectors, each on its own interval.

Every collector runs in this one process. A collector that may hang in a driver call (the GPU's
NVML: ``own_process``) runs on a thread of its own, with its own identity, files and status, so
a hung call stalls nothing else (ctypes releases the GIL while NVML is called); a thread that
fails ends the process, and the supervisor restarts it.

A collector that cannot start (no NVML, no GPU, nothing to watch) is logged
once and exported as ``mlsidecar_collector_up{collector} 0``; it is tried
again now and then, and the rest of the sidecar runs on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .. import catalogue as C
from .. import collectors, cost
from ..config import Config
from ..logs import RateLimitedLog
from .state import StateDir
from .worker import Stop, make_writer, write_status

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


def run_collector_worker(identity: str, cfg: Config, names: list[str], handles: dict | None = None,
                         max_runs: int | None = None) -> None:
    """Run the named collectors until SIGTERM (or ``max_runs`` rounds, for tests)."""
    stop = Stop()
    stop.wake = threading.Event()  # SIGTERM sets it: the wait below ends at once, no polling
    _collector_loop(identity, cfg, names, stop, handles, max_runs)


def _collector_loop(identity: str, cfg: Config, names: list[str], stop: Stop, handles: dict | None = None,
                    max_runs: int | None = None) -> None:
    state = StateDir(cfg.state_dir)
    writer = make_writer(cfg, state, identity, journal=False)
    classes = collectors.load_all()
    errors = RateLimitedLog(log, interval=300.0)
    items: list[dict[str, Any]] = []
    for name in names:
        settings = cfg.collector(name)
        if settings is None:
            raise ValueError(f"no collector {name!r}")
        # The sidecar's sources: the process collector finds the workload by them.
        found_by = {"sources": cfg.sources, "state_dir": cfg.state_dir}
        items.append({"name": name, "obj": classes[name](settings, **{**found_by, **(handles or {})}),
                      "interval": settings.interval, "next": 0.0, "ready": False,
                      "setup_at": 0.0, "error": ""})
    meter = _cost_meter(cfg, state, identity, writer)
    runs = 0
    try:
        while not stop.requested and (max_runs is None or runs < max_runs):
            now = time.monotonic()
            for it in items:
                if now < it["next"]:
                    continue
                it["next"] = now + it["interval"]
                _run_one(it, writer, errors, now)
                if meter is not None and it["error"] == "" and it["ready"]:
                    _charge(meter, it, errors)
            writer.flush()
            write_status(state, identity, "collect", {
                "sources": [{"name": f"collector {it['name']}", "open": it["ready"],
                             "error": it["error"]} for it in items]})
            runs += 1
            if max_runs is not None and runs >= max_runs:
                break
            # At most HEARTBEAT between status writes: /readyz calls an older status stale (10 s),
            # and a collector may run less often than that (host: every 15 s).
            stop.wake.wait(min(HEARTBEAT, max(0.05, min(it["next"] for it in items) - time.monotonic())))
    finally:
        for it in items:
            try:
                it["obj"].close()
            except Exception:  # noqa: BLE001
                pass
        writer.flush()
        writer.close()


def _cost_meter(cfg: Config, state: StateDir, identity: str, writer):
    """A CostMeter for this worker's collectors when [cost] sets prices (see mlsidecar/cost.py)."""
    if not cfg.cost.enabled:
        return None
    return cost.CostMeter(cfg.cost, writer, cost.state_path(state.root, identity))


def _charge(meter, it: dict, errors: RateLimitedLog) -> None:
    """Feed the collector's last reading to the cost meter; a failure here never stops collecting."""
    usage = cost.usage_of(it["obj"])
    if usage is None:
        return
    try:
        meter.observe(it["name"], usage)
    except Exception as exc:  # noqa: BLE001
        errors.warning(f"{it['name']}:cost", "cost of collector %s not counted: %s", it["name"], exc)


def _run_one(it: dict, writer, errors: RateLimitedLog, now: float) -> None:
    name, obj = it["name"], it["obj"]
    t0 = time.perf_counter()
    ok = False
    try:
        if not it["ready"]:
            if now < it["setup_at"]:
                return
            it["setup_at"] = now + RETRY_SETUP_EVERY
            obj.setup()
            it["ready"] = True
            log.info("collector %s is up", name)
        obj.collect(writer)
        ok = True
        it["error"] = ""
    except collectors.CollectorUnavailable as exc:
        it["ready"] = False
        it["error"] = str(exc)
        errors.warning(f"{name}:unavailable", "collector %s unavailable: %s", name, exc)
    except Exception as exc:  # noqa: BLE001 - one broken reading must not stop the others
        it["error"] = f"{type(exc).__name__}: {exc}"
        errors.warning(f"{name}:error", "collector %s failed: %s", name, it["error"])
    finally:
        writer.set_gauge(C.COLLECTOR_UP, (name,), 1.0 if ok else 0.0)
        writer.set_gauge(C.COLLECTOR_DURATION, (name,), time.perf_counter() - t0)
