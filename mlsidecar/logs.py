"""Logging that cannot flood: one line per reason per interval, with a count of the rest."""

from __future__ import annotations

import logging
import time


def setup(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )


class RateLimitedLog:
    """Logs the first message of each reason, then at most one per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, msg: str, *args) -> bool:
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
