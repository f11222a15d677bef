"""Cost at the source (mlsidecar/cost.py): the arithmetic against hand-computed values, prices
changed by a reload, restarts mid-hour (nothing counted twice, no gap), the config table, and the
collector worker feeding the meter from the real GPU (fake NVML) and process (real psutil) collectors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mlsidecar import config as configmod
from mlsidecar import cost
from mlsidecar.collectors import CollectorSettings
from mlsidecar.collectors.gpu import GpuCollector
from mlsidecar.config import ConfigError
from mlsidecar.cost import COST_BUDGET, COST_INFO, COST_PRICE, COST_TOTAL, CostMeter, GpuShare, Usage
from mlsidecar.runtime.collect import run_collector_worker
from mlsidecar.runtime.state import StateDir
from mlsidecar.store import SeriesWriter

from .fake_pynvml import FakeGpu, FakeNVML

GIB = 2**30
H200 = "NVIDIA H200"
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"


def settings(**kw) -> cost.CostSettings:
    base = {"currency": "EUR", "gpu_hour": ((H200, 4.0),), "cpu_core_hour": 0.05, "memory_gib_hour": 0.01,
            "capacity": "on_demand"}
    base.update(kw)
    return cost.CostSettings(**base)


class Clock:
    """A wall clock the test moves; it starts days ago (the store refuses timestamps in the future)."""

    def __init__(self):
        self.t = time.time() - 5 * 86400.0

    def __call__(self) -> float:
        return self.t


def total(writer, resource: str) -> float:
    return sum(v for (fam, labels), v in writer.values.items() if fam is COST_TOTAL and labels[0] == resource)


# --- the arithmetic -------------------------------------------------------------

def test_increments_by_hand():
    prices = settings().prices({})
    prev = Usage(gpus=(GpuShare("0", UUID0, H200, 0.5),), cpu_seconds={"10:1.0": 100.0, "11:2.0": 50.0},
                 memory_bytes=8 * GIB)
    cur = Usage(gpus=(GpuShare("0", UUID0, H200, 1.0),), cpu_seconds={"10:1.0": 3700.0, "12:9.0": 3600.0},
                memory_bytes=16 * GIB)
    inc = cost.increments(prev, cur, 1800.0, prices)
    # GPU: half an H200 (what the earlier reading held) for half an hour at 4.00/h = 1.00.
    assert inc[("gpu", "on_demand", "0", UUID0)] == pytest.approx(1.0, abs=1e-12)
    # CPU: process 10 used 3600 s more, 11 exited (nothing more), 12 is new (all 3600 s): 2 core-hours x 0.05.
    assert inc[("cpu", "on_demand", "", "")] == pytest.approx(0.1, abs=1e-12)
    # Memory: 8 GiB for half an hour at 0.01 per GiB-hour = 0.04.
    assert inc[("memory", "on_demand", "", "")] == pytest.approx(0.04, abs=1e-12)
    assert len(inc) == 3
    assert cost.increments(None, cur, 1800.0, prices) == {}, "the first reading is only the baseline"


def test_gpu_share_by_memory_among_processes():
    gpus = [("0", UUID0, H200), ("1", UUID1, H200)]
    procs = {UUID0: {100: 30 * GIB, 200: 10 * GIB}, UUID1: {200: 5 * GIB}}
    shares = cost.gpu_shares(gpus, procs, {100})
    assert shares == (GpuShare("0", UUID0, H200, 0.75),), "GPU 1 is not the workload's: no cost"
    assert cost.gpu_shares(gpus, procs, None) == (GpuShare("0", UUID0, H200, 1.0), GpuShare("1", UUID1, H200, 1.0))
    assert cost.gpu_shares(gpus, {}, {100}) == ()


def test_spot_factor_and_capacity_from_the_environment():
    s = settings(capacity="auto", spot_factor=0.3, default_gpu_hour=2.0)
    assert s.resolved_capacity({}) == "on_demand"
    for word in ("spot", "SPOT", "preemptible", "Spot"):
        assert s.resolved_capacity({cost.CAPACITY_ENV: word}) == "spot"
    for word in ("on-demand", "ON_DEMAND", "regular"):
        assert s.resolved_capacity({cost.CAPACITY_ENV: word}) == "on_demand"
    p = s.prices({cost.CAPACITY_ENV: "spot"})
    assert (p.capacity, p.gpu(H200), p.gpu("NVIDIA A100"), p.cpu_core_hour) == ("spot", 1.2, 0.6, 0.015)
    inc = cost.increments(Usage(gpus=(GpuShare("0", UUID0, H200, 1.0),)), Usage(gpus=()), 3600.0, p)
    assert inc == {("gpu", "spot", "0", UUID0): pytest.approx(1.2, abs=1e-12)}


# --- the meter: an hour, with restarts and a price change -------------------------

def hour_of_readings(tmp_path, restart_at: set[int], price_after_restart: float | None = None,
                     keep_state: bool = True) -> tuple[SeriesWriter, float]:
    """Readings every 60 s for an hour: one H200 wholly, 4 GiB resident, one process using half a
    core. The worker "restarts" (new writer and meter on the same files) at the given minutes."""
    clock = Clock()
    metrics = str(tmp_path / "metrics")
    path = str(tmp_path / "cost" / "collect.json")
    s = settings()
    writer = SeriesWriter(metrics, "collect")
    meter = CostMeter(s, writer, path, environ={}, clock=clock)
    gpu = Usage(gpus=(GpuShare("0", UUID0, H200, 1.0),))
    start = clock.t
    for minute in range(61):
        if minute in restart_at:
            writer.flush()
            writer.close()
            clock.t += 7.0  # the worker was gone for 7 s
            if not keep_state:
                os.unlink(path)
            if price_after_restart is not None:
                s = settings(gpu_hour=((H200, price_after_restart),))
            writer = SeriesWriter(metrics, "collect")
            meter = CostMeter(s, writer, path, environ={}, clock=clock)
        elapsed = clock.t - start
        meter.observe("gpu", gpu)
        meter.observe("process", Usage(cpu_seconds={"4242:17.5": 0.5 * elapsed}, memory_bytes=4 * GIB))
        clock.t = start + (minute + 1) * 60.0
    writer.flush()
    return writer, clock.t - 60.0 - start


def test_an_hour_without_restart(tmp_path):
    writer, seconds = hour_of_readings(tmp_path, set())
    assert seconds == 3600.0
    assert total(writer, "gpu") == pytest.approx(4.0, abs=1e-9)
    assert total(writer, "memory") == pytest.approx(0.04, abs=1e-9)
    assert total(writer, "cpu") == pytest.approx(0.025, abs=1e-9)
    writer.close()


def test_a_restart_mid_hour_neither_counts_twice_nor_leaves_a_gap(tmp_path):
    writer, seconds = hour_of_readings(tmp_path, {30, 45})
    # Each restart delays one reading by 7 s; the readings still span the hour, and every second of it
    # is charged once: the same totals as without a restart.
    assert seconds == 3600.0
    assert total(writer, "gpu") == pytest.approx(4.0, abs=1e-9)
    assert total(writer, "memory") == pytest.approx(0.04, abs=1e-9)
    assert total(writer, "cpu") == pytest.approx(0.025, abs=1e-9)
    # What a scrape sees after the restart is the same total, read back from the files.
    again = SeriesWriter(str(tmp_path / "metrics"), "collect")
    assert total(again, "gpu") == pytest.approx(4.0, abs=1e-9)
    again.close()
    writer.close()


def test_without_its_state_a_restart_loses_the_interval(tmp_path):
    """The state file is what closes the gap: without it the counter continues from the files
    (nothing counted twice) but the interval across the restart and the CPU baseline are lost."""
    writer, _ = hour_of_readings(tmp_path, {30}, keep_state=False)
    # Lost: minute 29 to the first reading after the restart (minute 30 + 7 s).
    assert total(writer, "gpu") == pytest.approx(4.0 * (3600 - 67) / 3600, abs=1e-9)
    assert 0 < total(writer, "cpu") < 0.025
    writer.close()


def test_a_price_change_by_reload_applies_from_the_restart(tmp_path):
    writer, _ = hour_of_readings(tmp_path, {30}, price_after_restart=10.0)
    # Minutes 0-29 at 4.00/h; the interval across the reload (minute 29 to 30 + 7 s) and the rest
    # of the hour at the new 10.00/h: the new price applies to every interval that ends after the reload.
    assert total(writer, "gpu") == pytest.approx(4.0 * 29 / 60 + 10.0 * 31 / 60, abs=1e-9)
    writer.close()


def test_a_long_outage_is_charged_only_up_to_max_gap(tmp_path):
    clock = Clock()
    writer = SeriesWriter(str(tmp_path / "m"), "gpu")
    meter = CostMeter(settings(max_gap=600.0), writer, str(tmp_path / "c.json"), environ={}, clock=clock)
    u = Usage(gpus=(GpuShare("0", UUID0, H200, 1.0),))
    meter.observe("gpu", u)
    clock.t += 86400.0
    assert meter.observe("gpu", u) == {("gpu", "on_demand", "0", UUID0): pytest.approx(4.0 / 6, abs=1e-12)}
    clock.t -= 100.0  # the wall clock stepped back: nothing negative
    assert meter.observe("gpu", u) == {}
    writer.close()


def test_a_corrupt_state_file_continues_from_the_metric_files(tmp_path):
    clock = Clock()
    path = tmp_path / "c.json"
    writer = SeriesWriter(str(tmp_path / "m"), "gpu")
    meter = CostMeter(settings(), writer, str(path), environ={}, clock=clock)
    u = Usage(gpus=(GpuShare("0", UUID0, H200, 1.0),))
    meter.observe("gpu", u)
    clock.t += 900.0
    meter.observe("gpu", u)
    writer.flush()
    writer.close()
    path.write_text("{not json")
    writer = SeriesWriter(str(tmp_path / "m"), "gpu")
    meter = CostMeter(settings(), writer, str(path), environ={}, clock=clock)
    assert total(writer, "gpu") == pytest.approx(1.0, abs=1e-12)
    writer.close()


# --- config ------------------------------------------------------------------------

def test_cost_table_parses_and_errors_name_the_key():
    cfg = configmod.from_dict({"cost": {
        "currency": "EUR", "gpu_hour": {H200: 4.5, "NVIDIA A100-SXM4-80GB": 2}, "cpu_core_hour": 0.04,
        "memory_gib_hour": 0.005, "capacity": "spot", "spot_factor": 0.35,
        "budgets": [{"scope": "model", "name": "resnet50", "monthly": 2000},
                    {"scope": "namespace", "name": "ml", "monthly": 10000.0}]}}, "c.toml")
    c = cfg.cost
    assert c.enabled and c.currency == "EUR" and dict(c.gpu_hour)["NVIDIA A100-SXM4-80GB"] == 2.0
    assert c.budgets[0] == cost.Budget("model", "resnet50", 2000.0)
    assert not configmod.from_dict({}).cost.enabled, "no prices: no cost series"
    bad = [({"cpu_core_hour": -1}, "cost.cpu_core_hour"), ({"gpu_hour": {H200: "4"}}, "cost.gpu_hour.NVIDIA H200"),
           ({"capacity": "cheap"}, "cost.capacity"), ({"budgets": [{"scope": "team", "name": "x", "monthly": 1}]},
                                                       "cost.budgets[0].scope"),
           ({"budgets": [{"scope": "job", "name": "x", "monthly": 0}]}, "cost.budgets[0].monthly"),
           ({"budget": []}, "cost.budget")]
    for table, key in bad:
        with pytest.raises(ConfigError) as err:
            configmod.from_dict({"cost": table}, "c.toml")
        assert err.value.key == key and str(err.value).startswith("c.toml: "), str(err.value)


def test_example_config_documents_the_cost_table():
    import tomllib
    from pathlib import Path

    raw = tomllib.loads((Path(__file__).resolve().parent.parent / "config.example.toml").read_text())
    for key in ("currency", "gpu_hour", "default_gpu_hour", "cpu_core_hour", "memory_gib_hour", "capacity",
                "capacity_env", "spot_factor", "max_gap", "budgets"):
        assert key in raw["cost"], f"config.example.toml lacks cost.{key}"
    configmod.load(str(Path(__file__).resolve().parent.parent / "config.example.toml"))


def test_info_prices_and_budgets_follow_the_config(tmp_path):
    w = SeriesWriter(str(tmp_path), "supervisor")
    s = settings(budgets=(cost.Budget("model", "a", 100.0), cost.Budget("job", "b", 50.0)))
    cost.export_config(w, s, environ={})
    assert w.values[(COST_INFO, ("EUR", "on_demand"))] == 1.0
    assert w.values[(COST_BUDGET, ("model", "a"))] == 100.0
    assert w.values[(COST_PRICE, ("gpu", H200))] == 4.0
    assert w.values[(COST_PRICE, ("memory", ""))] == 0.01
    w.flush()
    w.close()
    # A reload with another currency and one budget fewer: the old series go, also from the files.
    w = SeriesWriter(str(tmp_path), "supervisor")
    cost.export_config(w, settings(currency="USD", budgets=(cost.Budget("job", "b", 75.0),)), environ={})
    w.flush()
    w.close()
    w = SeriesWriter(str(tmp_path), "supervisor")
    assert sorted(w.series(COST_INFO)) == [("USD", "on_demand")]
    assert w.series(COST_BUDGET) == [("job", "b")] and w.values[(COST_BUDGET, ("job", "b"))] == 75.0
    cost.export_config(w, cost.CostSettings(), environ={})
    assert not w.series(COST_INFO) and not w.series(COST_PRICE)
    w.close()


# --- the collector worker feeds the meter -------------------------------------------

@pytest.fixture
def keep_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _read_back(state_dir: str, identity: str) -> dict:
    w = SeriesWriter(StateDir(state_dir).metrics, identity)
    try:
        return dict(w.values)
    finally:
        w.close()


def test_gpu_worker_charges_the_workloads_share_and_continues_after_a_restart(tmp_path, keep_signals):
    me = os.getpid()
    pid_file = tmp_path / "job.pid"
    pid_file.write_text(f"{me}\n")
    fake = FakeNVML([FakeGpu(name=H200, uuid=UUID0, processes=[(me, 3 * GIB), (999_999_0, GIB)]),
                     FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID1, processes=[(999_999_0, GIB)])])
    cfg = configmod.from_dict({
        "state_dir": str(tmp_path / "s"),
        "collectors": {"gpu": {"xid_events": False, "interval": 0.2, "attribution": "pid",
                               "pid_file": str(pid_file), "children": False}},
        "cost": {"gpu_hour": {H200: 3600.0}, "default_gpu_hour": 7200.0}})
    StateDir(cfg.state_dir).create()
    run_collector_worker("gpu", cfg, ["gpu"], handles={"nvml": fake, "sidecar_root": None}, max_runs=3)
    state = json.loads(open(cost.state_path(StateDir(cfg.state_dir).root, "gpu")).read())
    first = _read_back(cfg.state_dir, "gpu")
    spent = first[(COST_TOTAL, ("gpu", "on_demand", "0", UUID0))]
    # 3/4 of an H200 at 1 per second, over the ~0.4 s between the first and the third reading.
    assert 0.75 * 0.3 < spent < 0.75 * 2.0, spent
    assert not [k for k in first if k[0] is COST_TOTAL and k[1][3] == UUID1], "GPU 1 is not the workload's"
    assert state["totals"][0][1] == spent
    run_collector_worker("gpu", cfg, ["gpu"], handles={"nvml": fake, "sidecar_root": None}, max_runs=2)
    second = _read_back(cfg.state_dir, "gpu")[(COST_TOTAL, ("gpu", "on_demand", "0", UUID0))]
    assert spent + 0.75 * 0.15 < second < spent + 0.75 * 5.0, (spent, second)


def test_process_worker_charges_cpu_and_memory(tmp_path, keep_signals):
    # A workload that keeps a CPU busy: a clock tick (10 ms) of CPU between readings is certain.
    burner = subprocess.Popen([sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
                              stdout=subprocess.PIPE)
    try:
        assert burner.stdout.readline() == b"ready\n"  # started: its memory no longer grows
        _charges_cpu_and_memory(tmp_path, burner.pid)
    finally:
        burner.kill()
        burner.wait()


def _charges_cpu_and_memory(tmp_path, pid: int) -> None:
    pid_file = tmp_path / "me.pid"
    pid_file.write_text(f"{pid}\n")
    cfg = configmod.from_dict({
        "state_dir": str(tmp_path / "s"),
        "collectors": {"gpu": {"enabled": False},
                       "process": {"interval": 0.2, "pid_file": str(pid_file), "children": False}},
        "cost": {"cpu_core_hour": 3600.0, "memory_gib_hour": 3600.0}})
    StateDir(cfg.state_dir).create()
    run_collector_worker("collect", cfg, ["process"], handles={"sidecar_root": None}, max_runs=3)
    v = _read_back(cfg.state_dir, "collect")
    mem = v[(COST_TOTAL, ("memory", "on_demand", "", ""))]
    rss_gib = v[(next(f for f, _ in v if f.name == "ml_process_resident_memory_bytes"), ())] / GIB
    assert rss_gib * 0.3 < mem < rss_gib * 3.0, (mem, rss_gib)
    cpu = v[(COST_TOTAL, ("cpu", "on_demand", "", ""))]
    assert 0 < cpu < 3.0, cpu


def test_gpu_collector_devices_attribution_charges_the_containers_gpus_wholly(tmp_path):
    fake = FakeNVML([FakeGpu(name=H200, uuid=UUID0, processes=[(4242, GIB)]),
                     FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID1)])
    opts = {k: d for k, (_t, d) in GpuCollector.options.items()}
    opts.update(xid_events=False, attribution="devices")
    c = GpuCollector(CollectorSettings("gpu", True, 5.0, opts), nvml=fake,
                     environ={"NVIDIA_VISIBLE_DEVICES": UUID1})
    c.setup()
    try:
        c.collect()
    finally:
        c.close()
    # Only the GPU the container was given, whoever else runs on the machine's other GPU.
    assert c.usage == Usage(gpus=(GpuShare("1", UUID1, "NVIDIA A100-SXM4-40GB", 1.0),))


def test_archived_metric_files_are_not_counted_twice(tmp_path):
    """A collector switched off has its files folded into the archive, which keeps serving the
    totals; when it comes back its counters start from 0, so archive + new = what was spent."""
    from mlsidecar.runtime.state import StateDir

    clock = Clock()
    state = StateDir(str(tmp_path / "s"))
    state.create()
    path = cost.state_path(state.root, "gpu")
    u = Usage(gpus=(GpuShare("0", UUID0, H200, 1.0),))
    writer = SeriesWriter(state.metrics, "gpu")
    meter = CostMeter(settings(), writer, path, environ={}, clock=clock)
    meter.observe("gpu", u)
    clock.t += 900.0
    meter.observe("gpu", u)
    writer.flush()
    writer.close()
    state.tidy({"collect"})  # the gpu worker is gone from the config: its files are archived
    clock.t += 900.0
    writer = SeriesWriter(state.metrics, "gpu")
    meter = CostMeter(settings(), writer, path, environ={}, clock=clock)
    meter.observe("gpu", u)
    writer.flush()
    writer.close()
    archive = SeriesWriter(state.metrics, "archive")
    served = total(archive, "gpu") + total(SeriesWriter(state.metrics, "gpu"), "gpu")
    # 15 minutes before, 15 minutes across the gap: 2 x 1.00, each counted once.
    assert served == pytest.approx(2.0, abs=1e-9)
