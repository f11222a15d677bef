"""The scrape port under load: concurrent scrapes share renders, slow or excess clients are cut off."""

import asyncio
import os
import subprocess
import sys

import aiohttp

from tests.harness import parse, total

# A workload's own prometheus_client files: a large exposition (about 1 MB) to scrape.
BIG_WORKLOAD = r"""
import sys
from prometheus_client import Gauge
g = Gauge("app_shard_bytes", "Bytes per shard.", ["shard", "replica"], multiprocess_mode="max")
for i in range(int(sys.argv[1])):
    g.labels(shard=f"shard-{i:06d}", replica=str(i % 3)).set(i)
"""


def big_multiproc_dir(tmp_path, series: int):
    mp = tmp_path / "mp"
    mp.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    subprocess.run([sys.executable, "-c", BIG_WORKLOAD, str(series)], check=True, env=env, timeout=120)
    return mp


async def _concurrent_scrapes(url: str, n: int) -> list[int]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=n)) as s:
        async def one():
            async with s.get(url, headers={"Accept-Encoding": "gzip"}) as r:
                await r.read()
                return r.status
        return await asyncio.gather(*(one() for _ in range(n)))


def test_200_concurrent_scrapes_share_renders(tmp_path, sidecar_factory):
    mp = big_multiproc_dir(tmp_path, 20000)
    sc = sidecar_factory("--multiproc-dir", str(mp)).start()
    before = sc.scrape()
    assert total(before, "app_shard_bytes") == sum(range(20000))
    renders0 = total(before, "mlsidecar_scrape_renders_total")
    statuses = asyncio.run(_concurrent_scrapes(sc.url + "/metrics", 200))
    assert statuses == [200] * 200
    after = parse(sc.metrics_text())
    scrapes = total(after, "mlsidecar_scrapes_total") - total(before, "mlsidecar_scrapes_total")
    renders = total(after, "mlsidecar_scrape_renders_total") - renders0
    assert scrapes == 201  # the 200 and this one
    # One render serves every scrape that arrived while it ran: a handful, never one per scrape.
    print(f"{scrapes:.0f} scrapes, {renders:.0f} renders")
    assert 1 <= renders <= 20, renders


def worker_pid(sc, identity: str) -> int:
    """The pid of one of the daemon's child processes, from the supervisor's log."""
    import re
    found = re.findall(rf"started {re.escape(identity)} \(pid (\d+)\)", sc.log())
    assert found, sc.log()
    return int(found[-1])


def open_slow(port: int, n: int) -> list:
    """n connections that each send half a request head and then nothing."""
    import socket
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        conns.append(c)
    return conns


def closed_by_server(conn) -> bytes | None:
    """What the server sent before closing, or None while it keeps the connection open."""
    import socket
    conn.settimeout(0.05)
    data = b""
    try:
        while chunk := conn.recv(4096):
            data += chunk
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return data


def test_slow_partial_requests_cannot_hold_the_port(tmp_path, sidecar_factory):
    from tests.harness import wait_for
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nmax_connections = 20\nheader_timeout = 1.0\n")
    sc = sidecar_factory(config=str(cfg)).start()
    slow = open_slow(sc.port, 20)
    excess = open_slow(sc.port, 10)
    try:
        # Over the limit: answered 503 and closed at once, not queued behind the slow ones.
        answers = [wait_for(lambda c=c: closed_by_server(c), timeout=10, what="503 for an excess connection")
                   for c in excess]
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers)
        # The slow ones are cut off after header_timeout, though the client never gives up.
        for c in slow:
            assert wait_for(lambda c=c: closed_by_server(c) is not None, timeout=15, what="slow one closed")
        status, _, _ = sc.get("/healthz")
        assert status == 200
        s = parse(sc.metrics_text())
        assert total(s, "mlsidecar_http_rejected_total", reason="connection_limit") >= 10
    finally:
        for c in slow + excess:
            c.close()


def test_out_of_descriptors_the_server_pauses_and_recovers(tmp_path, sidecar_factory):
    import resource
    import socket

    from tests.harness import wait_for
    sc = sidecar_factory().start()
    pid = worker_pid(sc, "server")
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, 64))  # far below server.max_connections
    conns = []
    try:
        for _ in range(120):  # bounded; the kernel backlog takes what the server cannot accept
            c = socket.socket()
            c.settimeout(5)
            try:
                c.connect(("127.0.0.1", sc.port))
            except OSError:
                c.close()
                break
            conns.append(c)
        wait_for(lambda: "accept" in sc.log(), what="accept failure logged")
        import time
        time.sleep(1.5)  # let an accept loop that spins show itself in the log
        lines = [ln for ln in sc.log().splitlines() if "accept" in ln]
        assert len(lines) <= 3, lines[:5]  # once a minute, not once per try
    finally:
        for c in conns:
            c.close()
    status, _, _ = wait_for(lambda: sc.get("/healthz"), what="/healthz after the descriptors are back")
    assert status == 200
    s = parse(sc.metrics_text())
    assert total(s, "mlsidecar_http_rejected_total", reason="fd_limit") >= 1
    assert sc.proc.poll() is None
