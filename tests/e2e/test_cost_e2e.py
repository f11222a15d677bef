"""The real daemon watching a real process: ml_cost_total grows at resident memory x price, the
config series are served, and a SIGHUP with new prices and currency takes effect without resetting
the counter. Loopback only; every wait is bounded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.harness import total, wait_for

GIB = 2**30
HOG = "import time; x = bytearray(256 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(120)"


def write_config(path, pid_file, currency: str, price: float) -> None:
    path.write_text(f"""
[collectors.gpu]
enabled = false
[collectors.process]
interval = 0.2
pid_file = "{pid_file}"
children = false
[cost]
currency = "{currency}"
memory_gib_hour = {price}
budgets = [{{ scope = "model", name = "resnet50", monthly = 100.0 }}]
[impact.models.resnet50]
revenue_per_hour = 1000.0
""")


def memory_cost(s: dict) -> float:
    return total(s, "ml_cost_total", resource="memory")


def test_cost_grows_with_memory_and_a_reload_changes_the_price_not_the_total(tmp_path, sidecar_factory):
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        pid_file = tmp_path / "hog.pid"
        pid_file.write_text(f"{hog.pid}\n")
        cfg = tmp_path / "sidecar.toml"
        # 3600 per GiB-hour: one per GiB-second, so a quarter GiB costs about 0.25 a second.
        write_config(cfg, pid_file, "EUR", 3600.0)
        sc = sidecar_factory(config=str(cfg)).start()
        s = wait_for(lambda: (lambda s: memory_cost(s) > 0 and s)(sc.scrape()), 30,
                     what="ml_cost_total{resource=memory} > 0")
        assert total(s, "ml_cost_info", currency="EUR", capacity="on_demand") == 1
        assert total(s, "ml_cost_price_per_hour", resource="memory") == 3600.0
        budgets = {dict(lv).get("name"): v for (n, lv), v in s.items() if n == "ml_cost_budget"}
        assert budgets == {"resnet50": 100.0}, budgets
        assert total(s, "ml_business_revenue_per_hour", model_name="resnet50") == 1000.0

        def rate(seconds: float) -> tuple[float, float, float]:
            a, t0 = sc.scrape(), time.monotonic()
            time.sleep(seconds)
            b, t1 = sc.scrape(), time.monotonic()
            rss = total(b, "ml_process_resident_memory_bytes") / GIB
            return (memory_cost(b) - memory_cost(a)) / (t1 - t0), rss, memory_cost(b)

        per_s, rss, before = rate(2.0)
        assert rss > 0.2, rss
        # Readings every 0.2 s, scrapes at any moment: within a third of resident GiB x 1/s.
        assert 0.67 * rss < per_s < 1.33 * rss, (per_s, rss)

        write_config(cfg, pid_file, "USD", 7200.0)
        sc.send(signal.SIGHUP)
        wait_for(lambda: total(sc.scrape(), "ml_cost_price_per_hour", resource="memory") == 7200.0, 30,
                 what="the new price served")
        s = sc.scrape()
        assert total(s, "ml_cost_info", currency="USD") == 1 and total(s, "ml_cost_info", currency="EUR") == 0
        assert memory_cost(s) >= before, "the counter went back across the reload"
        per_s, rss, _ = rate(2.0)
        assert 0.67 * 2 * rss < per_s < 1.33 * 2 * rss, (per_s, rss)
        assert sc.stop() == 0
    finally:
        hog.kill()
        hog.wait()
