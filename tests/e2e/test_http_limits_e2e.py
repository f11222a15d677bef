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
    conn.settimeout(0.05)
    data = b""
    try:
        while chunk := conn.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_slow_partial_requests_cannot_keep_probes_and_scrapes_out(tmp_path, sidecar_factory):
    from tests.harness import wait_for
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nmax_connections = 20\nheader_timeout = 60.0\n")  # the limit must do it
    sc = sidecar_factory(config=str(cfg)).start()
    slow = open_slow(sc.port, 20)
    try:
        # Every slot is held by a client that never finishes its request: a probe still gets in,
        # because the longest idle connection is closed to make room for it.
        assert sc.get("/healthz")[0] == 200
        slow += open_slow(sc.port, 20)  # a second wave pushes out the first
        status, _, body = sc.get("/metrics")
        assert status == 200
        s = parse(body.decode())
        assert total(s, "mlsidecar_http_rejected_total", reason="evicted_idle") >= 21
        assert total(s, "mlsidecar_http_rejected_total", reason="connection_limit") == 0
        first_wave_closed = [wait_for(lambda c=c: closed_by_server(c) is not None, timeout=10,
                                      what="a slow connection closed") for c in slow[:20]]
        assert all(first_wave_closed)
    finally:
        for c in slow:
            c.close()


def test_a_partial_request_head_is_cut_off_after_header_timeout(tmp_path, sidecar_factory):
    from tests.harness import wait_for
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nheader_timeout = 1.0\n")
    sc = sidecar_factory(config=str(cfg)).start()
    slow = open_slow(sc.port, 5)
    try:
        for c in slow:  # the client never gives up; the server does
            assert wait_for(lambda c=c: closed_by_server(c) is not None, timeout=15, what="slow one closed")
    finally:
        for c in slow:
            c.close()
    assert sc.get("/healthz")[0] == 200


def test_when_every_connection_is_busy_a_new_one_gets_503(tmp_path, sidecar_factory):
    import base64
    import socket
    import time

    import bcrypt

    from tests.harness import wait_for
    slow_hash = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(13)).decode()  # each check takes a while
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {slow_hash}\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nmax_connections = 3\n")
    sc = sidecar_factory("--web.config.file", str(web), config=str(cfg)).start()
    busy = []
    for i in range(3):  # three requests waiting for their (serial) bcrypt checks: all busy
        c = socket.create_connection(("127.0.0.1", sc.port), timeout=30)
        token = base64.b64encode(f"prometheus:wrong-{i}".encode()).decode()
        c.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode())
        busy.append(c)
    time.sleep(0.3)  # let the three heads be parsed and reach the handler
    try:
        extra = socket.create_connection(("127.0.0.1", sc.port), timeout=10)
        answer = wait_for(lambda: closed_by_server(extra), timeout=10, what="an answer to the 4th connection")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
        for c in busy:  # the busy ones were not cut off: each gets its 401
            c.settimeout(60)
            assert c.recv(100).startswith(b"HTTP/1.1 401")
    finally:
        for c in busy:
            c.close()
    good = base64.b64encode(b"prometheus:s3cret").decode()
    s = parse(sc.get("/metrics", {"Authorization": f"Basic {good}"})[2].decode())
    assert total(s, "mlsidecar_http_rejected_total", reason="connection_limit") >= 1
    assert total(s, "mlsidecar_http_rejected_total", reason="evicted_idle") == 0


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


def test_a_probe_in_the_same_burst_as_slow_clients_still_gets_in(tmp_path, sidecar_factory):
    """The server was stopped (SIGSTOP: a busy box) while slow clients and a probe queued up."""
    import concurrent.futures
    import signal
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nmax_connections = 20\nheader_timeout = 60.0\n")
    sc = sidecar_factory(config=str(cfg)).start()
    pid = worker_pid(sc, "server")
    os.kill(pid, signal.SIGSTOP)
    try:
        slow = open_slow(sc.port, 20)  # the kernel queues them; nothing is accepted yet
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            probe = pool.submit(sc.get, "/healthz")
            import time
            time.sleep(0.2)  # the probe's connection is in the queue behind the slow ones
            os.kill(pid, signal.SIGCONT)
            assert probe.result(timeout=30)[0] == 200
    finally:
        os.kill(pid, signal.SIGCONT)
        for c in slow:
            c.close()


def test_malformed_requests_cannot_flood_the_log(tmp_path, sidecar_factory):
    import socket
    import time
    sc = sidecar_factory().start()
    before = len(sc.log_path.read_text().splitlines())
    garbage = (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    for i in range(60):  # bounded: garbage and over-long request lines, as a scanner sends
        with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as c:
            c.sendall(garbage[i % 2])
            try:
                c.recv(100)
            except OSError:
                pass
    time.sleep(0.5)
    lines = sc.log_path.read_text().splitlines()[before:]
    assert len(lines) <= 3, lines[:4]  # one line per kind per minute, not one per request
    assert "Traceback" not in "\n".join(lines)
    assert sc.get("/healthz")[0] == 200
