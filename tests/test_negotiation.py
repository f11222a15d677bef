"""/metrics content negotiation: Accept and Accept-Encoding are parsed with q-values (q=0: not acceptable)."""

import asyncio
import gzip

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mlsidecar import negotiate
from mlsidecar.config import from_dict
from mlsidecar.runtime.state import StateDir
from mlsidecar.server import Server

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
                     "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


@pytest.mark.parametrize("accept, expected", [
    (None, "text"),
    ("", "text"),
    ("*/*", "text"),
    ("text/plain", "text"),
    ("application/openmetrics-text", "openmetrics"),
    (PROMETHEUS_ACCEPT, "openmetrics"),
    ("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5", "text"),
    ("application/openmetrics-text;q=0, text/plain", "text"),
    ("application/openmetrics-text; q=0.0, */*", "text"),
    ("APPLICATION/OpenMetrics-Text;Q=0.8, text/plain;q=0.8", "openmetrics"),
    ("application/openmetrics-text;version=2.0.0, text/plain;q=0.1", "text"),  # a version not written
    ("text/plain;q=0, */*", "openmetrics"),  # text refused, anything else welcome
    ("text/plain;q=0", None),
    ("application/json", None),
    ("text/*;q=0.5, application/openmetrics-text;q=0.4", "text"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "text"),  # a browser
    ("application/openmetrics-text;q=oops", "openmetrics"),  # a bad q is ignored, not an error
    (",;,", "text"),
])
def test_accept_is_ranked_by_q_value(accept, expected):
    assert negotiate.choose_format(accept) == expected


@pytest.mark.parametrize("header, expected", [
    (None, False),
    ("", False),
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("gzip;q=0", False),
    ("gzip; q=0.000", False),
    ("GZIP;q=0.5", True),
    ("identity", False),
    ("*", True),
    ("*;q=0, identity", False),
    ("gzip;q=0.2, identity;q=0.9", False),
    ("gzip;q=0.9, identity;q=0.2", True),
    ("br, *;q=0.1", True),
    ("br", False),
    ("x-gzip", True),
])
def test_accept_encoding_is_ranked_by_q_value(header, expected):
    assert negotiate.wants_gzip(header) is expected


def _request(tmp_path, headers: dict) -> tuple[int, dict, bytes]:
    state = StateDir(str(tmp_path / "state"))
    state.create()
    server = Server(from_dict({"state_dir": state.root}), state, expected=[])

    async def go():
        client = TestClient(TestServer(server.app(), host="127.0.0.1"))
        await client.start_server()
        try:
            resp = await client.get("/metrics", headers=headers, auto_decompress=False)
            return resp.status, dict(resp.headers), await resp.read()
        finally:
            await client.close()
            server.executor.shutdown(wait=True)

    return asyncio.run(go())


def test_the_server_honours_q_zero(tmp_path):
    status, headers, body = _request(tmp_path, {
        "Accept": "application/openmetrics-text;q=0, text/plain", "Accept-Encoding": "gzip;q=0"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in headers
    assert b"# TYPE mlsidecar_multiproc_files_skipped_total counter" in body
    assert not body.rstrip().endswith(b"# EOF")


def test_the_server_sends_openmetrics_gzip_when_asked(tmp_path):
    status, headers, body = _request(tmp_path, {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    assert "Accept" in headers["Vary"]
    assert gzip.decompress(body).rstrip().endswith(b"# EOF")


def test_nothing_acceptable_is_406(tmp_path):
    status, _, body = _request(tmp_path, {"Accept": "application/json"})
    assert status == 406
    assert b"text/plain" in body
