from tests.harness import total


def test_user_metrics_survive_a_restart(tmp_path, sidecar_factory):
    log = tmp_path / "e.jsonl"
    log.write_bytes(b'{"event":"metric","name":"kpi_total","type":"counter","value":2,"labels":{"shop":"a"}}\n'
                    b'{"event":"metric","name":"lat","type":"histogram","value":0.02}\n'
                    b'{"event":"metric","name":"lat","type":"histogram","value":3}\n')
    sc = sidecar_factory("--tail", str(log)).start()
    sc.wait_value("kpi_total", 2)
    assert sc.stop() == 0
    with open(log, "ab") as fh:
        fh.write(b'{"event":"metric","name":"kpi_total","type":"counter","value":3,"labels":{"shop":"a"}}\n'
                 b'{"event":"metric","name":"lat","type":"histogram","value":0.02}\n')
    sc2 = sidecar_factory("--tail", str(log), state_dir=sc.state_dir).start()
    s = sc2.wait_value("kpi_total", 5)
    assert total(s, "lat_count") == 3
    assert total(s, "lat_bucket", le="0.025") == 2
    assert total(s, "lat_bucket", le="5.0") == 3
    assert total(s, "mlsidecar_events_rejected_total") == 0
