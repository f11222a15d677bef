"""The ``[analytics]`` config table (live scores, drift, quality, anomaly windows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalyticsSettings:
    error_rate_window: float = 300.0


def parse(section) -> AnalyticsSettings:
    out = AnalyticsSettings(
        error_rate_window=section.positive("error_rate_window", float, 300.0),
    )
    section.finish()
    return out
