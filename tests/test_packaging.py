"""`python -m build` makes an sdist and a wheel with full metadata; `twine check` passes; the wheel
installs into a fresh virtualenv and runs."""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

import mlsidecar
from tests.harness import free_port, parse, total, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def wheel_metadata(dist: Path) -> email.message.Message:
    (whl,) = dist.glob("*.whl")
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


def test_build_makes_an_sdist_and_a_wheel_with_full_metadata(dist):
    v = mlsidecar.__version__
    assert (dist / f"mlsidecar-{v}.tar.gz").is_file() and (dist / f"mlsidecar-{v}-py3-none-any.whl").is_file()
    meta = wheel_metadata(dist)
    assert meta["Name"] == "mlsidecar" and meta["Version"] == v
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Issues"} <= urls.keys()
    classifiers = meta.get_all("Classifier")
    assert "Topic :: System :: Monitoring" in classifiers and "Operating System :: POSIX :: Linux" in classifiers
    assert "prometheus" in meta["Keywords"].split(",")
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip().startswith("# mlsidecar")  # the README is the long description
    requires = " ".join(meta.get_all("Requires-Dist"))
    for dep in ("prometheus_client", "psutil", "aiohttp", "orjson", "nvidia-ml-py"):
        assert dep in requires
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "mlsidecar/events.schema.json"} <= names
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as whl:
        assert {"mlsidecar/py.typed", "mlsidecar/events.schema.json"} <= set(whl.namelist())  # typed package


def test_twine_check_passes(dist):
    files = [str(p) for p in dist.iterdir()]
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr


def test_the_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    venv = tmp_path / "venv"
    # Without its own pip (bootstrapping one is slow): this pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (whl,) = dist.glob("*.whl")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                        "--no-compile", str(whl)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    exe = str(venv / "bin/mlsidecar")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.stdout.strip() == f"mlsidecar {mlsidecar.__version__}", r

    # A short demo from the installed package (run outside the checkout, so nothing comes from it).
    port = free_port()
    demo = subprocess.Popen([exe, "demo", "--listen", f"127.0.0.1:{port}", "--duration", "2",
                             "--state-dir", str(tmp_path / "state")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def predictions() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return total(parse(resp.read().decode()), "ml_predictions_total")
        assert wait_for(predictions, timeout=30, what="demo predictions") > 0
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = demo.stdout.read().decode()
    assert "Traceback" not in out, out
    loaded = subprocess.run([str(venv / "bin/python"), "-c", "import mlsidecar; print(mlsidecar.__file__)"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60).stdout
    assert str(venv) in loaded, loaded
