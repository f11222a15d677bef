"""deploy/compose: `docker-compose config` accepts it, and it wires our rules and dashboards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from mlsidecar.cli import build_parser
from tests.harness import require_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"


def resolved() -> dict:
    exe = require_tool("docker-compose")
    r = subprocess.run([exe, "-f", str(COMPOSE / "docker-compose.yml"), "config"], capture_output=True,
                       text=True, timeout=120, cwd=COMPOSE)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """{container path: (source, mode)} of a resolved service (short or long volume syntax)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            src, dst, mode = parts[0], parts[1], (parts[2] if len(parts) > 2 else "rw")
        else:
            src, dst, mode = v.get("source"), v["target"], "ro" if v.get("read_only") else "rw"
        out[dst] = (src, mode)
    return out


def test_docker_compose_config_accepts_the_file_and_wires_rules_and_dashboards():
    cfg = resolved()
    services = cfg["services"]
    assert set(services) == {"workload", "mlsidecar", "prometheus", "grafana"}

    prom = mounts(services["prometheus"])
    assert Path(prom["/etc/prometheus/rules"][0]) == ROOT / "deploy/prometheus/rules"
    assert Path(prom["/etc/prometheus/prometheus.yml"][0]) == COMPOSE / "prometheus.yml"
    graf = mounts(services["grafana"])
    assert Path(graf["/etc/grafana/provisioning/dashboards"][0]) == ROOT / "deploy/grafana/provisioning/dashboards"
    assert Path(graf["/etc/grafana/provisioning/datasources"][0]) == ROOT / "deploy/grafana/provisioning/datasources"
    # The provider reads the path its file names; the dashboards are mounted there.
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/mlsidecar.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert Path(graf[path][0]) == ROOT / "deploy/grafana/dashboards"
    for m in (prom["/etc/prometheus/rules"], prom["/etc/prometheus/prometheus.yml"], graf[path],
              graf["/etc/grafana/provisioning/dashboards"], graf["/etc/grafana/provisioning/datasources"]):
        assert m[1] == "ro", m
    # The datasource Grafana is given is the prometheus service.
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"

    side = services["mlsidecar"]
    args = build_parser().parse_args(side["command"])  # flags our CLI accepts
    assert args.command == "run" and args.tail == ["/logs/*.jsonl"]
    assert mounts(side)["/logs"][1] == "ro" and mounts(services["workload"])["/logs"][1] == "rw"
    assert side["pid"] == "service:workload"  # the process collector sees the workload
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_the_compose_prometheus_config_and_rules_pass_promtool(tmp_path):
    promtool = require_tool("promtool")
    text = (COMPOSE / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in text
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(text.replace("/etc/prometheus/rules", str(ROOT / "deploy/prometheus/rules")))
    r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "rule files found" in r.stdout + r.stderr


def test_the_workload_service_command_writes_events(tmp_path):
    """The demo writer the workload service runs, run here for a moment (it is plain Python)."""
    import sys
    import time

    cfg = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    svc = cfg["services"]["workload"]
    assert svc["entrypoint"] == ["python", "-c"]
    code = svc["command"][0]
    assert "/logs/events.jsonl" in code
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", code.replace("/logs/events.jsonl", str(events))])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (events.exists() and events.stat().st_size > 1000):
            assert proc.poll() is None, "the workload command exited"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    lines = events.read_text().splitlines()
    assert lines and all(line.startswith('{"event":') for line in lines[:-1]), lines[:3]
