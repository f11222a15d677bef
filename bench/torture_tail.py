"""Tail torture (issue 4): real logrotate and SIGKILLed sidecars while a writer appends.

A writer thread appends numbered prediction events to a file. Meanwhile, at random moments,
(a) the real logrotate (/usr/sbin/logrotate -f) rotates the file, in ``create`` mode (rename,
then a new file; the writer reopens the path for every write, as an app reopening on SIGHUP
would, so some writes still land in the renamed file) or in ``copytruncate`` mode (the writer
keeps one O_APPEND descriptor), and (b) the sidecar's whole process group is SIGKILLed and,
after a random pause, restarted on the same state dir.

At the end the sidecar is left up until the count settles, then lines written are compared with
sum(ml_predictions_total):

* create mode: must be exact (nothing lost, nothing counted twice);
* copytruncate mode: never more than written; the difference (lines written between logrotate's
  copy and its truncate, which exist only in the copy) is reported.

Exit code 1 on a mismatch. The whole run is bounded by --duration (split over the modes).

    python3 bench/torture_tail.py [--duration 120] [--mode both|create|copytruncate] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Daemon, sample_sum, table  # noqa: E402

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


class Writer(threading.Thread):
    def __init__(self, path: str, mode: str, rate: int, seed: int):
        super().__init__(daemon=True)
        self.path, self.mode, self.rate = path, mode, rate
        self.rng = random.Random(seed)
        self.written = 0
        self.stop_flag = threading.Event()

    def _lines(self, n: int) -> bytes:
        out = []
        for _ in range(n):
            self.written += 1
            out.append(orjson.dumps({"event": "prediction", "model": "torture", "version": "v1",
                                     "status": "success", "latency_s": 0.01,
                                     "prediction_id": f"n-{self.written:09d}"}))
        return b"\n".join(out) + b"\n"

    def run(self) -> None:
        fd = None
        if self.mode == "copytruncate":
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            next_at = time.monotonic()
            while not self.stop_flag.is_set():
                n = self.rng.randint(1, max(1, self.rate // 50))
                data = self._lines(n)
                if fd is not None:
                    os.write(fd, data)
                else:
                    f = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    try:
                        os.write(f, data)
                    finally:
                        os.close(f)
                next_at += n / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            if fd is not None:
                os.close(fd)


def count(d: Daemon) -> float:
    return sample_sum(d.metrics(), "ml_predictions_total")


def torture(mode: str, seconds: float, args, work: str) -> dict:
    rng = random.Random(args.seed)
    run = os.path.join(work, mode)
    logdir = os.path.join(run, "log")
    os.makedirs(logdir)
    path = os.path.join(logdir, "events.jsonl")
    open(path, "wb").close()
    conf = os.path.join(run, "logrotate.conf")
    with open(conf, "w") as fh:
        fh.write(f"{path} {{\n    rotate {args.keep}\n    missingok\n    nocompress\n"
                 + ("    copytruncate\n" if mode == "copytruncate" else "    create 0644\n") + "}\n")
    lr_state = os.path.join(run, "logrotate.state")
    state_dir = os.path.join(run, "state")
    port = common.free_port()
    d = Daemon(run, "--tail", path, state_dir=state_dir, port=port, log_name="sidecar.log")
    d.start()
    w = Writer(path, mode, args.rate, args.seed)
    w.start()
    kills = rotations = 0
    rot_errors: list[str] = []
    t0 = time.monotonic()
    end = t0 + seconds
    next_rotate = t0 + rng.uniform(*args.rotate_every)
    next_kill = t0 + rng.uniform(*args.kill_every)
    restart_at = None
    # Diagnosis: files whose whole life (created by one rotation, renamed by the next) fell
    # inside one outage were never opened by a running sidecar.
    up = True
    last_ready_check = 0.0
    seen: set[int] = set()
    unseen_rotated: list[int] = []
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if not up and d.proc is not None and now - last_ready_check > 0.2:
                last_ready_check = now
                try:
                    up = d.ready()
                except (OSError, RuntimeError):
                    up = False
            if up:
                try:
                    seen.add(os.stat(path).st_ino)
                except FileNotFoundError:
                    pass
            if now >= next_rotate:
                try:
                    ino = os.stat(path).st_ino
                    if ino not in seen:
                        unseen_rotated.append(ino)
                except FileNotFoundError:
                    pass
                r = subprocess.run([LOGROTATE, "-f", "-s", lr_state, conf], capture_output=True, timeout=30)
                rotations += 1
                if r.returncode != 0:
                    rot_errors.append(r.stderr.decode()[-300:])
                next_rotate = time.monotonic() + rng.uniform(*args.rotate_every)
            if restart_at is None and now >= next_kill and d.proc is not None:
                d.kill()
                up = False
                kills += 1
                restart_at = time.monotonic() + rng.uniform(*args.down_for)
            if restart_at is not None and now >= restart_at:
                d.start(wait=False)  # no wait: rotations go on while it starts up
                restart_at = None
                next_kill = time.monotonic() + rng.uniform(*args.kill_every)
            time.sleep(0.02)
    finally:
        w.stop_flag.set()
        w.join(10)
    if d.proc is None:
        d.start()
    else:
        common.wait_for(d.ready, 30, what="sidecar ready")
    # Let it settle: exact in create mode; stable for a few seconds in copytruncate mode.
    got, stable_since, last = -1.0, time.monotonic(), None
    deadline = time.monotonic() + args.settle
    while time.monotonic() < deadline:
        got = count(d)
        if got == w.written:
            time.sleep(0.6)
            got = count(d)
            break
        if got != last:
            last, stable_since = got, time.monotonic()
        elif mode == "copytruncate" and time.monotonic() - stable_since > 5:
            break
        time.sleep(0.2)
    text = d.metrics()
    rejected = sample_sum(text, "mlsidecar_events_rejected_total")
    d.stop()
    unseen_lines = 0
    for name in os.listdir(logdir):
        p = os.path.join(logdir, name)
        if os.stat(p).st_ino in unseen_rotated:
            with open(p, "rb") as fh:
                unseen_lines += fh.read().count(b"\n")
    ok = got == w.written if mode == "create" else got <= w.written
    return {"mode": mode, "seconds": seconds, "written": w.written, "counted": got, "kills": kills,
            "rotations": rotations, "rot_errors": rot_errors, "rejected": rejected, "ok": ok,
            "unseen_files": len(unseen_rotated), "unseen_lines": unseen_lines,
            "log": d.log_path}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds in all (split over the modes)")
    ap.add_argument("--mode", choices=("both", "create", "copytruncate"), default="both")
    ap.add_argument("--rate", type=int, default=2000, help="lines per second the writer appends")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--keep", type=int, default=1000, help="logrotate 'rotate' count")
    ap.add_argument("--settle", type=float, default=60.0, help="at most this long for the final count")
    args = ap.parse_args()
    args.rotate_every = (0.5, 3.0)
    args.kill_every = (1.0, 6.0)
    args.down_for = (0.0, 1.5)

    modes = ["create", "copytruncate"] if args.mode == "both" else [args.mode]
    work = tempfile.mkdtemp(prefix="torture-")
    common.header(f"Tail torture: {', '.join(modes)}, {args.duration:.0f} s, {args.rate} lines/s, seed {args.seed}")
    results = []
    try:
        for mode in modes:
            print(f"  {mode} ...", flush=True)
            results.append(torture(mode, args.duration / len(modes), args, work))
        rows = []
        for r in results:
            diff = r["written"] - r["counted"]
            verdict = "ok" if r["ok"] else "FAIL"
            if r["mode"] == "copytruncate" and r["ok"] and diff:
                verdict = f"ok ({diff:,.0f} lost in copy-truncate windows, none counted twice)"
            rows.append([r["mode"], f"{r['seconds']:.0f} s", r["rotations"], r["kills"], f"{r['written']:,}",
                         f"{r['counted']:,.0f}", f"{diff:,.0f}", f"{r['rejected']:,.0f}", verdict])
            if r["unseen_files"]:
                print(f"  {r['mode']}: {r['unseen_files']} file(s) were created and rotated away while the sidecar "
                      f"was down (never opened by it), holding {r['unseen_lines']:,} lines")
            for e in r["rot_errors"][:3]:
                print(f"  logrotate said: {e}")
        print()
        print(table(["mode", "duration", "rotations", "SIGKILLs", "lines written", "counted", "written - counted",
                     "rejected", "result"], rows))
        failed = not all(r["ok"] for r in results)
        if failed:
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
