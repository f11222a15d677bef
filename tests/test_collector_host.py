"""The host collector: a fake psutil for the edge cases, the real one for sanity."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest

from mlsidecar.collectors import CollectorSettings
from mlsidecar.collectors import host as H
from mlsidecar.collectors.host import HostCollector
from mlsidecar.store import SeriesWriter

from .collecting import publish, readings

CpuTimes = namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest guest_nice")
Part = namedtuple("sdiskpart", "device mountpoint fstype opts")
Usage = namedtuple("sdiskusage", "total used free percent")
NetIO = namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout")


class FakePsutil:
    """Only what the host collector calls, with the same return types."""

    def __init__(self):
        self.cpu = CpuTimes(100, 0, 50, 800, 50, 0, 0, 0, 20, 0)
        self.mounts = {"/": 100, "/data1": 1000, "/data2": 2000, "/boot": 5}
        self.nics = {"lo": (5, 5), "eth0": (100, 200), "docker0": (1, 1)}

    def cpu_times(self):
        return self.cpu

    def getloadavg(self):
        return (1.5, 1.0, 0.5)

    def virtual_memory(self):
        return SimpleNamespace(total=64 * 2**30, available=40 * 2**30)

    def swap_memory(self):
        return SimpleNamespace(total=8 * 2**30, used=2**30)

    def disk_partitions(self, all=False):
        return [Part("dev", mp, "ext4", "rw") for mp in self.mounts]

    def disk_usage(self, path):
        if path not in self.mounts:
            raise FileNotFoundError(path)
        size = self.mounts[path]
        return Usage(size, size // 4, size - size // 4, 25.0)

    def net_io_counters(self, pernic=False):
        return {nic: NetIO(tx, rx, 0, 0, 0, 0, 0, 0) for nic, (tx, rx) in self.nics.items()}


def settings(**opts) -> CollectorSettings:
    base = {k: d for k, (_t, d) in HostCollector.options.items()}
    base.update(opts)
    return CollectorSettings("host", True, 15.0, base)


@pytest.fixture
def writer(tmp_path):
    w = SeriesWriter(str(tmp_path / "m"), "collect")
    yield w
    w.close()


def test_off_by_default():
    assert HostCollector.default_enabled is False


def test_readings_globs_and_removal(writer):
    ps = FakePsutil()
    c = HostCollector(settings(mountpoints=["/", "/data*"], network_exclude=["lo", "docker*"]), psutil=ps)
    c.setup()
    # Since setup: 60 s busy (user 40 + system 20), 40 s idle/iowait; guest is inside user already.
    ps.cpu = CpuTimes(140, 0, 70, 830, 60, 0, 0, 0, 30, 0)
    publish(c, writer)
    val = writer.values
    assert val[(H.CPU, ())] == pytest.approx(0.6)
    assert (val[(H.LOAD1, ())], val[(H.LOAD5, ())], val[(H.LOAD15, ())]) == (1.5, 1.0, 0.5)
    assert val[(H.MEM_TOTAL, ())] == 64 * 2**30 and val[(H.MEM_AVAILABLE, ())] == 40 * 2**30
    assert val[(H.SWAP_USED, ())] == 2**30 and val[(H.SWAP_TOTAL, ())] == 8 * 2**30
    assert sorted(lv[0] for lv in writer.series(H.FS_SIZE)) == ["/", "/data1", "/data2"]
    assert val[(H.FS_SIZE, ("/data2",))] == 2000 and val[(H.FS_AVAIL, ("/data2",))] == 1500
    assert writer.series(H.NET_RX) == [("eth0",)]
    assert val[(H.NET_RX, ("eth0",))] == 200 and val[(H.NET_TX, ("eth0",))] == 100
    # A volume unmounted, an interface gone: their series go too.
    del ps.mounts["/data1"]
    ps.nics.pop("eth0")
    publish(c, writer)
    assert sorted(lv[0] for lv in writer.series(H.FS_AVAIL)) == ["/", "/data2"]
    assert writer.series(H.NET_TX) == []
    assert (H.CPU, ()) not in writer.values, "no CPU time passed: no ratio rather than a made-up one"


def test_readings_are_pure_values_with_their_kind():
    """collect() only reads: gauges now, the kernel's byte totals as counter totals; two reads
    of an unchanged host give the same readings, with no store anywhere."""
    ps = FakePsutil()
    c = HostCollector(settings(network_exclude=["lo", "docker*"]), psutil=ps)
    c.setup()
    ps.cpu = CpuTimes(140, 0, 70, 830, 60, 0, 0, 0, 30, 0)
    got = readings(c)
    assert got[(H.MEM_TOTAL, ())].value == 64 * 2**30 and got[(H.MEM_TOTAL, ())].kind == "gauge"
    assert got[(H.CPU, ())].value == pytest.approx(0.6)
    assert got[(H.NET_RX, ("eth0",))].value == 200 and got[(H.NET_RX, ("eth0",))].kind == "total"
    again = readings(c)
    assert (H.CPU, ()) not in again, "no CPU time passed"
    assert {k: r for k, r in got.items() if k[0] is not H.CPU} == again


def test_default_mountpoint_is_root_only(writer):
    c = HostCollector(settings(), psutil=FakePsutil())
    c.setup()
    publish(c, writer)
    assert writer.series(H.FS_SIZE) == [("/",)]


def test_real_psutil_is_sane(writer):
    c = HostCollector(settings())
    c.setup()
    publish(c, writer)
    val = writer.values
    assert val[(H.MEM_TOTAL, ())] > val[(H.MEM_AVAILABLE, ())] > 0
    assert val[(H.FS_SIZE, ("/",))] >= val[(H.FS_AVAIL, ("/",))] > 0
    assert val[(H.LOAD1, ())] >= 0
