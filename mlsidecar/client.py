"""A tiny helper for Python workloads: one call per event, standard library only.

It never raises into the workload and never waits for the sidecar: an event
that the sidecar's socket cannot take right now, or a file that cannot be
written, is dropped and counted in ``EventClient.dropped``.

    events = EventClient(socket="/var/run/ml/events.dgram")    # datagram socket
    events = EventClient(stream="/var/run/ml/events.sock")     # stream socket, non-blocking
    events = EventClient(path="/var/log/app/events.jsonl")     # appended file
    events.prediction("resnet50", "v3", latency_s=0.012, confidence=0.93)

The stream mode writes without blocking: what the kernel's socket buffer
(about 200 KB) cannot take is dropped whole, never half a line. A plain
blocking ``sendall`` on the stream socket, by contrast, waits whenever the
sidecar is behind (see docs/events.md, "Which writer never blocks").
"""

from __future__ import annotations

import json
import math
import os
import socket as _socket
import threading
import time


def _non_finite_as_text(v):
    """NaN and infinities as the strings the sidecar reads for losses ("NaN", "Infinity",
    "-Infinity"): a blown-up loss is reported, and a NaN where no NaN may be is rejected by the
    sidecar and counted there, never dropped here unseen."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _non_finite_as_text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_non_finite_as_text(x) for x in v]
    return v


class EventClient:
    def __init__(self, path: str | None = None, socket: str | None = None, stream: str | None = None):
        if sum(x is not None for x in (path, socket, stream)) != 1:
            raise ValueError("give exactly one of path=, socket= or stream=")
        self.path = path
        self.socket_path = socket
        self.stream_path = stream
        self.dropped = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._sock: _socket.socket | None = None
        self._fd: int | None = None
        self._stream: _socket.socket | None = None
        self._unsent = b""  # the tail of a line the stream took only part of

    def emit(self, event: str, **fields) -> bool:
        """Send one event; True when it was handed on, False when it was dropped."""
        try:
            ev = {"event": event, **fields}
            try:
                data = json.dumps(ev, separators=(",", ":"), allow_nan=False)
            except ValueError:  # NaN or infinity: JSON has no literal for them
                data = json.dumps(_non_finite_as_text(ev), separators=(",", ":"), allow_nan=False)
            return self._send(data.encode() + b"\n")
        except Exception:  # noqa: BLE001 - the workload must never see our errors
            self.dropped += 1
            return False

    def _send(self, data: bytes) -> bool:
        with self._lock:
            try:
                if self.stream_path is not None:
                    if not self._send_stream(data):
                        self.dropped += 1
                        return False
                elif self.socket_path is not None:
                    if self._sock is None:
                        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
                        self._sock.setblocking(False)
                    self._sock.sendto(data, self.socket_path)
                elif self.path is not None:
                    if self._fd is None:
                        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                    if os.write(self._fd, data) != len(data):
                        raise OSError("short write")
            except OSError:
                self.dropped += 1
                self._reset()
                return False
        self.sent += 1
        return True

    def _send_stream(self, data: bytes) -> bool:
        """Hand ``data`` to the stream socket without waiting; False when it was not taken.

        A line is either sent whole or not at all: when the kernel takes only part
        of one, the rest goes out first on a later call, before any new line."""
        if self.stream_path is None:  # not a stream client
            return False
        if self._stream is None:
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(self.stream_path)
            except BlockingIOError:  # the sidecar's backlog is full right now
                s.close()
                return False
            except OSError:
                s.close()
                raise
            self._stream = s
        if self._unsent:
            try:
                n = self._stream.send(self._unsent)
            except BlockingIOError:
                return False
            self._unsent = self._unsent[n:]
            if self._unsent:
                return False
        try:
            n = self._stream.send(data)
        except BlockingIOError:
            return False
        self._unsent = data[n:]
        return True

    def _reset(self) -> None:
        """After an error (socket gone, file rotated away) open afresh next time."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            self._unsent = b""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def reopen(self) -> None:
        """Call after log rotation (e.g. from a SIGHUP handler) to write to the new file."""
        with self._lock:
            self._reset()

    def close(self) -> None:
        with self._lock:
            self._reset()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # --- one method per common kind -------------------------------------------------
    def prediction(self, model: str, version: str, latency_s: float, status: str = "success",
                   confidence: float | None = None, **extra) -> bool:
        fields = {"model": model, "version": version, "status": status, "latency_s": latency_s, **extra}
        if confidence is not None:
            fields["confidence"] = confidence
        return self.emit("prediction", **fields)

    def training(self, job: str, epoch: float | None = None, losses: dict | None = None,
                 learning_rate: float | None = None) -> bool:
        fields = {k: v for k, v in (("epoch", epoch), ("losses", losses), ("learning_rate", learning_rate))
                  if v is not None}
        return self.emit("training", job=job, **fields)

    def batch(self, job: str, duration_s: float, batch_size: int | None = None) -> bool:
        fields = {"duration_s": duration_s}
        if batch_size is not None:
            fields["batch_size"] = batch_size
        return self.emit("batch", job=job, **fields)

    def pipeline(self, pipeline: str, stage: str, records: int, duration_s: float,
                 status: str = "success") -> bool:
        return self.emit("pipeline", pipeline=pipeline, stage=stage, records=records,
                         duration_s=duration_s, status=status)

    def freshness(self, pipeline: str, source: str, data_ts: float | None = None) -> bool:
        return self.emit("freshness", pipeline=pipeline, source=source,
                         data_ts=time.time() if data_ts is None else data_ts)

    def metric(self, name: str, value: float, type: str = "gauge", **labels: str) -> bool:
        return self.emit("metric", name=name, type=type, value=value, labels=labels)
