"""Overhead (issue 9, part 3): CPU and memory of the whole sidecar, at rest and at 1,000 events/s.

A daemon runs with a tailed file and the GPU, host and process collectors on, and is scraped
every --scrape-interval seconds (15 s, as Prometheus would). Two phases of --duration seconds
each: at rest (no events), then under load (--rate prediction events/s appended in 10 small
writes per second). CPU is the sum of user+system time of every sidecar process (supervisor,
server, workers) over the phase, as a percentage of one core; memory is PSS and RSS summed over
the same processes (psutil memory_full_info), sampled every few seconds (max and last reported).
The final count of ml_predictions_total must equal the events written, or the run FAILs.

    python3 bench/bench_overhead.py [--duration 60] [--rate 1000] [--scrape-interval 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import orjson
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Daemon, fmt_s, http_get, sample_sum, table  # noqa: E402


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return out


def memory(pids: list[int]) -> tuple[float, float, int]:
    pss = rss = 0
    n = 0
    for pid in pids:
        try:
            m = psutil.Process(pid).memory_full_info()
        except psutil.NoSuchProcess:
            continue
        pss += m.pss
        rss += m.rss
        n += 1
    return pss / common.MB, rss / common.MB, n


class Writer(threading.Thread):
    """Appends ``rate`` prediction events per second in ten writes a second, until told to stop."""

    def __init__(self, path: str, rate: int, max_events: int):
        super().__init__(daemon=True)
        self.path, self.rate, self.max_events = path, rate, max_events
        self.written = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        import random

        rng = random.Random(5)
        per_tick = max(1, self.rate // 10)
        next_at = time.monotonic()
        with open(self.path, "ab", buffering=0) as fh:
            while not self.stop_flag.is_set() and self.written < self.max_events:
                n = min(per_tick, self.max_events - self.written)
                data = b"".join(orjson.dumps(common.prediction_event(rng, self.written + i)) + b"\n"
                                for i in range(n))
                fh.write(data)
                self.written += n
                next_at += 0.1
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop_flag.wait(delay)


def phase(d: Daemon, seconds: float, scrape_every: float, sample_every: float = 5.0) -> dict:
    pids = d.pids()
    c0 = cpu_seconds(pids)
    t0 = time.monotonic()
    end = t0 + seconds
    next_scrape = t0
    next_sample = t0
    scrapes = []
    mem_max = (0.0, 0.0)
    last = (0.0, 0.0, 0)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_scrape:
            s0 = time.perf_counter()
            http_get(d.url + "/metrics", 30)
            scrapes.append(time.perf_counter() - s0)
            next_scrape += scrape_every
        if now >= next_sample:
            last = memory(d.pids())
            mem_max = (max(mem_max[0], last[0]), max(mem_max[1], last[1]))
            next_sample += sample_every
        time.sleep(max(0.0, min(next_scrape, next_sample, end) - time.monotonic()))
    elapsed = time.monotonic() - t0
    c1 = cpu_seconds(d.pids())
    used = sum(c1[p] - c0[p] for p in c1 if p in c0) + sum(c1[p] for p in c1 if p not in c0)
    last = memory(d.pids())
    return {"cpu": 100.0 * used / elapsed, "pss": last[0], "rss": last[1], "procs": last[2],
            "pss_max": max(mem_max[0], last[0]), "rss_max": max(mem_max[1], last[1]),
            "scrape": max(scrapes) if scrapes else 0.0, "scrapes": len(scrapes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    ap.add_argument("--rate", type=int, default=1000, help="events per second in the load phase")
    ap.add_argument("--scrape-interval", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after start before measuring")
    ap.add_argument("--collectors", default="gpu,host,process", help="collectors to switch on")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-overhead-")
    target = os.path.join(work, "events.jsonl")
    open(target, "wb").close()
    flags = [f"--collector.{c}" for c in args.collectors.split(",") if c]
    d = Daemon(work, "--tail", target, *flags)
    failed = False
    try:
        common.header(f"Overhead: {args.duration:.0f} s at rest, {args.duration:.0f} s at {args.rate:,} "
                      f"events/s, collectors {args.collectors}, scrape every {args.scrape_interval:.0f} s")
        d.start()
        time.sleep(args.warmup)
        print("  at rest ...", flush=True)
        rest = phase(d, args.duration, args.scrape_interval)
        print(f"  at {args.rate:,} events/s ...", flush=True)
        w = Writer(target, args.rate, int(args.rate * args.duration * 2) + args.rate)
        w.start()
        time.sleep(1.0)  # the first series are created: steady state from here
        load = phase(d, args.duration, args.scrape_interval)
        w.stop_flag.set()
        w.join(10)
        deadline = time.monotonic() + 30
        got = -1.0
        while time.monotonic() < deadline:
            got = sample_sum(d.metrics(), "ml_predictions_total")
            if got >= w.written:
                break
            time.sleep(0.2)
        time.sleep(0.6)
        got = sample_sum(d.metrics(), "ml_predictions_total")
        ok = got == w.written
        failed |= not ok
        rows = []
        for name, r in (("at rest", rest), (f"{args.rate:,} events/s", load)):
            rows.append([name, f"{r['cpu']:.2f}%", f"{r['pss']:.1f} MB (max {r['pss_max']:.1f})",
                         f"{r['rss']:.1f} MB (max {r['rss_max']:.1f})", r["procs"],
                         f"{r['scrapes']} (slowest {fmt_s(r['scrape'])})"])
        print()
        print(table(["phase", "CPU (% of one core)", "PSS summed", "RSS summed", "processes", "scrapes"], rows))
        print(f"\nevents written {w.written:,}, counted {got:,.0f}: {'ok' if ok else 'FAIL'}")
        print(f"target: <= 2% of one core at {args.rate:,} events/s: {load['cpu']:.2f}% "
              f"{'MET' if load['cpu'] <= 2 else 'MISSED'}")
        print(f"target: <= 80 MB PSS summed: {load['pss_max']:.1f} MB {'MET' if load['pss_max'] <= 80 else 'MISSED'}")
        print("\nRESULT:", "FAIL" if failed else "all counts exact")
        return 1 if failed else 0
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
