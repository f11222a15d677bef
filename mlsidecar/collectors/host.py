"""The host (or the container's view of it), read with psutil. Off by default.

Most clusters already run node_exporter on every node, which reads the same
and more; this collector is for boxes without it (a lone GPU server, a
laptop demo) and for the few host readings our alert rules need next
to the workload's metrics (``StorageSpaceRunningOut`` watches ``/data*``
mounts). Turn it on with ``[collectors.host] enabled = true`` or
``--collector.host``.

Inside a container psutil reads the container's /proc: CPU and load are the
node's, memory is the node's (not the cgroup limit), filesystems and network
interfaces are the container's own mounts and network namespace.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from ..catalogue import COUNTER, GAUGE, Family
from . import TOTAL, Collector, CollectorSettings, CollectorUnavailable, Reading, register


def _f(*args: Any, **kwargs: Any) -> Family:
    kwargs["fed_by"] = "host collector"
    return Family(*args, **kwargs)


CPU = _f("ml_host_cpu_utilization_ratio", GAUGE,
         "Share of CPU time not idle (nor waiting for I/O) since the previous poll, all CPUs (0-1).")
LOAD1 = _f("ml_host_load1", GAUGE, "1-minute load average.")
LOAD5 = _f("ml_host_load5", GAUGE, "5-minute load average.")
LOAD15 = _f("ml_host_load15", GAUGE, "15-minute load average.")
MEM_TOTAL = _f("ml_host_memory_total_bytes", GAUGE, "Physical memory in total.", unit="bytes")
MEM_AVAILABLE = _f("ml_host_memory_available_bytes", GAUGE,
                   "Memory available to new work without swapping (MemAvailable).", unit="bytes")
SWAP_USED = _f("ml_host_swap_used_bytes", GAUGE, "Swap in use.", unit="bytes")
SWAP_TOTAL = _f("ml_host_swap_total_bytes", GAUGE, "Swap in total.", unit="bytes")
FS_SIZE = _f("ml_host_filesystem_size_bytes", GAUGE, "Size of a mounted filesystem.", ("mountpoint",),
             unit="bytes")
FS_AVAIL = _f("ml_host_filesystem_avail_bytes", GAUGE,
              "Space on a filesystem available to unprivileged users.", ("mountpoint",), unit="bytes")
NET_RX = _f("ml_host_network_receive_bytes_total", COUNTER, "Bytes received by a network interface.",
            ("device",), unit="bytes")
NET_TX = _f("ml_host_network_transmit_bytes_total", COUNTER, "Bytes sent by a network interface.",
            ("device",), unit="bytes")

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (CPU, LOAD1, LOAD5, LOAD15, MEM_TOTAL, MEM_AVAILABLE, SWAP_USED, SWAP_TOTAL,
    FS_SIZE, FS_AVAIL, NET_RX, NET_TX)

_IDLE = ("idle", "iowait")
_NOT_IN_TOTAL = ("guest", "guest_nice")  # already counted in user and nice on Linux


def _strings(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = (v,)
    if not all(isinstance(x, str) for x in v):
        raise CollectorUnavailable(f"{key} must be a list of strings")
    return tuple(v)


@register
class HostCollector(Collector):
    """CPU, load, memory, swap, filesystem space and network bytes of the host."""

    name = "host"
    summary = "host CPU, load, memory, swap, filesystem space and network bytes"
    default_enabled = False
    default_interval = 15.0
    options = {
        # Mount points to report: exact paths or globs ("/data*").
        "mountpoints": (tuple, ("/",)),
        # Network interfaces to report (globs), and ones to leave out.
        "network_devices": (tuple, ("*",)),
        "network_exclude": (tuple, ("lo",)),
    }

    def __init__(self, settings: CollectorSettings, psutil: Any = None, **handles: Any):
        super().__init__(settings)
        self._psutil = psutil
        self._cpu_last: Any = None

    def setup(self) -> None:
        if self._psutil is None:
            try:
                import psutil
            except ImportError:
                raise CollectorUnavailable("psutil is not installed") from None
            self._psutil = psutil
        opts = self.settings.options
        self.mountpoints = _strings(opts.get("mountpoints", ("/",)), "mountpoints")
        self.net_include = _strings(opts.get("network_devices", ("*",)), "network_devices")
        self.net_exclude = _strings(opts.get("network_exclude", ("lo",)), "network_exclude")
        self._cpu_last = self._psutil.cpu_times()

    def _cpu_ratio(self) -> float | None:
        now = self._psutil.cpu_times()
        last, self._cpu_last = self._cpu_last, now
        if last is None:
            return None
        fields = [f for f in now._fields if f not in _NOT_IN_TOTAL]
        total = sum(getattr(now, f) - getattr(last, f) for f in fields)
        idle = sum(getattr(now, f) - getattr(last, f) for f in _IDLE if f in fields)
        if total <= 0:
            return None
        return max(0.0, min(1.0, 1.0 - float(idle) / float(total)))

    def _mounts(self) -> list[str]:
        """The mounted filesystems whose mount point matches one of the configured paths/globs."""
        found = []
        for part in self._psutil.disk_partitions(all=True):
            mp = part.mountpoint
            if mp in found:
                continue
            if any(mp == pat or (any(c in pat for c in "*?[") and fnmatch.fnmatchcase(mp, pat))
                   for pat in self.mountpoints):
                found.append(mp)
        return found

    def collect(self) -> list[Reading]:
        ps = self._psutil
        out: list[Reading] = []
        ratio = self._cpu_ratio()
        if ratio is not None:
            out.append(Reading(CPU, (), ratio))
        try:
            l1, l5, l15 = ps.getloadavg() if hasattr(ps, "getloadavg") else os.getloadavg()
            out += [Reading(LOAD1, (), float(l1)), Reading(LOAD5, (), float(l5)), Reading(LOAD15, (), float(l15))]
        except OSError:
            pass
        vm = ps.virtual_memory()
        out.append(Reading(MEM_TOTAL, (), float(vm.total)))
        out.append(Reading(MEM_AVAILABLE, (), float(vm.available)))
        sw = ps.swap_memory()
        out.append(Reading(SWAP_USED, (), float(sw.used)))
        out.append(Reading(SWAP_TOTAL, (), float(sw.total)))
        for mp in self._mounts():
            try:
                du = ps.disk_usage(mp)
            except OSError:  # unmounted between the listing and now, or not ours to read
                continue
            out.append(Reading(FS_SIZE, (mp,), float(du.total)))
            out.append(Reading(FS_AVAIL, (mp,), float(du.free)))
        for dev, io in ps.net_io_counters(pernic=True).items():
            if not any(fnmatch.fnmatchcase(dev, p) for p in self.net_include):
                continue
            if any(fnmatch.fnmatchcase(dev, p) for p in self.net_exclude):
                continue
            # The kernel's totals since the interface came up.
            out.append(Reading(NET_RX, (dev,), float(io.bytes_recv), TOTAL))
            out.append(Reading(NET_TX, (dev,), float(io.bytes_sent), TOTAL))
        return out
