"""NVIDIA GPUs through NVML (nvidia-ml-py, imported as ``pynvml``).

The NVML module is a constructor handle (``GpuCollector(settings, nvml=fake)``;
default ``import pynvml``), so tests drive the real code against a fake at the
pynvml call boundary, with no monkeypatching.

- Every reading a device does not support (``NVMLError_NotSupported``, a
  function the driver lacks, no permission) is remembered per device and not
  asked again.
- The collector runs on a thread of its own (``own_process``), and the runner
  holds each collect to a deadline (``call_timeout``): a hung driver call
  neither blocks a scrape nor freezes stale values behind ``up=1`` -- the GPU
  series are withdrawn and ``up`` goes to 0 until NVML answers again.
- No NVML library, no driver, or no GPU: :class:`CollectorUnavailable` from
  :meth:`setup` (``up=0`` and one log line), never a crash.
- XID errors come from an NVML event-watcher thread and are counted per GPU
  and XID code.
- Hopper and later: SM activity, SM occupancy and tensor-pipe activity from
  NVML's GPM metrics (plain "utilisation" only says some kernel was running).

Per-process GPU memory and the training families: NVML reports host PIDs. In
the host's PID namespace (bare metal, or a pod with ``hostPID: true``) they are
psutil's PIDs, so the workload's processes (same options as the process
collector) are matched by PID (``attribution = "pid"``). In a container's own
PID namespace they cannot be matched, so the GPUs the container was given
*are* the workload's (``attribution = "devices"``): NVML only sees the devices
the container can open, narrowed by the GPU UUIDs in
``$NVIDIA_VISIBLE_DEVICES`` when it lists some.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import catalogue as C
from ..catalogue import COUNTER, GAUGE, Family
from ..cost import Usage, gpu_shares
from ..logs import RateLimitedLog
from . import (
    INCREMENT,
    TOTAL,
    Collector,
    CollectorSettings,
    CollectorUnavailable,
    Partial,
    Reading,
    register,
)
from .workload import (
    WORKLOAD_OPTIONS,
    SourceWriters,
    Workload,
    in_initial_pid_namespace,
    job_name,
    workload_from_options,
)

log = logging.getLogger("mlsidecar.collectors.gpu")

GPU = ("gpu", "uuid", "name")
MIG = GPU + ("gpu_instance", "compute_instance")


def _f(name, type_, help_, labels=GPU, unit="") -> Family:
    return Family(name, type_, help_, labels, unit=unit, fed_by="gpu collector")


INFO = _f("ml_gpu_info", GAUGE, "Always 1; labels name the GPU, its driver and CUDA version.",
          GPU + ("driver_version", "cuda_version"))
UTIL = _f("ml_gpu_utilization_ratio", GAUGE,
          "Share of the last sample period in which a kernel was running on the GPU (0-1).", unit="ratio")
MEM_UTIL = _f("ml_gpu_memory_utilization_ratio", GAUGE,
              "Share of the last sample period in which device memory was read or written (0-1).",
              unit="ratio")
MEM_USED = _f("ml_gpu_memory_used_bytes", GAUGE, "Framebuffer memory used.", MIG, "bytes")
MEM_FREE = _f("ml_gpu_memory_free_bytes", GAUGE, "Framebuffer memory free.", MIG, "bytes")
MEM_TOTAL = _f("ml_gpu_memory_total_bytes", GAUGE, "Framebuffer memory in total.", MIG, "bytes")
TEMP = _f("ml_gpu_temperature_celsius", GAUGE, "GPU core temperature.", unit="celsius")
POWER = _f("ml_gpu_power_usage_watts", GAUGE, "Power drawn by the GPU board.", unit="watts")
POWER_LIMIT = _f("ml_gpu_power_limit_watts", GAUGE, "Power limit the driver enforces.", unit="watts")
SM_CLOCK = _f("ml_gpu_sm_clock_hertz", GAUGE, "Current SM clock.", unit="hertz")
MEM_CLOCK = _f("ml_gpu_memory_clock_hertz", GAUGE, "Current memory clock.", unit="hertz")
CLOCK_REASONS = _f("ml_gpu_clock_event_reasons", GAUGE,
                   "1 when this reason is holding the clocks down (throttling), else 0.", GPU + ("reason",))
PCIE_TX = _f("ml_gpu_pcie_tx_bytes_per_second", GAUGE, "PCIe transmit throughput (last 20 ms).",
             unit="bytes")
PCIE_RX = _f("ml_gpu_pcie_rx_bytes_per_second", GAUGE, "PCIe receive throughput (last 20 ms).",
             unit="bytes")
ECC = _f("ml_gpu_ecc_errors_total", COUNTER,
         "ECC memory errors; volatile since the last driver load, aggregate over the GPU's life.",
         GPU + ("error_type", "counter_type"))
RETIRED = _f("ml_gpu_retired_pages", GAUGE, "Framebuffer pages retired, by cause (pre-Ampere GPUs).",
             GPU + ("cause",))
REMAPPED = _f("ml_gpu_remapped_rows", GAUGE,
              "Memory rows remapped (Ampere and later): correctable/uncorrectable counts; "
              "pending and failed are 0/1 flags.", GPU + ("kind",))
XID = _f("ml_gpu_xid_errors_total", COUNTER, "XID errors reported by the driver, by XID code.",
         GPU + ("xid",))
ENERGY = _f("ml_gpu_energy_joules_total", COUNTER, "Energy used by the GPU since the driver was loaded.",
            unit="joules")
SM_ACTIVITY = _f("ml_gpu_sm_activity_ratio", GAUGE, "Share of SMs that were busy (GPM, 0-1).", MIG)
SM_OCCUPANCY = _f("ml_gpu_sm_occupancy_ratio", GAUGE,
                  "Active warps over the theoretical maximum (GPM, 0-1).", MIG)
TENSOR = _f("ml_gpu_tensor_activity_ratio", GAUGE,
            "Share of time the SMs ran any tensor-pipe work (GPM, 0-1).", MIG)
PROCESS_MEM = _f("ml_gpu_process_memory_used_bytes", GAUGE, "GPU memory used by one process.",
                 ("gpu", "uuid", "pid", "process_name"), "bytes")

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (INFO, UTIL, MEM_UTIL, MEM_USED, MEM_FREE, MEM_TOTAL, TEMP, POWER, POWER_LIMIT,
    SM_CLOCK, MEM_CLOCK, CLOCK_REASONS, PCIE_TX, PCIE_RX, ECC, RETIRED, REMAPPED, XID, ENERGY, SM_ACTIVITY,
    SM_OCCUPANCY, TENSOR, PROCESS_MEM)

# Clock event ("throttle") reason bits, as in nvml.h (stable ABI values).
REASONS = (
    ("gpu_idle", 0x1), ("applications_clocks_setting", 0x2), ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8), ("sync_boost", 0x10), ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40), ("hw_power_brake_slowdown", 0x80), ("display_clock_setting", 0x100),
)
# GPM metric ids (nvml.h): SM_UTIL, SM_OCCUPANCY, ANY_TENSOR_UTIL -- reported in percent.
GPM_METRICS = ((2, SM_ACTIVITY), (3, SM_OCCUPANCY), (5, TENSOR))
XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
NOT_A_MIG_ID = 0xFFFFFFFF


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _handle_key(handle: Any) -> Any:
    """A hashable identity for a device handle (a ctypes pointer from pynvml)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


