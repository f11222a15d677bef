"""Socket source at saturation (issue 9, part 4): accepted and dropped datagrams/s, never blocking.

A daemon listens on a unix datagram socket (``--socket-datagram``); this script plays the
workload and sends one prediction event per datagram from a non-blocking socket as fast as it
can, bounded by --datagrams and --duration. Every send is timed: the workload must never be
blocked, so the slowest send is reported (and p99). A send the kernel refuses (EAGAIN: the
socket buffer is full) returns at once and is counted as refused.

Afterwards every delivered datagram must be accounted for exactly:
sum(ml_predictions_total) + sum(mlsidecar_events_dropped_total) == datagrams delivered, or FAIL.

    python3 bench/bench_socket.py [--datagrams 1000000] [--duration 15] [--max-send-ms 5]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import sys
import tempfile
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.common import Daemon, sample_sum, table, wait_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datagrams", type=int, default=1_000_000, help="at most this many sends")
    ap.add_argument("--duration", type=float, default=15.0, help="at most this many seconds of sending")
    ap.add_argument("--max-send-ms", type=float, default=1.0,
                    help="p99.9 of the send times above this counts as the workload being blocked (FAIL); "
                         "single slow sends on a busy box are the scheduler, and are reported, not failed")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-sock-")
    path = os.path.join(work, "ev.sock")
    d = Daemon(work, "--socket-datagram", path)
    failed = False
    try:
        common.header(f"Socket: datagrams at saturation (at most {args.datagrams:,} or {args.duration:.0f} s)")
        d.start()
        rng = random.Random(11)
        payloads = [orjson.dumps(common.prediction_event(rng, i)) + b"\n" for i in range(4096)]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(path)
        sent = refused = 0
        times = []
        perf = time.perf_counter_ns
        t0 = time.monotonic()
        end = t0 + args.duration
        i = 0
        while i < args.datagrams:
            if (i & 1023) == 0 and time.monotonic() >= end:
                break
            p = payloads[i & 4095]
            a = perf()
            try:
                s.send(p)
                sent += 1
            except BlockingIOError:
                refused += 1
            times.append(perf() - a)
            i += 1
        elapsed = time.monotonic() - t0
        s.close()

        def settled():
            text = d.metrics()
            acc = sample_sum(text, "ml_predictions_total")
            drop = sample_sum(text, "mlsidecar_events_dropped_total")
            return (acc, drop) if acc + drop >= sent else None

        try:
            accepted, dropped = wait_for(settled, 60, 0.2, "every datagram accounted for")
        except TimeoutError:
            text = d.metrics()
            accepted = sample_sum(text, "ml_predictions_total")
            dropped = sample_sum(text, "mlsidecar_events_dropped_total")
        time.sleep(0.6)
        text = d.metrics()
        accepted = sample_sum(text, "ml_predictions_total")
        dropped = sample_sum(text, "mlsidecar_events_dropped_total")
        rejected = sample_sum(text, "mlsidecar_events_rejected_total")
        exact = accepted + dropped == sent and rejected == 0
        times.sort()
        slowest = times[-1] / 1e6 if times else 0.0
        p99 = times[int(len(times) * 0.99)] / 1e3 if times else 0.0
        p999 = times[int(len(times) * 0.999)] / 1e6 if times else 0.0
        over_1ms = sum(1 for t in times if t > 1_000_000)
        blocked = p999 > args.max_send_ms
        failed = not exact or blocked
        print(table(["sends", "seconds", "delivered", "refused (EAGAIN)", "accepted", "dropped (backpressure)",
                     "accepted/s", "dropped/s", "sends/s", "p99 send", "p99.9 send", "sends > 1 ms",
                     "slowest send", "exact"],
                    [[f"{i:,}", f"{elapsed:.2f}", f"{sent:,}", f"{refused:,}", f"{accepted:,.0f}",
                      f"{dropped:,.0f}", f"{accepted / elapsed:,.0f}", f"{dropped / elapsed:,.0f}",
                      f"{i / elapsed:,.0f}", f"{p99:.1f} us", f"{p999 * 1000:.1f} us", f"{over_1ms:,}",
                      f"{slowest:.2f} ms",
                      "ok" if exact else f"FAIL ({accepted:,.0f}+{dropped:,.0f} != {sent:,})"]]))
        print(f"\nworkload never blocked (p99.9 send {p999 * 1000:.1f} us <= {args.max_send_ms} ms; "
              f"slowest {slowest:.2f} ms, {over_1ms} sends over 1 ms): {'yes' if not blocked else 'NO (FAIL)'}")
        print("\nRESULT:", "FAIL" if failed else "all counts exact")
        return 1 if failed else 0
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
