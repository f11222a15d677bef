"""What the workload costs, counted at the source from what the collectors read.

Prices come from the ``[cost]`` config table (see docs/cost.md): a price per
GPU-hour by GPU model name (as NVML names it, e.g. "NVIDIA H200"), per
CPU-core-hour and per GiB-hour of memory, a currency, and whether the node is
spot or on-demand. The collectors report a :class:`Usage` after each run; a
:class:`CostMeter` turns two successive readings into cost increments and
adds them to ``ml_cost_total{resource,capacity,gpu,uuid}``.

The rules (docs/cost.md has a worked example):

- GPU: for each GPU the workload holds, ``share x price_per_hour(name) x
  hours``. ``share`` is 1 for a GPU the container was given (attribution
  ``devices``); where several processes use one GPU (attribution ``pid``) it
  is the workload's share of the GPU memory used by all processes on it.
- CPU: CPU seconds used (user + system, summed over the workload's
  processes) / 3600 x price per core-hour.
- Memory: resident bytes / 2^30 x price per GiB-hour x hours.
- Time-based charges (GPU, memory) for the interval between two readings use
  the usage of the earlier reading (what was held since then) and the price in
  effect now; the interval is capped at ``max_gap`` seconds so a sidecar that
  was down for days does not charge them all at once.
- On spot capacity every price is multiplied by ``spot_factor``.

Restart-safe: the meter keeps its last reading and its totals in a state file
(``STATE_DIR/cost/IDENTITY.json``, replaced atomically before the counters are
written). A restarted worker (a crash, or a SIGHUP reload with new prices)
continues from it: the interval since the last reading before the restart is
charged once, the CPU already counted is not counted again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .catalogue import COUNTER, GAUGE, Family
from .section import Section

log = logging.getLogger("mlsidecar.cost")

GIB = float(1 << 30)
HOUR = 3600.0
CAPACITIES = ("on_demand", "spot")
CAPACITY_ENV = "MLSIDECAR_CAPACITY_TYPE"
BUDGET_SCOPES = ("namespace", "model", "job", "pipeline")
# Names cloud providers and Kubernetes node labels use for the two kinds of capacity.
_CAPACITY_ALIASES = {
    "spot": "spot", "preemptible": "spot", "preemptable": "spot", "interruptible": "spot",
    "on_demand": "on_demand", "ondemand": "on_demand", "on-demand": "on_demand", "regular": "on_demand",
    "standard": "on_demand", "dedicated": "on_demand",
}

COST_TOTAL = Family(
    "ml_cost_total", COUNTER,
    "What the workload has cost, in the currency of ml_cost_info, by resource (gpu, cpu, memory), "
    "capacity (on_demand, spot) and GPU.", ("resource", "capacity", "gpu", "uuid"),
    fed_by="gpu and process collectors, [cost] prices")
COST_INFO = Family(
    "ml_cost_info", GAUGE, "Always 1; labels say the currency of ml_cost_total and the node's capacity.",
    ("currency", "capacity"), fed_by="[cost] config")
COST_BUDGET = Family(
    "ml_cost_budget", GAUGE,
    "Monthly budget, in the currency of ml_cost_info, of a namespace, model, job or pipeline.",
    ("scope", "name"), fed_by="[cost] config")
COST_PRICE = Family(
    "ml_cost_price_per_hour", GAUGE,
    "Price per hour in effect: per GPU by model name, per CPU core, per GiB of memory (spot factor applied).",
    ("resource", "gpu_model"), fed_by="[cost] config")

# Declared here, collected by catalogue.builtin(): the families this module writes.
FAMILIES: tuple[Family, ...] = (COST_TOTAL, COST_INFO, COST_BUDGET, COST_PRICE)


class CostConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Budget:
    scope: str
    name: str
    monthly: float


@dataclass(frozen=True)
class CostSettings:
    """The ``[cost]`` table. ``enabled`` is true when any price is set."""

    currency: str = "USD"
    gpu_hour: tuple[tuple[str, float], ...] = ()
    default_gpu_hour: float = 0.0
    cpu_core_hour: float = 0.0
    memory_gib_hour: float = 0.0
    capacity: str = "auto"
    capacity_env: str = CAPACITY_ENV
    spot_factor: float = 1.0
    max_gap: float = 900.0
    budgets: tuple[Budget, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.gpu_hour or self.default_gpu_hour or self.cpu_core_hour or self.memory_gib_hour)

    def resolved_capacity(self, environ: Mapping[str, str] = os.environ) -> str:
        """on_demand or spot: the config's word, or (auto) the environment's."""
        if self.capacity != "auto":
            return self.capacity
        raw = environ.get(self.capacity_env, "").strip().lower().replace(" ", "_")
        if not raw:
            return "on_demand"
        found = _CAPACITY_ALIASES.get(raw) or _CAPACITY_ALIASES.get(raw.replace("-", "_"))
        if found is None:
            log.warning("$%s=%r is neither spot nor on-demand; pricing as on_demand", self.capacity_env, raw)
            return "on_demand"
        return found

    def prices(self, environ: Mapping[str, str] = os.environ) -> Prices:
        capacity = self.resolved_capacity(environ)
        factor = self.spot_factor if capacity == "spot" else 1.0
        return Prices(capacity, {k: v * factor for k, v in self.gpu_hour}, self.default_gpu_hour * factor,
                      self.cpu_core_hour * factor, self.memory_gib_hour * factor)


@dataclass(frozen=True)
class Prices:
    """Prices per hour as they apply on this node (spot factor already applied)."""

    capacity: str
    gpu_hour: dict[str, float]
    default_gpu_hour: float
    cpu_core_hour: float
    memory_gib_hour: float

    def gpu(self, name: str) -> float:
        return self.gpu_hour.get(name, self.default_gpu_hour)


def parse(section: Section) -> CostSettings:
    """Validate the ``[cost]`` table; errors name the key."""
    def price(sub: Section, name: str) -> float:
        v = sub.get(name, float, 0.0)
        if not math.isfinite(v) or v < 0:
            raise sub.error(name, f"must be a price >= 0, got {v}")
        return v

    currency = section.get("currency", str, "USD").strip()
    if not currency:
        raise section.error("currency", "must not be empty")
    gpu = section.table("gpu_hour")
    gpu_hour = tuple((name, price(gpu, name)) for name in gpu.data)
    gpu.finish()
    capacity = section.get("capacity", str, "auto").strip().lower().replace("-", "_")
    if capacity not in ("auto",) + CAPACITIES:
        raise section.error("capacity", "must be auto, on_demand or spot")
    capacity_env = section.get("capacity_env", str, CAPACITY_ENV)
    spot_factor = section.get("spot_factor", float, 1.0)
    if not 0 <= spot_factor <= 10:
        raise section.error("spot_factor", f"must be between 0 and 10, got {spot_factor}")
    max_gap = section.positive("max_gap", float, 900.0)
    budgets = []
    raw = section.get("budgets", tuple, ())
    seen = set()
    for i, b in enumerate(raw):
        key = f"budgets[{i}]"
        if not isinstance(b, dict):
            raise section.error(key, "must be a table like { scope = \"model\", name = \"resnet50\", monthly = 500 }")
        unknown = set(b) - {"scope", "name", "monthly"}
        if unknown:
            raise section.error(f"{key}.{sorted(unknown)[0]}", "unknown key (known: scope, name, monthly)")
        scope, name, monthly = b.get("scope"), b.get("name"), b.get("monthly")
        if scope not in BUDGET_SCOPES:
            raise section.error(f"{key}.scope", f"must be one of {', '.join(BUDGET_SCOPES)}, got {scope!r}")
        if not isinstance(name, str) or not name:
            raise section.error(f"{key}.name", "must be a non-empty string")
        if isinstance(monthly, bool) or not isinstance(monthly, (int, float)) or not math.isfinite(monthly) \
                or monthly <= 0:
            raise section.error(f"{key}.monthly", f"must be a number > 0, got {monthly!r}")
        if (scope, name) in seen:
            raise section.error(key, f"a second budget for {scope} {name!r}")
        seen.add((scope, name))
        budgets.append(Budget(scope, name, float(monthly)))
    out = CostSettings(currency, gpu_hour, price(section, "default_gpu_hour"), price(section, "cpu_core_hour"),
                       price(section, "memory_gib_hour"), capacity, capacity_env, spot_factor, max_gap,
                       tuple(budgets))
    section.finish()
    return out


# --- readings ---------------------------------------------------------------

@dataclass(frozen=True)
class GpuShare:
    """One GPU the workload holds: its index, uuid, NVML name and the workload's share (0-1)."""

    gpu: str
    uuid: str
    name: str
    share: float


