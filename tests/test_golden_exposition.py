"""/metrics of a fixed multiprocess directory, byte for byte, and against prometheus_client.

The directory is built from the committed inputs in tests/golden/ (see
tests/golden/build.py): the sidecar's own files written by the real mapper and
writer, prometheus_client's own workload files, a truncated file, a key that
would write into a built-in family, expired and removed series. The server's
real handler renders it; the bytes must equal tests/golden/metrics.txt and
metrics.openmetrics.txt. When a change to /metrics is intended, write them again
with ``python -m tests.golden.regen`` and commit them with the change; this test
never writes them.
"""

from __future__ import annotations

import difflib
import struct
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from mlsidecar import catalogue as C
from mlsidecar.exposition import _DERIVED_NAMES
from tests.golden.build import HIDDEN, OPENMETRICS_GOLDEN, TEXT_GOLDEN, build, scrape
from tests.harness import require_tool

REGEN = "python -m tests.golden.regen"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    g = build(tmp_path_factory.mktemp("golden"))
    text, openmetrics = scrape(g)
    return g, text, openmetrics


def _same_bytes(got: bytes, path) -> None:
    want = path.read_bytes()
    if got != want:
        diff = "\n".join(difflib.unified_diff(want.decode().splitlines(), got.decode().splitlines(),
                                              str(path), "/metrics now", lineterm="", n=1))
        pytest.fail(f"/metrics differs from {path.name} (if intended: {REGEN}, and commit it)\n{diff[:6000]}")


def test_text_exposition_is_the_golden_file_byte_for_byte(golden):
    _same_bytes(golden[1], TEXT_GOLDEN)


def test_openmetrics_exposition_is_the_golden_file_byte_for_byte(golden):
    _same_bytes(golden[2], OPENMETRICS_GOLDEN)
    families = {f.name for f in parse_openmetrics(golden[2].decode())}  # a strict parser
    assert {"workload_request_seconds", "golden_orders", "ml_predictions"} <= families


def test_bucket_bounds_are_spelled_as_prometheus_client_spells_them(golden):
    text = golden[1].decode()
    assert 'workload_request_seconds_bucket{route="/predict",le="1e+07"} 10.0' in text
    assert 'golden_payload_seconds_bucket{cluster="golden",le="1e+07"} 1.0' in text
    assert 'le="0.30000000000000004"' in text and 'le="1.23456789e+08"' in text
    assert 'le="10000000.0"' not in text and 'le="1048576.0"' not in text
    # "1e+07" and "10000000.0" in one file are one bucket: 1 + 2 observations.
    assert 'workload_request_seconds_bucket{route="/legacy",le="1e+07"} 3.0' in text
    assert 'workload_request_seconds_count{route="/legacy"} 3.0' in text


def test_files_only_the_sidecar_can_serve_are_skipped_and_counted(golden):
    text = golden[1].decode()
    assert "mlsidecar_multiproc_files_skipped_total 1.0" in text  # the truncated file
    assert 'mlsidecar_multiproc_keys_skipped_total{reason="clashing_family"} 1.0' in text  # the intruder
    assert "workload_crashed" not in text
    # prometheus_client itself refuses the truncated file: no output is defined there to compare.
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=golden[0].foreign)
    with pytest.raises((RuntimeError, struct.error)):
        generate_latest(reg)


def _families(text: str) -> dict[str, tuple[str, str, dict]]:
    """{family: (type, help, {(sample, sorted labels): value})} of the text format."""
    out = {}
    for fam in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
        out[fam.name] = (fam.type, fam.documentation, samples)
    return out


def _sidecar_own(name: str) -> bool:
    fam = C.REGISTRY.get(name) or C.REGISTRY.get(name + "_total")
    return fam is not None and (fam.fed_by.startswith("server") or fam.name in _DERIVED_NAMES)


def test_same_families_samples_and_values_as_prometheus_clients_collector(golden):
    g, text, _ = golden
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=g.state.metrics)
    MultiProcessCollector(reg, path=g.workload)
    theirs = _families(generate_latest(reg).decode())
    ours = {n: f for n, f in _families(text.decode()).items() if not _sidecar_own(n)}
    # Series the sidecar hides on purpose (expired); prometheus_client cannot know.
    for name, labels in HIDDEN:
        samples = theirs[name][2]
        assert (name, labels) in samples, f"{name}{labels} should be in the files"
        del samples[(name, labels)]
        assert (name, labels) not in ours.get(name, ("", "", {}))[2]
    theirs = {n: f for n, f in theirs.items() if f[2]}
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name] == theirs[name], name


def test_promtool_check_metrics_accepts_the_golden_text():
    promtool = require_tool("promtool")
    r = subprocess.run([promtool, "check", "metrics"], input=TEXT_GOLDEN.read_text(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
