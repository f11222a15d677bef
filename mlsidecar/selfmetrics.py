"""The sidecar's own resource use, read at scrape time by the server.

``process_*`` (the names every Prometheus client library uses) describe the
supervisor, the process a unit or a container runs; ``mlsidecar_worker_*``
give CPU and memory per worker (server, tail-*, socket, collect, gpu), so a
busy or growing worker can be told apart; ``python_info`` names the
interpreter. The ``ml_process_*`` families describe the workload, not us.

Worker PIDs come from the status files the workers write; a worker that has
exited is left out until its restart writes a new status. CPU counters start
again from 0 when a worker restarts, which ``rate()`` handles as a reset.
"""

from __future__ import annotations

import os
import platform

from .catalogue import COUNTER, GAUGE, Family


def _f(name: str, typ: str, help_text: str, labels: tuple[str, ...] = (), unit: str = "") -> Family:
    return Family(name, typ, help_text, labels, unit=unit, fed_by="server (sidecar self-metrics)")


PROCESS_CPU = _f("process_cpu_seconds_total", COUNTER,
                 "User and system CPU time of the sidecar's supervisor process.", unit="seconds")
PROCESS_RSS = _f("process_resident_memory_bytes", GAUGE,
                 "Resident memory of the sidecar's supervisor process.", unit="bytes")
PROCESS_VMS = _f("process_virtual_memory_bytes", GAUGE,
                 "Virtual memory of the sidecar's supervisor process.", unit="bytes")
PROCESS_START = _f("process_start_time_seconds", GAUGE,
                   "Start time of the sidecar's supervisor process since the Unix epoch.", unit="seconds")
PROCESS_FDS = _f("process_open_fds", GAUGE, "Open file descriptors of the sidecar's supervisor process.")
PROCESS_MAX_FDS = _f("process_max_fds", GAUGE,
                     "Open-files soft limit (RLIMIT_NOFILE) of the sidecar's supervisor process.")
PYTHON_INFO = _f("python_info", GAUGE, "Always 1; labels name the Python running the sidecar.",
                 ("implementation", "major", "minor", "patchlevel", "version"))
WORKER_CPU = _f("mlsidecar_worker_cpu_seconds_total", COUNTER,
                "User and system CPU time of one sidecar worker process (starts again at a restart).",
                ("worker",), unit="seconds")
WORKER_RSS = _f("mlsidecar_worker_resident_memory_bytes", GAUGE,
                "Resident memory of one sidecar worker process.", ("worker",), unit="bytes")
WORKER_FDS = _f("mlsidecar_worker_open_fds", GAUGE, "Open file descriptors of one sidecar worker process.",
                ("worker",))

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (PROCESS_CPU, PROCESS_RSS, PROCESS_VMS, PROCESS_START, PROCESS_FDS,
    PROCESS_MAX_FDS, PYTHON_INFO, WORKER_CPU, WORKER_RSS, WORKER_FDS)

_PY = platform.python_version_tuple()
_PYTHON_LABELS = (("implementation", platform.python_implementation()), ("major", _PY[0]),
                  ("minor", _PY[1]), ("patchlevel", _PY[2]), ("version", platform.python_version()))


class SelfMetrics:
    """Reads the supervisor and the workers with psutil; one instance per server process."""

    def __init__(self, supervisor_pid: int | None = None, server_identity: str = "server"):
        import psutil

        self.psutil = psutil
        self.supervisor_pid = os.getppid() if supervisor_pid is None else supervisor_pid
        self.server_identity = server_identity
        self._procs: dict[int, object] = {}

    def _proc(self, pid: int, worker: bool):
        p = self._procs.get(pid)
        if p is None:
            p = self.psutil.Process(pid)
            # A status file left by an exited worker may name a PID now used by something else.
            if worker and pid != os.getpid() and p.ppid() != self.supervisor_pid:
                raise self.psutil.NoSuchProcess(pid)
            self._procs[pid] = p
        return p

    def _read(self, pid: int, worker: bool = True) -> dict | None:
        ps = self.psutil
        try:
            p = self._proc(pid, worker)
            if not p.is_running():  # the PID was reused by another process
                raise ps.NoSuchProcess(pid)
            with p.oneshot():
                ct = p.cpu_times()
                mem = p.memory_info()
                out = {"cpu": ct.user + ct.system, "rss": float(mem.rss), "vms": float(mem.vms),
                       "start": p.create_time()}
                try:
                    out["fds"] = float(p.num_fds())
                    out["max_fds"] = float(p.rlimit(ps.RLIMIT_NOFILE)[0])
                except (ps.AccessDenied, AttributeError, OSError):
                    pass
            return out
        except (ps.NoSuchProcess, ps.AccessDenied):
            self._procs.pop(pid, None)
            return None

    def families(self, statuses: dict[str, dict]) -> list:
        """``[(family, [(label items, value)])]`` for the exposition's extra families."""
        out: list = [(PYTHON_INFO, [(_PYTHON_LABELS, 1.0)])]
        sup = self._read(self.supervisor_pid, worker=False)
        if sup is not None:
            out += [(PROCESS_CPU, [((), sup["cpu"])]), (PROCESS_RSS, [((), sup["rss"])]),
                    (PROCESS_VMS, [((), sup["vms"])]), (PROCESS_START, [((), sup["start"])])]
            if "fds" in sup:
                out += [(PROCESS_FDS, [((), sup["fds"])]), (PROCESS_MAX_FDS, [((), sup["max_fds"])])]
        pids = {self.server_identity: os.getpid()}
        for identity, st in statuses.items():
            if isinstance(st.get("pid"), int) and identity != self.server_identity:
                pids[identity] = st["pid"]
        cpu, rss, fds = [], [], []
        seen: set[int] = set()
        for identity in sorted(pids):
            if pids[identity] in seen:
                continue  # one process, several identities (the collectors: "collect" and "gpu")
            seen.add(pids[identity])
            r = self._read(pids[identity])
            if r is None:
                continue
            labels = (("worker", identity),)
            cpu.append((labels, r["cpu"]))
            rss.append((labels, r["rss"]))
            if "fds" in r:
                fds.append((labels, r["fds"]))
        live = set(pids.values()) | {self.supervisor_pid}
        for pid in list(self._procs):
            if pid not in live:
                del self._procs[pid]
        for fam, samples in ((WORKER_CPU, cpu), (WORKER_RSS, rss), (WORKER_FDS, fds)):
            if samples:
                out.append((fam, samples))
        return out