class _Fatal(Exception):
    """NVML itself went away (uninitialised, driver unloaded or replaced)."""


class _Lost(Exception):
    """One GPU stopped answering (fell off the bus)."""


@dataclass
class _Gpu:
    index: int
    handle: Any
    uuid: str
    name: str
    labels: tuple[str, str, str]
    mig: list = field(default_factory=list)  # [(handle, gpu_instance, compute_instance)]


class XidWatcher(threading.Thread):
    """Waits on an NVML event set and counts XID errors per (GPU index, XID)."""

    def __init__(self, nvml, gpus: list[_Gpu]):
        super().__init__(name="nvml-xid", daemon=True)
        self.nvml = nvml
        self.by_handle = {_handle_key(g.handle): g for g in gpus}
        self.counts: dict[tuple[int, int], int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.watching: list[int] = []
        nv = nvml
        self.event_set = nv.nvmlEventSetCreate()
        for g in gpus:
            try:
                nv.nvmlDeviceRegisterEvents(g.handle, XID_EVENT, self.event_set)
                self.watching.append(g.index)
            except nv.NVMLError as exc:
                log.info("XID events not available on GPU %d: %s", g.index, exc)

    def run(self) -> None:
        nv = self.nvml
        wait = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait
        errors = RateLimitedLog(log, interval=600.0)
        while not self.stop.is_set():
            try:
                data = wait(self.event_set, 500)
            except nv.NVMLError_Timeout:
                continue
            except nv.NVMLError as exc:
                errors.warning("wait", "NVML event wait failed: %s", exc)
                self.stop.wait(1.0)
                continue
            if not data.eventType & XID_EVENT:
                continue
            g = self.by_handle.get(_handle_key(data.device))
            if g is None:
                continue
            with self.lock:
                k = (g.index, int(data.eventData))
                self.counts[k] = self.counts.get(k, 0) + 1

    def snapshot(self) -> dict[tuple[int, int], int]:
        with self.lock:
            return dict(self.counts)

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(2.0)
        if not self.is_alive():
            try:
                self.nvml.nvmlEventSetFree(self.event_set)
            except Exception:  # noqa: BLE001
                pass


@register
class GpuCollector(Collector):
    """Per-GPU readings from NVML; see the module docstring."""

    summary = "GPU utilisation, memory, power, temperature, clocks and errors from NVML"

    name = "gpu"
    default_enabled = True
    default_interval = 5.0
    own_process = True
    options = {
        "job_name": (str, ""),
        "processes": (bool, True),
        "attribution": (str, "auto"),
        **WORKLOAD_OPTIONS,
        "xid_events": (bool, True),
        "gpm": (bool, True),
        "call_timeout": (float, 10.0),
    }

    def __init__(self, settings: CollectorSettings, nvml=None, psutil=None, proc_root: str = "/proc",
                 environ=None, sidecar_root: Any = "auto", **handles: Any):
        super().__init__(settings)
        self.nvml = nvml
        self._psutil = psutil
        self._proc_root = proc_root
        self._environ = os.environ if environ is None else environ
        self._sidecar_root = sidecar_root
        self._sources = SourceWriters(handles.get("sources"), handles.get("state_dir", ""))
        self.gpus: list[_Gpu] = []
        self.unsupported: set[tuple[str, str]] = set()
        self.lost: set[str] = set()
        self.attribution = "none"
        self.workload: Workload | None = None
        self.xid: XidWatcher | None = None
        self._xid_last: dict[tuple[str, ...], int] = {}  # the watcher's counts at the last collect
        self._gpm_prev: dict[tuple, Any] = {}
        self._names: dict[int, str] = {}
        self._initialised = False
        self._errors = RateLimitedLog(log, interval=600.0)
        self.usage: Usage | None = None
        self.driver_version = self.cuda_version = ""

    # --- start-up -----------------------------------------------------------
    def setup(self) -> None:
        nv = self.nvml
        if nv is None:
            # No driver library (a machine without a GPU): say so without importing pynvml,
            # which costs the collector process about 4 MB for nothing.
            try:
                ctypes.CDLL("libnvidia-ml.so.1")
            except OSError:
                raise CollectorUnavailable("NVML library (libnvidia-ml.so.1) not found: "
                                           "no NVIDIA driver on this machine") from None
            try:
                import pynvml
            except ImportError:
                raise CollectorUnavailable("nvidia-ml-py (pynvml) is not installed") from None
            nv = self.nvml = pynvml
        try:
            nv.nvmlInit()
        except nv.NVMLError_LibraryNotFound:
            raise CollectorUnavailable("NVML library (libnvidia-ml.so.1) not found: "
                                       "no NVIDIA driver on this machine") from None
        except nv.NVMLError_DriverNotLoaded:
            raise CollectorUnavailable("NVIDIA driver is not loaded") from None
        except nv.NVMLError as exc:
            raise CollectorUnavailable(f"NVML did not start: {exc}") from None
        self._initialised = True
        try:
            count = nv.nvmlDeviceGetCount()
            if count == 0:
                raise CollectorUnavailable("NVML found no GPU")
            self.driver_version = _s(nv.nvmlSystemGetDriverVersion())
            try:
                self.cuda_version = _cuda_version(int(nv.nvmlSystemGetCudaDriverVersion()))
            except nv.NVMLError:
                self.cuda_version = ""
            self.gpus = []
            for i in range(count):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuid, name = _s(nv.nvmlDeviceGetUUID(h)), _s(nv.nvmlDeviceGetName(h))
                self.gpus.append(_Gpu(i, h, uuid, name, (str(i), uuid, name)))
        except CollectorUnavailable:
            self._shutdown()
            raise
        except nv.NVMLError as exc:
            self._shutdown()
            raise CollectorUnavailable(f"NVML could not list the GPUs: {exc}") from None
        self._setup_attribution()
        if self.settings.options.get("xid_events", True):
            try:
                self.xid = XidWatcher(nv, self.gpus)
                self._xid_last = {}
                self.xid.start()
            except nv.NVMLError as exc:
                log.info("XID events not available: %s", exc)
                self.xid = None
        log.info("gpu collector: %d GPU(s) (%s), driver %s, CUDA %s, attribution %s",
                 len(self.gpus), ", ".join(g.name for g in self.gpus), self.driver_version,
                 self.cuda_version or "?", self.attribution)

    def _setup_attribution(self) -> None:
        opts = self.settings.options
        mode = opts.get("attribution", "auto")
        if mode not in ("auto", "pid", "devices", "none"):
            raise CollectorUnavailable(f"attribution {mode!r} is not one of auto, pid, devices, none")
        if mode == "auto":
            mode = "devices" if in_initial_pid_namespace(self._proc_root) is False else "pid"
        self.attribution = mode
        self.job_name = job_name(self.settings, self._environ)
        self.workload = None
        if mode == "pid":
            try:
                self.workload = workload_from_options(opts, self._psutil, self._proc_root, self._environ,
                                                      self._sidecar_root, self._sources)
            except CollectorUnavailable as exc:
                # Per-process memory is still exported; only the training families need a workload.
                log.info("gpu collector: no workload to attribute GPU use to (%s)", exc)
        visible = self._environ.get("NVIDIA_VISIBLE_DEVICES", "")
        uuids = {v.strip() for v in visible.split(",") if v.strip().startswith("GPU-")}
        self.visible = {g.index for g in self.gpus if not uuids or g.uuid in uuids}

    # --- reading --------------------------------------------------------------
    def _call(self, gpu_uuid: str, what: str, fn, *args):
        """One NVML reading, or None when the device does not support it (remembered)."""
        key = (gpu_uuid, what)
        if key in self.unsupported:
            return None
        nv = self.nvml
        try:
            return fn(*args)
        except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound, nv.NVMLError_NoPermission,
                getattr(nv, "NVMLLibraryMismatchError", nv.NVMLError_NotSupported), AttributeError):
            self.unsupported.add(key)
            return None
        except nv.NVMLError as exc:
            self._classify(exc)
            self._errors.warning(what, "GPU %s: %s failed: %s", gpu_uuid, what, exc)
            return None

    def _classify(self, exc: Exception) -> None:
        """Raise _Lost or _Fatal for the NVML errors that are more than one failed reading."""
        nv = self.nvml
        if isinstance(exc, (nv.NVMLError_GpuIsLost, nv.NVMLError_ResetRequired)):
            raise _Lost(str(exc)) from None
        if isinstance(exc, (nv.NVMLError_Uninitialized, nv.NVMLError_DriverNotLoaded,
                            nv.NVMLError_LibRmVersionMismatch, nv.NVMLError_LibraryNotFound)):
            raise _Fatal(str(exc)) from None

    def _read_all(self) -> tuple[dict, list[str]]:
        """Every reading of every GPU: ({(family, labels): value}, [lost GPU messages])."""
        out: dict = {}
        lost: list[str] = []
        per_gpu_procs: dict[int, dict[int, float]] = {}
        for g in self.gpus:
            try:
                self._read_gpu(g, out)
                if self.settings.options.get("processes", True):
                    per_gpu_procs[g.index] = self._read_processes(g)
                if g.uuid in self.lost:
                    self.lost.discard(g.uuid)
                    log.warning("GPU %d (%s) answers again", g.index, g.uuid)
            except _Lost as exc:
                if g.uuid not in self.lost:
                    log.error("GPU %d (%s) is lost: %s", g.index, g.uuid, exc)
                self.lost.add(g.uuid)
                lost.append(f"GPU {g.index} ({g.uuid}): {exc}")
                for k in [k for k in out if k[1][:3] == g.labels]:
                    del out[k]
                self._gpm_prev = {k: v for k, v in self._gpm_prev.items() if k[0] != g.uuid}
        if self.xid is not None:
            by_index = {g.index: g for g in self.gpus}
            for (index, code), n in self.xid.snapshot().items():
                found = by_index.get(index)
                if found is None or found.uuid in self.lost:
                    continue
                out[(XID, found.labels + (str(code),))] = n
        seen = {pid for procs in per_gpu_procs.values() for pid in procs}
        self._names = {pid: n for pid, n in self._names.items() if pid in seen}
        for index, procs in per_gpu_procs.items():
            g = self.gpus[index]
            for pid, used in procs.items():
                name = self._process_name(pid)
                out[(PROCESS_MEM, (str(index), g.uuid, str(pid), name))] = used
        self._training(out, per_gpu_procs)
        self.usage = self._cost_usage(per_gpu_procs)
        return out, lost

    def _cost_usage(self, per_gpu_procs: dict[int, dict[int, float]]) -> Usage | None:
        """The GPUs the workload holds and its share of each, for the cost meter (mlsidecar/cost.py).

        ``devices``: the container's visible GPUs, wholly. ``pid`` with a workload: each GPU's cost
        shared by GPU memory among its processes. Otherwise every GPU the sidecar sees, wholly.
        """
        gpus = [g for g in self.gpus if g.uuid not in self.lost]
        pids = None
        if self.attribution == "devices":
            gpus = [g for g in gpus if g.index in self.visible]
        elif self.attribution == "pid" and self.workload is not None and \
                self.settings.options.get("processes", True):
            try:
                pids = {p.pid for p in self.workload.select()}
            except Exception:  # noqa: BLE001 - keep the last reading; the next one charges the gap
                return self.usage
        procs = {g.uuid: per_gpu_procs.get(g.index, {}) for g in gpus}
        return Usage(gpus=gpu_shares([(str(g.index), g.uuid, g.name) for g in gpus], procs, pids))

    def _read_gpu(self, g: _Gpu, out: dict) -> None:
        nv, h, L, call = self.nvml, g.handle, g.labels, self._call
        u = g.uuid
        out[(INFO, L + (self.driver_version, self.cuda_version))] = 1.0
        util = call(u, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
        if util is not None:
            out[(UTIL, L)] = util.gpu / 100.0  # NVML says percent; Prometheus wants ratios
            out[(MEM_UTIL, L)] = util.memory / 100.0
        self._memory(u, h, L + ("", ""), out)
        v = call(u, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        if v is not None:
            out[(TEMP, L)] = float(v)
        v = call(u, "power", nv.nvmlDeviceGetPowerUsage, h)
        if v is not None:
            out[(POWER, L)] = v / 1000.0
        v = call(u, "power_limit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
        if v is not None:
            out[(POWER_LIMIT, L)] = v / 1000.0
        v = call(u, "sm_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        if v is not None:
            out[(SM_CLOCK, L)] = v * 1e6
        v = call(u, "mem_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM)
        if v is not None:
            out[(MEM_CLOCK, L)] = v * 1e6
        fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        v = call(u, "clock_reasons", fn, h)
        if v is not None:
            for reason, bit in REASONS:
                out[(CLOCK_REASONS, L + (reason,))] = 1.0 if v & bit else 0.0
        v = call(u, "pcie_tx", nv.nvmlDeviceGetPcieThroughput, h, nv.NVML_PCIE_UTIL_TX_BYTES)
        if v is not None:
            out[(PCIE_TX, L)] = v * 1024.0  # NVML answers in KB/s
        v = call(u, "pcie_rx", nv.nvmlDeviceGetPcieThroughput, h, nv.NVML_PCIE_UTIL_RX_BYTES)
        if v is not None:
            out[(PCIE_RX, L)] = v * 1024.0
        for etype, ename in ((nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, "corrected"),
                             (nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "uncorrected")):
            for ctype, cname in ((nv.NVML_VOLATILE_ECC, "volatile"), (nv.NVML_AGGREGATE_ECC, "aggregate")):
                v = call(u, f"ecc_{ename}_{cname}", nv.nvmlDeviceGetTotalEccErrors, h, etype, ctype)
                if v is not None:
                    out[(ECC, L + (ename, cname))] = float(v)
        for cause, cname in ((nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
                              "multiple_single_bit_ecc"),
                             (nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR, "double_bit_ecc")):
            v = call(u, f"retired_{cname}", nv.nvmlDeviceGetRetiredPages, h, cause)
            if v is not None:
                out[(RETIRED, L + (cname,))] = float(len(v))
        v = call(u, "remapped_rows", nv.nvmlDeviceGetRemappedRows, h)
        if v is not None:
            for kind, value in zip(("correctable", "uncorrectable", "pending", "failed"), v):
                out[(REMAPPED, L + (kind,))] = float(value)
        v = call(u, "energy", nv.nvmlDeviceGetTotalEnergyConsumption, h)
        if v is not None:
            out[(ENERGY, L)] = v / 1000.0  # mJ
        self._gpm(g, h, None, L + ("", ""), out)
        self._mig(g, out)

    def _memory(self, u: str, h, labels: tuple, out: dict) -> None:
        m = self._call(u, f"memory{labels[3:]}", self.nvml.nvmlDeviceGetMemoryInfo, h)
        if m is not None:
            out[(MEM_USED, labels)] = float(m.used)
            out[(MEM_FREE, labels)] = float(m.free)
            out[(MEM_TOTAL, labels)] = float(m.total)

    def _mig(self, g: _Gpu, out: dict) -> None:
        """MIG instances: their memory and GPM activity, labelled by GPU/compute instance."""
        nv, call, u = self.nvml, self._call, g.uuid
        mode = call(u, "mig_mode", nv.nvmlDeviceGetMigMode, g.handle)
        if mode is None or mode[0] != getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1):
            return
        n = call(u, "mig_count", nv.nvmlDeviceGetMaxMigDeviceCount, g.handle) or 0
        for i in range(n):
            try:
                mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(g.handle, i)
            except (nv.NVMLError_NotFound, nv.NVMLError_InvalidArgument):
                continue  # no instance in this slot
            except nv.NVMLError as exc:
                self._classify(exc)
                self._errors.warning("mig", "GPU %s: MIG instance %d: %s", u, i, exc)
                continue
            gi = call(u, "mig_gi", nv.nvmlDeviceGetGpuInstanceId, mh)
            ci = call(u, "mig_ci", nv.nvmlDeviceGetComputeInstanceId, mh)
            if gi is None:
                continue
            labels = g.labels + (str(gi), "" if ci is None else str(ci))
            self._memory(u, mh, labels, out)
            self._gpm(g, mh, gi, labels, out)

    def _gpm(self, g: _Gpu, h, gpu_instance: int | None, labels: tuple, out: dict) -> None:
        """SM activity/occupancy and tensor activity from two GPM samples, one poll apart."""
        if not self.settings.options.get("gpm", True):
            return
        nv, u = self.nvml, g.uuid
        support = self._call(u, "gpm", nv.nvmlGpmQueryDeviceSupport, g.handle)
        if support is None:
            return
        if not support.isSupportedDevice:
            self.unsupported.add((u, "gpm"))
            return
        what = f"gpm{labels[3:]}"
        sample = self._call(u, what + "_alloc", nv.nvmlGpmSampleAlloc)
        if sample is None:
            return
        if gpu_instance is None:
            got = self._call(u, what, nv.nvmlGpmSampleGet, h, sample)
        else:
            got = self._call(u, what, nv.nvmlGpmMigSampleGet, g.handle, gpu_instance, sample)
        key = (u, labels[3:])
        prev = self._gpm_prev.pop(key, None)
        if got is None:
            self._free(sample)
            self._free(prev)
            return
        self._gpm_prev[key] = sample
        if prev is None:
            return
        try:
            mg = nv.c_nvmlGpmMetricsGet_t()
            mg.version = nv.NVML_GPM_METRICS_GET_VERSION
            mg.numMetrics = len(GPM_METRICS)
            mg.sample1 = prev
            mg.sample2 = sample
            for i, (mid, _) in enumerate(GPM_METRICS):
                mg.metrics[i].metricId = mid
            if self._call(u, what + "_metrics", nv.nvmlGpmMetricsGet, mg) is None:
                return
            for i, (_, fam) in enumerate(GPM_METRICS):
                m = mg.metrics[i]
                if m.nvmlReturn == 0:
                    out[(fam, labels)] = max(0.0, min(1.0, m.value / 100.0))
        finally:
            self._free(prev)

    def _free(self, sample) -> None:
        if sample is not None:
            try:
                self.nvml.nvmlGpmSampleFree(sample)
            except Exception:  # noqa: BLE001
                pass

    def _read_processes(self, g: _Gpu) -> dict[int, float]:
        """{host pid: GPU memory bytes} of the processes on one GPU."""
        nv = self.nvml
        out: dict[int, float] = {}
        for what, fn in (("compute_processes", nv.nvmlDeviceGetComputeRunningProcesses),
                         ("graphics_processes", nv.nvmlDeviceGetGraphicsRunningProcesses)):
            procs = self._call(g.uuid, what, fn, g.handle) or ()
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                if used is None:
                    continue
                out[int(p.pid)] = max(out.get(int(p.pid), 0.0), float(used))
        return out

    def _process_name(self, pid: int) -> str:
        name = self._names.get(pid)
        if name is not None:
            return name
        name = ""
        if self.attribution == "pid":
            try:
                import psutil

                name = (self._psutil or psutil).Process(pid).name()
            except Exception:  # noqa: BLE001 - gone, or not ours to read
                name = ""
        if not name:
            try:
                name = os.path.basename(_s(self.nvml.nvmlSystemGetProcessName(pid)))
            except Exception:  # noqa: BLE001
                name = ""
        self._names[pid] = name
        return name

    def _training(self, out: dict, per_gpu_procs: dict[int, dict[int, float]]) -> None:
        """ml_training_gpu_utilization_percent / ml_training_memory_usage_bytes{memory_type="gpu"}."""
        if not self.job_name or self.attribution == "none":
            return
        job = self.job_name
        if self.attribution == "devices":
            gpus = [g for g in self.gpus if g.index in self.visible and g.uuid not in self.lost]
            used = [out.get((MEM_USED, g.labels + ("", ""))) for g in gpus]
            if any(v is not None for v in used):
                out[(C.TRAINING_MEMORY, (job, "gpu"))] = float(sum(v for v in used if v is not None))
        else:
            if self.workload is None:
                return
            try:
                pids = {p.pid for p in self.workload.select()}
            except Exception as exc:  # noqa: BLE001
                self._errors.warning("workload", "gpu collector: cannot list the workload: %s", exc)
                return
            gpus, total = [], 0.0
            for g in self.gpus:
                procs = per_gpu_procs.get(g.index, {})
                mine = [used for pid, used in procs.items() if pid in pids]
                if mine:
                    gpus.append(g)
                    total += sum(mine)
            out[(C.TRAINING_MEMORY, (job, "gpu"))] = total
        for g in gpus:
            v = out.get((UTIL, g.labels))
            if v is not None:
                # ml_training_gpu_utilization_percent: a name (and scale) the specification fixes.
                out[(C.TRAINING_GPU_UTIL, (job, str(g.index)))] = round(v * 100.0, 6)

    # --- the collector interface ------------------------------------------
    def collect(self) -> list[Reading]:
        try:
            values, lost = self._read_all()
        except _Fatal as exc:
            self._stop()
            raise CollectorUnavailable(f"NVML stopped answering: {exc}") from None
        readings = []
        for (fam, labels), value in values.items():
            if fam is XID:
                # The watcher counts from its start; the runner adds the growth to the total
                # (the one in the metric files after a worker restart).
                last = self._xid_last.get(labels, 0)
                self._xid_last[labels] = int(value)
                readings.append(Reading(fam, labels, float(value - last), INCREMENT))
            else:
                readings.append(Reading(fam, labels, float(value), TOTAL if fam.type == COUNTER else "gauge"))
        if lost:
            raise Partial("; ".join(lost), readings)
        return readings

    def deadline(self) -> float:
        return float(self.settings.options.get("call_timeout", 10.0))

    def _stop(self) -> None:
        if self.xid is not None:
            self.xid.close()
            self.xid = None
        for s in self._gpm_prev.values():
            self._free(s)
        self._gpm_prev.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self._stop()
