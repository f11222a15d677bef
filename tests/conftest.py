import pytest

from mlsidecar import catalogue

from .harness import sidecar_factory  # noqa: F401  (fixture)


@pytest.fixture(autouse=True, scope="module")
def _user_families_stay_in_their_module():
    """Families that `metric` events created in one test module are forgotten after it.

    The catalogue is one table per process, and user families enter it on their first
    event; without this, a module's ``kpi`` (labels ``a``) would turn another module's
    ``kpi`` (labels ``shop``) into a label mismatch, depending on the order of the run.
    """
    before = set(catalogue.REGISTRY)
    yield
    for name in [n for n, f in catalogue.REGISTRY.items() if f.fed_by == "metric" and n not in before]:
        del catalogue.REGISTRY[name]
