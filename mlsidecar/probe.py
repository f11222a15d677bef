"""``mlsidecar probe``: what each collector can read on this machine.

Every collector (or the ones named) is set up and run with the config's
options -- including collectors the config leaves off, so an operator sees
what turning one on would give -- and its readings are printed as series.
Nothing is served and the state directory is not touched: the readings go to
a scratch directory that is removed afterwards.

Exit status: 0 when every collector that is enabled (or named) could read;
1 when one of them is unavailable or failed; 2 for an unknown name.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any, TextIO

from . import collectors
from .collectors import Collector, CollectorSettings, CollectorUnavailable
from .config import Config
from .exposition import format_value, render_labels
from .runtime.collect import CollectorRun
from .store import SeriesWriter

# Collectors that report rates or GPM activity need two readings; this is the gap.
SECOND_READING_AFTER = 0.5


def _settings(cfg: Config | None, name: str, cls: type[Collector]) -> CollectorSettings:
    s = cfg.collector(name) if cfg is not None else None
    if s is not None:
        return s
    return CollectorSettings(name, cls.default_enabled, cls.default_interval,
                             {k: default for k, (_kind, default) in cls.options.items()})


def probe(cfg: Config | None, names: list[str] | None, out: TextIO, handles: dict[str, Any] | None = None) -> int:
    """Run the collectors once (twice, a moment apart) through the collector runner and print
    what they read."""
    classes = collectors.load_all()
    if names:
        unknown = [n for n in names if n not in classes]
        if unknown:
            print(f"mlsidecar probe: unknown collector {', '.join(unknown)}; "
                  f"known: {', '.join(sorted(classes))}", file=out)
            return 2
        wanted = list(dict.fromkeys(names))
    else:
        wanted = sorted(classes)
    scratch = tempfile.mkdtemp(prefix="mlsidecar-probe-")
    status = 0
    report: dict[str, list[str]] = {}
    try:
        writer = SeriesWriter(scratch, "probe")
        runs: list[tuple[CollectorRun, str, bool]] = []
        for name in wanted:
            cls = classes[name]
            settings = _settings(cfg, name, cls)
            if settings.enabled:
                state = "enabled"
            elif not cls.default_enabled:
                state = f"off by default; --collector.{name} turns it on"
            else:
                state = "disabled in config"
            counts = bool(names) or settings.enabled
            run = CollectorRun(name, cls(settings, **(handles or {})), writer)
            try:
                run.setup()
            except CollectorUnavailable as exc:
                report[name] = [f"{name}: unavailable ({state}): {exc}"]
                status = 1 if counts else status
                continue
            except Exception as exc:  # noqa: BLE001 - a probe reports, it does not crash
                report[name] = [f"{name}: setup failed ({state}): {type(exc).__name__}: {exc}"]
                status = 1 if counts else status
                continue
            runs.append((run, state, counts))
        for rnd in range(2):
            if rnd and runs:
                time.sleep(SECOND_READING_AFTER)
            for run, _state, _counts in runs:
                try:
                    run.collect()
                except Exception:  # noqa: BLE001 - recorded in run.error
                    pass
        for run, state, counts in runs:
            err = run.error
            mine = _series_of(run)
            lines = [f"{run.name}: {'FAILED: ' + err if err else 'ok'} "
                     f"({state}; {len(mine)} series, {run.took * 1000:.1f} ms)"]
            desc = getattr(getattr(run.collector, "workload", None), "describe", None)
            if desc is not None:
                lines.append(f"  watching: {desc()}")
            lines.extend("  " + line for line in mine)
            report[run.name] = lines
            if err and counts:
                status = 1
            run.close()
        writer.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in wanted:
        for line in report.get(name, ()):
            print(line, file=out)
    return status


def _series_of(run: CollectorRun) -> list[str]:
    """The lines of the series a collector published, sorted, as on /metrics."""
    lines = []
    for (fam, labels), v in run.published.items():
        pairs = tuple((k, x) for k, x in zip(fam.labels, labels) if x != "")
        lines.append(f"{fam.name}{render_labels(pairs)} {format_value(float(v))}")
    return sorted(lines)
