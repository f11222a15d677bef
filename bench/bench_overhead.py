"""Overhead (issue 18): CPU and memory of the sidecar at a typical load, side by side with mtail.

Every contender follows the **same** file in the **same** run, at the same time, so the noise
of a shared machine hits them all alike:

* ``mlsidecar``: ``python3 -m mlsidecar run --tail FILE`` with the default collectors (gpu and
  process on; no GPU here, so the GPU worker exports it as down), all its processes summed;
* ``mlsidecar-lean`` (``--lean``): the same with ``--no-collector.gpu --no-collector.process``;
* ``mtail``: Debian's mtail with ``bench/mtail/predictions.mtail`` (the same three families);
* ``naive``: ``bench/naive_baseline.py --follow``, a textbook prometheus_client tailer in one
  process (``readline``, ``labels().inc()/observe()`` per event, ``start_http_server``).

Phases (``--phases``, each ``--duration`` seconds): ``rest`` (no events; the writer process
holds the file open, as an idle workload does), then N events/s
appended in ten writes a second by a writer process of its own (lines from the cached prediction
log, so writing costs little; the process collector finds it as the workload).
Each contender is scraped every ``--scrape-interval`` seconds, as Prometheus
would. CPU is utime+stime from ``/proc/PID/stat`` of every process of the contender over the
phase (CPU time, not wall-clock: other jobs on the machine slow a contender down but do not
add to its CPU time), as % of one core; memory is ``Pss`` from ``/proc/PID/smaps_rollup``
summed over the contender's processes, sampled every few seconds (peak reported). After each
load phase every contender's ``sum(ml_predictions_total)`` must equal the lines written, or
the run FAILs. ``--repeat N`` runs the phases N times (fresh daemons each round) and prints
the median ratio; the load average before and after each phase is printed, since 2 shared
cores make single runs noisy.

    python3 bench/bench_overhead.py [--duration 30] [--phases rest,1000,10000] [--repeat 1]
                                    [--lean] [--per-process] [--scrape-interval 15]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import BENCH, Daemon, free_port, http_get, sample_sum, table, wait_for  # noqa: E402

MTAIL = "/usr/bin/mtail"
TICK = os.sysconf("SC_CLK_TCK")


# --- /proc readings -------------------------------------------------------------------------------

def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads, live and exited), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --- contenders -----------------------------------------------------------------------------------

class Contender:
    name = ""

    def __init__(self, work: str, target: str):
        self.work, self.target = work, target
        self.proc: subprocess.Popen | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def pids(self) -> list[int]:
        root = self.root_pid()
        return process_tree(root) if root else []

    def labels(self) -> dict[int, str]:
        return {}

    def count(self) -> float:
        return sample_sum(http_get(self.url, 10).decode(), "ml_predictions_total")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Sidecar(Contender):
    def __init__(self, work: str, target: str, name: str, *flags: str, tree: str | None = None):
        super().__init__(work, target)
        self.name = name
        self.daemon = Daemon(os.path.join(work, name), "--tail", target, *flags, port=self.port,
                             state_dir=os.path.join(work, name, "state"), tree=tree)
        os.makedirs(os.path.join(work, name), exist_ok=True)

    def start(self) -> None:
        self.daemon.start()
        self.proc = self.daemon.proc

    def labels(self) -> dict[int, str]:
        """pid -> worker identity, from the status files the workers write."""
        import orjson

        if self.daemon.proc is None:
            return {}
        out = dict.fromkeys(process_tree(self.daemon.proc.pid), "server")  # the one without a status file
        out[self.daemon.proc.pid] = "supervisor"
        status = os.path.join(self.daemon.state_dir, "status")
        for fn in os.listdir(status) if os.path.isdir(status) else []:
            try:
                with open(os.path.join(status, fn), "rb") as fh:
                    st = orjson.loads(fh.read())
                pid, ident = int(st["pid"]), st.get("identity", fn[:-5])
                # One process may write as several identities (the collectors: collect+gpu).
                known = out.get(pid)
                out[pid] = ident if known in (None, "server") else "+".join(sorted({*known.split("+"), ident}))
            except (OSError, ValueError, KeyError):
                continue
        return out

    def stop(self) -> None:
        self.daemon.stop()


class Mtail(Contender):
    name = "mtail"

    def start(self) -> None:
        log = open(os.path.join(self.work, "mtail.log"), "wb")
        self.proc = subprocess.Popen(
            [MTAIL, "--progs", str(BENCH / "mtail"), "--logs", self.target, "--port", str(self.port),
             "--address", "127.0.0.1", "--logtostderr"], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: http_get(self.url, 2) is not None, 30, what="mtail up")


class Naive(Contender):
    name = "naive"

    def start(self) -> None:
        log = open(os.path.join(self.work, "naive.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "naive_baseline.py"), self.target, "-", "--follow", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: http_get(self.url, 2) is not None, 30, what="naive exporter up")


# --- load -----------------------------------------------------------------------------------------

class Writer:
    """A process of its own (no children, like a workload) that appends ``rate`` lines a second
    in ten writes a second, taken from ``source`` from line ``skip`` on (the process collector
    finds the workload as the writer of the tailed file: the bench's own tree must not be it)."""

    def __init__(self, path: str, rate: int, source: str, skip: int):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_writer", path, str(rate),
                                      source, str(skip)], stdout=subprocess.PIPE)
        self.written = 0

    def stop(self) -> int:
        self.proc.terminate()
        out, _ = self.proc.communicate(30)
        self.written = int(out.decode().split()[-1])
        return self.written


