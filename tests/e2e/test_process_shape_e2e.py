"""What each process of a running sidecar holds: one process for all collectors, and no
worker carrying libraries it does not use (each costs memory in every pod)."""

import json
import os

import psutil

from tests.harness import wait_for

LINE = b'{"event":"prediction","model":"m","latency_s":0.01}\n'


def statuses(sc) -> dict:
    out = {}
    folder = os.path.join(sc.state_dir, "status")
    for name in os.listdir(folder):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as fh:
                    out[name[:-5]] = json.load(fh)
            except (OSError, ValueError):
                continue  # being replaced
    return out


def extension_modules(pid: int) -> set[str]:
    """The C extension packages mapped into a process (aiohttp, psutil, numpy, ...)."""
    out = set()
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            path = line.split()[-1]
            if "site-packages/" in path and path.endswith(".so"):
                out.add(path.split("site-packages/", 1)[1].split("/", 1)[0].split(".", 1)[0])
    return out


def test_collectors_share_one_process_and_workers_map_only_what_they_use(tmp_path, sidecar_factory):
    log = tmp_path / "e.jsonl"
    log.write_bytes(LINE * 10)
    sc = sidecar_factory("--tail", str(log), "--collector.gpu", "--collector.process").start()
    sc.wait_value("ml_predictions_total", 10)
    st = wait_for(lambda: (lambda s: s if {"collect", "gpu"} <= s.keys() else None)(statuses(sc)),
                  what="collect and gpu statuses")
    # The GPU collector runs on a thread of the collector process, under its own identity.
    assert st["gpu"]["pid"] == st["collect"]["pid"], st
    tail = next(s for s in st.values() if s.get("role") == "tail")
    children = {p.pid for p in psutil.Process(sc.proc.pid).children()}
    assert len(children) == 3, (children, st)  # server, tail, collect
    assert {tail["pid"], st["collect"]["pid"]} <= children

    server = (children - {tail["pid"], st["collect"]["pid"]}).pop()
    assert "aiohttp" in extension_modules(server)
    for pid, what in ((sc.proc.pid, "supervisor"), (tail["pid"], "tail worker")):
        mapped = extension_modules(pid)
        for lib in ("aiohttp", "psutil", "numpy", "scipy"):
            assert lib not in mapped, f"the {what} maps {lib}: {sorted(mapped)}"
    assert "psutil" in extension_modules(st["collect"]["pid"])


def test_the_tail_worker_imports_no_server_nvml_or_psutil():
    """pynvml is pure Python (nothing to see in /proc/PID/maps): import what the supervisor
    and a tail worker import, in a fresh interpreter, and look at sys.modules."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mlsidecar import cli, config\n"
        "from mlsidecar.listen import bind\n"
        "from mlsidecar.runtime import supervisor\n"
        "cfg = config.with_overrides(config.load(None), tail=['/nonexistent/e.jsonl'])\n"
        "assert [s.role for s in supervisor.plan(cfg)] == ['tail', 'collect'], supervisor.plan(cfg)\n"
        "from mlsidecar.runtime.worker import run_tail_worker\n"
        "from mlsidecar.sources.tail import Tailer\n"
        "from mlsidecar.exemplars import ExemplarStore\n"
        "print(' '.join(m for m in ('aiohttp', 'pynvml', 'psutil', 'numpy', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], out.stdout


def test_no_nvidia_driver_means_no_pynvml_import():
    """Without the driver library the GPU collector reports itself down without importing pynvml
    (about 4 MB of the collector process on every machine without a GPU)."""
    import ctypes
    import subprocess
    import sys

    import pytest

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver library")
    code = (
        "import sys\n"
        "from mlsidecar import config\n"
        "from mlsidecar.collectors import CollectorUnavailable, load_all\n"
        "gpu = load_all()['gpu'](config.load(None).collector('gpu'))\n"
        "try:\n"
        "    gpu.setup()\n"
        "except CollectorUnavailable as exc:\n"
        "    print('down:', exc)\n"
        "print('pynvml' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "down: NVML library (libnvidia-ml.so.1) not found" in out.stdout
    assert out.stdout.split()[-1] == "False", out.stdout
