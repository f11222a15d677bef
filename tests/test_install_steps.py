"""The README's systemd steps, run in a scratch root as far as they go without systemd.

Each command of the README block runs as written, with /opt, /etc and /usr/local moved under the
scratch root; `apt-get install` is simulated (no root, no network), and `systemctl` is replaced by
what can be checked without a running systemd: `systemd-analyze verify` of the installed unit and
the installed daemon started the way its ExecStart= starts it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.harness import IN_CI, free_port, wait_for
from tests.test_systemd import INSTALLED_BINARY, parse_unit, verify

ROOT = Path(__file__).resolve().parent.parent
MOVED = ("/opt/", "/etc/", "/usr/local/")


def readme_systemd_steps() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## systemd\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    steps = []
    for line in block.splitlines():
        cmd = line.split(" #", 1)[0].strip()
        if cmd and not cmd.startswith("#"):
            steps.append(cmd)
    return steps


def in_root(cmd: str, root: Path) -> str:
    for prefix in MOVED:
        cmd = re.sub(rf"(?<![\w.$/-]){re.escape(prefix)}", f"{root}{prefix}", cmd)
    return cmd


def test_the_readme_names_a_venv_under_opt_and_creates_etc_mlsidecar():
    steps = readme_systemd_steps()
    assert not any(re.match(r"(sudo )?pip3? install", s) for s in steps), "pip into the system Python: PEP 668"
    assert "python3 -m venv /opt/mlsidecar" in steps
    assert any(s.startswith("install -d") and "/etc/mlsidecar" in s for s in steps)
    assert any("/usr/local/bin/mlsidecar" in s for s in steps)  # the path the unit's ExecStart runs


def checkout_copy(dest: Path) -> Path:
    """The files of this checkout (not the ignored ones), so that pip's build/ lands in the copy."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True)
    if r.returncode != 0:
        return ROOT  # not a git checkout: run where we are
    for name in r.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_the_readme_systemd_steps_in_a_scratch_root(tmp_path, monkeypatch):
    checkout = checkout_copy(tmp_path / "checkout")
    root = tmp_path / "root"
    for d in ("etc/systemd/system", "usr/local/bin", "opt"):  # there on any Debian or Ubuntu
        (root / d).mkdir(parents=True)
    env_path = f"{root}/usr/local/bin:{Path(shutil.which('python3')).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
    ran, skipped = [], []
    for step in readme_systemd_steps():
        cmd = in_root(step, root)
        if step.startswith("apt-get install"):
            if not shutil.which("apt-get"):
                skipped.append(step)
                continue
            cmd = cmd.replace("apt-get install", "apt-get install --simulate", 1)
        elif step.startswith("systemctl"):
            skipped.append(step)  # no systemd here: checked below instead
            continue
        r = subprocess.run(["sh", "-ec", cmd], cwd=checkout, capture_output=True, text=True, timeout=300,
                           env={"PATH": env_path, "HOME": str(tmp_path), "LANG": "C.UTF-8"})
        assert r.returncode == 0, f"README step failed: {step}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        ran.append(step)
    assert len(ran) >= 7, ran

    binary = root / INSTALLED_BINARY.lstrip("/")
    assert binary.is_symlink() and Path(binary.resolve()).is_relative_to(root / "opt" / "mlsidecar")
    assert (root / "etc/mlsidecar").is_dir() and (root / "etc/mlsidecar/config.toml").is_file()
    unit = root / "etc/systemd/system/mlsidecar.service"
    assert unit.is_file() and (root / "etc/systemd/system/mlsidecar@.service").is_file()

    # What `systemctl enable --now` would start: verify the unit against the installed binary ...
    if shutil.which("systemd-analyze") or IN_CI:
        monkeypatch.setenv("PATH", f"{binary.parent}:{__import__('os').environ['PATH']}")
        code, out = verify(tmp_path, unit)
        assert code == 0 and not out, out
    # ... and run the installed daemon with the unit's ExecStart (on loopback, state in tmp).
    exec_start = shlex.split(parse_unit(unit)["Service"]["ExecStart"][0])
    assert exec_start[0] == INSTALLED_BINARY
    args = [in_root(a, root) for a in exec_start]
    args[args.index("--state-dir") + 1] = str(tmp_path / "state")
    port = free_port()
    proc = subprocess.Popen([*args, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={"PATH": env_path})
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status == 200
        wait_for(ready, timeout=30, what="installed daemon ready")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    if IN_CI and skipped and not shutil.which("apt-get"):
        pytest.fail(f"steps not run: {skipped}")
