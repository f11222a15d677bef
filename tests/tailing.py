"""Test helper: drive a Tailer as the tail worker does, without the worker."""

from __future__ import annotations

from mlsidecar.sources.tail import Tailer


def drain(t: Tailer, rounds: int = 3) -> list[int]:
    """Scan, then read every open file until nothing more comes; the sequence numbers read
    (the ``seq`` field that ends each test line), in order."""
    out: list[int] = []
    for _ in range(rounds):
        t.scan()
        for _ in range(50):
            got = 0
            for tf in t.readable():
                lines = t.read(tf)
                got += len(lines)
                out += [int(x.rsplit(b":", 1)[1].rstrip(b"}\r")) for x in lines if x.strip()]
            if not got:
                break
    return out
