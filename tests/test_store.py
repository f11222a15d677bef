"""SeriesWriter: absolute values, crash-safe journal, limits, expiry, compatibility."""


from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from mlsidecar import catalogue as C
from mlsidecar.exposition import MetricsReader
from mlsidecar.fileformat import read_file
from mlsidecar.store import Batch, SeriesWriter
from tests.harness import parse, total


def writer(tmp_path, identity="w", **kw):
    d = tmp_path / "m"
    return SeriesWriter(str(d), identity, str(tmp_path / f"{identity}.journal"), **kw)


def test_values_survive_a_restart_with_the_same_identity(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 3)
    b.observe(C.PREDICTION_LATENCY, ("m", "v"), 0.02)
    w.apply(b)
    w.flush({"pos": 1})
    w.close()
    w2 = writer(tmp_path)
    assert w2.values[(C.PREDICTIONS, ("m", "v", "success"))] == 3
    assert w2.journal_state == {"pos": 1}
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 2)
    w2.apply(b)
    w2.flush({"pos": 2})
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_predictions_total") == 5
    assert total(s, "ml_prediction_latency_seconds_bucket", le="0.025") == 1


def test_journal_is_replayed_when_a_crash_hit_between_journal_and_files(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 7)
    w.apply(b)
    # Simulate kill -9 after the journal rename, before the mmap writes.
    pending = dict(w._pending)
    w._pending = {}
    import orjson
    with open(w.journal_path, "wb") as fh:
        fh.write(orjson.dumps({"state": {"pos": 9},
                               "writes": [[n, k, v, t] for (n, k), (v, t) in pending.items()]}))
    w.close()
    w2 = writer(tmp_path)
    assert w2.journal_state == {"pos": 9}
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_predictions_total") == 7


def test_files_are_readable_by_prometheus_client(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 4)
    b.observe(C.PREDICTION_LATENCY, ("m", "v"), 0.3)
    b.set(C.TRAINING_LOSS, ("job", "train"), 0.5)
    w.apply(b)
    w.flush()
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(tmp_path / "m"))
    theirs = parse(generate_latest(reg).decode())
    ours = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(theirs, "ml_predictions_total") == total(ours, "ml_predictions_total") == 4
    assert total(theirs, "ml_prediction_latency_seconds_count") == 1
    assert total(theirs, "ml_prediction_latency_seconds_bucket", le="0.5") == 1
    assert total(theirs, "ml_training_loss") == 0.5


def test_series_limit_drops_new_series_and_counts(tmp_path):
    limited = []
    w = writer(tmp_path, series_limit=2, on_limited=limited.append)
    b = Batch()
    for model in ("a", "b", "c", "d"):
        b.inc(C.DEPLOYMENTS, (model, "v"))
    w.apply(b)
    assert len(w.series(C.DEPLOYMENTS)) == 2
    assert limited == ["ml_model_deployments_total"] * 2


def test_removed_and_expired_series_disappear_and_are_compacted(tmp_path):
    now = 1_000_000.0
    w = writer(tmp_path, clock=lambda: now)
    w.set_gauge(C.FEATURE_DRIFT, ("m", "v", "old"), 0.2, now=now - 7 * 3600)
    w.set_gauge(C.FEATURE_DRIFT, ("m", "v", "new"), 0.1, now=now)
    w.set_gauge(C.PIPELINE_QUEUE, ("p", "q"), 5, now=now)
    w.flush()
    w.remove(C.PIPELINE_QUEUE, ("p", "q"))
    w.flush()
    reader = MetricsReader([str(tmp_path / "m")], clock=lambda: now)
    s = parse(reader.render())
    assert total(s, "ml_feature_drift_score", feature_name="new") == 0.1
    assert not [k for k in s if ("feature_name", "old") in k[1]]
    assert not [k for k in s if k[0] == "ml_pipeline_queue_size"]
    assert w.forget_expired(now) == 1
    w.close()
    writer(tmp_path, clock=lambda: now).close()  # a restart compacts the file
    names = [k for k, _, _ in read_file(str(tmp_path / "m" / "gauge_mostrecent_w.db"))]
    assert len(names) == 1 and '"new"' in names[0]


def test_static_labels_are_added_to_every_series(tmp_path):
    w = writer(tmp_path, static_labels={"pod": "p-1"})
    w.inc(C.DEPLOYMENTS, ("m", "v"))
    w.flush()
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_model_deployments_total", pod="p-1") == 1


def test_a_refused_flush_keeps_everything_and_leaves_no_temp_file(tmp_path):
    import os

    import pytest

    from mlsidecar.store import StateWriteError

    journal = tmp_path / "gone" / "w.journal"  # its directory is missing: every write fails
    w = SeriesWriter(str(tmp_path / "m"), "w", str(journal))
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 3)
    w.apply(b)
    with pytest.raises(StateWriteError):
        w.flush({"pos": 1})
    assert w.has_pending() and not os.path.exists(str(journal) + ".tmp")
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 2)
    w.apply(b)
    journal.parent.mkdir()
    w.flush({"pos": 2})
    w.close()
    w2 = SeriesWriter(str(tmp_path / "m"), "w", str(journal))
    assert w2.values[(C.PREDICTIONS, ("m", "v", "success"))] == 5
    assert w2.journal_state == {"pos": 2}


def test_compaction_at_start_leaves_the_writer_mapped_to_the_file_on_disk(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 1)
    b.inc(C.PREDICTIONS, ("m", "v", "error"), 1)
    w.apply(b)
    w.remove(C.PREDICTIONS, ("m", "v", "error"))  # a removed series: compacted away at start
    w.flush({"pos": 1})
    w.close()
    w2 = writer(tmp_path)  # compacts while restoring
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 4)
    w2.apply(b)
    w2.flush({"pos": 2})
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_predictions_total") == 5


def test_a_journal_of_the_wrong_shape_is_moved_aside_not_fatal(tmp_path):
    import os

    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 3)
    w.apply(b)
    w.flush({"pos": 1})
    w.close()
    for bad in (b"", b"{", b"[1, 2]", b'{"writes": [["x", 1, 2, 3]]}', b'{"writes": [], "state": [1]}'):
        with open(w.journal_path, "wb") as fh:
            fh.write(bad)
        w2 = writer(tmp_path)
        assert w2.journal_status == "corrupt" and w2.restored_values
        assert [k for k, _ in w2.faults] == ["journal_corrupt"]
        assert w2.values[(C.PREDICTIONS, ("m", "v", "success"))] == 3
        assert not os.path.exists(w.journal_path)
        w2.close()
