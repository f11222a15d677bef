"""The README's first example runs as a normal user: the state dir falls back to a per-user one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlsidecar.cli import user_state_dir
from tests.harness import IN_CI, free_port

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def first_example() -> str:
    """The first sh block of the README that runs `mlsidecar run` (the one after the intro)."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if "mlsidecar run --tail" in block:
            return block
    raise AssertionError("README has no `mlsidecar run --tail` example")


def _python_runs_as(uid: int) -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "import mlsidecar, psutil"], user=uid,
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run(
        [unshare, "-m", "sh", "-c", "mount --bind -o ro /tmp /mnt"], capture_output=True).returncode == 0


def as_normal_user(script: str, home: str) -> tuple[list[str], dict]:
    """A command that runs ``script`` where /var/lib/mlsidecar cannot be written, as users meet it."""
    env = {**os.environ, "HOME": home, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("XDG_STATE_HOME", None)
    env.pop("STATE_DIRECTORY", None)
    if os.geteuid() != 0:
        if os.access("/var/lib", os.W_OK) or os.access("/var/lib/mlsidecar", os.W_OK):
            pytest.skip("this user can write /var/lib/mlsidecar: nothing to fall back from")
        return ["sh", "-c", script], env
    if _python_runs_as(NOBODY):
        os.chown(home, NOBODY, NOBODY)
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sh", "-c", script], env
    if _unshare_works():
        # Root, but this Python is not readable by other users: make /var/lib read-only instead.
        empty = tempfile.mkdtemp(dir=home)
        return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {empty} /var/lib && exec sh -c "$0"',
                script], env
    if IN_CI:
        pytest.fail("cannot run as a normal user here (no usable `nobody`, no unshare)")
    pytest.skip("cannot run as a normal user here (no usable `nobody`, no unshare)")


def test_the_readme_first_example_works_without_root():
    port = free_port()
    block = first_example()
    script = (block.replace("mlsidecar run ", f"mlsidecar run --listen 127.0.0.1:{port} ")
                   .replace("localhost:9877", f"127.0.0.1:{port}"))
    script += "\nkill $!; wait\n"
    home = tempfile.mkdtemp(prefix="mlsidecar-home-")
    os.chmod(home, 0o755)
    try:
        cmd, env = as_normal_user(script, home)
        proc = subprocess.Popen(cmd, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the sidecar, should the script stop early
            except ProcessLookupError:
                pass
        r = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        expected = next(ln[2:] for ln in block.splitlines() if ln.startswith("# ml_predictions_total"))
        assert expected in r.stdout.splitlines(), r.stdout + r.stderr
        fallback = user_state_dir({"HOME": home})
        assert "state dir /var/lib/mlsidecar is not writable" in r.stderr, r.stderr
        assert f"using {fallback} instead" in r.stderr, r.stderr
        assert os.path.isdir(os.path.join(fallback, "metrics"))
        assert "Traceback" not in r.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_an_explicit_state_dir_is_never_replaced(tmp_path):
    """Only the default falls back: a state dir someone chose fails with one line, exit 2."""
    bad = tmp_path / "file-not-dir"
    bad.write_text("")
    r = subprocess.run([sys.executable, "-m", "mlsidecar", "run", "--listen", f"127.0.0.1:{free_port()}",
                        "--state-dir", str(bad / "sub")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is not writable" in r.stderr and "instead" not in r.stderr, r.stderr


def test_user_state_dir_follows_xdg():
    assert user_state_dir({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == "/x/state/mlsidecar"
    assert user_state_dir({"HOME": "/h"}).endswith("/.local/state/mlsidecar")
