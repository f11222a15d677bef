"""The on-disk format: one module (mlsidecar/fileformat.py) owns names, keys, entries and
what is done with a broken file; the writer, the reader and the state dir use it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from mlsidecar import catalogue as C
from mlsidecar import fileformat as F
from mlsidecar.catalogue import COUNTER, GAUGE, HISTOGRAM, Family
from mlsidecar.runtime.state import StateDir

PACKAGE = Path(F.__file__).parent


def test_keys_are_the_ones_prometheus_client_writes():
    fam = C.PREDICTIONS  # a counter: stored without _total
    labels = {"model_name": "m", "model_version": "v1", "status": "success"}
    key = F.encode_key(fam, "ml_predictions_total", labels)
    assert key == mmap_key("ml_predictions", "ml_predictions_total", list(labels), list(labels.values()),
                           fam.help)
    assert list(F.decode_key(key)) == ["ml_predictions", "ml_predictions_total", labels, fam.help]
    assert list(F.parse_key(key.encode(), strict=True)) == F.decode_key(key)
    hist = C.PREDICTION_LATENCY
    bucket = F.encode_key(hist, hist.name + "_bucket", {"le": F.bucket_bounds(hist)[-1]})
    assert F.decode_key(bucket)[2] == {"le": "+Inf"}


@pytest.mark.parametrize("raw", [b"not json", b'{"a": 1}', b'["n", "s", {}]', b'["n", "s", [], "h"]',
                                 b'["n", "s", {"a": true}, "h"]', b'["n", 1, {}, "h"]', b"\xff\xfe"])
def test_a_key_that_is_not_a_series_key_is_refused(raw):
    with pytest.raises(F.BadKey):
        F.parse_key(raw)


def test_number_label_values_from_other_writers_are_keys_but_not_ours():
    raw = b'["n", "n", {"a": 1}, "h"]'
    assert F.parse_key(raw)[2] == {"a": 1}
    with pytest.raises(F.BadKey):
        F.parse_key(raw, strict=True)


@pytest.mark.parametrize(("fam", "identity", "name"), [
    (Family("a_total", COUNTER, "h"), "tail-0", "counter_tail-0.db"),
    (Family("a_seconds", HISTOGRAM, "h", buckets=(1.0,)), "gpu", "histogram_gpu.db"),
    (Family("a", GAUGE, "h"), "socket", "gauge_mostrecent_socket.db"),
    (Family("a", GAUGE, "h", gauge_mode="liveall"), "7", "gauge_liveall_7.db"),
])
def test_file_names_and_what_they_say(fam, identity, name):
    assert F.file_name(fam, identity) == name
    file_type, mode, ident = F.parse_file_name("/some/dir/" + name)
    assert (file_type, ident) == (fam.type, identity)
    assert mode == (fam.gauge_mode if fam.type == GAUGE else "")
    assert F.file_type_of(name) == fam.type and F.identity_of(name) == identity
    assert F.belongs_to(name, identity) and not F.belongs_to(name, identity + "x")


def test_total_is_dropped_in_the_keys_and_added_to_counter_families():
    assert F.stored_name("a_total", COUNTER) == "a" and F.stored_name("a_total", GAUGE) == "a_total"
    assert F.family_name("a", COUNTER) == "a_total" and F.family_name("a_total", COUNTER) == "a_total"
    assert F.family_name("a", HISTOGRAM) == "a"
    assert F.metric_name(C.EVENTS) == "mlsidecar_events"


def test_entries_are_sorted_into_good_ones_and_problems(tmp_path):
    path = str(tmp_path / "counter_w.db")
    d = MmapedDict(path)
    good = F.encode_raw_key("a", "a_total", {}, "h")
    d.write_value(good, 3.0, 1000.0)
    d.write_value('["a", "a_total", {"x": 1}, "h"]', 1.0, 1000.0)  # a number label: not ours
    d.write_value(F.encode_raw_key("b", "b_total", {}, "h"), -1.0, 1000.0)  # a negative counter
    d.write_value(F.encode_raw_key("c", "c_total", {}, "h"), 1.0, 1e12)  # far in the future
    d.close()
    entries, problems = F.scan_entries(Path(path).read_bytes(), COUNTER, 1000.0)
    assert entries == [(good, 3.0, 1000.0)]
    assert len(problems) == 3
    assert "bad key" in problems[0] and "impossible value" in problems[1] and "impossible timestamp" in problems[2]
    assert not F.is_readable(path, 1000.0)
    F.rewrite_file(path, entries)
    assert list(F.read_file(path)) == entries and F.is_readable(path, 1000.0)


def test_a_file_whose_header_lies_is_corrupt(tmp_path):
    path = str(tmp_path / "counter_w.db")
    d = MmapedDict(path)
    d.write_value(F.encode_raw_key("a", "a_total", {}, "h"), 1.0, 0.0)
    used = d._used
    d.close()
    os.truncate(path, used - 13)
    with pytest.raises(F.CorruptFile):
        list(F.read_file(path))
    assert F.scan_entries(Path(path).read_bytes(), COUNTER, 0.0)[1]


def test_a_broken_file_moved_aside_twice_keeps_both(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    state.create()
    path = os.path.join(state.metrics, "counter_gone.db")
    for attempt in (b"first", b"second"):
        Path(path).write_bytes(attempt)  # shorter than a header: cannot be served
        state.tidy({"live"})
        assert not os.path.exists(path)
    kept = sorted(p.name for p in Path(state.metrics).iterdir())
    assert kept == ["counter_gone.db.corrupt", "counter_gone.db.corrupt.1"]
    assert {Path(state.metrics, n).read_bytes() for n in kept} == {b"first", b"second"}


# What only the format module may spell out: the entry header, file-name parsing, _total cutting.
FORMAT_SPELLINGS = {
    r'struct\.Struct\("i"\)': "the entry length / header layout",
    r'\[:-3\]\.split\("_"\)': "parsing a metric file's name",
    r'\.split\("_", 1\)\[0\]': "a metric file's type from its name",
    r'\[:-6\]': "cutting _total off a counter's name",
    r'json\.dumps\(\[': "encoding a series key",
}


# The modules that write, read, tidy or name what is in the files.
USERS = ("store.py", "exposition.py", "runtime/state.py", "mapping.py", "usermap.py", "catalogue.py",
         "server.py")


def test_only_the_format_module_knows_the_layout():
    found = []
    for name in USERS:
        path = PACKAGE / name
        text = path.read_text()
        for pattern, what in FORMAT_SPELLINGS.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not found, "\n".join(found)
