"""Collectors: readings the sidecar takes itself (GPU, workload processes, host).

One module per collector, each a :class:`Collector` subclass registered by
name with :func:`register`, in the manner of node_exporter. Each is switched
on or off by config (``[collectors.NAME] enabled``) and by
``--collector.NAME`` / ``--no-collector.NAME``; each runs on its own interval,
and its success and duration are exported as ``mlsidecar_collector_up`` and
``mlsidecar_collector_duration_seconds``.

A collector only reads: ``collect()`` returns :class:`Reading` values and touches
no store. The runner (mlsidecar/runtime/collect.py) publishes them, removes the
series a collector no longer reads, continues counters across restarts and holds
each collector to its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..catalogue import Family
from ..section import Section

# What a reading's value means to the runner:
# - "gauge": the value now.
# - "total": a counter's total as the collector reads or keeps it (NVML's ECC count, the kernel's
#   bytes, the sum of the workload's CPU seconds). After a restart the runner continues the series
#   from the metric files: the first total it sees is then the baseline, so a counter that was
#   higher before the restart does not go backwards.
# - "increment": a counter's growth since the collector's previous reading (XID errors); the
#   runner adds it to the series' total, the one in the metric files after a restart.
Kind = Literal["gauge", "total", "increment"]
TOTAL: Kind = "total"
INCREMENT: Kind = "increment"

REGISTRY: dict[str, type[Collector]] = {}
DEFAULT_DEADLINE = 30.0


class CollectorUnavailable(Exception):
    """What a collector needs is not here (no NVML, no GPU, no process to watch).

    Raised by ``setup`` (tried again later) or by ``collect`` (the collector is set up again
    later); the runner removes the series the collector published."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One value a collector read: a series of ``family`` and what its value means."""

    family: Family
    labels: tuple[str, ...]
    value: float
    kind: Kind = "gauge"


class Partial(Exception):
    """Some of the readings could be taken (a GPU of several is lost): the runner publishes
    ``readings`` and marks the run failed with this message."""

    def __init__(self, message: str, readings: list[Reading]):
        super().__init__(message)
        self.readings = readings


@dataclass(frozen=True)
class CollectorSettings:
    """A collector's config table: on/off, interval, and its own options."""

    name: str
    enabled: bool
    interval: float
    options: dict[str, Any] = field(default_factory=dict)


class Collector:
    """Base class. Subclasses set ``name``, ``default_enabled``, ``default_interval``
    and ``options`` (option name -> (type, default)), and implement
    :meth:`setup` and :meth:`collect`.

    ``collect()`` returns what it read; raising marks the run failed (``up=0``) and
    leaves the series as they were (see :class:`Partial` and
    :class:`CollectorUnavailable` for the two exceptions).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for --help
    default_enabled: ClassVar[bool] = True
    default_interval: ClassVar[float] = 5.0
    options: ClassVar[dict[str, tuple[type, Any]]] = {}
    # Collectors whose calls may hang (a wedged driver) run in a worker of their own.
    own_process: ClassVar[bool] = False

    def __init__(self, settings: CollectorSettings, **handles: Any):
        self.settings = settings

    def setup(self) -> None:
        """Open what the collector reads; raise CollectorUnavailable when it cannot."""

    def collect(self) -> list[Reading]:
        raise NotImplementedError

    def deadline(self) -> float:
        """Seconds one ``collect`` may take before the runner gives up on it (``up=0``; a call
        still stuck is not started again until it returns)."""
        return DEFAULT_DEADLINE

    def close(self) -> None:
        """Release what setup opened."""


def register(cls: type[Collector]) -> type[Collector]:
    REGISTRY[cls.name] = cls
    return cls


def load_all() -> dict[str, type[Collector]]:
    """Import the collector modules so they register themselves."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY


def parse_config(section: Section) -> tuple[tuple[str, CollectorSettings], ...]:
    """Validate the ``[collectors.*]`` tables against each collector's options."""
    classes = load_all()
    out = []
    for name in section.data:
        if name not in classes:
            section.used.add(name)
            raise section.error(name, f"unknown collector; known: {', '.join(sorted(classes))}")
    for name, cls in sorted(classes.items()):
        sub = section.table(name)
        enabled = sub.get("enabled", bool, cls.default_enabled)
        interval = sub.positive("interval", float, cls.default_interval)
        opts = {}
        for opt, (kind, default) in cls.options.items():
            opts[opt] = sub.get(opt, kind, default)
        sub.finish()
        out.append((name, CollectorSettings(name, enabled, interval, opts)))
    section.finish()
    return tuple(out)


def toggle(current: tuple[tuple[str, CollectorSettings], ...],
           toggles: dict[str, bool]) -> tuple[tuple[str, CollectorSettings], ...]:
    """Apply --collector.NAME / --no-collector.NAME flags."""
    from dataclasses import replace

    settings = dict(current)
    for name, on in toggles.items():
        if name not in settings:
            raise ValueError(f"unknown collector {name!r}; known: {', '.join(sorted(settings))}")
        settings[name] = replace(settings[name], enabled=on)
    return tuple(sorted(settings.items()))