@dataclass(frozen=True)
class Usage:
    """What one collector saw in one run. ``None`` fields are not this collector's to say.

    ``cpu_seconds``: cumulative CPU seconds (user + system) per process, keyed by
    "pid:create_time" so a reused PID is a new process.
    """

    gpus: tuple[GpuShare, ...] | None = None
    cpu_seconds: Mapping[str, float] | None = None
    memory_bytes: float | None = None

    def to_json(self) -> dict:
        return {"gpus": None if self.gpus is None else [[g.gpu, g.uuid, g.name, g.share] for g in self.gpus],
                "cpu_seconds": None if self.cpu_seconds is None else dict(self.cpu_seconds),
                "memory_bytes": self.memory_bytes}

    @classmethod
    def from_json(cls, d: dict) -> Usage:
        gpus = d.get("gpus")
        return cls(None if gpus is None else tuple(GpuShare(str(a), str(b), str(c), float(s)) for a, b, c, s in gpus),
                   d.get("cpu_seconds"), d.get("memory_bytes"))


def gpu_shares(gpus: list[tuple[str, str, str]], processes: Mapping[str, Mapping[int, float]],
               workload_pids: set[int] | None) -> tuple[GpuShare, ...]:
    """The workload's share of each GPU.

    ``gpus``: (index, uuid, name); ``processes``: uuid -> {pid: GPU memory bytes}.
    ``workload_pids`` None: every GPU is wholly the workload's (a container's own
    GPUs, or one sidecar for the whole box). Otherwise a GPU's cost is shared among
    the processes using it in proportion to their GPU memory, and the workload
    gets its processes' part; a GPU no process uses costs the workload nothing.
    """
    out = []
    for index, uuid, name in gpus:
        if workload_pids is None:
            out.append(GpuShare(index, uuid, name, 1.0))
            continue
        procs = processes.get(uuid, {})
        total = sum(procs.values())
        mine = sum(v for pid, v in procs.items() if pid in workload_pids)
        if total > 0 and mine > 0:
            out.append(GpuShare(index, uuid, name, mine / total))
    return tuple(out)


