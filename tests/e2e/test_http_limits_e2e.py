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
