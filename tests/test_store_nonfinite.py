"""A gauge may hold NaN or an infinity (a comparison not computable yet, a NaN loss): such a value
must survive a restart like any other, and must not cost the positions (exactly once)."""

import math

from mlsidecar import catalogue as C
from mlsidecar.store import Batch, SeriesWriter


def writer(tmp_path):
    return SeriesWriter(str(tmp_path / "m"), "tail-x", str(tmp_path / "tail-x.journal"))


def test_nan_and_infinite_gauges_keep_the_journal_and_the_positions(tmp_path):
    w = writer(tmp_path)
    b = Batch()
    b.inc(C.PREDICTIONS, ("m", "v", "success"), 3)
    w.apply(b)
    w.set_gauge(C.BYTES_BEHIND, ("nan",), math.nan)
    w.set_gauge(C.BYTES_BEHIND, ("up",), math.inf)
    w.set_gauge(C.BYTES_BEHIND, ("down",), -math.inf)
    w.flush({"files": {"events.jsonl": 123}})
    w.close()

    w2 = writer(tmp_path)
    assert w2.journal_status == "ok", w2.faults
    assert w2.faults == []
    assert w2.journal_state == {"files": {"events.jsonl": 123}}
    assert w2.values[(C.PREDICTIONS, ("m", "v", "success"))] == 3
    assert math.isnan(w2.values[(C.BYTES_BEHIND, ("nan",))])
    assert w2.values[(C.BYTES_BEHIND, ("up",))] == math.inf
    assert w2.values[(C.BYTES_BEHIND, ("down",))] == -math.inf


def test_a_journal_cut_off_before_the_files_replays_nan_gauges(tmp_path):
    """kill -9 between the journal and the metric files: the replay writes the NaN too."""
    import os

    w = writer(tmp_path)
    w.set_gauge(C.BYTES_BEHIND, ("nan",), math.nan)
    w.set_gauge(C.BYTES_BEHIND, ("one",), 1.0)
    w.flush({"pos": 2})
    w.close()
    for name in os.listdir(tmp_path / "m"):  # the writes never reached the files
        os.remove(tmp_path / "m" / name)
    w2 = writer(tmp_path)
    assert w2.journal_status == "ok", w2.faults
    assert w2.journal_state == {"pos": 2}
    assert math.isnan(w2.values[(C.BYTES_BEHIND, ("nan",))])
    assert w2.values[(C.BYTES_BEHIND, ("one",))] == 1.0