Labels = tuple[str, str, str, str]  # resource, capacity, gpu, uuid


def increments(prev: Usage | None, cur: Usage, seconds: float, prices: Prices) -> dict[Labels, float]:
    """Cost of the interval between two readings ``seconds`` apart (already capped).

    Time-based resources are charged for what ``prev`` held; CPU for the CPU
    seconds used since ``prev`` (a process not in ``prev`` is new: all its CPU
    time is counted). With no ``prev`` (the very first reading) nothing is
    charged: the reading is the baseline.
    """
    out: dict[Labels, float] = {}
    if prev is None:
        return out
    cap = prices.capacity
    hours = max(0.0, seconds) / HOUR

    def add(key: Labels, amount: float) -> None:
        if amount > 0:
            out[key] = out.get(key, 0.0) + amount

    if prev.gpus is not None:
        for g in prev.gpus:
            add(("gpu", cap, g.gpu, g.uuid), g.share * prices.gpu(g.name) * hours)
    if prev.memory_bytes is not None:
        add(("memory", cap, "", ""), prev.memory_bytes / GIB * prices.memory_gib_hour * hours)
    if cur.cpu_seconds is not None and prev.cpu_seconds is not None:
        used = 0.0
        for key, secs in cur.cpu_seconds.items():
            before = prev.cpu_seconds.get(key)
            delta = secs if before is None else secs - before
            if delta > 0:
                used += delta
        add(("cpu", cap, "", ""), used / HOUR * prices.cpu_core_hour)
    return out


# --- the meter ----------------------------------------------------------------

