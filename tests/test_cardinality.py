"""Names and cardinality: a workload cannot write into another family, nor grow memory without end."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from mlsidecar import catalogue as C
from mlsidecar import config as configmod
from mlsidecar.analytics import window
from mlsidecar.events import Rejected
from mlsidecar.exposition import MetricsReader
from mlsidecar.mapping import Mapper
from mlsidecar.runtime.ingest import Ingest, make_mapper, make_writer
from mlsidecar.runtime.state import StateDir
from mlsidecar.store import Batch, SeriesWriter


def metric(name: str, typ: str = "gauge", value: float = 1.0, **labels) -> dict:
    return {"event": "metric", "name": name, "type": typ, "value": value, "labels": labels}


# (events accepted first, the event that must be refused)
CLASHES = [
    ([], metric("ml_predictions")),                               # base name of a built-in counter
    ([], metric("ml_predictions_created")),
    ([], metric("ml_prediction_latency_seconds_bucket")),         # a built-in histogram's samples
    ([], metric("ml_prediction_latency_seconds_count", "counter")),
    ([], metric("ml_prediction_latency_seconds_sum", "histogram")),
    ([], metric("ml_gpu_energy_joules")),                         # a collector's counter
    ([metric("foo", "counter")], metric("foo")),                  # counter foo_total + gauge foo
    ([metric("foo")], metric("foo", "counter")),                  # and the other way round
    ([metric("bar", "histogram")], metric("bar_count")),          # histogram bar + gauge bar_count
    ([metric("baz", "counter")], metric("baz_created")),          # beside counter baz
    ([metric("h", "histogram")], metric("h_sum", "counter")),
    ([], metric("x_info")),
    ([], metric("x_total")),                                      # a gauge named like a counter's sample
    ([], metric("x_bucket", "histogram")),
    ([], metric("x_sum_total", "counter")),                       # counter x_sum: a histogram x's sample
]


@pytest.mark.parametrize("before,ev", CLASHES, ids=lambda v: v["name"] if isinstance(v, dict) else "")
def test_names_that_would_clash_in_either_format_are_refused(before, ev):
    m = Mapper(Batch(), clock=lambda: 1000.0)
    for e in before:
        m.handle(e)
    with pytest.raises(Rejected) as exc:
        m.handle(ev)
    assert exc.value.reason == "metric_name_clash", exc.value


def test_a_later_family_may_not_take_the_samples_of_an_earlier_one():
    """gauge bar_count first, then histogram bar: refused (whatever the order)."""
    m = Mapper(Batch(), clock=lambda: 1000.0)
    with pytest.raises(Rejected) as exc:
        m.handle(metric("bar_count"))  # ends in _count: refused on its own
    assert exc.value.reason == "metric_name_clash"
    m.handle(metric("bar", "histogram"))
    m.handle(metric("plain"))
    with pytest.raises(Rejected) as exc:
        m.handle(metric("plain", "counter"))
    assert exc.value.reason == "metric_name_clash"


def render_both(tmp_path, lines: list[bytes]) -> tuple[Ingest, str, str]:
    cfg = configmod.with_overrides(configmod.load(None), state_dir=str(tmp_path))
    state = StateDir(str(tmp_path))
    state.create()
    writer = make_writer(cfg, state, "tail-x")
    batch = Batch()
    mapper = make_mapper(cfg, batch)
    ingest = Ingest(cfg, mapper, batch, writer)
    ingest.lines(lines, "src")
    mapper.tick(1000.0)
    writer.apply(batch, 1000.0)
    writer.flush({})
    writer.close()
    reader = MetricsReader([state.metrics], clock=lambda: 1000.0)
    return ingest, reader.render(), reader.render(openmetrics=True)


def test_after_every_clash_the_exposition_parses_in_both_formats(tmp_path):
    lines = [json.dumps(e).encode() for before, ev in CLASHES for e in before + [ev]]
    lines.append(b'{"event":"prediction","model":"m","latency_s":0.1}')
    ingest, text, om = render_both(tmp_path, lines)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(names) == len(set(names))
    list(parse_text(text))
    fams = {f.name: f for f in parse_openmetrics(om)}  # raises "Clashing name" on a clash
    assert fams["ml_predictions"].type == "counter"
    assert sum(s.value for s in fams["ml_predictions"].samples if s.name == "ml_predictions_total") == 1


def test_a_stored_gauge_never_lands_in_a_builtin_counter_at_restart(tmp_path):
    """State written before names were checked: a gauge `ml_predictions` must not become
    part of ml_predictions_total when the worker restarts."""
    d = tmp_path / "m"
    d.mkdir()
    f = MmapedDict(str(d / "gauge_mostrecent_w.db"))
    key = json.dumps(["ml_predictions", "ml_predictions",
                      {"model_name": "", "model_version": "", "status": ""}, "x"], sort_keys=True)
    f.write_value(key, 1000.0, 999.0)
    f.close()
    w = SeriesWriter(str(d), "w", clock=lambda: 1000.0)
    assert not [sk for sk in w.values if sk[0] is C.PREDICTIONS]
    w.close()
    text = MetricsReader([str(d)], clock=lambda: 1000.0).render()
    assert "ml_predictions_total" not in text


def test_families_from_metric_events_are_limited_and_counted(tmp_path):
    m = Mapper(Batch(), clock=lambda: 1000.0, max_user_metrics=3)
    for name in ("lim_a", "lim_b", "lim_c"):
        m.handle(metric(name))
    with pytest.raises(Rejected) as exc:
        m.handle(metric("lim_d"))
    assert exc.value.reason == "too_many_metrics"
    m.handle(metric("lim_a", value=2.0))  # the known ones keep working
    assert m.batch.gauges[(m.user_families["lim_a"], ())] == 2.0


def test_error_rate_windows_are_limited_counted_and_forgotten_when_idle():
    now = [1000.0]
    m = Mapper(Batch(), clock=lambda: now[0], max_error_rates=100, error_rate_window=60.0)
    for i in range(150):
        m.handle({"event": "pipeline", "pipeline": "p", "stage": f"s{i}", "records": 1})
    m.tick(now[0])
    assert len(m._error_rates) == 100
    assert m.batch.counters[(C.SERIES_LIMITED, ("ml_pipeline_error_rate",))] == 50
    assert sum(1 for (f, _) in m.batch.gauges if f is C.PIPELINE_ERROR_RATE) == 100
    m.batch.clear()
    now[0] += 61.0  # a whole window without records: the windows go, their gauges stay as they were
    m.tick(now[0])
    m.handle({"event": "pipeline", "pipeline": "p", "stage": "new", "records": 1, "status": "error"})
    m.tick(now[0])
    assert list(m._error_rates) == [("p", "new")]
    assert m.batch.gauges[(C.PIPELINE_ERROR_RATE, ("p", "new"))] == 1.0


def test_a_flush_recomputes_only_the_stages_it_saw(monkeypatch):
    """Every flush walked every window: with many stages throughput fell to a few thousand/s."""
    calls = []
    real = window.SlidingRatio.ratio
    monkeypatch.setattr(window.SlidingRatio, "ratio", lambda self, now: calls.append(1) or real(self, now))
    now = [1000.0]
    m = Mapper(Batch(), clock=lambda: now[0])
    for i in range(5000):
        m.handle({"event": "pipeline", "pipeline": "p", "stage": f"s{i}", "records": 1})
    m.tick(now[0])
    calls.clear()
    for _ in range(20):  # twenty flushes within the second, one stage each
        now[0] += 0.04
        m.handle({"event": "pipeline", "pipeline": "p", "stage": "s1", "records": 1})
        m.tick(now[0])
    assert len(calls) == 20
    now[0] += 1.0
    m.tick(now[0])  # once a second all windows, so old records leave them
    assert len(calls) == 20 + 5000


def test_the_global_series_budget_caps_workload_series_not_the_sidecars_own(tmp_path):
    limited = []
    w = SeriesWriter(str(tmp_path / "m"), "tail-x", total_limit=100, on_limited=limited.append)
    b = Batch()
    for i in range(60):
        b.set(C.TRAINING_EPOCH, (f"j{i}",), 1.0)
        b.set(C.TRAINING_LR, (f"j{i}",), 1.0)
        b.inc(C.EVENTS, (f"src{i}", "training"))
    w.apply(b)
    assert sum(1 for (f, _) in w.values if f in (C.TRAINING_EPOCH, C.TRAINING_LR)) == 100
    assert sum(1 for (f, _) in w.values if f is C.EVENTS) == 60
    assert len(limited) == 20
    # A histogram costs its buckets, +Inf, _sum and _count: 12 + 3 of the budget.
    w2 = SeriesWriter(str(tmp_path / "m2"), "tail-y", total_limit=30)
    for i in range(3):
        b.observe(C.TRAINING_BATCH, (f"j{i}",), 1.0)
    w2.apply(b)
    assert sum(1 for (f, _) in w2.values if f is C.TRAINING_BATCH) == 2
    assert w2.total == 2 * (len(C.BATCH_BUCKETS) + 3)


def test_the_budget_is_shared_out_among_the_ingest_workers():
    cfg = configmod.from_dict({"limits": {"max_series": 9000},
                               "sources": {"tail": ["/a/*.jsonl", "/b/*.jsonl"], "socket": "/run/s"}})
    assert cfg.series_share() == 3000
    assert configmod.from_dict({}).series_share() == configmod.DEFAULT_MAX_SERIES


def retained() -> int:
    """Bytes of Python objects allocated since tracing started and still alive.

    The heap the ingest state lives in, without the noise of the test process's RSS (arenas,
    other test modules, the allocator keeping freed pages)."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("make_line", [
    lambda i: b'{"event":"metric","name":"m%d","value":1}' % i,                                  # families
    lambda i: b'{"event":"pipeline","pipeline":"p","stage":"s%d","records":1}' % i,              # windows
    lambda i: b'{"event":"prediction","model":"m","version":"v%d","latency_s":0.1}' % i,        # series
], ids=["metric-names", "pipeline-stages", "model-versions"])
def test_memory_stays_flat_past_the_limits(tmp_path, make_line):
    cfg = configmod.with_overrides(configmod.from_dict({"limits": {
        "max_series": 2000, "max_user_metrics": 200, "max_series_per_metric": 500}}), state_dir=str(tmp_path))
    state = StateDir(str(tmp_path))
    state.create()
    writer = make_writer(cfg, state, "tail-x", journal=False)
    batch = Batch()
    mapper = make_mapper(cfg, batch)
    ingest = Ingest(cfg, mapper, batch, writer)
    now = 1000.0

    def feed(start: int, n: int) -> None:
        nonlocal now
        for c in range(start, start + n, 2000):
            ingest.lines([make_line(i) for i in range(c, c + 2000)], "src")
            now += 0.25
            mapper.tick(now)
            writer.apply(batch, now)
            writer.flush()

    feed(0, 10_000)  # past every limit
    tracemalloc.start()
    try:
        before = retained()
        feed(10_000, 40_000)
        grown = retained() - before
    finally:
        tracemalloc.stop()
    writer.close()
    # 40,000 more distinct keys: state kept per key (even 50 bytes each) would retain 2 MB.
    assert grown < 512 * 1024, f"kept {grown / 1e6:.2f} MB past the limits"
    assert writer.total <= 2000
    assert len(mapper._dynamic) <= 200 and len(mapper._error_rates) <= 500
    assert os.path.getsize(os.path.join(state.metrics, "gauge_mostrecent_tail-x.db")) < 4 * 1024 * 1024


def test_the_sidecars_own_series_are_never_refused(tmp_path):
    """With a per-family limit smaller than the sidecar's own counters, counting a refused
    series must neither recurse nor be refused itself."""
    cfg = configmod.with_overrides(configmod.from_dict({"limits": {"max_series_per_metric": 1}}),
                                   state_dir=str(tmp_path))
    state = StateDir(str(tmp_path))
    state.create()
    writer = make_writer(cfg, state, "tail-x")
    for name in ("a", "b", "c"):
        writer.on_limited(name)
    b = Batch()
    b.inc(C.DEPLOYMENTS, ("m1", "v"))
    b.inc(C.DEPLOYMENTS, ("m2", "v"))
    writer.apply(b)
    limited = {lv[0]: v for (f, lv), v in writer.values.items() if f is C.SERIES_LIMITED}
    assert limited["a"] == limited["b"] == limited["c"] == 1
    assert limited[C.DEPLOYMENTS.name] == 1
    assert len(writer.series(C.DEPLOYMENTS)) == 1
