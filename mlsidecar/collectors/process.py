"""The workload's processes, read with psutil.

Which processes are "the workload" (option ``mode``): see
mlsidecar/collectors/workload.py.

Values are summed over the workload (bounded cardinality: no ``pid`` label).
The set of processes changes, so a plain sum of their CPU seconds would go
backwards when one exits. Counters are therefore running totals: each poll
adds only the positive per-process increase since the previous poll (a
process seen for the first time adds all it has used so far). What a process
used between its last poll and its exit is not counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from .. import catalogue as C
from ..catalogue import COUNTER, GAUGE, Family
from ..cost import Usage
from ..logs import RateLimitedLog
from . import TOTAL, Collector, CollectorSettings, CollectorUnavailable, Reading, register
from .workload import WORKLOAD_OPTIONS, SourceWriters, Workload, job_name, workload_from_options

log = logging.getLogger("mlsidecar.collectors.process")

def _f(*args: Any, **kwargs: Any) -> Family:
    kwargs["fed_by"] = "process collector"
    return Family(*args, **kwargs)


CPU_SECONDS = _f("ml_process_cpu_seconds_total", COUNTER,
                 "CPU time used by the workload's processes, by mode (running total).",
                 ("mode",), unit="seconds")
RESIDENT = _f("ml_process_resident_memory_bytes", GAUGE,
              "Resident memory (RSS) of the workload's processes, summed.", unit="bytes")
PSS = _f("ml_process_pss_memory_bytes", GAUGE,
         "Proportional set size of the workload's processes, summed (shared pages counted once).",
         unit="bytes")
THREADS = _f("ml_process_threads", GAUGE, "Threads of the workload's processes, summed.")
OPEN_FDS = _f("ml_process_open_fds", GAUGE, "Open file descriptors of the workload's processes, summed.")
MAX_FDS = _f("ml_process_max_fds", GAUGE,
             "The smallest open-files soft limit (RLIMIT_NOFILE) among the workload's processes.")
FD_RATIO = _f("ml_process_max_fd_usage_ratio", GAUGE,
              "The highest open fds / fd limit among the workload's processes (0-1).")
IO_READ = _f("ml_process_io_read_bytes_total", COUNTER,
             "Bytes the workload's processes caused to be read from storage (running total).",
             unit="bytes")
IO_WRITE = _f("ml_process_io_write_bytes_total", COUNTER,
              "Bytes the workload's processes caused to be written to storage (running total).",
              unit="bytes")
CTX_SWITCHES = _f("ml_process_context_switches_total", COUNTER,
                  "Context switches of the workload's processes, by kind (running total).", ("kind",))
# Not ml_process_count: a _count suffix belongs to histograms and summaries.
COUNT = _f("ml_process_processes", GAUGE, "Processes that make up the workload.")

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (CPU_SECONDS, RESIDENT, PSS, THREADS, OPEN_FDS, MAX_FDS, FD_RATIO, IO_READ,
    IO_WRITE, CTX_SWITCHES, COUNT)


class RunningTotals:
    """Counters summed over a changing set of processes that never go backwards.

    ``add(key, {name: value})`` per process per poll, then ``end_poll()``. The totals
    count from the collector's start; continuing them after a worker restart is the
    runner's part (a "total" reading: its first one after a restart is the baseline).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.totals = dict.fromkeys(names, 0.0)
        self._last: dict[Any, dict[str, float]] = {}
        self._seen: set[Any] = set()

    def add(self, key: Any, values: dict[str, float]) -> None:
        last = self._last.get(key)
        for name, value in values.items():
            delta = value - last[name] if last is not None and name in last else value
            if delta > 0:
                self.totals[name] += delta
        self._last[key] = dict(values) if last is None else {**last, **values}
        self._seen.add(key)

    def end_poll(self) -> None:
        for key in self._last.keys() - self._seen:
            del self._last[key]
        self._seen = set()


_COUNTERS = {
    "user": (CPU_SECONDS, ("user",)),
    "system": (CPU_SECONDS, ("system",)),
    "read": (IO_READ, ()),
    "write": (IO_WRITE, ()),
    "voluntary": (CTX_SWITCHES, ("voluntary",)),
    "involuntary": (CTX_SWITCHES, ("involuntary",)),
}


