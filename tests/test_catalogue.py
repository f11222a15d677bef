"""The catalogue of metric families: built once, never changed, the same in every process.

User families (``metric`` events, ``[[mappings]]``) are not in it: each mapper has its own
table, which the writer fills again from its files at a restart.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mlsidecar import catalogue as C
from mlsidecar.catalogue import GAUGE, Catalogue, Family
from mlsidecar.events import BAD_NAME, LABEL_MISMATCH, NAME_CLASH, Rejected
from mlsidecar.mapping import Mapper
from mlsidecar.store import Batch, SeriesWriter


def metric(name: str, typ: str = "gauge", value: float = 1.0, **labels: str) -> dict:
    return {"event": "metric", "name": name, "type": typ, "value": value, "labels": labels}


def test_the_catalogue_cannot_be_changed():
    cat = C.builtin()
    intruder = Family("intruder", GAUGE, "Not declared anywhere.")
    with pytest.raises(TypeError):
        cat["intruder"] = intruder  # type: ignore[index]
    with pytest.raises(TypeError):
        del cat["ml_predictions_total"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        cat._families = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        cat._families["intruder"] = intruder  # type: ignore[index]
    # The older name is the same read-only catalogue.
    with pytest.raises(TypeError):
        C.REGISTRY["intruder"] = intruder
    assert "intruder" not in C.builtin() and C.builtin() is cat
    assert "ml_predictions_total" in cat


def test_a_family_declared_twice_differently_is_refused():
    a = Family("x_seconds", GAUGE, "One.")
    assert len(Catalogue([a, Family("x_seconds", GAUGE, "One.")])) == 1  # the same twice: harmless
    with pytest.raises(ValueError, match="x_seconds"):
        Catalogue([a, Family("x_seconds", GAUGE, "Another.")])


def test_two_mappers_in_one_process_do_not_share_user_families():
    first, second = Mapper(Batch()), Mapper(Batch())
    first.handle(metric("kpi", a="x"))
    second.handle(metric("kpi", shop="y"))  # another shape in another mapper: its own family
    assert first.user_families["kpi"].labels == ("a",)
    assert second.user_families["kpi"].labels == ("shop",)
    assert "kpi" not in C.builtin()
    assert "kpi" not in Mapper(Batch()).user_families
    with pytest.raises(Rejected) as exc:
        first.handle(metric("kpi", shop="y"))  # within one mapper the first shape stays
    assert exc.value.reason == LABEL_MISMATCH


@pytest.mark.parametrize(("event", "reason", "says"), [
    # The name of a built-in family: send its own event kind.
    (metric("ml_model_deployments", "counter"), BAD_NAME, "built-in"),
    # A gauge named as the counter's family: the counter would share the name.
    (metric("mlsidecar_events"), NAME_CLASH, "counter mlsidecar_events_total"),
    # Families declared outside the catalogue module: a collector's, the analytics'.
    (metric("ml_gpu_energy_joules"), NAME_CLASH, "ml_gpu_energy_joules_total"),
    (metric("mlsidecar_analytics_dropped"), NAME_CLASH, "mlsidecar_analytics_dropped_total"),
    # Named as a sample of some other family.
    (metric("ml_prediction_latency_seconds_bucket"), NAME_CLASH, "ends in _bucket"),
])
def test_a_user_family_that_clashes_with_a_built_in_is_rejected_with_its_reason(event, reason, says):
    m = Mapper(Batch())
    with pytest.raises(Rejected) as exc:
        m.handle(event)
    assert exc.value.reason == reason
    assert says in str(exc.value)
    assert len(m.user_families) == 0


def test_user_families_clash_with_each_other_within_one_mapper():
    m = Mapper(Batch())
    m.handle(metric("orders"))
    with pytest.raises(Rejected) as exc:
        m.handle(metric("orders", "counter"))  # orders_total would be exposed as "orders" too
    assert exc.value.reason == NAME_CLASH and "gauge orders" in str(exc.value)


def test_user_families_are_restored_from_the_files_into_the_next_mappers_table(tmp_path):
    d = str(tmp_path / "m")
    m, w = Mapper(Batch()), SeriesWriter(d, "tail-x", str(tmp_path / "j.json"))
    m.handle(metric("revenue_total", "counter", 5.0, shop="a"))
    m.handle(metric("basket_seconds", "histogram", 0.2))
    m.tick(1000.0)
    w.apply(m.batch, 1000.0)
    w.flush({})
    w.close()

    again = SeriesWriter(d, "tail-x", str(tmp_path / "j.json"))
    assert {f.name for f in again.user_families} == {"revenue_total", "basket_seconds"}
    assert "revenue_total" not in C.builtin()
    m2 = Mapper(Batch())
    m2.restore(again.values, again.user_families)
    m2.handle(metric("revenue_total", "counter", 2.0, shop="a"))  # the restored series goes on
    m2.tick(1001.0)
    again.apply(m2.batch, 1001.0)
    fam = m2.user_families["revenue_total"]
    assert again.values[(fam, ("a",))] == 7.0
    with pytest.raises(Rejected) as exc:
        m2.handle(metric("revenue_total", "counter", 1.0, region="eu"))  # its shape came back too
    assert exc.value.reason == LABEL_MISMATCH
    again.close()


def test_the_forked_server_knows_every_family_the_workers_write(tmp_path):
    """The server process has only the supervisor's imports; it must still know every family
    a worker writes: its expiry, its type (a foreign file cannot take its name), its unit."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    script = textwrap.dedent(f"""
        import importlib, os, pkgutil, sys
        from prometheus_client.mmap_dict import MmapedDict, mmap_key
        import mlsidecar.runtime.supervisor  # what the forked server inherits
        from mlsidecar import config
        from mlsidecar.runtime.state import StateDir
        from mlsidecar.server import Server

        d = MmapedDict(os.path.join({str(foreign)!r}, "gauge_all_intruder.db"))
        d.write_value(mmap_key("mlsidecar_analytics_dropped", "mlsidecar_analytics_dropped", [], [],
                               "Not ours."), 5.0, 0.0)
        d.close()
        # Built, not parsed: what the server knows must not hang on what parsing happened to import.
        cfg = config.with_overrides(config.Config(), multiproc_dir=[{str(foreign)!r}])
        state = StateDir({str(tmp_path / "state")!r})
        state.create()
        server = Server(cfg, state, [])
        text = server.reader.render()
        known = set(server.reader.expiry)
        server.executor.shutdown()

        # Now everything a worker may import (the analytics engine, every collector, ...).
        import mlsidecar
        from mlsidecar.catalogue import Family
        for info in pkgutil.walk_packages(mlsidecar.__path__, "mlsidecar."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
        written = {{v.name for name, mod in list(sys.modules.items()) if name.startswith("mlsidecar")
                   for v in list(vars(mod).values()) if isinstance(v, Family) and v.fed_by != "metric"}}
        missing = sorted(written - known)
        assert not missing, f"the server does not know {{missing}}"
        assert "mlsidecar_analytics_dropped " not in text, "a foreign gauge took a worker's family"
        print(len(written))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(r.stdout.split()[-1]) >= 140  # every family of every module was looked at