def writer_main(path: str, rate: int, source: str, skip: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lines = lines_forever(source)
    for _ in itertools.islice(lines, skip):
        pass
    per_tick = rate // 10
    written = 0
    next_at = time.monotonic()
    with open(path, "ab", buffering=0) as fh:  # rate 0: an idle workload, holding its log open
        while not stop.is_set() and not per_tick:
            stop.wait(1.0)
        while not stop.is_set():
            data = b"".join(itertools.islice(lines, per_tick))
            fh.write(data)
            written += data.count(b"\n")
            next_at += 0.1
            stop.wait(max(0.0, next_at - time.monotonic()))
    print(written, flush=True)


def lines_forever(path: str):
    """The lines of ``path``, from the start again at its end (ids repeat then; counts do not care)."""
    while True:
        with open(path, "rb") as fh:
            yield from fh


def phase(contenders: list[Contender], seconds: float, scrape_every: float, sample_every: float = 3.0):
    """CPU % of a core and peak PSS (MB) of every contender over ``seconds``; per pid as well."""
    start = {c.name: {p: cpu_ticks(p) for p in c.pids()} for c in contenders}
    t0 = time.monotonic()
    end = t0 + seconds
    next_scrape = next_sample = t0
    peak = {c.name: 0.0 for c in contenders}
    pss_pid: dict[str, dict[int, int]] = {c.name: {} for c in contenders}
    slowest = {c.name: 0.0 for c in contenders}
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_scrape:
            for c in contenders:
                s0 = time.perf_counter()
                http_get(c.url, 30)
                slowest[c.name] = max(slowest[c.name], time.perf_counter() - s0)
            next_scrape += scrape_every
        if now >= next_sample:
            for c in contenders:
                per = {p: pss_kb(p) for p in c.pids()}
                total = sum(per.values()) / 1024
                if total >= peak[c.name]:
                    peak[c.name], pss_pid[c.name] = total, per
            next_sample += sample_every
        time.sleep(max(0.0, min(next_scrape, next_sample, end) - time.monotonic()))
    elapsed = time.monotonic() - t0
    out = {}
    for c in contenders:
        per_cpu = {}
        for p in c.pids():
            t1 = cpu_ticks(p)
            if t1 is not None:
                per_cpu[p] = 100.0 * (t1 - (start[c.name].get(p) or 0)) / TICK / elapsed
        out[c.name] = {"cpu": sum(per_cpu.values()), "pss": peak[c.name], "procs": len(per_cpu),
                       "per_cpu": per_cpu, "per_pss": pss_pid[c.name], "labels": c.labels(),
                       "scrape": slowest[c.name]}
    return out


def wait_counts(contenders: list[Contender], expected: int, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    got = {}
    for c in contenders:
        while True:
            try:
                got[c.name] = c.count()
            except OSError:
                got[c.name] = -1.0
            if got[c.name] >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    time.sleep(0.5)  # nothing more arrives after the expected count
    for c in contenders:
        got[c.name] = c.count()
    return got


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--phases", default="rest,1000,10000", help="'rest' and/or event rates per second")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (fresh daemons each); medians reported")
    ap.add_argument("--scrape-interval", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after start, and after a rate "
                    "change, before measuring")
    ap.add_argument("--lean", action="store_true", help="also mlsidecar without the gpu/process collectors")
    ap.add_argument("--before", metavar="DIR", help="also the mlsidecar package of another checkout (e.g. "
                    "`git archive COMMIT mlsidecar | tar -x -C DIR`), as contender mlsidecar-before")
    ap.add_argument("--skip", action="append", default=[], help="skip a contender: mtail, naive")
    ap.add_argument("--per-process", action="store_true", help="print CPU and PSS of every mlsidecar process")
    ap.add_argument("--sidecar-flag", action="append", default=[], help="extra flag for the mlsidecar run")
    args = ap.parse_args()

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    rates = [0 if p == "rest" else int(p) for p in phases]
    source_path, _facts = common.cached_log("predictions", 1_000_000, common.default_cache())
    results: dict[tuple[str, str], list[dict]] = {}
    failed = False
    common.header(f"Overhead: phases {', '.join(phases)}, {args.duration:.0f} s each, x{args.repeat}, "
                  f"scrape every {args.scrape_interval:.0f} s; all contenders follow one file at once")
    for rnd in range(args.repeat):
        work = tempfile.mkdtemp(prefix="bench-overhead-")
        target = os.path.join(work, "events.jsonl")
        open(target, "wb").close()
        contenders: list[Contender] = [Sidecar(work, target, "mlsidecar", *args.sidecar_flag)]
        if args.before:
            contenders.append(Sidecar(work, target, "mlsidecar-before", *args.sidecar_flag, tree=args.before))
        if args.lean:
            contenders.append(Sidecar(work, target, "mlsidecar-lean", "--no-collector.gpu",
                                      "--no-collector.process", *args.sidecar_flag))
        if "mtail" not in args.skip and os.path.exists(MTAIL):
            contenders.append(Mtail(work, target))
        if "naive" not in args.skip:
            contenders.append(Naive(work, target))
        written = 0
        try:
            for c in contenders:
                c.start()
            time.sleep(args.warmup)
            for name, rate in zip(phases, rates):
                w = Writer(target, rate, source_path, written)
                time.sleep(args.warmup if rate else 1.0)
                la0 = load_average()
                print(f"  round {rnd + 1}: {name} ... (load {la0})", flush=True)
                res = phase(contenders, args.duration, args.scrape_interval)
                res["_load"] = f"{la0} -> {load_average()}"
                written += w.stop()
                if rate:
                    got = wait_counts(contenders, written)
                    bad = {n: v for n, v in got.items() if v != written}
                    if bad:
                        failed = True
                        print(f"  FAIL: {written:,} lines written, counted {bad}")
                    res["_counts"] = f"{written:,} written, " + ", ".join(
                        f"{n} {v:,.0f}" for n, v in got.items())
                results.setdefault((name, "all"), []).append(res)
                print(f"    load {res['_load']}; " + "; ".join(
                    f"{c.name} {res[c.name]['cpu']:.2f}% {res[c.name]['pss']:.1f} MB" for c in contenders)
                    + (f"; {res['_counts']}" if "_counts" in res else ""), flush=True)
                if args.per_process:
                    for c in contenders:
                        if not isinstance(c, Sidecar):
                            continue
                        r = res[c.name]
                        rows = [[pid, r["labels"].get(pid, "?"), f"{r['per_cpu'].get(pid, 0):.2f}%",
                                 f"{r['per_pss'].get(pid, 0) / 1024:.1f} MB"] for pid in sorted(r["per_cpu"])]
                        print(table(["pid", f"{c.name} process", "CPU", "PSS (at peak)"], rows))
        finally:
            for c in contenders:
                c.stop()
            shutil.rmtree(work, ignore_errors=True)

    names = [c.name for c in contenders]
    print()
    rows = []
    for name in phases:
        runs = results[(name, "all")]
        for n in names:
            cpu = statistics.median(r[n]["cpu"] for r in runs)
            pss = statistics.median(r[n]["pss"] for r in runs)
            row = [name if name == "rest" else f"{int(name):,} ev/s", n, runs[0][n]["procs"],
                   f"{pss:.1f} MB", f"{cpu:.2f}%"]
            for peer in ("mtail", "naive"):
                if peer in names and n != peer:
                    row += [ratio(statistics.median(r[n]["cpu"] / max(r[peer]["cpu"], 1e-9) for r in runs), 1),
                            ratio(statistics.median(r[n]["pss"] / max(r[peer]["pss"], 1e-9) for r in runs), 1)]
                else:
                    row += ["", ""]
            rows.append(row)
    print(table(["phase", "contender", "processes", "PSS summed (peak)", "CPU (% of a core)",
                 "CPU / mtail", "PSS / mtail", "CPU / naive", "PSS / naive"], rows))
    print(f"\n(medians of {args.repeat} round(s); ratios are medians of the per-round ratios; "
          f"load averages: {'; '.join(r['_load'] for k, v in results.items() for r in v)})")

    def med(phase_name: str, n: str, key: str, peer: str | None = None) -> float | None:
        runs = results.get((phase_name, "all"))
        if not runs or n not in runs[0] or (peer and peer not in runs[0]):
            return None
        if peer:
            return statistics.median(r[n][key] / max(r[peer][key], 1e-9) for r in runs)
        return statistics.median(r[n][key] for r in runs)

    print()
    checks = [("1000", "cpu", "mtail", 1.0, "CPU <= mtail's at 1,000 ev/s"),
              ("1000", "pss", "mtail", 2.0, "PSS summed <= 2x mtail's at 1,000 ev/s"),
              ("10000", "cpu", "mtail", 1.5, "CPU <= 1.5x mtail's at 10,000 ev/s")]
    for ph, key, peer, limit, what in checks:
        v = med(ph, "mlsidecar", key, peer)
        if v is not None:
            print(f"target: {what}: {v:.2f}x {'MET' if v <= limit else 'MISSED'}")
    v = med("rest", "mlsidecar", "cpu")
    if v is not None:
        print(f"target: at rest <= 0.2% of a core: {v:.2f}% {'MET' if v <= 0.2 else 'MISSED'}")
    print("\nRESULT:", "FAIL" if failed else "all counts exact")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_writer"]:
        writer_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
