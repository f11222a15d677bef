"""Tail torture with exact accounting: which lines were lost or counted twice, and why.

``torture_tail.py`` runs the real daemon and compares one sum; when it fails, it cannot say which
lines went wrong. This one drives the tailer (``mlsidecar.sources.tail.Tailer``) in one process
against the same real logrotate and the same alike lines, and keeps, for every line number, how
many times it was counted:

* a writer thread appends numbered lines in batches of 1-200, opening the path for each batch;
* a rotator thread runs ``logrotate -f`` every 0.2-1 s (``create``, ``dateext`` or
  ``delaycompress``, ``rotate 1000``);
* the tailer reads; at random moments it "flushes" (the positions that changed are merged into a
  journal as the tail worker's journal merges them, through JSON, and the lines read since the
  last flush are counted), and at random moments it is "killed" (dropped without a flush: the
  lines read since the last flush are forgotten, as a SIGKILL forgets them) and started again
  from the journal, after a pause as long as the daemon's restart (``--down``), sometimes at once
  (a burst of kills).

At the end it prints the lines counted twice and those never counted, as ranges, and the
tailer's log (``tail.log`` in the run's directory, with one line per read: file, inode, offset,
line numbers) says what happened to them. Exit code 1 on any mismatch.

    python3 bench/torture_tail_exact.py [--mode delaycompress] [--duration 120] [--seed 1]
    TORTURE_DEBUG=1 python3 bench/torture_tail_exact.py ...   # the tailer's log at debug level
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlsidecar.sources.tail import Tailer  # noqa: E402

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
MODES = {
    "create": "nocompress",
    "dateext": "dateext\n    dateformat -%Y%m%d-%H%M%S\n    nocompress",
    "delaycompress": "compress\n    delaycompress",
}
LINE = '{"event":"prediction","model":"m","version":"v","status":"success","latency_s":0.01,"seq":%d}\n'
SEQ = re.compile(rb'"seq":(\d+)')
log = logging.getLogger("torture")


def ranges(seqs: list[int]) -> str:
    """``[3, 4, 5, 9]`` as ``3-5, 9``."""
    out: list[str] = []
    for s in sorted(seqs):
        if out and int(out[-1].split("-")[-1]) == s - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ", ".join(out[:20]) + (f" ... ({len(out)} ranges)" if len(out) > 20 else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="delaycompress")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of writing, rotating and killing")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the run's directory even when exact")
    ap.add_argument("--watch", choices=("poll", "inotify"), default="inotify",
                    help="as the daemon: inotify wakes and names the files written, a look every second")
    ap.add_argument("--down", default="1.5,2.5", metavar="MIN,MAX",
                    help="seconds down between a kill and the start, as long as the daemon's restart "
                    "(one kill in five restarts at once)")
    args = ap.parse_args()
    down_min, down_max = (float(x) for x in args.down.split(","))
    if not os.path.exists(LOGROTATE):
        print("logrotate is not installed (apt-get install logrotate)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix=f"torture-exact-{args.mode}-")
    path = os.path.join(work, "events.jsonl")
    conf = os.path.join(work, "logrotate.conf")
    with open(conf, "w") as fh:
        fh.write(f"{path} {{\n    rotate 1000\n    missingok\n    ifempty\n    create 0644\n"
                 f"    {MODES[args.mode]}\n}}\n")
    level = logging.DEBUG if os.environ.get("TORTURE_DEBUG") else logging.INFO  # debug: every copy decision
    logging.basicConfig(filename=os.path.join(work, "tail.log"), level=level,
                        format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        w = random.Random(args.seed + 1)
        seq = 0
        while not stop.is_set():
            n = w.randint(1, 200)
            with open(path, "a") as fh:
                fh.write("".join(LINE % (seq + i) for i in range(n)))
            seq += n
            written[0] = seq
            time.sleep(n / 2500)

    def rotator() -> None:
        r = random.Random(args.seed + 2)
        while not stop.wait(r.uniform(0.2, 1.0)):
            subprocess.run([LOGROTATE, "-f", "-s", os.path.join(work, "state"), conf],
                           stderr=subprocess.DEVNULL, check=False)

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=rotator, daemon=True)]
    for th in threads:
        th.start()
    counted: dict[int, int] = {}
    journal: dict[str, dict] = {}  # the positions, as the tail worker's journal keeps them
    saved_at = 0.0
    starts = 0

    def flush(t: Tailer) -> float:
        for key, pos in t.position_changes().items():
            if pos is None:
                journal.pop(key, None)
            else:
                journal.setdefault(key, {}).update(orjson.loads(orjson.dumps(pos)))
        return t.listed_at

    def restored() -> dict:
        return orjson.loads(orjson.dumps(journal))

    last_look = [0.0]

    def read_all(t: Tailer, into: list[int], everything: bool = False) -> None:
        # As the tail worker does: look at the directories when inotify asks or every second.
        t.wait(0.05)
        now = time.monotonic()
        looked = everything or t.rescan or now - last_look[0] >= 1.0 or args.watch == "poll"
        if looked:
            t.scan()
            last_look[0] = now
        for tf in t.due(looked):
            offset = tf.offset
            got = [int(m.group(1)) for ln in t.read(tf) if (m := SEQ.search(ln))]
            if got:
                log.info("read %s inode %d from byte %d: lines %d..%d", tf.name, tf.ino, offset, got[0], got[-1])
            into += got

    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        starts += 1
        log.info("=== start %d", starts)
        t = Tailer([path], positions=restored(), saved_at=saved_at, watch=args.watch)
        pending: list[int] = []
        # The very first start reads and flushes once before it can be killed: before that, the
        # lines on disk are history to the tailer, as to a sidecar that never ran.
        for i in range(max(rng.randint(0, 40), starts == 1)):
            read_all(t, pending)
            t.retire_quiet(time.monotonic(), 5.0)
            if rng.random() < 0.3 or (starts == 1 and i == 0):  # a flush: the lines read so far are counted
                saved_at = flush(t)
                for s in pending:
                    counted[s] = counted.get(s, 0) + 1
                pending = []
            time.sleep(rng.uniform(0, 0.1))
        t.stop()  # killed: what was read since the last flush is forgotten
        log.info("=== killed %d", starts)
        if rng.random() < 0.8:
            time.sleep(rng.uniform(down_min, down_max))  # down as long as a restart takes
    stop.set()
    for th in threads:
        th.join(5)
    t = Tailer([path], positions=restored(), saved_at=saved_at, watch=args.watch)
    last: list[int] = []
    for _ in range(40):  # the rest, until nothing more comes
        before = len(last)
        read_all(t, last, everything=True)
        t.retire_quiet(time.monotonic(), 5.0)
        if len(last) == before and _ > 5:
            break
        time.sleep(0.05)
    t.stop()
    for s in last:
        counted[s] = counted.get(s, 0) + 1
    twice = [s for s, c in counted.items() if c > 1]
    lost = sorted(set(range(written[0])) - set(counted))
    print(f"{args.mode}, {args.duration:.0f} s, seed {args.seed}: {starts} starts, {written[0]:,} lines written, "
          f"{len(twice):,} counted twice, {len(lost):,} never counted")
    if twice:
        print("  counted twice:", ranges(twice))
    if lost:
        print("  never counted:", ranges(lost))
    if twice or lost or args.keep:
        print(f"  the tailer's log: {os.path.join(work, 'tail.log')}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if twice or lost else 0


if __name__ == "__main__":
    sys.exit(main())