class CostMeter:
    """Keeps ``ml_cost_total`` for the collectors of one worker, across restarts.

    ``observe(source, usage)`` after each successful collector run; ``source``
    is the collector's name (each has its own last reading).
    """

    def __init__(self, settings: CostSettings, writer, state_path: str | None,
                 environ: Mapping[str, str] = os.environ, clock=time.time):
        self.settings = settings
        self.prices = settings.prices(environ)
        self.writer = writer
        self.path = state_path
        self.clock = clock
        self.totals: dict[Labels, float] = {}
        self.last: dict[str, tuple[float, Usage]] = {}
        self._load()

    def _load(self) -> None:
        state = None
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as fh:
                    state = json.load(fh)
                for k, v in state["totals"]:
                    self.totals[tuple(k)] = float(v)
                for name, (t, u) in state["last"].items():
                    self.last[name] = (float(t), Usage.from_json(u))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("cost state %s unreadable (%s); continuing from the metric files", self.path, exc)
                state = None
                self.totals, self.last = {}, {}
        stored = {labels: float(v) for (fam, labels), v in self.writer.values.items() if fam is COST_TOTAL}
        if state is None:
            # No state of ours: continue from the counters in the metric files.
            self.totals = stored
        elif not stored and any(self.totals.values()):
            # Our metric files are gone: the supervisor folded them into the archive (the collector
            # was switched off for a while), which goes on serving those totals. Counting on from
            # them here would show them twice.
            log.info("cost: this worker's metric files were archived; ml_cost_total starts again from 0")
            self.totals = {}
        else:
            for labels, v in stored.items():  # the files are never ahead, but never go backwards
                self.totals[labels] = max(self.totals.get(labels, 0.0), v)
        for labels, v in self.totals.items():
            self.writer.set_counter(COST_TOTAL, labels, v)

    def observe(self, source: str, usage: Usage, now: float | None = None) -> dict[Labels, float]:
        """Charge the interval since this source's last reading; returns the increments."""
        now = self.clock() if now is None else now
        prev = self.last.get(source)
        if prev is None:
            inc = {}
        else:
            seconds = min(max(0.0, now - prev[0]), self.settings.max_gap)
            inc = increments(prev[1], usage, seconds, self.prices)
        for k, v in inc.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        self.last[source] = (now, usage)
        self._save()
        for k in inc:
            self.writer.set_counter(COST_TOTAL, k, self.totals[k], now)
        return inc

    def _save(self) -> None:
        if not self.path:
            return
        state = {"version": 1, "totals": [[list(k), v] for k, v in self.totals.items()],
                 "last": {name: [t, u.to_json()] for name, (t, u) in self.last.items()}}
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
        os.replace(tmp, self.path)


def state_path(state_root: str, identity: str) -> str:
    return os.path.join(state_root, "cost", f"{identity}.json")


def export_config(writer, settings: CostSettings | None, environ: Mapping[str, str] = os.environ) -> None:
    """ml_cost_info, ml_cost_budget and ml_cost_price_per_hour from the config (stale ones removed)."""
    want: dict[tuple[Family, tuple[str, ...]], float] = {}
    if settings is not None and settings.enabled:
        prices = settings.prices(environ)
        want[(COST_INFO, (settings.currency, prices.capacity))] = 1.0
        for b in settings.budgets:
            want[(COST_BUDGET, (b.scope, b.name))] = b.monthly
        for name, p in prices.gpu_hour.items():
            want[(COST_PRICE, ("gpu", name))] = p
        if prices.default_gpu_hour:
            want[(COST_PRICE, ("gpu", ""))] = prices.default_gpu_hour
        want[(COST_PRICE, ("cpu", ""))] = prices.cpu_core_hour
        want[(COST_PRICE, ("memory", ""))] = prices.memory_gib_hour
    for fam in (COST_INFO, COST_BUDGET, COST_PRICE):
        for labels in list(writer.series(fam)):
            if (fam, labels) not in want:
                writer.remove(fam, labels)
    for (fam, labels), v in want.items():
        writer.set_gauge(fam, labels, v)


def usage_of(collector: Any) -> Usage | None:
    """The Usage a collector reported on its last run, if it reports one."""
    u = getattr(collector, "usage", None)
    return u if isinstance(u, Usage) else None


__all__ = ["Budget", "CostMeter", "CostSettings", "GpuShare", "Prices", "Usage", "export_config",
           "gpu_shares", "increments", "parse", "state_path", "usage_of"]
