"""How long a workload's write can wait on the sidecar: 50 concurrent writers, three ways to write.

Each writer process sends ``--lines`` prediction events of about ``--line-bytes`` bytes, as fast as
it can, to a running daemon, and times every single write:

* ``stream, blocking sendall``: a plain blocking unix stream socket (what ``socat``/``nc -U`` or a
  hand-written client does). When the sidecar is behind, the kernel buffer fills and the write waits.
* ``EventClient(stream=)``: the same socket, non-blocking; what the kernel cannot take is dropped whole.
* ``EventClient(socket=)``: the datagram socket, non-blocking; a full queue drops the event.

It prints, per way, how many writes blocked (the writer slept inside the call: a voluntary context
switch), the median / p99 / max wall time of one write (on a box with fewer cores than writers this
includes time the writer was merely preempted), the events sent and dropped by the writers, and what
the sidecar counted (accepted + dropped + rejected there must equal what was sent).

    python3 bench/bench_writers.py [--writers 50] [--lines 200] [--line-bytes 7000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Daemon, header, sample_sum, table, wait_for  # noqa: E402


def _line(i: int, size: int) -> bytes:
    import orjson
    ev = {"event": "prediction", "model": "m", "version": "v", "latency_s": 0.01, "request_id": ""}
    base = len(orjson.dumps(ev)) + 1
    ev["request_id"] = f"{i:08d}" + "r" * max(0, size - base - 8)
    return orjson.dumps(ev) + b"\n"


def _writer(mode: str, path: str, lines: int, size: int, start_at: float, out) -> None:
    import resource

    from mlsidecar.client import EventClient
    data = _line(os.getpid(), size)
    times = []
    waited = 0  # writes during which the process slept (a voluntary context switch): it was blocked
    sent = dropped = 0

    def nvcsw() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    while time.time() < start_at:
        time.sleep(0.001)
    if mode == "blocking":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)  # bounded: a write stuck this long fails the run
        s.connect(path)
        for _ in range(lines):
            v0, t0 = nvcsw(), time.perf_counter()
            s.sendall(data)
            times.append(time.perf_counter() - t0)
            waited += nvcsw() > v0
            sent += 1
        s.close()
    else:
        c = EventClient(stream=path) if mode == "stream" else EventClient(socket=path)
        payload = data[:-1]
        import orjson
        fields = orjson.loads(payload)
        fields.pop("event")
        for _ in range(lines):
            v0, t0 = nvcsw(), time.perf_counter()
            c.emit("prediction", **fields)
            times.append(time.perf_counter() - t0)
            waited += nvcsw() > v0
        # The stream client may hold the tail of one cut line: hand it on (bounded).
        deadline = time.monotonic() + 10
        while mode == "stream" and c._unsent and time.monotonic() < deadline:
            time.sleep(0.01)
            with c._lock:
                c._send_stream(b"")
        sent, dropped = c.sent, c.dropped
        c.close()
    out.put((times, sent, dropped, waited))


def run(mode: str, args, workdir: str) -> list:
    stream = os.path.join(workdir, f"{mode}.sock")
    dgram = os.path.join(workdir, f"{mode}.dgram")
    d = Daemon(workdir, "--socket", stream, "--socket-datagram", dgram,
               state_dir=os.path.join(workdir, f"state-{mode}")).start()
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        start_at = time.time() + 1.0
        path = dgram if mode == "datagram" else stream
        procs = [ctx.Process(target=_writer, args=(mode, path, args.lines, args.line_bytes, start_at, out))
                 for _ in range(args.writers)]
        for p in procs:
            p.start()
        results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(30)
        times = sorted(t for r in results for t in r[0])
        sent = sum(r[1] for r in results)
        dropped = sum(r[2] for r in results)
        waited = sum(r[3] for r in results)

        def counted():
            text = d.metrics()
            got = sample_sum(text, "ml_predictions_total")
            lost = sample_sum(text, "mlsidecar_events_dropped_total")
            rej = sample_sum(text, "mlsidecar_events_rejected_total")
            return (got, lost, rej) if got + lost + rej >= sent else None
        got, lost, rej = wait_for(counted, 120, what="the sidecar counted every event sent")
        q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
        return [mode, f"{waited:,}", f"{q(0.5) * 1e3:.3f} ms", f"{q(0.99) * 1e3:.2f} ms", f"{times[-1] * 1e3:.1f} ms",
                f"{sent:,}", f"{dropped:,}", f"{got:,.0f} / {lost:,.0f} / {rej:,.0f}",
                "ok" if got + lost + rej == sent else "MISMATCH"]
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=50)
    ap.add_argument("--lines", type=int, default=200, help="events per writer")
    ap.add_argument("--line-bytes", type=int, default=7000)
    ap.add_argument("--modes", default="blocking,stream,datagram")
    args = ap.parse_args()
    header(f"Writers: {args.writers} concurrent, {args.lines} events of {args.line_bytes} B each")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlsidecar-writers-") as workdir:
        for mode in args.modes.split(","):
            rows.append(run(mode, args, workdir))
    names = {"blocking": "stream, blocking sendall", "stream": "EventClient(stream=)",
             "datagram": "EventClient(socket=) datagram"}
    for r in rows:
        r[0] = names[r[0]]
    print(table(["writer", "writes that blocked", "write p50", "write p99", "write max", "sent", "dropped by writer",
                 "sidecar accepted / dropped / rejected", "counts"], rows))


if __name__ == "__main__":
    main()
