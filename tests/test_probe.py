"""``mlsidecar probe``: what each collector can read on this machine."""

from __future__ import annotations

import io
import subprocess
import sys

import pynvml

from mlsidecar import config as configmod
from mlsidecar.probe import probe

from .fake_pynvml import FakeGpu, FakeNVML


def run(names=None, cfg=None, **handles) -> tuple[int, str]:
    out = io.StringIO()
    rc = probe(cfg or configmod.load(None), names, out, handles=handles or None)
    return rc, out.getvalue()


def test_no_nvml_is_a_clean_unavailable_line():
    rc, text = run(["gpu"], nvml=FakeNVML([], init_error=pynvml.NVMLError_LibraryNotFound))
    assert rc == 1
    assert text.startswith("gpu: unavailable (enabled): NVML library (libnvidia-ml.so.1) not found")


def test_gpu_readings_are_printed_with_a_fake_gpu():
    rc, text = run(["gpu"], nvml=FakeNVML([FakeGpu(uuid="GPU-abc", temperature=55)]))
    assert rc == 0, text
    assert "gpu: ok (enabled;" in text
    assert '  ml_gpu_temperature_celsius{gpu="0",uuid="GPU-abc",name="NVIDIA H100 80GB HBM3"} 55.0' in text


def test_host_collector_off_by_default_is_still_probed():
    rc, text = run(["host"])
    assert rc == 0, text
    assert "host: ok (off by default" in text
    assert "  ml_host_memory_total_bytes " in text


def test_process_collector_with_a_config(tmp_path):
    cfg = configmod.from_dict({"collectors": {"process": {"cmdline": "pytest"}}})
    rc, text = run(["process"], cfg=cfg)
    assert "process: ok (enabled;" in text, text
    assert "  watching: cmdline /pytest/" in text
    assert "  ml_process_processes " in text


def test_unknown_collector():
    rc, text = run(["gpu", "nope"])
    assert rc == 2 and "unknown collector nope" in text


def test_cli_probe_on_this_machine():
    """The real command, with the real pynvml: every collector reports, nothing crashes."""
    r = subprocess.run([sys.executable, "-m", "mlsidecar", "probe"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith(" ")]
    assert [ln.split(":")[0] for ln in lines] == ["gpu", "host", "process"], r.stdout
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert lines[0].startswith("gpu: unavailable"), r.stdout
        assert r.returncode == 1
    else:
        pynvml.nvmlShutdown()
