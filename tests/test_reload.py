"""SIGHUP: a good new config is taken, a bad one is refused and the old one keeps serving."""

import signal

from tests.harness import total, wait_for

PREDICTION = b'{"event":"prediction","model":"m","version":"v1","latency_s":0.01}\n'


def write_config(path, events, team: str, extra: str = "") -> None:
    path.write_text(f'[sources]\ntail = ["{events}"]\n\n[labels]\nteam = "{team}"\n{extra}')


def append(events, n: int) -> None:
    with open(events, "ab") as fh:
        fh.write(PREDICTION * n)


def teams(samples) -> dict:
    out = {}
    for (name, labels), v in samples.items():
        if name == "ml_predictions_total":
            team = dict(labels).get("team")
            out[team] = out.get(team, 0) + v
    return out


def test_sighup_takes_a_good_config_and_refuses_a_bad_one(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.touch()
    cfg = tmp_path / "mlsidecar.toml"
    write_config(cfg, events, "alpha")
    sc = sidecar_factory(config=str(cfg)).start()
    append(events, 3)
    s = sc.wait_value("ml_predictions_total", 3)
    assert teams(s) == {"alpha": 3}

    # A good new config: the new label value shows up on the series.
    write_config(cfg, events, "beta")
    sc.send(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in sc.log(), timeout=20, what="reload log line")
    wait_for(sc.ready, timeout=20, what="ready after reload")
    append(events, 2)
    s = sc.wait_value("ml_predictions_total", 5, team="beta")
    assert "alpha" not in teams(s), teams(s)
    # The event log is not read twice across the reload: positions carry over.
    assert total(s, "ml_predictions_total") == 5

    # A bad new config: refused with a log line naming the key; the running config stays.
    write_config(cfg, events, "gamma", extra="\n[sources2]\nnonsense = 1\n")
    sc.send(signal.SIGHUP)
    line = wait_for(lambda: next((ln for ln in sc.log().splitlines() if "refused" in ln), None),
                    timeout=20, what="refusal log line")
    assert "sources2" in line and "keeping the running one" in line, line
    assert sc.proc.poll() is None
    append(events, 4)
    s = sc.wait_value("ml_predictions_total", 9, team="beta")
    assert "gamma" not in teams(s), teams(s)
    assert sc.ready()

    # Not valid TOML at all: refused the same way.
    cfg.write_text("[labels\nteam = ")
    sc.send(signal.SIGHUP)
    wait_for(lambda: sum("refused" in ln for ln in sc.log().splitlines()) >= 2, timeout=20,
             what="second refusal")
    append(events, 1)
    sc.wait_value("ml_predictions_total", 10, team="beta")
    assert sc.stop() == 0
