"""Logging: logfmt or JSON lines (what log pipelines parse), and a rate limit per reason.

``logfmt`` (the default, like other Prometheus exporters)::

    ts=2026-01-01T12:00:00.000Z level=info worker=server logger=mlsidecar.server msg="serving /metrics"

``json``: the same fields, one object per line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

FORMATS = ("logfmt", "json")
_format = "logfmt"


def _fields(record: logging.LogRecord) -> dict[str, str]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    worker = "supervisor" if record.processName == "MainProcess" else record.processName or ""
    out: dict[str, str] = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
           "worker": worker, "logger": record.name, "msg": record.getMessage()}
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


def _logfmt_value(v: str) -> str:
    if v and not any(c in v for c in ' ="\\\n'):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False)


def setup(level: str = "info", fmt: str | None = None) -> None:
    """Log to stderr at ``level`` in ``fmt`` (kept from the last call when None: workers inherit it)."""
    global _format
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
        _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _format == "json" else LogfmtFormatter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler],
                        force=True)


class RateLimitedLog:
    """Logs the first message of each reason, then at most one per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, msg: str, *args: Any) -> bool:
        """Log unless this reason was logged within the interval; True when logged."""
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return False
        self._last[reason] = now
        n = self._suppressed.pop(reason, 0)
        if n:
            msg += f" ({n} more like this since the last report)"
        self.logger.warning(msg, *args)
        return True
