"""Tail torture: real logrotate and bursts of SIGKILL while a writer appends lines that all look alike.

A writer thread appends numbered prediction events in batches of 1-200 lines; every line has the
same shape and the same labels (``{"event":"prediction","model":"m",...,"seq":N}``), as one
writer's structured log does. Meanwhile, at seeded random moments,

* the real logrotate (``logrotate -f``) rotates the file, every ``--rotate-every`` seconds
  (sub-second by default), in one of these modes:

  - ``create``: rename, then a new file (the writer opens the path for every batch, as a
    logger that reopens after rotation does, so some batches still land in the renamed file);
  - ``copytruncate``: copy, then truncate in place (the writer keeps one O_APPEND descriptor);
  - ``dateext``: ``create`` with dated names (``events.jsonl-20261201-101502``);
  - ``delaycompress``: ``create`` with ``compress`` + ``delaycompress`` (``.1`` stays plain,
    ``.2.gz`` and older are gzipped);
  - ``compress``: ``create`` with ``compress`` alone (``.1.gz`` at once: a generation being read
    when the sidecar went down is finished from the ``.gz``);

* the sidecar's whole process group gets SIGKILL and is started again at once on the same
  state dir; kills come in bursts (the next one 50 ms later, during start-up or journal replay),
  and some outages are held long enough for two rotations while the sidecar is down.

When the writer stops, the sidecar is left up until the count settles, then the lines written
are compared with sum(ml_predictions_total):

* create, dateext, delaycompress: exact (nothing lost, nothing counted twice);
* compress: never more than written, and every line logrotate kept counted (or the loss counted
  as a gap);
* copytruncate: never more than written; the lines lost (written between logrotate's copy and its
  truncate) are reported, and the share must be at least ``--min-share``.

``mlsidecar_source_gaps_total`` (losses the sidecar detected) is reported beside the count.
Exit code 1 on a mismatch. The whole run is bounded by --duration (split over the modes).

    python3 bench/torture_tail.py [--duration 120] [--mode all|create|copytruncate|dateext|delaycompress]
                                  [--seed N] [--kills-per-minute 30]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Daemon, sample_sum, table  # noqa: E402

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
MODES = ("create", "copytruncate", "dateext", "delaycompress", "compress")
EXACT = ("create", "dateext", "delaycompress")


def line(seq: int) -> bytes:
    return (b'{"event":"prediction","model":"m","version":"v","status":"success","latency_s":0.01,"seq":'
            + str(seq).encode() + b"}\n")


class Writer(threading.Thread):
    """Appends ``rate`` alike lines a second in batches of 1-200, at most ``limit`` lines."""

    def __init__(self, path: str, reopen: bool, rate: int, seed: int, limit: int):
        super().__init__(daemon=True)
        self.path, self.reopen, self.rate, self.limit = path, reopen, rate, limit
        self.rng = random.Random(seed)
        self.written = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        fd = None if self.reopen else os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            next_at = time.monotonic()
            while not self.stop_flag.is_set() and self.written < self.limit:
                n = min(self.rng.randint(1, 200), self.limit - self.written)
                data = b"".join(line(self.written + k) for k in range(n))
                if fd is not None:
                    os.write(fd, data)
                else:
                    f = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    try:
                        os.write(f, data)
                    finally:
                        os.close(f)
                self.written += n
                next_at += n / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            if fd is not None:
                os.close(fd)


@dataclass
class Options:
    seconds: float = 30.0
    rate: int = 2500
    seed: int = 1
    rotate_every: tuple[float, float] = (0.2, 1.0)
    kills_per_minute: float = 30.0
    burst: float = 0.4  # chance that the next kill follows 50 ms after a restart
    long_outage: float = 0.2  # chance that an outage lasts for two rotations
    keep: int = 1000  # logrotate's "rotate" count
    settle: float = 60.0
    min_share: float = 0.99
    extra: dict = field(default_factory=dict)


def logrotate_conf(mode: str, path: str, keep: int) -> str:
    body = [f"rotate {keep}", "missingok", "notifempty" if mode == "dateext" else "ifempty"]
    if mode == "copytruncate":
        body += ["copytruncate", "nocompress"]
    else:
        body += ["create 0644"]
        if mode == "dateext":
            body += ["dateext", "dateformat -%Y%m%d-%H%M%S", "nocompress"]
        elif mode == "delaycompress":
            body += ["compress", "delaycompress"]
        elif mode == "compress":
            body += ["compress"]
        else:
            body += ["nocompress"]
    return f"{path} {{\n" + "".join(f"    {b}\n" for b in body) + "}\n"


def lines_on_disk(logdir: str) -> int:
    """Distinct lines still in the log files (plain or gzipped): what logrotate kept."""
    seen: set[bytes] = set()
    for name in os.listdir(logdir):
        path = os.path.join(logdir, name)
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for raw in fh:
                i = raw.rfind(b'"seq":')
                if i >= 0 and raw.endswith(b"}\n"):
                    seen.add(raw[i + 6:-2])
    return len(seen)


def count(d: Daemon) -> float:
    return sample_sum(d.metrics(), "ml_predictions_total")


def torture(mode: str, opts: Options, work: str, log=print) -> dict:
    """One run of ``mode``; returns what was written, counted, and how rough it was."""
    rng = random.Random(f"{opts.seed}-{mode}")
    rotate_every = opts.rotate_every
    if mode == "dateext":  # names carry the second: one rotation a second at most
        rotate_every = (max(1.05, rotate_every[0]), max(1.5, rotate_every[1]))
    run = os.path.join(work, mode)
    logdir = os.path.join(run, "log")
    os.makedirs(logdir)
    path = os.path.join(logdir, "events.jsonl")
    open(path, "wb").close()
    conf = os.path.join(run, "logrotate.conf")
    with open(conf, "w") as fh:
        fh.write(logrotate_conf(mode, path, opts.keep))
    lr_state = os.path.join(run, "logrotate.state")
    state_dir = os.path.join(run, "state")
    extra = ["--log-level", os.environ["TORTURE_LOG_LEVEL"]] if os.environ.get("TORTURE_LOG_LEVEL") else []
    d = Daemon(run, "--tail", path, *extra, state_dir=state_dir, port=common.free_port(),
               log_name="sidecar.log")
    d.start()
    w = Writer(path, mode != "copytruncate", opts.rate, rng.randrange(1 << 30),
               limit=int(opts.rate * opts.seconds * 2))
    w.start()
    kills = rotations = rotations_down = bursts = 0
    rot_errors: list[str] = []

    def rotate() -> None:
        nonlocal rotations
        r = subprocess.run([LOGROTATE, "-f", "-s", lr_state, conf], capture_output=True, timeout=30)
        rotations += 1
        if r.returncode != 0:
            rot_errors.append(r.stderr.decode()[-300:])

    mean_gap = 60.0 / opts.kills_per_minute
    t0 = time.monotonic()
    end = t0 + opts.seconds
    next_rotate = t0 + rng.uniform(*rotate_every)
    next_kill = t0 + rng.uniform(0.3, 2 * mean_gap)
    restart_at = None
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_rotate:
                rotate()
                if d.proc is None:
                    rotations_down += 1
                next_rotate = time.monotonic() + rng.uniform(*rotate_every)
            if restart_at is None and now >= next_kill and d.proc is not None:
                d.kill()
                kills += 1
                if rng.random() < opts.long_outage:
                    # Down across two rotations: the generation being read is rotated twice.
                    time.sleep(rng.uniform(0.0, 0.1))
                    rotate()
                    time.sleep(rng.uniform(0.0, 0.2) + (rotate_every[0] if mode == "dateext" else 0.0))
                    rotate()
                    rotations_down += 2
                    restart_at = time.monotonic()
                else:
                    restart_at = time.monotonic() + rng.uniform(0.0, 0.3)
            if restart_at is not None and now >= restart_at:
                d.start(wait=False)  # no wait: rotations and kills go on while it starts up
                restart_at = None
                if rng.random() < opts.burst:
                    bursts += 1
                    next_kill = time.monotonic() + 0.05 * rng.randint(1, 6)  # during start-up
                else:
                    next_kill = time.monotonic() + rng.uniform(0.5, 2 * mean_gap)
            time.sleep(0.01)
    finally:
        w.stop_flag.set()
        w.join(10)
    if d.proc is None:
        d.start()
    else:
        common.wait_for(d.ready, 30, what="sidecar ready")
    # Let it settle: exact in the exact modes; stable for a few seconds otherwise.
    got, stable_since, last = -1.0, time.monotonic(), None
    deadline = time.monotonic() + opts.settle
    while time.monotonic() < deadline:
        got = count(d)
        if got == w.written:
            time.sleep(1.0)
            got = count(d)
            break
        if got != last:
            last, stable_since = got, time.monotonic()
        elif time.monotonic() - stable_since > 5:
            break
        time.sleep(0.2)
    text = d.metrics()
    rejected = sample_sum(text, "mlsidecar_events_rejected_total")
    gaps = sample_sum(text, "mlsidecar_source_gaps_total")
    d.stop()
    on_disk = lines_on_disk(logdir)
    if mode in EXACT:
        ok = got == w.written
    elif mode == "compress":
        # A generation gzipped and removed at once: what the writer appends to it after that is
        # gone. Never more than written; a loss the sidecar can see is counted as a gap.
        ok = got <= w.written and (got >= on_disk or gaps > 0)
    else:
        # Lines written between logrotate's copy and its truncate are on disk nowhere; what
        # logrotate kept must all be counted (and some of the others, read before the truncate).
        ok = got <= w.written and got >= min(opts.min_share * w.written, on_disk)
    ok = ok and rejected == 0  # every line written is valid: a rejected one was read torn
    return {"mode": mode, "seconds": opts.seconds, "written": w.written, "counted": got, "kills": kills,
            "bursts": bursts, "rotations": rotations, "rotations_down": rotations_down,
            "rot_errors": rot_errors, "rejected": rejected, "gaps": gaps, "ok": ok, "on_disk": on_disk,
            "log": d.log_path, "work": run}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds in all (split over the modes)")
    ap.add_argument("--mode", default="all",
                    help="all (every mode), both (create and copytruncate), or modes joined by "
                    "commas: " + ", ".join(MODES))
    ap.add_argument("--rate", type=int, default=2500, help="lines per second the writer appends")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--keep", type=int, default=1000, help="logrotate 'rotate' count")
    ap.add_argument("--kills-per-minute", type=float, default=30.0)
    ap.add_argument("--rotate-min", type=float, default=0.2)
    ap.add_argument("--rotate-max", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=60.0, help="at most this long for the final count")
    args = ap.parse_args()

    modes = {"all": list(MODES), "both": ["create", "copytruncate"]}.get(args.mode, args.mode.split(","))
    if not set(modes) <= set(MODES):
        ap.error(f"--mode: unknown mode in {args.mode!r}")
    work = tempfile.mkdtemp(prefix="torture-")
    opts = Options(seconds=args.duration / len(modes), rate=args.rate, seed=args.seed, keep=args.keep,
                   kills_per_minute=args.kills_per_minute, rotate_every=(args.rotate_min, args.rotate_max),
                   settle=args.settle)
    common.header(f"Tail torture: {', '.join(modes)}, {args.duration:.0f} s, {args.rate} lines/s, "
                  f"seed {args.seed}, alike lines")
    results = []
    try:
        for mode in modes:
            print(f"  {mode} ...", flush=True)
            results.append(torture(mode, opts, work))
        rows = []
        for r in results:
            diff = r["written"] - r["counted"]
            verdict = "ok" if r["ok"] else "FAIL"
            if r["mode"] == "copytruncate" and r["ok"] and diff:
                verdict = (f"ok ({100 * r['counted'] / r['written']:.2f} %; logrotate kept "
                           f"{100 * r['on_disk'] / r['written']:.2f} %; none counted twice)")
            rows.append([r["mode"], f"{r['seconds']:.0f} s", f"{r['rotations']} ({r['rotations_down']} down)",
                         f"{r['kills']} ({r['bursts']} bursts)", f"{r['written']:,}", f"{r['counted']:,.0f}",
                         f"{diff:,.0f}", f"{r['gaps']:,.0f}", f"{r['rejected']:,.0f}", verdict])
            for e in r["rot_errors"][:3]:
                print(f"  {r['mode']}: logrotate said: {e.strip()}")
        print()
        print(table(["mode", "duration", "rotations", "SIGKILLs", "lines written", "counted",
                     "written - counted", "gaps counted", "rejected", "result"], rows))
        failed = not all(r["ok"] for r in results)
        for r in results:
            if not r["ok"]:
                print(f"\n{r['mode']}: sidecar log kept in {r['log']}")
        print("\nRESULT:", "FAIL" if failed else "ok")
        if not failed:
            shutil.rmtree(work, ignore_errors=True)
        return 1 if failed else 0
    except BaseException:
        print(f"work dir kept: {work}")
        raise


if __name__ == "__main__":
    sys.exit(main())
