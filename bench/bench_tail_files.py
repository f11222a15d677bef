"""Many tailed files: what the tail worker costs when they are idle, and with a trickle of lines.

N files match one glob (``dir/*.jsonl``), each holding a line already. Once the sidecar has
counted them all, two phases are measured on the tail worker's process alone:

* idle: nothing is written for ``--idle`` seconds;
* trickle: ``--rate`` lines a second, each appended to a random file (seeded), for ``--trickle``
  seconds.

CPU comes from /proc/PID/stat (utime + stime), bytes written from /proc/PID/io (write_bytes:
what reached the block layer or the page cache as file writes, the journal and the status
above all). At the end every line written must have been counted exactly.

    python3 bench/bench_tail_files.py [--files 10000] [--idle 20] [--trickle 20] [--rate 20]

Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Daemon, scrape_sum, table  # noqa: E402

LINE = b'{"event":"prediction","model":"m","version":"v","status":"success","latency_s":0.01,"seq":%d}\n'
TICKS = os.sysconf("SC_CLK_TCK")


def tail_worker_pid(state_dir: str) -> int:
    status = os.path.join(state_dir, "status")
    for name in sorted(os.listdir(status)):
        if name.startswith("tail-") and name.endswith(".json"):
            with open(os.path.join(status, name), "rb") as fh:
                return int(json.loads(fh.read())["pid"])
    raise LookupError("no tail worker status yet")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise LookupError("no write_bytes")


class Probe:
    """CPU seconds and bytes written of one process between start() and stop()."""

    def __init__(self, pid: int):
        self.pid = pid

    def start(self) -> None:
        self.t0, self.c0, self.w0 = time.monotonic(), cpu_seconds(self.pid), write_bytes(self.pid)

    def stop(self) -> tuple[float, float]:
        wall = time.monotonic() - self.t0
        cpu = cpu_seconds(self.pid) - self.c0
        written = write_bytes(self.pid) - self.w0
        return 100.0 * cpu / wall, written / wall / common.MB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle phase")
    ap.add_argument("--trickle", type=float, default=20.0, help="seconds of the trickle phase")
    ap.add_argument("--rate", type=float, default=20.0, help="lines a second in the trickle phase")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the first count")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="longest wait for a count")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="mlsidecar-bench-files-") as work:
        logs = os.path.join(work, "logs")
        os.mkdir(logs)
        paths = [os.path.join(logs, f"app-{i:05d}.jsonl") for i in range(args.files)]
        for i, p in enumerate(paths):
            with open(p, "wb") as fh:
                fh.write(LINE % i)
        written = args.files
        daemon = Daemon(work, "--tail", os.path.join(logs, "*.jsonl")).start(timeout=args.timeout)
        try:
            t0 = time.monotonic()
            took, got = common.wait_sum(daemon.url + "/metrics", "ml_predictions_total", written,
                                        args.timeout)
            if got != written:
                print(f"first count: {got} of {written}: {daemon.log_tail()}")
                return 1
            first = time.monotonic() - t0
            time.sleep(args.settle)
            probe = Probe(tail_worker_pid(daemon.state_dir))
            probe.start()
            time.sleep(args.idle)
            idle = probe.stop()
            probe.start()
            end = time.monotonic() + args.trickle
            next_at = time.monotonic()
            while time.monotonic() < end:
                with open(rng.choice(paths), "ab") as fh:
                    fh.write(LINE % written)
                written += 1
                next_at += 1.0 / args.rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            trickle = probe.stop()
            took, got = common.wait_sum(daemon.url + "/metrics", "ml_predictions_total", written,
                                        args.timeout)
            time.sleep(2.0)
            got = scrape_sum(daemon.url + "/metrics", "ml_predictions_total")
        finally:
            daemon.stop()
    print(f"{args.files} files, one glob; first count after {first:.1f} s")
    print(table(["phase", "tail worker CPU %", "written MiB/s"],
                [["idle", f"{idle[0]:.1f}", f"{idle[1]:.3f}"],
                 [f"trickle {args.rate:g} lines/s", f"{trickle[0]:.1f}", f"{trickle[1]:.3f}"]]))
    print(f"counted {got:.0f} of {written} lines written")
    return 0 if got == written else 1


if __name__ == "__main__":
    sys.exit(main())
