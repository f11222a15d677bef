"""The one scrape port: /metrics, /healthz, /readyz and a small status page (aiohttp).

Collection runs in one background thread, so a slow disk or a huge scrape can
never hold up the health endpoints, and two scrapes never read at once.
Scrapes that arrive while a render is running share it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gzip
import html
import logging
import os
import signal
import socket
import ssl
import time

from aiohttp import web

from . import __version__, negotiate
from . import catalogue as C
from .config import Config
from .exemplars import ExemplarReader
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, MetricsReader
from .listen import bind  # noqa: F401 - where it used to live
from .logs import RateLimitedLog
from .runtime.state import StateDir
from .selfmetrics import SelfMetrics

log = logging.getLogger("mlsidecar.server")

STALE_AFTER = 10.0  # a worker whose status is older than this is not ready


# Why the HTTP server refused a connection or request (mlsidecar_http_rejected_total{reason}).
REJECT_REASONS = ("connection_limit", "evicted_idle", "fd_limit", "auth_busy", "auth_failed")


class _Rendered:
    """One render of the exposition, shared by every scrape that waited for it."""

    __slots__ = ("body", "gzipped")

    def __init__(self, body: bytes):
        self.body = body
        self.gzipped: asyncio.Future | None = None


class Server:
    def __init__(self, cfg: Config, state: StateDir, expected: list[str], clock=time.time):
        self.cfg = cfg
        self.state = state
        self.expected = list(expected)
        self.clock = clock
        # Every family any worker writes: the whole built-in catalogue, not what this process imported.
        self.catalogue = C.builtin()
        self.reader = MetricsReader([state.metrics, *cfg.server.multiproc_dirs], clock=clock,
                                    expiry=self.catalogue.expiry(dict(cfg.expire)), families=self.catalogue)
        self.self_metrics = SelfMetrics()
        self.reader.exemplars = ExemplarReader(state.root)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="collect")
        self.started = clock()
        self.scrapes = 0
        self.renders = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._inflight: dict[bool, asyncio.Future] = {}
        self.last_scrape_seconds = 0.0

    # --- /metrics ---------------------------------------------------------------
    # Scrapes that arrive while a render of the same format is running wait for
    # that render and share its bytes (and its gzip), so 200 concurrent scrapes
    # cost one render, not 200 queued one after another.
    def _render(self, openmetrics: bool) -> _Rendered:
        t0 = time.perf_counter()
        self.renders += 1
        body = self.reader.render(openmetrics, self.own_families()).encode()
        self.last_scrape_seconds = time.perf_counter() - t0
        return _Rendered(body)

    def warm(self) -> None:
        """Parse the metric files before the first scrape (in the collect thread, so a scrape
        that comes meanwhile waits for it and then only reads values; /healthz never waits)."""
        t0 = time.perf_counter()
        try:
            self.reader.warm()
        except Exception:  # noqa: BLE001 - the first scrape parses what is left, as without it
            log.exception("reading the metric files ahead of the first scrape failed")
            return
        log.info("metric files read ahead of the first scrape: %d families in %.2f s",
                 len(self.reader.families), time.perf_counter() - t0)

    def own_families(self) -> list:
        """The server's own counters, rendered with every scrape."""
        return [
            (C.SCRAPES, [((), self.scrapes)]),
            (C.SCRAPE_RENDERS, [((), self.renders)]),
            (C.HTTP_REJECTED, [((("reason", r),), n) for r, n in sorted(self.rejected.items())]),
        ] + self.self_metrics.families(self.state.read_statuses())

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    async def exposition(self, openmetrics: bool, gz: bool) -> bytes:
        loop = asyncio.get_running_loop()
        fut = self._inflight.get(openmetrics)
        if fut is None:
            fut = loop.run_in_executor(self.executor, self._render, openmetrics)
            self._inflight[openmetrics] = fut

            def done(f, key=openmetrics):
                if self._inflight.get(key) is f:
                    del self._inflight[key]

            fut.add_done_callback(done)
        rendered = await asyncio.shield(fut)
        if not gz:
            return rendered.body
        if rendered.gzipped is None:
            rendered.gzipped = loop.run_in_executor(self.executor, gzip.compress, rendered.body, 1)
        return await asyncio.shield(rendered.gzipped)

    async def metrics(self, request: web.Request) -> web.Response:
        fmt = negotiate.choose_format(request.headers.get("Accept"))
        if fmt is None:
            return web.Response(status=406, text=f"Not Acceptable: this endpoint serves {TEXT_CONTENT_TYPE} "
                                                 f"or {OPENMETRICS_CONTENT_TYPE}\n")
        openmetrics = fmt == "openmetrics"
        gz = negotiate.wants_gzip(request.headers.get("Accept-Encoding"))
        self.scrapes += 1
        body = await self.exposition(openmetrics, gz)
        headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
                   "Vary": "Accept, Accept-Encoding"}
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    # --- health -------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        # Unhealthy when the state dir cannot be written at all (read-only, permissions): the
        # sidecar cannot keep values or positions, and a restart may bring a writable mount.
        unwritable = [p for p in self.state.problems() if "not writable" in p]
        if unwritable:
            return web.Response(status=503, text="unhealthy\n" + "".join(f"- {p}\n" for p in unwritable))
        return web.Response(text="ok\n")

    def readiness(self) -> tuple[bool, list[str]]:
        statuses = self.state.read_statuses()
        now = self.clock()
        problems = self.state.problems()
        for identity in self.expected:
            st = statuses.get(identity)
            if st is None:
                problems.append(f"{identity}: not started")
            elif now - st.get("updated", 0) > STALE_AFTER:
                problems.append(f"{identity}: no heartbeat for {now - st['updated']:.0f}s")
            elif st.get("error"):
                problems.append(f"{identity}: {st['error']}")
        return not problems, problems

    async def readyz(self, request: web.Request) -> web.Response:
        ready, problems = self.readiness()
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n" + "".join(f"- {p}\n" for p in problems))

    async def index(self, request: web.Request) -> web.Response:
        statuses = self.state.read_statuses()
        ready, problems = self.readiness()
        rows = []
        for identity in sorted(statuses):
            st = statuses[identity]
            for src in st.get("sources", []):
                # Collectors read no lines: their row says whether they are up instead.
                state = "up" if src.get("open", True) and not src.get("error") else \
                    f"down: {src.get('error') or 'not open'}"
                rows.append(
                    f"<tr><td>{html.escape(identity)}</td><td>{html.escape(str(src.get('name')))}</td>"
                    f"<td>{src.get('lines', '-')}</td><td>{src.get('bytes_behind', '-')}</td>"
                    f"<td>{html.escape(state)}</td></tr>")
            if "accepted" in st:
                rows.append(
                    f"<tr><td>{html.escape(identity)}</td><td><i>{html.escape(st.get('role', ''))} total</i></td>"
                    f"<td>{st['accepted']} accepted, {st.get('rejected', 0)} rejected</td><td></td>"
                    f"<td>{html.escape(st.get('error') or 'up')}</td></tr>")
        path = html.escape(self.cfg.server.telemetry_path)
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mlsidecar</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style></head>
<body><h1>mlsidecar {html.escape(__version__)}</h1>
<p>{'Ready' if ready else 'Not ready: ' + html.escape('; '.join(problems))}.
Last scrape took {self.last_scrape_seconds * 1000:.1f} ms for {self.reader.series} series.</p>
<p><a href="{path}">{path}</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
<table><tr><th>worker</th><th>source</th><th>lines read</th><th>bytes behind</th><th>state</th></tr>
{''.join(rows)}</table></body></html>"""
        return web.Response(text=page, content_type="text/html")

    async def reload(self, request: web.Request) -> web.Response:
        """POST /-/reload: ask the supervisor to re-read the config (SIGHUP), as Prometheus does."""
        if not self.cfg.server.enable_lifecycle:
            return web.Response(status=403, text="Lifecycle API is not enabled (--web.enable-lifecycle).\n")
        if self.cfg.source == "(defaults)":
            return web.Response(status=409, text="nothing to reload: started without --config\n")
        # After the answer is out: the reload restarts this process too.
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getppid(), signal.SIGHUP)
        return web.Response(text="reload requested\n")

    def app(self, middlewares=()) -> web.Application:
        app = web.Application(middlewares=list(middlewares))
        app.router.add_get(self.cfg.server.telemetry_path, self.metrics)
        for path in ("/healthz", "/-/healthy"):
            app.router.add_get(path, self.healthz)
        for path in ("/readyz", "/-/ready"):
            app.router.add_get(path, self.readyz)
        app.router.add_post("/-/reload", self.reload)
        app.router.add_get("/", self.index)
        return app


class _RateLimitFilter(logging.Filter):
    """At most one record per message per minute from aiohttp's and asyncio's loggers.

    Whoever reaches the port can make aiohttp log (a malformed request logs an
    error with a traceback): those become a one-line warning, and repeats are
    counted into the next line instead of flooding the journal.
    """

    def __init__(self, interval: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        key = f"{record.name}:{record.msg}"
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):  # the client's fault: no traceback
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"{record.getMessage()}: {type(exc).__name__}: {str(exc.message)[:120]!r}", (), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        n = self._suppressed.pop(key, 0)
        if n:
            record.msg, record.args = f"{record.getMessage()} ({n} more like this since the last report)", ()
        return True


# accept() errors that mean "out of descriptors or memory": wait, do not spin.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: 22\r\n\r\ntoo many connections\r\n")


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by :class:`Acceptor` until it closes."""

    def __init__(self, inner: asyncio.Protocol, acceptor: Acceptor):
        self.inner = inner
        self.acceptor = acceptor
        self.counted = True
        self.transport = None
        self.busy = 0  # requests of this connection inside a handler now

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.acceptor.open -= 1
        if self.transport is not None:
            self.acceptor.live.pop(self.transport, None)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.acceptor.live[transport] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self.release()
        self.inner.connection_lost(exc)


