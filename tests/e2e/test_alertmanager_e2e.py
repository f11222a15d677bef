"""deploy/alertmanager/alertmanager.yml on a real Alertmanager: its inhibitions silence what they
claim to. Every alert the promtool unit tests expect our rules to fire (their real label sets) is
posted; Alertmanager must inhibit exactly the alerts that an inhibit rule's `equal` labels tie to
a source alert, and each rule must inhibit at least one of them."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from tests.harness import free_port, require_tool, wait_for
from tests.test_deploy_prometheus import ALERTMANAGER, expected_alert_labels


def matches(labels: dict, matchers: list[str]) -> bool:
    for m in matchers:
        k, op, v = re.fullmatch(r'(\w+)\s*(=~|!=|=)\s*"(.*)"', m).groups()
        have = labels.get(k, "")
        ok = bool(re.fullmatch(v, have)) if op == "=~" else (have == v) if op == "=" else have != v
        if not ok:
            return False
    return True


def expected_inhibited(alerts: list[dict], rules: list[dict]) -> dict[str, set[int]]:
    """Alert fingerprint (as index) -> the inhibit rules (as index) that silence it."""
    out: dict[str, set[int]] = {}
    for n, rule in enumerate(rules):
        for i, a in enumerate(alerts):
            if not matches(a, rule["target_matchers"]):
                continue
            for s in alerts:
                if s is not a and matches(s, rule["source_matchers"]) and \
                        all(s.get(k, "") == a.get(k, "") for k in rule["equal"]):
                    out.setdefault(str(i), set()).add(n)
    return out


def test_alertmanager_inhibits_what_the_config_says(tmp_path: Path):
    binary = require_tool("prometheus-alertmanager")
    port = free_port()
    log = open(tmp_path / "alertmanager.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={ALERTMANAGER}", f"--storage.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/v2"
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "alertmanager.log").read_text())
            with urllib.request.urlopen(f"{url}/status", timeout=2) as r:
                return r.status == 200
        wait_for(ready, 30, 0.2, what="alertmanager ready")

        unique = {json.dumps(a, sort_keys=True): a for a in expected_alert_labels()}
        alerts = [dict(a, test_index=str(i)) for i, a in enumerate(unique.values())]
        now = datetime.now(UTC)
        body = [{"labels": a, "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}
                for a in alerts]
        req = urllib.request.Request(f"{url}/alerts", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

        rules = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
        bare = [{k: v for k, v in a.items() if k != "test_index"} for a in alerts]
        want = expected_inhibited(bare, rules)
        assert {n for ns in want.values() for n in ns} == set(range(len(rules))), \
            "an inhibit rule silences none of the alerts our rules fire"

        def got():
            with urllib.request.urlopen(f"{url}/alerts", timeout=10) as r:
                res = json.loads(r.read())
            return len(res) == len(alerts) and res

        res = wait_for(got, 20, 0.2, what="every alert in Alertmanager")
        inhibited = {a["labels"]["test_index"] for a in res if a["status"]["inhibitedBy"]}
        names = {a["test_index"]: a["alertname"] for a in alerts}
        assert inhibited == set(want), (
            f"inhibited: {sorted(names[i] for i in inhibited)}; expected: {sorted(names[i] for i in want)}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_expectation_can_fail():
    """The old rule: equal [instance] against aggregated alerts (without instance) inhibits nothing."""
    old = [{"source_matchers": ['alertname="MLSidecarDown"'], "target_matchers": ['alertname="ModelNotServing"'],
            "equal": ["instance"]}]
    alerts = [{"alertname": "MLSidecarDown", "instance": "a:9877", "namespace": "ml", "model_name": "m"},
              {"alertname": "ModelNotServing", "namespace": "ml", "model_name": "m"}]
    assert expected_inhibited(alerts, old) == {}
    new = [dict(old[0], equal=["namespace", "model_name"])]
    assert expected_inhibited(alerts, new) == {"1": {0}}

