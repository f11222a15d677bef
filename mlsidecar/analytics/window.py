"""Sliding-window ratios in bounded memory (e.g. a pipeline stage's error rate)."""

from __future__ import annotations


class SlidingRatio:
    """Errors / total over the last ``window`` seconds, kept in ``slots`` time buckets.

    Small on purpose (slots, a short list): there is one per pipeline stage, and a
    workload may have thousands of stages.
    """

    __slots__ = ("width", "slots", "_buckets", "published")

    def __init__(self, window: float = 300.0, slots: int = 30):
        self.width = window / slots
        self.slots = slots
        self._buckets: list[list[float]] = []  # [bucket start, total, errors], oldest first
        self.published: float | None = None  # the value last handed out as a gauge

    def add(self, now: float, total: float, errors: float) -> None:
        start = now - now % self.width
        buckets = self._buckets
        if buckets and buckets[-1][0] == start:
            b = buckets[-1]
            b[1] += total
            b[2] += errors
        else:
            buckets.append([start, total, errors])
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.width * self.slots
        buckets = self._buckets
        old = 0
        while old < len(buckets) and buckets[old][0] <= horizon:
            old += 1
        if old:
            del buckets[:old]

    def ratio(self, now: float) -> float | None:
        """The share of errors in the window, or None when the window saw nothing."""
        self._trim(now)
        total = sum(b[1] for b in self._buckets)
        if not total:
            return None
        return sum(b[2] for b in self._buckets) / total
