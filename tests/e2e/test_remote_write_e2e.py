"""The scale-out path: Prometheus with deploy/prometheus/prometheus.yml (its remote_write and
external labels as shipped, the URL pointed at loopback) scrapes a real sidecar and remote-writes
to a second real Prometheus started with --web.enable-remote-write-receiver, as Thanos Receive,
Mimir or Cortex would receive it. The second one answers for ml_predictions_total with the
value the sidecar counted and the first one's external labels."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import yaml

from tests.e2e.test_prometheus_e2e import PROM_DIR, Prometheus
from tests.harness import require_tool, wait_for

SUCCESS, ERRORS = 37, 3


class Scraper(Prometheus):
    """The shipped config: the hosts job points at the sidecar, remote_write at the receiver."""

    def __init__(self, tmp_path: Path, sidecar_port: int, receiver: str):
        super().__init__(tmp_path, sidecar_port)
        self.receiver = receiver

    def write_config(self) -> Path:
        path = super().write_config()  # the shipped prometheus.yml, fast intervals, no Kubernetes
        ours = yaml.safe_load(path.read_text())
        shipped = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        (rw,) = shipped["remote_write"]
        ours["remote_write"] = [{**rw, "url": self.receiver}]
        ours["global"]["external_labels"] = shipped["global"]["external_labels"]
        path.write_text(yaml.safe_dump(ours))
        return path


class Receiver(Prometheus):
    """An empty Prometheus that only receives remote writes."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, 0)
        self.extra_args = ["--web.enable-remote-write-receiver"]

    def write_config(self) -> Path:
        path = self.tmp / "prometheus.yml"
        path.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        return path


def test_remote_write_reaches_a_second_prometheus_with_the_external_labels(tmp_path, sidecar_factory):
    require_tool("prometheus")
    events = tmp_path / "events.jsonl"
    lines = [{"event": "prediction", "model": "rw-model", "version": "v1", "latency_s": 0.01,
              "status": "error" if i < ERRORS else "success"} for i in range(SUCCESS + ERRORS)]
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))
    sc = sidecar_factory("--tail", str(events)).start()
    sc.wait_value("ml_predictions_total", SUCCESS, model_name="rw-model", status="success")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    receiver = scraper = None
    try:
        receiver = Receiver(tmp_path / "b").start()
        scraper = Scraper(tmp_path / "a", sc.port, f"{receiver.url}/api/v1/write").start()
        shipped = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["global"]["external_labels"]

        def received():
            res = receiver.query('ml_predictions_total{model_name="rw-model", job="mlsidecar-hosts"}')
            return {r["metric"]["status"]: r for r in res["data"]["result"]} or None

        got = wait_for(received, 60, 0.5, what=f"remote-written series in the receiver ({scraper.log()})")
        assert set(got) == {"success", "error"}
        assert float(got["success"]["value"][1]) == SUCCESS
        assert float(got["error"]["value"][1]) == ERRORS
        for r in got.values():
            labels = r["metric"]
            assert labels["cluster"] == shipped["cluster"] == "ml-production"
            assert labels["environment"] == shipped["environment"] == "prod"
            assert labels["instance"] == f"127.0.0.1:{sc.port}"
        # Recording rules of the first one travel too (they are series like any other).
        total = wait_for(lambda: receiver.query('sum(namespace_model:ml_predictions:rate5m{model_name="rw-model"})')
                         ["data"]["result"], 60, 0.5, what="a recording rule's series in the receiver")
        assert re.fullmatch(r"[0-9.e+-]+", total[0]["value"][1])
        # The first one keeps no external labels in its own storage: they are added on the way out.
        local = scraper.query('ml_predictions_total{model_name="rw-model", status="success"}')["data"]["result"]
        assert local and all("cluster" not in r["metric"] for r in local)
    finally:
        for p in (scraper, receiver):
            if p:
                p.stop()
