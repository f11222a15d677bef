"""Unix socket sources: one JSON object per line (stream) or per datagram.

A reader thread drains the kernel's socket buffers as fast as it can into a
queue bounded in events and bytes; the worker's main thread parses and maps
from that queue. When the queue is full the reader drops what it just read and
counts it (``mlsidecar_events_dropped_total{reason="backpressure"}``), so the
sidecar never grows without bound and never stops reading. A non-blocking
writer (a datagram, or ``EventClient``) is therefore never made to wait; a
*blocking* stream writer can still wait when the sidecar gets no CPU to read
(the kernel buffer, about 200 KB per connection, is all that absorbs a burst).
Stream connections are bounded in number and in unfinished-line bytes.

The socket file is created with the configured mode (and group), and a
symlink or any other non-socket file planted at its path is refused, never
followed or removed.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import queue
import selectors
import socket
import stat
import struct
import threading
import time
from typing import Protocol, cast

from ..logs import RateLimitedLog

log = logging.getLogger("mlsidecar.socket")

READ_BYTES = 1 << 16
# mlsidecar_events_dropped_total{reason}: the queue is full (events or bytes) / the unfinished
# lines of all stream connections reached sources.socket_buffer_bytes.
BACKPRESSURE = "backpressure"
BUFFER_LIMIT = "buffer_limit"
CRASH = "crash"  # taken off the socket, then lost with the process (counted at the next start)
# mlsidecar_socket_connections_rejected_total{reason}
CONNECTION_LIMIT = "connection_limit"
FD_LIMIT = "fd_limit"
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 1.0  # seconds the listener is left alone after running out of descriptors


class Ledger(Protocol):
    """Told of every batch of lines taken off a socket, before anything can lose them (the
    socket worker's :class:`~mlsidecar.runtime.state.SocketLedger`)."""

    def received(self, source: str, n: int) -> None: ...


class SocketError(Exception):
    """The socket path cannot be used (a symlink or a regular file is in the way)."""


def bind_unix(path: str, kind: int, mode: int, group: str = "") -> socket.socket:
    """Bind a unix socket at ``path`` with ``mode``; replace only a stale socket file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"{path} exists and is not a socket (a symlink or file is in the way); "
                              "refusing to touch it")
        os.unlink(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)  # the umask already gave this mode; make it exact
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid, follow_symlinks=False)
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    sock.setblocking(False)
    return sock


class SocketReader(threading.Thread):
    """Drains the sockets into a bounded queue of line lists; drops (and counts) when full."""

    ledger: Ledger | None = None  # lines taken off the sockets, for the next start

    def __init__(self, stream: socket.socket | None, dgram: socket.socket | None,
                 max_line_bytes: int, max_pending: int, max_pending_bytes: int = 16 << 20,
                 max_connections: int = 256, max_buffered_bytes: int = 8 << 20):
        super().__init__(name="socket-reader", daemon=True)
        self.sel = selectors.DefaultSelector()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.max_line = max_line_bytes
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_connections = max_connections
        self.max_buffered = max_buffered_bytes
        self.lock = threading.Lock()
        self.pending = 0
        self.pending_bytes = 0
        self.buffered = 0  # bytes of unfinished lines, all stream connections together
        self.dropped: dict[tuple[str, str], int] = {}
        self.oversized: dict[str, int] = {}
        self.rejected: dict[str, int] = {}  # stream connections closed at accept, by reason
        self.connections = 0
        self.warn = RateLimitedLog(log, 60.0)
        self._listen_paused: dict[socket.socket, float] = {}
        self.stopping = False
        self._buffers: dict[socket.socket, bytearray] = {}
        self._skipping: set[socket.socket] = set()
        # Who connects (SO_PEERCRED), for the process collector's "sources" mode.
        self._peer_of: dict[socket.socket, int] = {}
        self._peers_seen: dict[int, float] = {}
        self.wake = threading.Event()
        self.names = {}
        if stream is not None:
            self.sel.register(stream, selectors.EVENT_READ, "listen")
            self.names["stream"] = stream.getsockname()
        if dgram is not None:
            self.sel.register(dgram, selectors.EVENT_READ, "dgram")
            self.names["dgram"] = dgram.getsockname()

    def _offer(self, source: str, lines: list[bytes], nbytes: int) -> None:
        n = len(lines)
        if self.ledger is not None:  # before anything can be lost: a crash counts it later
            self.ledger.received(str(source), n)
        with self.lock:
            if self.pending + n > self.max_pending or self.pending_bytes + nbytes > self.max_pending_bytes:
                self._drop(source, BACKPRESSURE, n)
                return
            self.pending += n
            self.pending_bytes += nbytes
        self.queue.put((source, lines, nbytes))
        self.wake.set()

    def _drop(self, source: str, reason: str, n: int) -> None:
        key = (source, reason)
        self.dropped[key] = self.dropped.get(key, 0) + n

    def take(self) -> tuple[str, list[bytes], int] | None:
        """The oldest queued lines: (source, lines, their bytes), or None."""
        try:
            source, lines, nbytes = self.queue.get_nowait()
        except queue.Empty:
            return None
        with self.lock:
            self.pending -= len(lines)
            self.pending_bytes -= nbytes
        return source, lines, nbytes

    def run(self) -> None:
        while not self.stopping:
            for key, _ in self.sel.select(timeout=0.2):
                sock = cast(socket.socket, key.fileobj)  # only sockets are registered
                try:
                    if key.data == "listen":
                        self._accept(sock)
                    elif key.data == "dgram":
                        self._datagrams(sock)
                    else:
                        self._read(sock)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        self.warn.warning(f"error-{exc.errno}", "socket error: %s", exc)
                        if key.data == "conn":
                            self._close(sock)
            self._resume_listeners()

    def _reject(self, reason: str) -> None:
        with self.lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _resume_listeners(self) -> None:
        if not self._listen_paused:
            return
        now = time.monotonic()
        for listener, until in list(self._listen_paused.items()):
            if now >= until:
                del self._listen_paused[listener]
                self.sel.register(listener, selectors.EVENT_READ, "listen")

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            # Out of descriptors: stop watching the listener for a moment rather than being
            # woken for the same pending connection in a tight loop.
            self._reject(FD_LIMIT)
            self.warn.warning("accept", "cannot accept a connection on %s (%s); pausing accept for %.1f s",
                              self.names.get("stream"), exc.strerror, ACCEPT_PAUSE)
            self.sel.unregister(listener)
            self._listen_paused[listener] = time.monotonic() + ACCEPT_PAUSE
            return
        if len(self._buffers) >= self.max_connections:
            self._reject(CONNECTION_LIMIT)
            self.warn.warning("limit", "%s: %d stream connections open (sources.socket_max_connections); "
                                       "closing new ones", self.names.get("stream"), len(self._buffers))
            conn.close()
            return
        try:
            pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        except (OSError, AttributeError):
            pid = 0
        if pid > 0:
            self._peer_of[conn] = pid
            self._peers_seen[pid] = time.monotonic()
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        self.sel.register(conn, selectors.EVENT_READ, "conn")
        self.connections += 1

    def _read(self, conn: socket.socket) -> None:
        """Read what one connection sent, keeping the unfinished lines of all within budget."""
        before = len(self._buffers.get(conn, b""))
        try:
            self._read_conn(conn)
        finally:
            buf = self._buffers.get(conn)
            self.buffered += (len(buf) if buf is not None else 0) - before
        if buf is not None and buf and self.buffered > self.max_buffered:
            # This connection's line would take the sum past the budget: drop it, skip to its newline.
            self.buffered -= len(buf)
            buf.clear()
            self._skipping.add(conn)
            with self.lock:
                self._drop(self.names["stream"], BUFFER_LIMIT, 1)

    def _close(self, conn: socket.socket) -> None:
        """Forget a connection after an error on it."""
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        buf = self._buffers.pop(conn, None)
        if buf:
            self.buffered -= len(buf)
        self._skipping.discard(conn)
        self._peer_of.pop(conn, None)
        conn.close()

    def _read_conn(self, conn: socket.socket) -> None:
        source = self.names["stream"]
        data = conn.recv(READ_BYTES)
        buf = self._buffers[conn]
        if not data:
            if buf and conn not in self._skipping:
                self._offer(source, [bytes(buf)], len(buf))  # a last line without its newline
            self.sel.unregister(conn)
            self._buffers.pop(conn, None)
            self._skipping.discard(conn)
            pid = self._peer_of.pop(conn, 0)
            if pid:
                self._peers_seen[pid] = time.monotonic()
            conn.close()
            return
        if conn in self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._skipping.discard(conn)
            data = data[nl + 1:]
        buf += data
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self.max_line:
                self._count_oversized(source)
                buf.clear()
                self._skipping.add(conn)
            return
        lines = bytes(buf[:end]).split(b"\n")
        del buf[:end + 1]
        if len(buf) > self.max_line:
            self._count_oversized(source)
            buf.clear()
            self._skipping.add(conn)
        self._offer(source, lines, end)

    def _datagrams(self, sock: socket.socket) -> None:
        source = self.names["dgram"]
        for _ in range(256):  # bounded burst, then let the selector look at the others
            try:
                data, _anc, flags, _addr = sock.recvmsg(self.max_line + 1)
            except BlockingIOError:
                return
            if flags & socket.MSG_TRUNC or len(data) > self.max_line:
                self._count_oversized(source)
                continue
            self._offer(source, data.rstrip(b"\n").split(b"\n"), len(data))

    def _count_oversized(self, source: str) -> None:
        with self.lock:
            self.oversized[source] = self.oversized.get(source, 0) + 1

    def peers(self, within: float = 60.0) -> list[int]:
        """PIDs connected now, or connected within ``within`` seconds (a client per event)."""
        now = time.monotonic()
        seen = list(self._peers_seen.items())
        for pid, t in seen:
            if now - t >= within:
                self._peers_seen.pop(pid, None)
        return sorted({*list(self._peer_of.values()), *(p for p, t in seen if now - t < within)})

    def drain_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int], dict[str, int]]:
        """Counts since the last call: dropped by (source, reason), oversized by source,
        stream connections rejected by reason."""
        with self.lock:
            dropped, self.dropped = self.dropped, {}
            oversized, self.oversized = self.oversized, {}
            rejected, self.rejected = self.rejected, {}
        return dropped, oversized, rejected


def unbind(sock: socket.socket, path: str) -> None:
    """Close a socket made by :func:`bind_unix` and remove its file (only if it is a socket)."""
    sock.close()
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
