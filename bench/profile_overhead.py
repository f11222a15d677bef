"""Where the sidecar's CPU and memory go at a typical load (issue 18): per process.

Starts ``mlsidecar run --tail FILE`` (default collectors, or ``--sidecar-flag``s), appends
``--rate`` prediction events per second, and after ``--warmup`` seconds:

* runs ``py-spy record`` (non-blocking, 100 Hz, idle samples left out) on every sidecar
  process at once for ``--duration`` seconds and prints, per process, the functions with the
  most samples (own time, and with callees), next to the process's CPU time from /proc;
* prints what each process's memory is made of (``/proc/PID/smaps``: private and shared, by
  mapping: Python heap arenas and the C heap, the interpreter, extension modules), and the
  modules each role has that the supervisor had not imported before forking.

    python3 bench/profile_overhead.py [--duration 30] [--rate 1000] [--top 12]

py-spy is not a dependency of the project: ``pip install py-spy`` (it needs ptrace rights on
the sidecar's processes, e.g. root or the same user with ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.bench_overhead import TICK, Sidecar, Writer, cpu_ticks, table  # noqa: E402


def py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def summarise(raw: str, top: int) -> tuple[int, list[list]]:
    """(samples, rows) from py-spy's collapsed stacks: own and inclusive samples per function."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = [f.split(" (", 1)[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f
                  for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    rows = [[f"{100 * n / total:.0f}%", f"{100 * incl[f] / total:.0f}%", f[:110]]
            for f, n in own.most_common(top)] if total else []
    return total, rows


def memory_breakdown(pid: int) -> dict[str, list[int]]:
    """kB by kind of mapping: [Pss, Private_Dirty, Shared_Dirty+Shared_Clean]."""
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    kind = "?"
    try:
        with open(f"/proc/{pid}/smaps") as fh:
            for line in fh:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    parts = line.split()
                    name = parts[5] if len(parts) > 5 else ""
                    if not name:
                        kind = "anonymous (Python arenas, large objects)"
                    elif name == "[heap]":
                        kind = "[heap] (C malloc)"
                    elif name.startswith("["):
                        kind = name
                    elif "libpython" in name or name.endswith("/python3.11"):
                        kind = "interpreter (libpython)"
                    elif "site-packages" in name or "lib-dynload" in name:
                        kind = "extension modules (.so)"
                    else:
                        kind = "other files (libc, ssl, ...)"
                elif head == "Pss:":
                    out[kind][0] += int(line.split()[1])
                elif head == "Private_Dirty:":
                    out[kind][1] += int(line.split()[1])
                elif head in ("Shared_Dirty:", "Shared_Clean:"):
                    out[kind][2] += int(line.split()[1])
    except OSError:
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--hz", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--sidecar-flag", action="append", default=[])
    args = ap.parse_args()
    spy = py_spy()
    source_path, _ = common.cached_log("predictions", 1_000_000, common.default_cache())
    work = tempfile.mkdtemp(prefix="bench-profile-")
    target = os.path.join(work, "events.jsonl")
    open(target, "wb").close()
    side = Sidecar(work, target, "mlsidecar", *args.sidecar_flag)
    common.header(f"Profile per process: {args.rate:,} events/s, {args.duration:.0f} s, "
                  f"flags {' '.join(args.sidecar_flag) or '(defaults)'}")
    try:
        side.start()
        w = Writer(target, args.rate, source_path, 0)
        time.sleep(args.warmup)
        pids = side.pids()
        labels = side.labels()
        t0 = {p: cpu_ticks(p) for p in pids}
        start = time.monotonic()
        spies = {}
        if spy:
            for p in pids:
                out = os.path.join(work, f"{p}.txt")
                spies[p] = (out, subprocess.Popen(
                    [spy, "record", "--pid", str(p), "--duration", str(int(args.duration)), "--rate", str(args.hz),
                     "--nonblocking", "--format", "raw", "--output", out],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            for _out, proc in spies.values():
                proc.wait(args.duration + 60)
        else:
            print("py-spy not found (pip install py-spy): CPU time only")
            time.sleep(args.duration)
        elapsed = time.monotonic() - start
        for p in pids:
            used = 100.0 * ((cpu_ticks(p) or 0) - (t0.get(p) or 0)) / TICK / elapsed
            print(f"\n### {labels.get(p, '?')} (pid {p}): {used:.2f}% of a core")
            if p in spies:
                out, proc = spies[p]
                raw = open(out).read() if os.path.exists(out) else ""
                total, rows = summarise(raw, args.top)
                if not total:
                    print(f"  no samples ({proc.stderr.read().decode()[-300:].strip()})")
                else:
                    print(f"{total} samples while on the CPU (of {int(args.duration * args.hz)} possible)\n")
                    print(table(["own", "with callees", "function (file)"], rows))
        print("\n## Memory by mapping (kB): Pss / Private_Dirty / Shared\n")
        kinds = sorted({k for p in pids for k in memory_breakdown(p)})
        per = {p: memory_breakdown(p) for p in pids}
        rows = [[k] + [" / ".join(str(x) for x in per[p].get(k, [0, 0, 0])) for p in pids] for k in kinds]
        rows.append(["total Pss"] + [str(sum(v[0] for v in per[p].values())) for p in pids])
        print(table(["mapping"] + [f"{labels.get(p, '?')} ({p})" for p in pids], rows))
        w.stop()
    finally:
        side.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
