"""The shipped systemd units give the daemon the descriptors its own limits need."""

import pytest

from mlsidecar.config import from_dict
from tests.test_systemd import UNITS, parse_unit

# Journals, metric files, status files, NVML and the interpreter itself, with room.
BASE_DESCRIPTORS = 512


@pytest.mark.parametrize("unit", ["mlsidecar.service", "mlsidecar@.service"])
def test_limit_nofile_covers_the_connection_limits(unit):
    s = parse_unit(UNITS / unit)["Service"]
    assert "LimitNOFILE" in s, f"{unit}: LimitNOFILE= missing (the soft default is 1024)"
    soft, _, hard = s["LimitNOFILE"][-1].partition(":")
    soft_n = int(soft)
    assert int(hard or soft) >= soft_n
    cfg = from_dict({})
    # Each process has its own table; the server and the socket worker are the ones that
    # accept connections, each up to its limit, on top of the files every worker keeps open.
    for need in (cfg.server.max_connections, cfg.sources.socket_max_connections):
        assert soft_n >= need + BASE_DESCRIPTORS, (unit, soft_n, need)
    assert soft_n > 1024
