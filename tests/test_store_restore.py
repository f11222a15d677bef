"""A restart reads each metric file, and parses each key, once: what the journal writes is
applied to what was read; the server reads the files ahead of its first scrape."""

from __future__ import annotations

import os

import orjson
import pytest

from mlsidecar import catalogue as C
from mlsidecar import fileformat as F
from mlsidecar.exposition import MetricsReader
from mlsidecar.store import Batch, SeriesWriter
from tests.harness import parse, total


def writer(tmp_path, **kw) -> SeriesWriter:
    return SeriesWriter(str(tmp_path / "m"), "w", str(tmp_path / "w.journal"), **kw)


@pytest.mark.parametrize("labels", [
    {"model_name": "m", "model_version": "v1"},
    {},
    {"model_name": 'quote " and \\ back', "model_version": "ünï\n"},
    {"model_name": F._LE_MARK, "model_version": f'"le": "{F._LE_MARK}"'},  # the mark itself
    {"a": "1", "le_x": "2", "zz": "3"},
])
def test_bucket_keys_are_the_keys_encoded_one_by_one(labels):
    fam = C.PREDICTION_LATENCY
    one_by_one = [F.encode_key(fam, fam.name + "_bucket", {**labels, "le": le}) for le in F.bucket_bounds(fam)]
    assert F.encode_bucket_keys(fam, labels) == one_by_one


def test_scan_gives_the_parts_of_each_good_key_in_order(tmp_path):
    w = writer(tmp_path)
    w.inc(C.PREDICTIONS, ("m", "v", "success"), 2)
    w.inc(C.PREDICTIONS, ("m", "v", "error"), 1)
    w.flush()
    w.close()
    path = str(tmp_path / "m" / "counter_w.db")
    with open(path, "rb") as fh:
        data = fh.read()
    parts: list = []
    good, problems = F.scan_entries(data, F.COUNTER, 2e9, parts)
    assert not problems and len(good) == len(parts) >= 2
    assert parts == [F.decode_key(key) for key, _v, _ts in good]


def test_a_journal_write_of_an_existing_and_of_a_new_key_are_both_restored(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 3)
    b.observe(C.PREDICTION_LATENCY, ("m", "v"), 0.02)
    w.apply(b)
    w.flush({"pos": 1})
    # kill -9 after the journal of the next flush, before its writes reached the files:
    # one series already in the files, one new.
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 4)
    b.observe(C.PREDICTION_LATENCY, ("m", "v2"), 0.2, count=5)
    w.apply(b)
    writes = [[n, k, v, t] for (n, k), (v, t) in w._pending.items()]
    w._pending = {}
    w.close()
    with open(tmp_path / "w.journal", "wb") as fh:
        fh.write(orjson.dumps({"state": {"pos": 2}, "entries": {}, "writes": writes}) + b"\n")
    w2 = writer(tmp_path)
    assert w2.journal_state == {"pos": 2}
    assert w2.values[(C.PREDICTIONS, ("m", "v", "success"))] == 7
    buckets = w2.values[(C.PREDICTION_LATENCY, ("m", "v2"))]
    assert sum(buckets[:-1]) == 5 and buckets[-1] == pytest.approx(1.0)
    w2.close()
    # What was restored is what the files hold.
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_predictions_total") == 7
    assert total(s, "ml_prediction_latency_seconds_count", model_version="v2") == 5


def test_a_restart_under_a_lower_series_limit_keeps_the_limit(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    for i in range(6):
        b.observe(C.PREDICTION_LATENCY, (f"m{i}", "v"), 0.1)
        b.inc(C.PREDICTIONS, (f"m{i}", "v", "success"))
    w.apply(b)
    w.flush()
    w.close()
    w2 = writer(tmp_path, series_limit=4)  # was a KeyError: restored past the limit
    assert len(w2.series(C.PREDICTION_LATENCY)) == 4
    assert len(w2.series(C.PREDICTIONS)) == 4
    w2.flush()
    w2.close()
    # The series not restored are gone from the exposition too, not left at their old values.
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_prediction_latency_seconds_count") == 4
    assert total(s, "ml_predictions_total") == 4


def test_warm_reader_renders_what_a_cold_one_does(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 3)
    b.observe(C.PREDICTION_LATENCY, ("m", "v"), 0.02)
    w.apply(b)
    w.flush()
    d = tmp_path / "m"
    with open(d / "counter_broken.db", "wb") as fh:  # header says more than the file has
        fh.write((4096).to_bytes(4, "little") + b"\0" * 12)
    with open(d / "gauge_all_7.db", "wb") as fh:
        pass
    mm = F.MmapedDict(str(d / "counter_9.db"))
    mm.write_value('["bad name!", "bad name!_total", {}, "h"]', 1.0, 1.0)
    mm.close()
    warm = MetricsReader([str(d)])
    warm.warm()
    assert warm.skipped_files == 0  # counted by the scrapes that skip a file, not ahead of them
    assert warm.skipped_keys["invalid_name"] == 1  # a key is counted once, whoever parses it
    # Values written after the warm-up (in place, and a new series) are in the first scrape.
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 2)
    b.inc(C.PREDICTIONS, ("m2", "v", "success"), 1)
    w.apply(b)
    w.flush()
    w.close()
    cold = MetricsReader([str(d)])
    assert warm.render() == cold.render()
    assert warm.render(openmetrics=True) == cold.render(openmetrics=True)
    assert total(parse(warm.render()), "ml_predictions_total") == 6
    assert os.path.exists(d / "counter_broken.db")


def test_a_metric_file_that_cannot_be_read_is_moved_aside_and_reported_once_each(tmp_path):
    w = writer(tmp_path)
    w.inc(C.PREDICTIONS, ("m", "v", "success"), 2)
    w.flush()
    w.close()
    (tmp_path / "m" / "histogram_w.db").mkdir()  # not a file: reading it fails
    w2 = writer(tmp_path)
    assert [k for k, _m in w2.faults] == ["metric_file_corrupt", "metric_file_corrupt"]
    assert os.path.isdir(tmp_path / "m" / "histogram_w.db.corrupt")
    assert w2.values[(C.PREDICTIONS, ("m", "v", "success"))] == 2  # the other files are restored
    b = Batch()
    b.observe(C.PREDICTION_LATENCY, ("m", "v"), 0.1)
    w2.apply(b)
    w2.flush()  # a new histogram file in its place
    w2.close()
    assert os.path.isfile(tmp_path / "m" / "histogram_w.db")


@pytest.mark.parametrize("in_last_flush", [True, False])
def test_a_zeroed_metric_file_takes_back_what_the_journals_last_flush_wrote(tmp_path, caplog,
                                                                           in_last_flush):
    w = writer(tmp_path)
    w.inc(C.PREDICTIONS, ("m", "v", "success"), 5)
    w.flush({"pos": 1})
    if not in_last_flush:  # a later flush that wrote something else
        w.inc(C.PREDICTIONS, ("m", "v", "error"), 1)
        w.flush({"pos": 2})
    w.close()
    path = tmp_path / "m" / "counter_w.db"
    path.write_bytes(b"\0" * path.stat().st_size)
    w2 = writer(tmp_path)
    assert [k for k, _m in w2.faults] == ["metric_file_corrupt"]
    success = w2.values.get((C.PREDICTIONS, ("m", "v", "success")))
    assert success == (5 if in_last_flush else None)
    assert "1 series taken back from the journal" in caplog.text  # success, or else error
    w2.close()
    s = parse(MetricsReader([str(tmp_path / "m")]).render())
    assert total(s, "ml_predictions_total") == (5 if in_last_flush else 1)