@register
class ProcessCollector(Collector):
    """CPU, memory, threads, fds, I/O and context switches of the workload's processes."""

    name = "process"
    summary = "CPU, memory, threads, fds and I/O of the workload's processes"
    default_enabled = True
    default_interval = 5.0
    options = {
        **WORKLOAD_OPTIONS,
        "pss": (bool, True),
        "job_name": (str, ""),
    }

    def __init__(self, settings: CollectorSettings, psutil=None, proc_root: str = "/proc",
                 environ=None, sidecar_root: Any = "auto", sources: Any = None, state_dir: str = "",
                 **handles: Any):
        super().__init__(settings)
        self._sources = SourceWriters(sources, state_dir)
        self._psutil = psutil
        self._proc_root = proc_root
        self._environ = os.environ if environ is None else environ
        self._sidecar_root = sidecar_root
        self.workload: Workload | None = None
        self._totals: RunningTotals | None = None
        self.usage: Usage | None = None
        self._denied = RateLimitedLog(log, interval=600.0)

    def setup(self) -> None:
        ps = self._psutil
        if ps is None:
            try:
                import psutil as ps
            except ImportError:
                raise CollectorUnavailable("psutil is not installed") from None
            self._psutil = ps
        self.workload = workload_from_options(self.settings.options, ps, self._proc_root,
                                              self._environ, self._sidecar_root, self._sources)
        self.job_name = job_name(self.settings, self._environ)
        log.info("process collector watching %s", self.workload.describe())

    def _read(self, p) -> dict | None:
        ps = self._psutil
        denied = ps.AccessDenied
        r: dict[str, float] = {}
        try:
            with p.oneshot():
                ct = p.cpu_times()
                r["user"], r["system"] = ct.user, ct.system
                r["rss"] = p.memory_info().rss
                r["threads"] = p.num_threads()
                ctx = p.num_ctx_switches()
                r["voluntary"], r["involuntary"] = ctx.voluntary, ctx.involuntary
                r["ctime"] = p.create_time()
                try:
                    r["fds"] = p.num_fds()
                except denied:
                    pass
                try:
                    r["max_fds"] = p.rlimit(ps.RLIMIT_NOFILE)[0]
                except (denied, AttributeError, OSError):
                    pass
                try:
                    io = p.io_counters()
                    r["read"], r["write"] = io.read_bytes, io.write_bytes
                except (denied, AttributeError):
                    pass
                if self.settings.options.get("pss", True):
                    try:
                        r["pss"] = p.memory_full_info().pss
                    except (denied, AttributeError):
                        pass
        except ps.NoSuchProcess:  # gone (ZombieProcess is a NoSuchProcess too)
            return None
        except denied as exc:
            self._denied.warning("denied", "process collector: cannot read process %s (%s); left out",
                                 p.pid, exc)
            return None
        return r

    def collect(self) -> list[Reading]:
        workload = self.workload
        if workload is None:  # not set up
            return []
        if self._totals is None:
            self._totals = RunningTotals(_COUNTERS)
        totals = self._totals
        rows = []
        cpu: dict[str, float] = {}
        selected = workload.select()
        if not selected and workload.uninspectable:
            self._denied.warning("uninspectable", "process collector: no writer of the sources found, but the "
                                 "open files of %d processes (another user's) cannot be seen: run as the "
                                 "workload's user, grant CAP_SYS_PTRACE, or set pid_file",
                                 len(workload.uninspectable))
        for p in selected:
            r = self._read(p)
            if r is None:
                continue
            rows.append(r)
            cpu[f"{p.pid}:{r['ctime']}"] = r["user"] + r["system"]
            totals.add((p.pid, r["ctime"]), {k: r[k] for k in _COUNTERS if k in r})
        totals.end_poll()

        out = [Reading(COUNT, (), float(len(rows)))]
        for name, (fam, labels) in _COUNTERS.items():
            out.append(Reading(fam, labels, totals.totals[name], TOTAL))
        rss = float(sum(r["rss"] for r in rows))
        # What the cost meter charges for (mlsidecar/cost.py): CPU seconds per process, resident memory.
        self.usage = Usage(cpu_seconds=cpu, memory_bytes=rss)
        out.append(Reading(RESIDENT, (), rss))
        out.append(Reading(THREADS, (), float(sum(r["threads"] for r in rows))))
        # Gauges that would mislead when some process could not be read are left out then.
        if self.settings.options.get("pss", True) and all("pss" in r for r in rows):
            out.append(Reading(PSS, (), float(sum(r["pss"] for r in rows))))
        if all("fds" in r for r in rows):
            out.append(Reading(OPEN_FDS, (), float(sum(r["fds"] for r in rows))))
        limits = [r["max_fds"] for r in rows if r.get("max_fds", -1) > 0]
        if limits:
            out.append(Reading(MAX_FDS, (), float(min(limits))))
        ratios = [r["fds"] / r["max_fds"] for r in rows if "fds" in r and r.get("max_fds", -1) > 0]
        if ratios:
            out.append(Reading(FD_RATIO, (), max(ratios)))
        if self.job_name:
            out.append(Reading(C.TRAINING_MEMORY, (self.job_name, "rss"), rss))
        return out

    def close(self) -> None:
        self.workload = None
