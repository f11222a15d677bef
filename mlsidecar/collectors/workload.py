"""Which processes are the workload: shared by the process and the GPU collectors.

Which processes are "the workload" (option ``mode``):

- ``pid_file``: the PID(s) written in ``pid_file`` (a path or a glob), plus
  their descendants when ``children`` is true (dataloader workers, torchrun
  ranks).
- ``cmdline``: every process whose command line (arguments joined by spaces)
  matches the regular expression ``cmdline``, plus descendants.
- ``namespace``: every process in this PID namespace except the sidecar
  itself -- the Kubernetes pod with ``shareProcessNamespace: true``. The pod's
  ``pause`` process (PID 1) is left out too.
- ``sources``: the processes that write to the sidecar's sources -- every
  process holding a tailed file open for writing, and every process connected
  to the event socket (its peer credentials) -- plus their descendants. No PID
  file or pattern is needed: the workload is found by what it does.
- ``auto`` (default): ``$MLSIDECAR_PROCESS_MODE`` when set; else ``pid_file``
  or ``cmdline`` when one is configured; else ``namespace`` when the sidecar
  runs in a PID namespace of its own (a container: the pod is the workload);
  else, on a host, ``sources`` when the sidecar has a tail or stream socket
  source. With none of these there is nothing sane to watch -- "every process
  on the machine" is node_exporter's job -- so the collector reports ``up=0``
  with one log line saying what to set.

"The sidecar" is the supervisor and all its descendants: the collector runs
in a child of the supervisor, so the parent's process tree is left out.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from . import CollectorSettings, CollectorUnavailable

# The inode of the initial PID namespace (PROC_PID_INIT_INO in the kernel): a
# constant, so "are we on the host or in a container's namespace" is one readlink.
INIT_PID_NS_INODE = 0xEFFFFFFC
MODES = ("auto", "pid_file", "cmdline", "namespace", "sources")
O_ACCMODE, O_WRONLY, O_RDWR = os.O_ACCMODE, os.O_WRONLY, os.O_RDWR
MODE_ENV = "MLSIDECAR_PROCESS_MODE"
# Mode sources: every open file of every process is looked at this often (and whenever no writer
# is known, or a known one stopped writing); in between only the known writers are checked.
WRITERS_LOOK_EVERY = 30.0



def in_initial_pid_namespace(proc_root: str = "/proc") -> bool | None:
    """True on the host's PID namespace, False in a container's; None when /proc cannot say."""
    try:
        link = os.readlink(os.path.join(proc_root, "self", "ns", "pid"))
    except OSError:
        return None
    return link == f"pid:[{INIT_PID_NS_INODE}]"


def default_sidecar_root() -> int:
    """The PID whose process tree is the sidecar: the supervisor when we run in a worker."""
    return os.getppid() if multiprocessing.parent_process() is not None else os.getpid()


def job_name(settings: CollectorSettings, environ: Mapping[str, str] = os.environ) -> str:
    return str(settings.options.get("job_name") or environ.get("JOB_NAME", ""))


def writers_of(paths: Iterable[str], proc_root: str = "/proc", skip: AbstractSet[int] = frozenset(),
               denied: list[int] | None = None, only: Iterable[int] | None = None) -> set[int]:
    """PIDs of the processes that hold one of ``paths`` open for writing.

    Compared by device and inode, so a file renamed by rotation or opened
    through another path still counts. Processes we may not look into (another
    user's, without CAP_SYS_PTRACE) are passed over, and added to ``denied``.
    ``only``: look at these PIDs alone instead of every process.
    """
    targets = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        targets.add((st.st_dev, st.st_ino))
    found: set[int] = set()
    if not targets:
        return found
    try:
        entries = os.listdir(proc_root) if only is None else [str(pid) for pid in only]
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) in skip:
            continue
        fd_dir = os.path.join(proc_root, entry, "fd")
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            if denied is not None:
                denied.append(int(entry))
            continue
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in targets and _open_for_writing(proc_root, entry, fd):
                found.add(int(entry))
                break
    return found


def _open_for_writing(proc_root: str, pid: str, fd: str) -> bool:
    try:
        with open(os.path.join(proc_root, pid, "fdinfo", fd)) as fh:
            for line in fh:
                if line.startswith("flags:"):
                    return (int(line.split()[1], 8) & O_ACCMODE) in (O_WRONLY, O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False


class SourceWriters:
    """The sidecar's sources, for mode ``sources``: tail patterns and the socket's peers."""

    def __init__(self, sources: Any = None, state_dir: str = ""):
        self.patterns = tuple(getattr(sources, "tail", ()) or ())
        self.socket = getattr(sources, "socket", "") or ""
        self.state_dir = state_dir

    def __bool__(self) -> bool:
        return bool(self.patterns or self.socket)

    def describe(self) -> str:
        parts = [f"writers of {', '.join(self.patterns)}"] if self.patterns else []
        if self.socket:
            parts.append(f"peers of {self.socket}")
        return "the processes that are " + " and ".join(parts) if parts else "no sources"

    def files(self) -> list[str]:
        out: list[str] = []
        for pattern in self.patterns:
            out.extend(glob.glob(pattern) if glob.has_magic(pattern) else [pattern])
        return out

    def socket_peers(self) -> set[int]:
        """PIDs the socket worker saw connect (SO_PEERCRED), from its status file."""
        if not (self.socket and self.state_dir):
            return set()
        import json

        try:
            with open(os.path.join(self.state_dir, "status", "socket.json"), "rb") as fh:
                peers = json.load(fh).get("peers", [])
        except (OSError, ValueError):
            return set()
        return {p for p in peers if isinstance(p, int) and p > 0}


class Workload:
    """Finds the workload's processes (see the module docstring for the modes)."""

    def __init__(self, mode: str = "auto", pid_file: str = "", cmdline: str = "", children: bool = True,
                 psutil_mod: Any = None, proc_root: str = "/proc", environ: Mapping[str, str] | None = None,
                 sidecar_root: Any = "auto", sources: SourceWriters | None = None):
        if psutil_mod is None:
            import psutil as psutil_mod
        self.psutil = psutil_mod
        self.proc_root = proc_root
        self.environ = os.environ if environ is None else environ
        self.pid_file = pid_file
        self.children = children
        self.sources = sources or SourceWriters()
        self.uninspectable: list[int] = []  # mode sources: processes whose open files we may not see
        self._writers: set[int] = set()  # mode sources: the writers found by the last full look
        self._looked_at = 0.0
        self.sidecar_root = default_sidecar_root() if sidecar_root == "auto" else sidecar_root
        self.mode = self._resolve(mode, pid_file, cmdline)
        self.pattern: re.Pattern[str] | None = None
        if self.mode == "cmdline":
            try:
                self.pattern = re.compile(cmdline)
            except re.error as exc:
                raise CollectorUnavailable(f"cmdline pattern {cmdline!r} is not a valid regex: {exc}") from None

    def _resolve(self, mode: str, pid_file: str, cmdline: str) -> str:
        if mode == "auto" and self.environ.get(MODE_ENV):
            mode = self.environ[MODE_ENV].strip().lower()
            if mode not in MODES:
                raise CollectorUnavailable(f"${MODE_ENV}={mode!r}; use one of {', '.join(MODES)}")
        if mode not in MODES:
            raise CollectorUnavailable(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "auto":
            if pid_file:
                return "pid_file"
            if cmdline:
                return "cmdline"
            if in_initial_pid_namespace(self.proc_root) is False:
                return "namespace"
            if self.sources:
                return "sources"
            raise CollectorUnavailable(
                "nothing to watch: no --tail or --socket source whose writers could be found; set pid_file "
                "or cmdline in [collectors.process] "
                f"(or mode = \"namespace\" / ${MODE_ENV}=namespace in a pod with shareProcessNamespace)")
        if mode == "sources" and not self.sources:
            raise CollectorUnavailable("mode = \"sources\" needs a --tail or --socket source")
        if mode == "pid_file" and not pid_file:
            raise CollectorUnavailable("mode = \"pid_file\" needs the pid_file option")
        if mode == "cmdline" and not cmdline:
            raise CollectorUnavailable("mode = \"cmdline\" needs the cmdline option")
        return mode

    def describe(self) -> str:
        if self.mode == "pid_file":
            return f"pid_file {self.pid_file}"
        if self.mode == "cmdline" and self.pattern is not None:
            return f"cmdline /{self.pattern.pattern}/"
        if self.mode == "sources":
            return self.sources.describe()
        return "every process in this PID namespace except the sidecar"

    def _pid_file_pids(self) -> set[int]:
        pids = set()
        paths = glob.glob(self.pid_file) if glob.has_magic(self.pid_file) else [self.pid_file]
        for path in paths:
            try:
                with open(path) as fh:
                    text = fh.read(64).strip()
            except OSError:
                continue  # not written yet, or gone with its process
            if text.isdigit():
                pids.add(int(text))
        return pids

    def _descendants(self, roots: Iterable[int]) -> set[int] | None:
        """``roots`` (the live ones) and all their descendants, from /proc/PID/task/TID/children;
        None where the kernel has no such file (then every process is listed instead)."""
        out: set[int] = set()
        stack = list(roots)
        while stack:
            pid = stack.pop()
            if pid in out:
                continue
            try:
                tids = os.listdir(os.path.join(self.proc_root, str(pid), "task"))
            except OSError:
                continue  # gone
            out.add(pid)
            for tid in tids:
                try:
                    with open(os.path.join(self.proc_root, str(pid), "task", tid, "children"), "rb") as fh:
                        stack.extend(int(c) for c in fh.read().split())
                except FileNotFoundError:
                    if not os.path.exists(os.path.join(self.proc_root, str(pid), "task", tid)):
                        continue  # the thread ended
                    return None  # no CONFIG_PROC_CHILDREN
                except OSError:
                    continue
        return out

    def _select_from_roots(self) -> list[Any] | None:
        """Modes pid_file and sources: the tree under known roots, without listing every process
        (listing them was most of this collector's CPU between full looks for writers)."""
        ps = self.psutil
        excluded = self._descendants([self.sidecar_root]) if self.sidecar_root is not None else set()
        if excluded is None:
            return None
        if self.mode == "pid_file":
            roots = self._pid_file_pids()
        else:
            files = self.sources.files()
            known = {pid for pid in self._writers if os.path.isdir(os.path.join(self.proc_root, str(pid)))}
            if not (known and time.monotonic() - self._looked_at < WRITERS_LOOK_EVERY
                    and writers_of(files, self.proc_root, only=known) == known):
                self.uninspectable = []
                known = writers_of(files, self.proc_root, skip=excluded, denied=self.uninspectable)
                self._writers, self._looked_at = known, time.monotonic()
            roots = known | self.sources.socket_peers()
        chosen = self._descendants(roots) if self.children else \
            {pid for pid in roots if os.path.isdir(os.path.join(self.proc_root, str(pid)))}
        if chosen is None:
            return None
        if self.mode == "sources":
            chosen -= excluded
        zombie = getattr(ps, "STATUS_ZOMBIE", "zombie")
        out = []
        for pid in sorted(chosen):
            try:
                p = ps.Process(pid)
                if p.status() != zombie:
                    out.append(p)
            except ps.NoSuchProcess:
                continue
        return out

    def select(self) -> list[Any]:
        """The workload's live processes (psutil.Process objects; zombies left out)."""
        ps = self.psutil
        if self.mode in ("pid_file", "sources") and self.proc_root == "/proc":
            quick = self._select_from_roots()
            if quick is not None:
                return quick
        attrs = ["pid", "ppid", "name", "status"]
        if self.mode == "cmdline":
            attrs.append("cmdline")
        procs = {}
        kids: dict[int, list[int]] = {}
        for p in ps.process_iter(attrs):
            info = p.info
            procs[info["pid"]] = p
            kids.setdefault(info["ppid"], []).append(info["pid"])

        def tree(roots: Iterable[int]) -> set[int]:
            out, stack = set(), [r for r in roots if r in procs]
            while stack:
                pid = stack.pop()
                if pid in out:
                    continue
                out.add(pid)
                stack.extend(kids.get(pid, ()))
            return out

        excluded = tree([self.sidecar_root]) if self.sidecar_root is not None else set()
        if self.mode == "pid_file":
            roots = self._pid_file_pids() & procs.keys()
            chosen = tree(roots) if self.children else roots
        elif self.mode == "cmdline" and self.pattern is not None:
            pattern = self.pattern
            roots = {pid for pid, p in procs.items()
                     if pid not in excluded and pattern.search(" ".join(p.info.get("cmdline") or ()))}
            chosen = (tree(roots) if self.children else roots) - excluded
        elif self.mode == "sources":
            # Looking at every open file of every process costs most of this collector's CPU on
            # a busy host: between full looks, only check that the known writers still write.
            files = self.sources.files()
            known = self._writers & procs.keys()
            if not (known and time.monotonic() - self._looked_at < WRITERS_LOOK_EVERY
                    and writers_of(files, self.proc_root, only=known) == known):
                self.uninspectable = []
                known = writers_of(files, self.proc_root, skip=excluded, denied=self.uninspectable)
                self._writers, self._looked_at = known, time.monotonic()
            roots = known
            roots = (roots | self.sources.socket_peers()) & procs.keys()
            chosen = (tree(roots) if self.children else roots) - excluded
        else:
            kthreadd = procs.get(2)
            kernel = tree([2]) if kthreadd is not None and kthreadd.info.get("name") == "kthreadd" else set()
            chosen = procs.keys() - excluded - kernel
            one = procs.get(1)
            if one is not None and one.info.get("name") == "pause":
                chosen.discard(1)
        zombie = getattr(ps, "STATUS_ZOMBIE", "zombie")
        return [procs[pid] for pid in sorted(chosen) if procs[pid].info.get("status") != zombie]


def workload_from_options(opts: Mapping[str, Any], psutil_mod: Any = None, proc_root: str = "/proc",
                          environ: Mapping[str, str] | None = None, sidecar_root: Any = "auto",
                          sources: SourceWriters | None = None) -> Workload:
    return Workload(opts.get("mode", "auto"), opts.get("pid_file", ""), opts.get("cmdline", ""),
                    opts.get("children", True), psutil_mod=psutil_mod, proc_root=proc_root,
                    environ=environ, sidecar_root=sidecar_root, sources=sources)


WORKLOAD_OPTIONS: dict[str, tuple[type, Any]] = {
    "mode": (str, "auto"),
    "pid_file": (str, ""),
    "cmdline": (str, ""),
    "children": (bool, True),
}
