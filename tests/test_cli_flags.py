"""Flags in the manner of Prometheus exporters; a bad flag value is one line and exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from mlsidecar import collectors
from tests.harness import wait_for

PREDICTION = b'{"event":"prediction","model":"m","version":"v1","latency_s":0.01}\n'


def mlsidecar(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlsidecar", *args], capture_output=True, text=True,
                          timeout=60)


def test_help_lists_the_exporter_flags_and_each_collector_with_its_default():
    out = mlsidecar("run", "--help").stdout
    for flag in ("--web.listen-address", "--listen", "--web.telemetry-path", "--web.enable-lifecycle",
                 "--log.level", "--log.format", "--web.config.file"):
        assert re.search(rf"(^|\s){re.escape(flag)}\b", out), flag
    flat = " ".join(out.split())
    for name, cls in collectors.load_all().items():
        m = re.search(rf"--collector\.{name}, --no-collector\.{name} (.*?)\(default: (on|off)\)", flat)
        assert m, f"--[no-]collector.{name} missing from --help"
        assert m.group(2) == ("on" if cls.default_enabled else "off"), name
        assert "enable the" not in m.group(1)


@pytest.mark.parametrize("args, words", [
    (["--listen", "127.0.0.1:99999"], "port 99999 is out of range"),
    (["--listen", "nonsense"], "'nonsense' is not HOST:PORT"),
    (["--web.listen-address", "127.0.0.1:0x10"], "is not HOST:PORT"),
    (["--web.telemetry-path", "metrics"], "is not an absolute URL path"),
    (["--web.telemetry-path", "/healthz"], "is taken by another endpoint"),
    (["--log.format", "xml"], "invalid choice: 'xml'"),
    (["--log.level", "loud"], "invalid choice: 'loud'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_bad_flag_value_is_one_line_and_exit_2(args, words):
    r = mlsidecar("run", *args)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0] and "Traceback" not in r.stderr


def test_an_unresolvable_listen_host_is_one_line_and_exit_2(tmp_path):
    r = mlsidecar("run", "--listen", "no-such-host.invalid:9877", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2, r
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot listen on" in r.stderr, r.stderr


def status(url: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_telemetry_path_health_aliases_and_lifecycle_off_by_default(sidecar_factory):
    sc = sidecar_factory("--web.telemetry-path", "/custom/metrics").start()
    code, body = status(sc.url + "/custom/metrics")
    assert code == 200 and "mlsidecar_build_info" in body
    assert status(sc.url + "/metrics")[0] == 404
    assert status(sc.url + "/-/healthy") == (200, "ok\n")
    assert status(sc.url + "/-/ready") == (200, "ready\n")
    code, body = status(sc.url + "/-/reload", "POST")
    assert code == 403 and "--web.enable-lifecycle" in body
    assert 'href="/custom/metrics"' in status(sc.url + "/")[1]


def test_post_reload_without_a_config_file_says_so(sidecar_factory):
    sc = sidecar_factory("--web.enable-lifecycle").start()
    assert status(sc.url + "/-/reload", "POST") == (409, "nothing to reload: started without --config\n")
    assert status(sc.url + "/-/ready")[0] == 200


def test_post_reload_rereads_the_config_with_lifecycle_enabled(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.write_bytes(PREDICTION)
    cfg = tmp_path / "mlsidecar.toml"
    cfg.write_text(f'[sources]\ntail = ["{events}"]\n[labels]\nteam = "alpha"\n')
    sc = sidecar_factory("--web.enable-lifecycle", config=str(cfg)).start()
    sc.wait_value("ml_predictions_total", 1, team="alpha")
    cfg.write_text(f'[sources]\ntail = ["{events}"]\n[labels]\nteam = "beta"\n')
    assert status(sc.url + "/-/reload", "POST") == (200, "reload requested\n")
    wait_for(lambda: "config reloaded" in sc.log(), timeout=20, what="reload log line")
    with open(events, "ab") as fh:
        fh.write(PREDICTION)
    sc.wait_value("ml_predictions_total", 2, team="beta")


LOGFMT = re.compile(r'^ts=\S+Z level=(debug|info|warning|error) worker=\S+ logger=\S+ msg=("(\\.|[^"\\])*"|\S+)')


def test_logs_are_logfmt_by_default_and_json_on_request(sidecar_factory):
    sc = sidecar_factory().start()
    sc.stop()
    lines = [ln for ln in sc.log().splitlines() if ln.strip()]
    assert lines and all(LOGFMT.match(ln) for ln in lines), lines
    assert any('worker=server' in ln and 'msg="serving /metrics on' in ln for ln in lines), lines

    sc = sidecar_factory("--log.format", "json", "--log.level", "debug").start()
    sc.stop()
    records = [json.loads(ln) for ln in sc.log().splitlines() if ln.strip()]
    assert records and all({"ts", "level", "worker", "logger", "msg"} <= r.keys() for r in records)
    assert {"supervisor", "server"} <= {r["worker"] for r in records}


def readme_usage_block() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("\n## Using it\n", 1)[1]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("command", ["run", "demo", "probe", "reference"])
def test_the_readme_usage_block_lists_every_flag(command):
    block = readme_usage_block()
    assert f"mlsidecar {command}" in block
    help_text = mlsidecar(command, "--help").stdout
    flags = set(re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", help_text)) - {"--help"}
    assert flags, help_text
    listed = set(re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", block))
    missing = sorted(f for f in flags if f not in listed)
    assert not missing, f"README's usage block lacks {missing} of `mlsidecar {command}`"
