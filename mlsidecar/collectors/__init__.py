"""Collectors: readings the sidecar takes itself (GPU, workload processes, host).

One module per collector, each a :class:`Collector` subclass registered by
name with :func:`register`, in the manner of node_exporter. Each is switched
on or off by config (``[collectors.NAME] enabled``) and by
``--collector.NAME`` / ``--no-collector.NAME``; each runs on its own interval,
and its success and duration are exported as ``mlsidecar_collector_up`` and
``mlsidecar_collector_duration_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..section import Section

REGISTRY: dict[str, type[Collector]] = {}


class CollectorUnavailable(Exception):
    """What a collector needs is not here (no NVML, no GPU, no process to watch)."""


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

    ``collect(writer)`` sets gauges/counters on a
    :class:`mlsidecar.store.SeriesWriter` (``set_gauge``, ``set_counter``,
    ``remove``); raising marks the run failed (``up=0``).
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

    def collect(self, writer) -> None:
        raise NotImplementedError

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
