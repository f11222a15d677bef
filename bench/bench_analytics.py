"""Cost per event of analytics fields, measured through the Mapper (run by hand).

    python3 bench/bench_analytics.py [--events 50000] [--repeat 3]

Prints ns/event for: a plain prediction with analytics off (the Mapper never calls in), the
same with the default engine (on_prediction returns at once), with y_true/y_pred, with
3 features, and with both; the version comparison (two versions of one model, plain
predictions: fed per chunk from the Mapper's records), ROC (score + y_true, binary), and
feature correlation (3 numeric features, drift and quality off so that only correlation
adds to the plain prediction); plus the cost of the per-chunk ticks. Ratios are to the
plain prediction with analytics off, measured in the same run. Bounded: a few seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataclasses import replace  # noqa: E402

import orjson  # noqa: E402

from mlsidecar.analytics import engine  # noqa: E402
from mlsidecar.analytics.settings import AnalyticsSettings  # noqa: E402
from mlsidecar.mapping import Mapper  # noqa: E402
from mlsidecar.store import Batch  # noqa: E402

CHUNK = 2000  # events between ticks, about a 0.25 s chunk at 8k events/s


def make_events(n: int, kind: str) -> list[bytes]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        version = ("v1", "v2")[i % 2] if kind == "comparison" else "v1"
        ev = {"event": "prediction", "model": "resnet", "version": version,
              "latency_s": round(rng.uniform(0, 0.2), 5), "confidence": round(rng.random(), 3)}
        if kind == "roc":
            y = rng.random() < 0.3
            ev["score"] = round(min(1.0, max(0.0, rng.gauss(0.7 if y else 0.3, 0.2))), 3)
            ev["y_true"] = int(y)
            ev["y_pred"] = int(ev["score"] >= 0.5)
        if kind == "correlation":
            ev["features"] = {"age": rng.randint(18, 90), "income": round(rng.gauss(5e4, 1e4), 2),
                              "tenure": round(rng.random() * 10, 2)}
        if kind in ("labels", "both"):
            ev["y_true"] = rng.choice(("cat", "dog", "bird"))
            ev["y_pred"] = ev["y_true"] if rng.random() < 0.8 else "cat"
        if kind in ("features", "both"):
            ev["features"] = {"age": rng.randint(18, 90), "income": round(rng.gauss(5e4, 1e4), 2),
                              "country": rng.choice(("DE", "FR", "IT", "ES"))}
        out.append(orjson.dumps(ev))
    return out


def run(lines: list[bytes], analytics) -> tuple[float, float]:
    """(ns/event for parse + map, ns/event for the ticks), best of the timing."""
    batch = Batch()
    m = Mapper(batch, analytics=analytics)
    loads = orjson.loads
    handle = m.handle
    t_map = t_tick = 0.0
    now = 1e9
    for start in range(0, len(lines), CHUNK):
        t0 = time.perf_counter()
        for line in lines[start:start + CHUNK]:
            handle(loads(line))
        t1 = time.perf_counter()
        now += 0.25
        m.tick(now)
        batch.clear()
        t_tick += time.perf_counter() - t1
        t_map += t1 - t0
    n = len(lines)
    return t_map / n * 1e9, t_tick / n * 1e9


def make_engine(on):
    if on is False:
        return None
    if on is True:
        return engine.build()
    s = AnalyticsSettings()
    if on == "no-comparison":
        return engine.build(replace(s, comparison=replace(s.comparison, enabled=False)))
    # correlation only: no drift, no quality (which also look at features)
    return engine.build(replace(s, drift=replace(s.drift, enabled=False),
                                quality=replace(s.quality, enabled=False)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    cases = [
        ("plain prediction, analytics off", "plain", False),
        ("plain prediction, analytics on", "plain", True),
        ("with y_true/y_pred", "labels", True),
        ("with 3 features", "features", True),
        ("with y_true/y_pred + 3 features", "both", True),
        ("plain, two versions compared", "comparison", True),
        ("plain, two versions, comparison off", "comparison", "no-comparison"),
        ("score + y_true/y_pred (ROC + scores)", "roc", True),
        ("y_true/y_pred only (no score)", "labels", True),
        ("3 numeric features, correlation only", "correlation", "correlation-only"),
    ]
    data = {kind: make_events(args.events, kind) for _, kind, _ in cases}
    results = []
    for name, kind, on in cases:
        best = None
        for _ in range(args.repeat):
            r = run(data[kind], make_engine(on))
            if best is None or sum(r) < sum(best):
                best = r
        results.append((name, best))
    base = sum(results[0][1])
    print(f"{args.events} events per case, best of {args.repeat}, tick every {CHUNK} events "
          f"(parse with orjson + Mapper.handle; ticks include drift/score computation)")
    print(f"{'case':40} {'map ns/ev':>10} {'tick ns/ev':>11} {'total':>8} {'ratio':>6}")
    for name, (mp, tk) in results:
        print(f"{name:40} {mp:10.0f} {tk:11.0f} {mp + tk:8.0f} {(mp + tk) / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
