"""Profile the two hot paths in-process: the tail worker's Ingest.lines + SeriesWriter, and
MetricsReader.render. Prints cProfile's top functions by own time (with their share of the total),
and pyinstrument's call tree when pyinstrument is installed.

    python3 bench/profile_hot.py [--events 300000] [--series 36000] [--what ingest,render]

py-spy on the live daemon instead (the tail worker is the busiest child of the supervisor):
    py-spy record -o /tmp/tail.svg --pid <tail worker pid> --duration 10
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.bench_ingest import inprocess_ingest  # noqa: E402
from bench.bench_scrape import generate  # noqa: E402


def top(prof: cProfile.Profile, n: int) -> str:
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values()) or 1.0
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in rows:
        inside = fname.startswith(str(common.REPO))
        where = f"{os.path.relpath(fname, common.REPO) if inside else os.path.basename(fname)}:{line}"
        out.append([f"{100 * tt / total:.1f}%", f"{100 * ct / total:.1f}%", f"{nc:,}", f"{func} ({where})"])
    return common.table(["own time", "incl. callees", "calls", "function"], out)


def run(label: str, fn, n: int) -> None:
    print(f"\n### {label}\n")
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    print(top(prof, n))
    try:
        from pyinstrument import Profiler
    except ImportError:
        return
    p = Profiler(interval=0.0005)
    p.start()
    fn()
    p.stop()
    print()
    print(p.output_text(unicode=False, color=False, show_all=False)[:6000])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--series", type=int, default=36_000)
    ap.add_argument("--what", default="ingest,render")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="profile-")
    what = args.what.split(",")
    if "ingest" in what:
        log, facts = common.cached_log("predictions", args.events, common.default_cache())
        run(f"Ingest.lines + SeriesWriter on {args.events:,} prediction events",
            lambda: inprocess_ingest(log, facts["predictions"], work), args.top)
    if "render" in what:
        from mlsidecar.exposition import MetricsReader

        d = os.path.join(work, "series")
        generate(d, args.series, 4)
        reader = MetricsReader([d])
        reader.render()  # cold: keys parsed once

        def renders():
            for _ in range(20):
                reader.render()
        run(f"MetricsReader.render x20, warm, {args.series:,} series", renders, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
