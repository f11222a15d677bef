"""Sliding-window ratios in bounded memory (e.g. a pipeline stage's error rate)."""

from __future__ import annotations

from collections import deque


class SlidingRatio:
    """Errors / total over the last ``window`` seconds, kept in ``slots`` time buckets."""

    def __init__(self, window: float = 300.0, slots: int = 30):
        self.width = window / slots
        self.slots = slots
        self._buckets: deque[list] = deque()  # [bucket start, total, errors]
        self.published: float | None = None  # the value last handed out as a gauge

    def add(self, now: float, total: float, errors: float) -> None:
        start = now - now % self.width
        if self._buckets and self._buckets[-1][0] == start:
            b = self._buckets[-1]
            b[1] += total
            b[2] += errors
        else:
            self._buckets.append([start, total, errors])
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.width * self.slots
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()

    def ratio(self, now: float) -> float | None:
        """The share of errors in the window, or None when the window saw nothing."""
        self._trim(now)
        total = sum(b[1] for b in self._buckets)
        if not total:
            return None
        return sum(b[2] for b in self._buckets) / total
