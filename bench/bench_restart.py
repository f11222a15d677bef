"""Back after kill -9 (issue 18): how long until a sidecar holding ~100,000 live series is ready again.

A tailed log gives about ``--series`` time series (one prediction for each of many
model/version pairs: a counter and two histograms of 15 series each), plus ``--events``
predictions in all. Once /metrics shows them, the whole process group is SIGKILLed (as a crash
or an OOM kill would), ``--extra`` more lines are appended while it is down, and it is started
again on the same state dir. Measured from the restart: /readyz answering 200, and /metrics
showing every count (the old ones restored, the lines written while down read) with as many
series as before. Repeated ``--rounds`` times; a count that comes back wrong FAILs the run.

    python3 bench/bench_restart.py [--series 100000] [--rounds 3] [--target 2.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Daemon, count_samples, sample_sum, table  # noqa: E402

PER_PAIR = 31  # ml_predictions_total{status} + latency and confidence histograms (12 buckets + 3 each)


def write_lines(path: str, pairs: int, n: int, start: int) -> None:
    with open(path, "ab") as fh:
        buf = []
        for i in range(start, start + n):
            p = i % pairs
            buf.append(orjson.dumps({"event": "prediction", "model": f"model-{p // 4:05d}", "version": f"v{p % 4}",
                                     "status": "success", "latency_s": 0.001 * (1 + i % 500),
                                     "confidence": 0.5 + (i % 50) / 100, "prediction_id": f"r{i}"}))
            if len(buf) == 10000:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=100_000, help="about this many live time series")
    ap.add_argument("--events", type=int, default=200_000, help="predictions before the first kill")
    ap.add_argument("--extra", type=int, default=1000, help="lines appended while the sidecar is down")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", type=float, default=2.0, help="seconds")
    args = ap.parse_args()
    pairs = max(1, args.series // PER_PAIR)
    work = tempfile.mkdtemp(prefix="bench-restart-")
    log = os.path.join(work, "events.jsonl")
    cfg = os.path.join(work, "limits.toml")
    with open(cfg, "w") as fh:  # room for the series (the shipped limits fit a 128Mi pod)
        fh.write(f"[limits]\nmax_series = {args.series * 3}\nmax_series_per_metric = {pairs * 2}\n")
    common.header(f"Restart after kill -9: {pairs:,} model/version pairs (~{pairs * PER_PAIR:,} series), "
                  f"{args.events:,} events, {args.extra:,} appended while down, {args.rounds} rounds")
    write_lines(log, pairs, args.events, 0)
    written = args.events
    d = Daemon(work, "--tail", log, "--no-collector.gpu", "--no-collector.process", config=cfg)
    failed = False
    rows = []
    try:
        t0 = time.perf_counter()
        d.start(timeout=120)
        common.wait_sum(d.url + "/metrics", "ml_predictions_total", written, 300, 0.2)
        text = d.metrics(60)
        series = count_samples(text)
        print(f"  first start: {time.perf_counter() - t0:.1f} s to read {written:,} events; "
              f"{series:,} series on /metrics ({len(text) / common.MB:.1f} MB)", flush=True)
        time.sleep(1.0)  # past a flush: the journal holds the last positions
        for rnd in range(args.rounds):
            d.kill()
            write_lines(log, pairs, args.extra, written)
            written += args.extra
            start = time.perf_counter()
            d.start(wait=False)
            t_ready = t_counts = None
            got = -1.0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (t_ready is None or t_counts is None):
                if t_ready is None and ready(d.url):
                    t_ready = time.perf_counter() - start
                if t_counts is None:
                    try:
                        text = d.metrics(30)
                    except OSError:
                        text = ""
                    got = sample_sum(text, "ml_predictions_total") if text else -1.0
                    if got == written and count_samples(text) >= series:
                        t_counts = time.perf_counter() - start
                time.sleep(0.02)
            ok = t_counts is not None and got == written
            failed |= not ok
            rows.append([rnd + 1, common.fmt_s(t_ready or float("inf")), common.fmt_s(t_counts or float("inf")),
                         f"{got:,.0f} / {written:,}", "ok" if ok else "FAIL"])
            print(f"  round {rnd + 1}: ready {rows[-1][1]}, counts {rows[-1][2]}", flush=True)
            if not ok:
                print(f"  log: {d.log_tail(1500)}")
            time.sleep(1.0)
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(["round", "/readyz 200 after", "all counts on /metrics after", "count / written", "exact"], rows))
    times = [float(r[2].split()[0]) / (1000 if r[2].endswith("ms") else 1) for r in rows if r[4] == "ok"]
    if times:
        worst = max(times)
        print(f"\nmedian {statistics.median(times):.2f} s, worst {worst:.2f} s; target <= {args.target:.1f} s: "
              f"{'MET' if worst <= args.target else 'MISSED'}")
    print("\nRESULT:", "FAIL" if failed else "all counts exact")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
