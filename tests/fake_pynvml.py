"""A fake NVML at the pynvml call boundary, for the GPU collector's tests.

Same function names, same return types (pynvml's own ctypes structs, device
handles that are real ``c_nvmlDevice_t`` pointers, ``nvmlFriendlyObject``
process entries) and pynvml's own error classes and constants, so the
collector's ``except`` clauses and struct handling run exactly as they would
against a driver. It only holds numbers; everything above it is real code.

``FakeNVML(gpus)`` is passed as ``GpuCollector(settings, nvml=fake)``.
A ``FakeGpu`` says what one device answers; a function named in its
``unsupported`` set raises ``NVMLError_NotSupported``; ``lost`` makes every
call raise ``NVMLError_GpuIsLost``; ``hang`` (a threading.Event) makes calls
block until it is set. ``calls`` counts the calls per function name.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field

import pynvml as _real

# The real error classes, re-exported for the tests' convenience.
NVMLError = _real.NVMLError
NVMLError_NotSupported = _real.NVMLError_NotSupported
NVMLError_GpuIsLost = _real.NVMLError_GpuIsLost
NVMLError_Uninitialized = _real.NVMLError_Uninitialized
NVMLError_LibraryNotFound = _real.NVMLError_LibraryNotFound
NVMLError_DriverNotLoaded = _real.NVMLError_DriverNotLoaded


def _pointer(kind, address: int):
    return ctypes.cast(ctypes.c_void_p(address), kind)


def _addr(ptr) -> int:
    return ctypes.cast(ptr, ctypes.c_void_p).value


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    util_gpu: int = 50
    util_memory: int = 20
    memory_total: int = 80 * 2**30
    memory_used: int = 10 * 2**30
    temperature: int = 40
    power_mw: int = 250_000
    power_limit_mw: int = 700_000
    sm_mhz: int = 1980
    mem_mhz: int = 2619
    reasons: int = 0
    pcie_tx_kb: int = 1000
    pcie_rx_kb: int = 2000
    ecc: dict = field(default_factory=dict)  # (error_type, counter_type) -> count
    retired: dict = field(default_factory=dict)  # cause -> [addresses]
    remapped: tuple = (0, 0, 0, 0)
    energy_mj: int = 1_000_000
    processes: list = field(default_factory=list)  # [(pid, used bytes)]
    graphics_processes: list = field(default_factory=list)
    gpm: dict | None = None  # metric id -> percent; None = not a GPM device
    mig: list = field(default_factory=list)  # [FakeMig]
    unsupported: set = field(default_factory=set)
    lost: bool = False


@dataclass
class FakeMig:
    gpu_instance: int
    compute_instance: int
    memory_total: int = 10 * 2**30
    memory_used: int = 2**30
    gpm: dict | None = None


class FakeNVML:
    """Module-like: ``fake.nvmlInit()``, ``fake.NVMLError_NotSupported`` ..."""

    def __init__(self, gpus: list[FakeGpu], driver: str = "550.54.15", cuda: int = 12040,
                 init_error: type | None = None, process_names: dict | None = None):
        self.gpus = gpus
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.process_names = process_names or {}
        self.calls: Counter = Counter()
        self.hang: threading.Event | None = None
        self.initialised = 0
        self.events: queue.Queue = queue.Queue()
        self._handles = {}  # address -> FakeGpu or (FakeGpu, FakeMig)
        self._samples = {}  # sample address -> (owner, metrics dict)
        self._next_sample = 0x100000

    def __getattr__(self, name):  # constants and error classes of the real module
        if name.startswith(("NVMLError", "NVMLLibrary", "NVML_", "nvmlClocks", "nvmlEventType", "c_nvml")):
            return getattr(_real, name)
        raise AttributeError(name)

    # --- plumbing ---------------------------------------------------------
    def _enter(self, fn: str, handle=None):
        self.calls[fn] += 1
        if self.hang is not None:
            self.hang.wait()
        if not self.initialised:
            raise _real.NVMLError_Uninitialized()
        if handle is None:
            return None
        obj = self._handles[_addr(handle)]
        gpu = obj[0] if isinstance(obj, tuple) else obj
        if gpu.lost:
            raise _real.NVMLError_GpuIsLost()
        if fn in gpu.unsupported:
            raise _real.NVMLError_NotSupported()
        return obj

    def xid(self, index: int, code: int) -> None:
        """The driver reports XID ``code`` on GPU ``index``."""
        data = _real.c_nvmlEventData_t()
        data.device = self.nvmlDeviceGetHandleByIndex(index)
        data.eventType = 0x8
        data.eventData = code
        self.events.put(data)

    # --- system -----------------------------------------------------------
    def nvmlInit(self):
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error()
        self.initialised += 1

    def nvmlShutdown(self):
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self):
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlSystemGetProcessName(self, pid):
        self._enter("nvmlSystemGetProcessName")
        if pid not in self.process_names:
            raise _real.NVMLError_NotFound()
        return self.process_names[pid]

    def nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        if index >= len(self.gpus):
            raise _real.NVMLError_InvalidArgument()
        address = 0x1000 + 0x100 * index
        self._handles[address] = self.gpus[index]
        return _pointer(_real.c_nvmlDevice_t, address)

    # --- per device ---------------------------------------------------------
    def nvmlDeviceGetUUID(self, h):
        return self._enter("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetName(self, h):
        return self._enter("nvmlDeviceGetName", h).name

    def nvmlDeviceGetUtilizationRates(self, h):
        g = self._enter("nvmlDeviceGetUtilizationRates", h)
        u = _real.c_nvmlUtilization_t()
        u.gpu, u.memory = g.util_gpu, g.util_memory
        return u

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        obj = self._enter("nvmlDeviceGetMemoryInfo", h)
        src = obj[1] if isinstance(obj, tuple) else obj
        m = _real.c_nvmlMemory_t()
        m.total, m.used, m.free = src.memory_total, src.memory_used, src.memory_total - src.memory_used
        return m

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == _real.NVML_TEMPERATURE_GPU
        return self._enter("nvmlDeviceGetTemperature", h).temperature

    def nvmlDeviceGetPowerUsage(self, h):
        return self._enter("nvmlDeviceGetPowerUsage", h).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._enter("nvmlDeviceGetEnforcedPowerLimit", h).power_limit_mw

    def nvmlDeviceGetClockInfo(self, h, kind):
        g = self._enter("nvmlDeviceGetClockInfo", h)
        return {_real.NVML_CLOCK_SM: g.sm_mhz, _real.NVML_CLOCK_MEM: g.mem_mhz}[kind]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._enter("nvmlDeviceGetCurrentClocksEventReasons", h).reasons

    def nvmlDeviceGetPcieThroughput(self, h, counter):
        g = self._enter("nvmlDeviceGetPcieThroughput", h)
        return {_real.NVML_PCIE_UTIL_TX_BYTES: g.pcie_tx_kb, _real.NVML_PCIE_UTIL_RX_BYTES: g.pcie_rx_kb}[counter]

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter_type):
        return self._enter("nvmlDeviceGetTotalEccErrors", h).ecc.get((error_type, counter_type), 0)

    def nvmlDeviceGetRetiredPages(self, h, cause):
        return list(self._enter("nvmlDeviceGetRetiredPages", h).retired.get(cause, []))

    def nvmlDeviceGetRemappedRows(self, h):
        return tuple(self._enter("nvmlDeviceGetRemappedRows", h).remapped)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self._enter("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj

    def _procs(self, entries):
        return [_real.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used,
                                          "gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF})
                for pid, used in entries]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return self._procs(self._enter("nvmlDeviceGetComputeRunningProcesses", h).processes)

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return self._procs(self._enter("nvmlDeviceGetGraphicsRunningProcesses", h).graphics_processes)

    # --- MIG ------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, h):
        g = self._enter("nvmlDeviceGetMigMode", h)
        on = _real.NVML_DEVICE_MIG_ENABLE if g.mig else _real.NVML_DEVICE_MIG_DISABLE
        return [on, on]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        self._enter("nvmlDeviceGetMaxMigDeviceCount", h)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, index):
        g = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", h)
        if index >= len(g.mig):
            raise _real.NVMLError_NotFound()
        address = _addr(h) + 1 + index
        self._handles[address] = (g, g.mig[index])
        return _pointer(_real.c_nvmlDevice_t, address)

    def nvmlDeviceGetGpuInstanceId(self, h):
        return self._enter("nvmlDeviceGetGpuInstanceId", h)[1].gpu_instance

    def nvmlDeviceGetComputeInstanceId(self, h):
        return self._enter("nvmlDeviceGetComputeInstanceId", h)[1].compute_instance

    # --- GPM ------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, h):
        g = self._enter("nvmlGpmQueryDeviceSupport", h)
        s = _real.c_nvmlGpmSupport_t()
        s.version = _real.NVML_GPM_SUPPORT_VERSION
        s.isSupportedDevice = 1 if g.gpm is not None else 0
        return s

    def nvmlGpmSampleAlloc(self):
        self._enter("nvmlGpmSampleAlloc")
        self._next_sample += 0x10
        self._samples[self._next_sample] = None
        return _pointer(_real.c_nvmlGpmSample_t, self._next_sample)

    def nvmlGpmSampleFree(self, sample):
        self._enter("nvmlGpmSampleFree")
        del self._samples[_addr(sample)]

    def nvmlGpmSampleGet(self, h, sample):
        g = self._enter("nvmlGpmSampleGet", h)
        self._samples[_addr(sample)] = dict(g.gpm)
        return sample

    def nvmlGpmMigSampleGet(self, h, gpu_instance, sample):
        g = self._enter("nvmlGpmMigSampleGet", h)
        mig = next(m for m in g.mig if m.gpu_instance == gpu_instance)
        self._samples[_addr(sample)] = dict(mig.gpm or {})
        return sample

    def nvmlGpmMetricsGet(self, mg):
        self._enter("nvmlGpmMetricsGet")
        assert mg.version == _real.NVML_GPM_METRICS_GET_VERSION
        first, values = self._samples[_addr(mg.sample1)], self._samples[_addr(mg.sample2)]
        assert first is not None and values is not None, "metrics asked of a sample never taken"
        for i in range(mg.numMetrics):
            m = mg.metrics[i]
            if m.metricId in values:
                m.value, m.nvmlReturn = values[m.metricId], _real.NVML_SUCCESS
            else:
                m.nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
        return mg

    # --- events -------------------------------------------------------------
    def nvmlEventSetCreate(self):
        self._enter("nvmlEventSetCreate")
        return _pointer(_real.c_nvmlEventSet_t, 0x9000)

    def nvmlDeviceRegisterEvents(self, h, event_types, event_set):
        self._enter("nvmlDeviceRegisterEvents", h)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        self.calls["nvmlEventSetWait_v2"] += 1
        try:
            return self.events.get(timeout=timeout_ms / 1000.0)
        except queue.Empty:
            raise _real.NVMLError_Timeout() from None

    def nvmlEventSetFree(self, event_set):
        self._enter("nvmlEventSetFree")