class Acceptor:
    """Accepts on the scrape port itself, so the number of open connections is bounded.

    aiohttp and asyncio have no connection limit. Here, at ``limit`` open
    connections (TLS handshakes in progress included), the one that has been
    idle longest (no request inside a handler: a half-sent request head, a
    keep-alive between scrapes) is closed to make room, so slow clients cannot
    keep a probe or a scrape out; only when every connection is busy is the new
    one answered 503 and closed. Running out of descriptors pauses accepting
    for a moment instead of spinning. All are counted, and logged at most once
    a minute.
    """

    def __init__(self, sock: socket.socket, factory, ssl_context, limit: int, handshake_timeout: float,
                 on_reject):
        self.sock = sock
        self.factory = factory
        self.ssl_context = ssl_context
        self.limit = limit
        self.handshake_timeout = handshake_timeout
        self.on_reject = on_reject
        self.open = 0
        # Connected transports, least recently active first.
        self.live: dict[asyncio.Transport | None, _Counted] = {}
        self.warn = RateLimitedLog(log, 60.0)
        self._tasks: set[asyncio.Task] = set()

    @property
    def middleware(self):
        """Marks a connection busy while one of its requests is in a handler."""

        @web.middleware
        async def track_busy(request, handler):
            conn = self.live.get(request.transport)
            if conn is None:
                return await handler(request)
            conn.busy += 1
            try:
                return await handler(request)
            finally:
                conn.busy -= 1
                if self.live.pop(request.transport, None) is conn:
                    self.live[request.transport] = conn  # now the most recently active

        return track_busy

    def _evict_idle(self) -> bool:
        for transport, conn in self.live.items():
            if not conn.busy and transport is not None:
                del self.live[transport]
                transport.abort()  # connection_lost follows, and releases its count
                return True
        return False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self.on_reject("fd_limit")
                    self.warn.warning("accept", "scrape port: cannot accept (%s); pausing accept for 0.5 s",
                                      exc.strerror)
                    await asyncio.sleep(0.5)
                else:
                    self.warn.warning("accept-other", "scrape port: accept failed: %s", exc)
                    await asyncio.sleep(0.05)
                continue
            if self.open >= self.limit:
                # Connections accepted in the same burst may not be set up yet (not evictable):
                # give them a few turns of the loop first.
                for _ in range(4):
                    if self.open <= len(self.live) or any(not c.busy for c in self.live.values()):
                        break
                    await asyncio.sleep(0)
                if self._evict_idle():
                    self.on_reject("evicted_idle")
                    self.warn.warning("evict", "scrape port: %d connections open (server.max_connections); "
                                               "closing the longest idle ones to make room", self.open)
                else:
                    self.on_reject("connection_limit")
                    self.warn.warning("limit", "scrape port: %d connections open (server.max_connections), "
                                               "all busy; refusing new ones", self.open)
                    self._refuse(conn)
                    continue
            self.open += 1
            task = asyncio.ensure_future(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _refuse(self, conn: socket.socket) -> None:
        if self.ssl_context is None:
            try:
                conn.setblocking(False)
                conn.send(_REFUSED)
            except OSError:
                pass
        conn.close()

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        proto = _Counted(self.factory(), self)
        extra = {"ssl_handshake_timeout": self.handshake_timeout} if self.ssl_context else {}
        try:
            await loop.connect_accepted_socket(lambda: proto, conn, ssl=self.ssl_context, **extra)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            proto.release()  # a failed or timed-out TLS handshake
            conn.close()


def run_server(cfg: Config, sock: socket.socket, expected: list[str]) -> None:
    """The body of the server process: serve until SIGTERM."""
    state = StateDir(cfg.state_dir)
    server = Server(cfg, state, expected)
    ssl_context = None
    middlewares = []
    if cfg.server.web_config_file:
        from . import webconfig

        web_cfg = webconfig.load(cfg.server.web_config_file)
        ssl_context = web_cfg.ssl_context()
        middlewares = web_cfg.middlewares(on_reject=server.count_rejected)

    limiter = _RateLimitFilter()
    for name in ("aiohttp.server", "aiohttp.web", "asyncio"):
        logging.getLogger(name).addFilter(limiter)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # keepalive_timeout is also how long aiohttp waits for a request head: a client that
        # sends a partial request (or nothing) is closed after header_timeout.
        acceptor = Acceptor(sock, None, ssl_context, cfg.server.max_connections,
                            cfg.server.header_timeout, server.count_rejected)
        runner = web.AppRunner(server.app([acceptor.middleware, *middlewares]), access_log=None,
                               handle_signals=False, keepalive_timeout=cfg.server.header_timeout)
        await runner.setup()
        acceptor.factory = runner.server
        accepting = asyncio.ensure_future(acceptor.run())
        # While the workers restore their files after a restart: the first scrape is not the cold one.
        loop.run_in_executor(server.executor, server.warm)
        log.info("serving %s on %s", cfg.server.telemetry_path, cfg.server.listen)
        await stop.wait()
        accepting.cancel()
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        server.executor.shutdown(wait=False)
        server.reader.close()
