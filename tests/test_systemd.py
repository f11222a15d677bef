"""systemd units: systemd-analyze verify passes, and the hardening the docs promise is there."""

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mlsidecar.cli import build_parser
from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALLED_BINARY = "/usr/local/bin/mlsidecar"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file into {section: {key: [values...]}} (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def mlsidecar_executable(tmp_path: Path) -> str:
    """The real ``mlsidecar`` script, or a wrapper that runs this interpreter's ``-m mlsidecar``."""
    found = shutil.which("mlsidecar")
    if found:
        return found
    wrapper = tmp_path / "bin" / "mlsidecar"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mlsidecar \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(wrapper)


def verify(tmp_path: Path, unit_file: Path, instance: str | None = None) -> tuple[int, str]:
    """Copy the unit with ExecStart pointing at a real mlsidecar; run systemd-analyze verify."""
    analyze = require_tool("systemd-analyze")
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    text = unit_file.read_text()
    assert INSTALLED_BINARY in text
    (d / unit_file.name).write_text(text.replace(INSTALLED_BINARY, mlsidecar_executable(tmp_path)))
    name = unit_file.name.replace("@.", f"@{instance}.") if instance else unit_file.name
    proc = subprocess.run([analyze, "verify", "--man=no", str(d / name)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    out = proc.stdout + proc.stderr
    # verify also reports on the system's own units; only lines about ours count.
    ours = [ln for ln in out.splitlines() if unit_file.name.split("@")[0] in ln]
    return proc.returncode, "\n".join(ours)


@pytest.mark.parametrize("unit, instance", [("mlsidecar.service", None), ("mlsidecar@.service", "train-llama")])
def test_systemd_analyze_verify(tmp_path, unit, instance):
    rc, complaints = verify(tmp_path, UNITS / unit, instance)
    assert rc == 0 and not complaints, complaints


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt key and a bad value are reported."""
    broken = tmp_path / "mlsidecar-broken.service"
    text = (UNITS / "mlsidecar.service").read_text()
    broken.write_text(text.replace("Type=notify", "Typ=notify").replace("WatchdogSec=30s", "WatchdogSec=soon"))
    rc, complaints = verify(tmp_path, broken)
    assert "Typ" in complaints and "soon" in complaints


@pytest.mark.parametrize("unit", ["mlsidecar.service", "mlsidecar@.service"])
def test_locked_down(unit):
    u = parse_unit(UNITS / unit)
    s = u["Service"]

    def one(key):
        assert key in s, f"{unit}: {key}= missing"
        return s[key][-1]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"  # READY/WATCHDOG come from the supervisor (the main pid)
    assert re.fullmatch(r"\d+s?", one("WatchdogSec"))
    assert one("Restart") == "on-failure"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("DynamicUser") == "yes" or one("User") not in ("", "root")
    assert one("StateDirectory").split("/")[0] == "mlsidecar"
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert one("DevicePolicy") == "closed"
    allowed = s.get("DeviceAllow", [])
    assert allowed and all(a.split()[0].startswith(("char-nvidia", "/dev/nvidia")) for a in allowed), allowed
    assert "PrivateDevices" not in s, "PrivateDevices= would hide /dev/nvidia*"
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("unit, instance", [("mlsidecar.service", None), ("mlsidecar@.service", "job7")])
def test_execstart_is_a_valid_command_line(unit, instance):
    """The flags in ExecStart are ones `mlsidecar run` accepts."""
    execstart = parse_unit(UNITS / unit)["Service"]["ExecStart"][-1]
    argv = shlex.split(execstart.replace("%i", instance or ""))
    assert argv[0] == INSTALLED_BINARY
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    if instance:
        assert args.config == f"/etc/mlsidecar/{instance}.toml"
        assert args.state_dir == f"/var/lib/mlsidecar/{instance}"
        assert parse_unit(UNITS / unit)["Service"]["StateDirectory"] == ["mlsidecar/%i"]
    else:
        assert args.config == "/etc/mlsidecar/config.toml"
        assert args.state_dir == "/var/lib/mlsidecar"


def test_watchdog_period_leaves_room_for_the_daemon():
    """The daemon pings every WatchdogSec/2; the supervisor's loop wakes at least every second."""
    for unit in ("mlsidecar.service", "mlsidecar@.service"):
        sec = int(parse_unit(UNITS / unit)["Service"]["WatchdogSec"][-1].rstrip("s"))
        assert sec >= 10, "a short watchdog kills the sidecar on a briefly stalled box"
