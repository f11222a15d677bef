"""SIGHUP with a config that would drop every source is refused: an emptied file stops nothing."""

import signal

from tests.harness import wait_for

PREDICTION = b'{"event":"prediction","model":"m","latency_s":0.01}\n'


def test_a_reload_that_would_remove_every_source_is_refused(tmp_path, sidecar_factory):
    events = tmp_path / "events.jsonl"
    events.write_bytes(PREDICTION * 2)
    cfg = tmp_path / "mlsidecar.toml"
    cfg.write_text(f'[sources]\ntail = ["{events}"]\n')
    sc = sidecar_factory(config=str(cfg)).start()
    sc.wait_value("ml_predictions_total", 2)

    cfg.write_text("")  # an editor saved an empty file; a config tool wrote nothing yet
    sc.send(signal.SIGHUP)
    line = wait_for(lambda: next((ln for ln in sc.log().splitlines() if "refused" in ln), None),
                    timeout=20, what="refusal log line")
    assert "no sources" in line and "keeping the running one" in line, line
    with open(events, "ab") as fh:
        fh.write(PREDICTION * 3)
    sc.wait_value("ml_predictions_total", 5)
    assert "config reloaded" not in sc.log()
    assert sc.stop() == 0
