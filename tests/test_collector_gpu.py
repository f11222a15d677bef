"""The GPU collector against a fake at the pynvml call boundary (tests/fake_pynvml.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pynvml
import pytest

from mlsidecar import catalogue as C
from mlsidecar import config as configmod
from mlsidecar.collectors import CollectorSettings, CollectorUnavailable, Partial
from mlsidecar.collectors import gpu as G
from mlsidecar.collectors.gpu import GpuCollector
from mlsidecar.runtime.collect import run_collector_worker
from mlsidecar.runtime.state import StateDir
from mlsidecar.store import SeriesWriter

from .collecting import publish, readings, run_of
from .fake_pynvml import FakeGpu, FakeMig, FakeNVML

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
L0 = ("0", UUID0, "NVIDIA H100 80GB HBM3")
L1 = ("1", UUID1, "NVIDIA A100-SXM4-40GB")


def settings(**opts) -> CollectorSettings:
    base = {k: d for k, (_t, d) in GpuCollector.options.items()}
    base.update(xid_events=False, attribution="none")
    base.update(opts)
    return CollectorSettings("gpu", True, 5.0, base)


def two_gpus(**kw0) -> list[FakeGpu]:
    return [FakeGpu(uuid=UUID0, **kw0),
            FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID1, util_gpu=90, memory_total=40 * 2**30)]


@pytest.fixture
def writer(tmp_path):
    w = SeriesWriter(str(tmp_path / "metrics"), "gpu")
    yield w
    w.close()


def started(fake, **opts) -> GpuCollector:
    c = GpuCollector(settings(**opts), nvml=fake, environ={})
    c.setup()
    return c


def test_readings_in_base_units():
    """collect() only reads (no store): values in base units, each with what it means."""
    ecc = {(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 3,
           (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): 1}
    retired = {pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: [0x10, 0x20]}
    fake = FakeNVML(two_gpus(ecc=ecc, retired=retired, remapped=(5, 1, 1, 0),
                             reasons=0x4 | 0x40, temperature=61))
    c = started(fake)
    got = readings(c)
    v = {k: r.value for k, r in got.items()}
    assert {r.kind for k, r in got.items() if k[0].type == C.COUNTER} == {"total"}, "NVML's own totals"
    assert {r.kind for k, r in got.items() if k[0].type == C.GAUGE} == {"gauge"}
    assert v[(G.INFO, L0 + ("550.54.15", "12.4"))] == 1.0
    assert v[(G.UTIL, L0)] == 0.5 and v[(G.UTIL, L1)] == 0.9
    assert v[(G.MEM_UTIL, L0)] == 0.2
    assert v[(G.MEM_TOTAL, L0 + ("", ""))] == 80 * 2**30
    assert v[(G.MEM_USED, L0 + ("", ""))] == 10 * 2**30
    assert v[(G.MEM_FREE, L0 + ("", ""))] == 70 * 2**30
    assert v[(G.TEMP, L0)] == 61.0
    assert v[(G.POWER, L0)] == 250.0 and v[(G.POWER_LIMIT, L0)] == 700.0
    assert v[(G.SM_CLOCK, L0)] == 1980e6 and v[(G.MEM_CLOCK, L0)] == 2619e6
    assert v[(G.CLOCK_REASONS, L0 + ("sw_power_cap",))] == 1.0
    assert v[(G.CLOCK_REASONS, L0 + ("hw_thermal_slowdown",))] == 1.0
    assert v[(G.CLOCK_REASONS, L0 + ("gpu_idle",))] == 0.0
    assert v[(G.CLOCK_REASONS, L1 + ("sw_power_cap",))] == 0.0
    assert v[(G.PCIE_TX, L0)] == 1000 * 1024.0 and v[(G.PCIE_RX, L0)] == 2000 * 1024.0
    assert v[(G.ECC, L0 + ("corrected", "volatile"))] == 3.0
    assert v[(G.ECC, L0 + ("uncorrected", "aggregate"))] == 1.0
    assert v[(G.ECC, L0 + ("uncorrected", "volatile"))] == 0.0
    assert v[(G.RETIRED, L0 + ("double_bit_ecc",))] == 2.0
    assert v[(G.RETIRED, L0 + ("multiple_single_bit_ecc",))] == 0.0
    assert v[(G.REMAPPED, L0 + ("correctable",))] == 5.0
    assert v[(G.REMAPPED, L0 + ("pending",))] == 1.0
    assert v[(G.REMAPPED, L0 + ("failed",))] == 0.0
    assert v[(G.ENERGY, L0)] == 1000.0
    assert G.ECC.type == C.COUNTER and G.ENERGY.name.endswith("_total")
    c.close()
    assert fake.initialised == 0, "nvmlShutdown on close"


def test_unsupported_reading_is_skipped_and_not_asked_again(writer):
    fake = FakeNVML(two_gpus(unsupported={"nvmlDeviceGetPcieThroughput", "nvmlDeviceGetTotalEccErrors",
                                          "nvmlDeviceGetRetiredPages", "nvmlDeviceGetMigMode"}))
    fake.gpus[1].unsupported = {"nvmlDeviceGetRemappedRows"}
    c = started(fake)
    for _ in range(3):
        publish(c, writer)
    v = writer.values
    assert (G.PCIE_TX, L0) not in v and (G.PCIE_TX, L1) in v
    assert not [k for k in v if k[0] is G.ECC and k[1][:3] == L0]
    assert (G.REMAPPED, L0 + ("correctable",)) in v and (G.REMAPPED, L1 + ("correctable",)) not in v
    assert (G.TEMP, L0) in v, "other readings of the same GPU go on"
    # GPU 0 was asked once per reading (tx, rx; 4 ECC; 2 causes), GPU 1 three times each.
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 2 + 3 * 2
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 4 + 3 * 4
    assert fake.calls["nvmlDeviceGetRetiredPages"] == 2 + 3 * 2
    assert fake.calls["nvmlDeviceGetRemappedRows"] == 3 + 1
    assert fake.calls["nvmlDeviceGetTemperature"] == 3 * 2


@pytest.mark.parametrize("error, words", [
    (pynvml.NVMLError_LibraryNotFound, "not found"),
    (pynvml.NVMLError_DriverNotLoaded, "driver is not loaded"),
])
def test_no_library_or_driver_is_unavailable(error, words):
    c = GpuCollector(settings(), nvml=FakeNVML([], init_error=error), environ={})
    with pytest.raises(CollectorUnavailable, match=words):
        c.setup()
    c.close()


def test_no_gpu_is_unavailable_and_shuts_nvml_down():
    fake = FakeNVML([])
    c = GpuCollector(settings(), nvml=fake, environ={})
    with pytest.raises(CollectorUnavailable, match="no GPU"):
        c.setup()
    assert fake.initialised == 0


def test_real_pynvml_on_this_machine_is_unavailable_or_works(tmp_path):
    """The default handle is the real pynvml; without a GPU that is a clean CollectorUnavailable."""
    c = GpuCollector(settings())
    try:
        c.setup()
    except CollectorUnavailable as exc:
        assert str(exc)
    else:  # a machine with a GPU: it reads
        w = SeriesWriter(str(tmp_path), "gpu")
        publish(c, w)
        assert w.series(G.INFO)
    finally:
        c.close()


def _read_back(state_dir: str, identity: str) -> dict:
    w = SeriesWriter(StateDir(state_dir).metrics, identity)
    try:
        return dict(w.values)
    finally:
        w.close()


@pytest.fixture
def keep_signals():
    """run_collector_worker installs its SIGTERM/SIGINT handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_worker_reports_up_0_without_nvml_and_up_1_with(tmp_path, keep_signals):
    cfg = configmod.from_dict({"state_dir": str(tmp_path / "s1"),
                               "collectors": {"gpu": {"xid_events": False}}})
    StateDir(cfg.state_dir).create()  # the supervisor's job
    no_lib = FakeNVML([], init_error=pynvml.NVMLError_LibraryNotFound)
    run_collector_worker("gpu", cfg, ["gpu"], handles={"nvml": no_lib}, max_runs=1)
    v = _read_back(cfg.state_dir, "gpu")
    assert v[(C.COLLECTOR_UP, ("gpu",))] == 0.0
    assert (C.COLLECTOR_DURATION, ("gpu",)) in v
    assert not [k for k in v if k[0].name.startswith("ml_gpu_")]

    cfg = configmod.from_dict({"state_dir": str(tmp_path / "s2"),
                               "collectors": {"gpu": {"xid_events": False}}})
    StateDir(cfg.state_dir).create()
    run_collector_worker("gpu", cfg, ["gpu"], handles={"nvml": FakeNVML(two_gpus())}, max_runs=1)
    v = _read_back(cfg.state_dir, "gpu")
    assert v[(C.COLLECTOR_UP, ("gpu",))] == 1.0
    assert v[(G.UTIL, L1)] == 0.9


def test_lost_gpu_drops_its_series_marks_the_run_failed_and_comes_back(writer):
    fake = FakeNVML(two_gpus())
    c = started(fake)
    publish(c, writer)
    assert (G.TEMP, L1) in writer.values
    fake.gpus[1].lost = True
    with pytest.raises(Partial, match=f"GPU 1 .{UUID1}"):
        publish(c, writer)
    assert (G.TEMP, L1) not in writer.values and (G.MEM_USED, L1 + ("", "")) not in writer.values
    assert writer.values[(G.TEMP, L0)] == 40.0
    assert writer.values[(C.COLLECTOR_UP, ("gpu",))] == 0.0
    fake.gpus[1].lost = False
    publish(c, writer)
    assert (G.TEMP, L1) in writer.values


def test_nvml_gone_mid_run_is_unavailable_and_withdraws_series(writer):
    fake = FakeNVML(two_gpus())
    c = started(fake)
    publish(c, writer)
    fake.initialised = 0  # e.g. the driver was reloaded under us: NVMLError_Uninitialized
    with pytest.raises(CollectorUnavailable, match="stopped answering"):
        publish(c, writer)
    assert not [k for k in writer.values if k[0].name.startswith("ml_gpu_")]
    assert not run_of(c, writer).ready, "set up again before the next collect"
    run_of(c, writer).setup()
    publish(c, writer)
    assert (G.TEMP, L0) in writer.values


def test_hung_driver_call_times_out_and_does_not_pile_up(writer):
    fake = FakeNVML(two_gpus())
    c = started(fake, call_timeout=0.2)
    publish(c, writer)
    fake.hang = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer"):
        publish(c, writer)
    assert time.monotonic() - t0 < 5
    assert not [k for k in writer.values if k[0].name.startswith("ml_gpu_")], "stale values withdrawn"
    with pytest.raises(TimeoutError, match="has not returned"):
        publish(c, writer)  # the stuck call is not joined by a second one
    assert sum(t.name == "collect-gpu" for t in threading.enumerate()) == 1
    assert writer.values[(C.COLLECTOR_UP, ("gpu",))] == 0.0
    fake.hang.set()
    fake.hang = None
    deadline = time.monotonic() + 10
    while any(t.name == "collect-gpu" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    publish(c, writer)
    assert writer.values[(G.TEMP, L0)] == 40.0
    assert writer.values[(C.COLLECTOR_UP, ("gpu",))] == 1.0
    c.close()


def test_xid_events_are_counted_per_gpu_and_code(writer):
    fake = FakeNVML(two_gpus())
    c = started(fake, xid_events=True)
    assert c.xid is not None and c.xid.is_alive()
    fake.xid(0, 79)
    fake.xid(0, 79)
    fake.xid(1, 48)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        publish(c, writer)
        if writer.values.get((G.XID, L0 + ("79",))) == 2 and writer.values.get((G.XID, L1 + ("48",))) == 1:
            break
        time.sleep(0.02)
    assert writer.values[(G.XID, L0 + ("79",))] == 2
    assert writer.values[(G.XID, L1 + ("48",))] == 1
    got = readings(c)
    assert got[(G.XID, L0 + ("79",))].kind == "increment"
    assert got[(G.XID, L0 + ("79",))].value == 0, "no new XID since the last collect"
    watcher = c.xid
    c.close()
    assert c.xid is None and not watcher.is_alive()


def test_xid_total_continues_after_a_worker_restart(tmp_path):
    w = SeriesWriter(str(tmp_path / "m"), "gpu")
    w.set_counter(G.XID, L0 + ("79",), 5.0)
    w.flush()
    w.close()
    w = SeriesWriter(str(tmp_path / "m"), "gpu")  # what a restarted worker reads back
    fake = FakeNVML(two_gpus())
    c = started(fake, xid_events=True)
    fake.xid(0, 79)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and w.values.get((G.XID, L0 + ("79",))) != 6.0:
        publish(c, w)
        time.sleep(0.02)
    assert w.values[(G.XID, L0 + ("79",))] == 6.0
    c.close()
    w.close()


def test_gpm_activity_from_two_samples_and_unsupported_devices_asked_once(writer):
    fake = FakeNVML(two_gpus(gpm={2: 75.0, 3: 40.0, 5: 30.0}))
    c = started(fake)
    publish(c, writer)
    assert (G.SM_ACTIVITY, L0 + ("", "")) not in writer.values, "one sample is not a rate"
    publish(c, writer)
    publish(c, writer)
    assert writer.values[(G.SM_ACTIVITY, L0 + ("", ""))] == 0.75
    assert writer.values[(G.SM_OCCUPANCY, L0 + ("", ""))] == 0.40
    assert writer.values[(G.TENSOR, L0 + ("", ""))] == 0.30
    assert (G.SM_ACTIVITY, L1 + ("", "")) not in writer.values
    assert fake.calls["nvmlGpmQueryDeviceSupport"] == 3 + 1, "GPU 1 (no GPM) asked once"
    assert len(fake._samples) == 1, "samples are freed"
    c.close()
    assert not fake._samples


def test_mig_instances_get_their_own_memory_and_activity(writer):
    migs = [FakeMig(1, 0, memory_used=3 * 2**30, gpm={2: 50.0}), FakeMig(2, 0)]
    fake = FakeNVML(two_gpus(mig=migs, gpm={2: 10.0}))
    c = started(fake)
    publish(c, writer)
    publish(c, writer)
    v = writer.values
    assert v[(G.MEM_USED, L0 + ("1", "0"))] == 3 * 2**30
    assert v[(G.MEM_TOTAL, L0 + ("2", "0"))] == 10 * 2**30
    assert v[(G.MEM_TOTAL, L0 + ("", ""))] == 80 * 2**30
    assert v[(G.SM_ACTIVITY, L0 + ("1", "0"))] == 0.5
    assert (G.SM_ACTIVITY, L0 + ("2", "0")) not in v
    assert not [k for k in v if k[0] is G.MEM_USED and k[1][:3] == L1 and k[1][3]]


def _pid_file(tmp_path, pid: int) -> str:
    path = tmp_path / "job.pid"
    path.write_text(f"{pid}\n")
    return str(path)


def test_pid_attribution_per_process_memory_and_training_families(writer, tmp_path):
    me, other = os.getpid(), 999_999_0
    fake = FakeNVML(two_gpus(processes=[(me, 3 * 2**30), (other, 2**30)]), process_names={other: "/usr/bin/other"})
    fake.gpus[1].graphics_processes = [(other, 5 * 2**30)]
    c = GpuCollector(settings(attribution="pid", job_name="train-1", pid_file=_pid_file(tmp_path, me),
                              children=False), nvml=fake, environ={}, sidecar_root=None)
    c.setup()
    publish(c, writer)
    v = writer.values
    my_name = psutil.Process(me).name()
    assert v[(G.PROCESS_MEM, ("0", UUID0, str(me), my_name))] == 3 * 2**30
    assert v[(G.PROCESS_MEM, ("0", UUID0, str(other), "other"))] == 2**30
    assert v[(G.PROCESS_MEM, ("1", UUID1, str(other), "other"))] == 5 * 2**30
    assert v[(C.TRAINING_MEMORY, ("train-1", "gpu"))] == 3 * 2**30
    assert v[(C.TRAINING_GPU_UTIL, ("train-1", "0"))] == 50.0
    assert (C.TRAINING_GPU_UTIL, ("train-1", "1")) not in v, "the job has nothing on GPU 1"
    # The other process leaves: its series go, nothing stale stays behind.
    fake.gpus[0].processes = [(me, 4 * 2**30)]
    fake.gpus[1].graphics_processes = []
    publish(c, writer)
    assert writer.series(G.PROCESS_MEM) == [("0", UUID0, str(me), my_name)]
    assert writer.values[(C.TRAINING_MEMORY, ("train-1", "gpu"))] == 4 * 2**30


def test_devices_attribution_uses_the_gpus_the_container_was_given(writer):
    fake = FakeNVML(two_gpus(processes=[(4242, 2**30)]))
    env = {"NVIDIA_VISIBLE_DEVICES": UUID1, "JOB_NAME": "from-env"}
    c = GpuCollector(settings(attribution="devices"), nvml=fake, environ=env)
    c.setup()
    publish(c, writer)
    v = writer.values
    assert v[(C.TRAINING_MEMORY, ("from-env", "gpu"))] == 10 * 2**30, "GPU 1's framebuffer used"
    assert v[(C.TRAINING_GPU_UTIL, ("from-env", "1"))] == 90.0
    assert (C.TRAINING_GPU_UTIL, ("from-env", "0")) not in v
    assert v[(G.PROCESS_MEM, ("0", UUID0, "4242", ""))] == 2**30


def test_auto_attribution_follows_the_pid_namespace(tmp_path):
    def proc_root(inode: int) -> str:
        root = tmp_path / str(inode)
        (root / "self" / "ns").mkdir(parents=True)
        os.symlink(f"pid:[{inode}]", root / "self" / "ns" / "pid")
        return str(root)

    for inode, want in ((0xEFFFFFFC, "pid"), (4026532199, "devices")):
        c = GpuCollector(settings(attribution="auto"), nvml=FakeNVML(two_gpus()), environ={},
                         proc_root=proc_root(inode))
        c.setup()
        assert c.attribution == want
        c.close()


def test_no_job_name_no_training_series(writer, tmp_path):
    fake = FakeNVML(two_gpus(processes=[(os.getpid(), 2**30)]))
    c = GpuCollector(settings(attribution="pid", pid_file=_pid_file(tmp_path, os.getpid())), nvml=fake,
                     environ={}, sidecar_root=None)
    c.setup()
    publish(c, writer)
    assert not writer.series(C.TRAINING_MEMORY) and not writer.series(C.TRAINING_GPU_UTIL)
    assert writer.series(G.PROCESS_MEM)
