"""TOML configuration into frozen dataclasses; every error names the file and the key.

``config.example.toml`` documents every key; a test loads it and checks that
each key there is one this module knows, and the other way round.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import catalogue, collectors, cost, impact, usermap
from .analytics import settings as analytics_settings
from .analytics.settings import AnalyticsSettings
from .collectors import CollectorSettings
from .cost import CostSettings
from .impact import ImpactSettings
from .section import ConfigError, Section
from .usermap import UserMapping

__all__ = ["Config", "ConfigError", "LimitsConfig", "Section", "ServerConfig", "SourcesConfig",
           "from_dict", "load", "with_overrides"]

DEFAULT_PORT = 9877
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_STATE_DIR = "/var/lib/mlsidecar"
# Fits the shipped memory limits (128Mi in the manifests, MemoryMax=256M in the unit) with room:
# about 2 KiB per series across the worker and the server (docs/operations.md).
DEFAULT_MAX_SERIES = 6000
LOG_FORMATS = ("logfmt", "json")


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    web_config_file: str = ""
    multiproc_dirs: tuple[str, ...] = ()
    telemetry_path: str = "/metrics"
    enable_lifecycle: bool = False
    max_connections: int = 256
    header_timeout: float = 10.0


@dataclass(frozen=True)
class SourcesConfig:
    tail: tuple[str, ...] = ()
    socket: str = ""
    socket_datagram: str = ""
    socket_mode: int = 0o660
    socket_group: str = ""
    socket_queue: int = 10000
    socket_queue_bytes: int = 4 * 1024 * 1024
    socket_max_connections: int = 256
    socket_buffer_bytes: int = 8 * 1024 * 1024
    max_line_bytes: int = 256 * 1024
    watch: str = "auto"
    follow_symlinked_dirs: bool = False
    poll_interval: float = 1.0
    flush_interval: float = 0.25
    max_open_files: int = 256  # tailed files held open at once; idle ones are closed, reopened when written


@dataclass(frozen=True)
class LimitsConfig:
    max_series_per_metric: int = 10000
    label_value_length: int = 128
    # Series of workload metrics in all (a histogram counts as its buckets + 3: the time series
    # Prometheus stores), shared out among the ingest workers; see series_share().
    max_series: int = DEFAULT_MAX_SERIES
    # Families created by `metric` events (per ingest worker).
    max_user_metrics: int = 500


@dataclass(frozen=True)
class Config:
    source: str = "(defaults)"
    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "info"
    log_format: str = "logfmt"
    server: ServerConfig = field(default_factory=ServerConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    labels: tuple[tuple[str, str], ...] = ()
    labels_from_env: tuple[tuple[str, str], ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    expire: tuple[tuple[str, float], ...] = ()
    metric_prefix: str = ""
    metric_buckets: tuple[float, ...] = ()
    mappings: tuple[UserMapping, ...] = ()
    collectors: tuple[tuple[str, CollectorSettings], ...] = ()
    analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    impact: ImpactSettings = field(default_factory=ImpactSettings)

    def static_labels(self, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
        """Config labels plus labels read from the environment (Kubernetes downward API)."""
        out = dict(self.labels)
        for name, var in self.labels_from_env:
            value = environ.get(var)
            if value:
                out[name] = value
        return out

    def series_share(self) -> int:
        """The series budget of one ingest worker: ``limits.max_series`` shared out evenly
        among the tail and socket workers (their own mlsidecar_* series do not count)."""
        workers = len(dict.fromkeys(self.sources.tail)) + bool(self.sources.socket or self.sources.socket_datagram)
        return max(1, self.limits.max_series // max(1, workers))

    def collector(self, name: str) -> CollectorSettings | None:
        return dict(self.collectors).get(name)


LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# Label names with a meaning of their own: histogram buckets, summary quantiles, Prometheus' internals.
RESERVED_LABELS = ("le", "quantile")


def label_name_problem(name: str) -> str:
    """Why ``name`` cannot be a label added to every series ('' when it can)."""
    if not LABEL_NAME.match(name):
        return "is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, ASCII only)"
    if name.startswith("__"):
        return "names starting with __ are reserved for Prometheus"
    if name in RESERVED_LABELS:
        return f"'{name}' is reserved ({'histogram buckets' if name == 'le' else 'summary quantiles'})"
    return ""


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[::1]:PORT' into (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: port {port} is out of range 1-65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


RESERVED_PATHS = ("/", "/healthz", "/readyz", "/-/healthy", "/-/ready", "/-/reload")


def check_telemetry_path(path: str) -> str:
    """The path /metrics is served on: absolute, and not one of the other endpoints."""
    if not path.startswith("/") or any(c in path for c in " ?#"):
        raise ValueError(f"{path!r} is not an absolute URL path like /metrics")
    if path in RESERVED_PATHS:
        raise ValueError(f"{path!r} is taken by another endpoint")
    return path


def load(path: str | None = None) -> Config:
    """Read a config file (or the defaults when ``path`` is None)."""
    if path is None:
        return from_dict({}, "(defaults)")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return from_dict(data, path)


def from_dict(data: dict[str, Any], source: str = "(config)") -> Config:
    """Validate a parsed TOML document: each table by its part's parser, through one Section."""
    top = Section(source, "", data)
    cfg: dict[str, Any] = {"source": source}
    cfg["state_dir"] = top.get("state_dir", str, DEFAULT_STATE_DIR)
    cfg["log_level"] = top.get("log_level", str, "info").lower()
    if cfg["log_level"] not in ("debug", "info", "warning", "error"):
        raise top.error("log_level", "must be one of debug, info, warning, error")
    cfg["log_format"] = top.get("log_format", str, "logfmt").lower()
    if cfg["log_format"] not in LOG_FORMATS:
        raise top.error("log_format", f"must be one of {', '.join(LOG_FORMATS)}")

    s = top.table("server")
    server = ServerConfig(
        listen=s.get("listen", str, DEFAULT_LISTEN),
        web_config_file=s.get("web_config_file", str, ""),
        multiproc_dirs=_strings(s, "multiproc_dirs"),
        telemetry_path=s.get("telemetry_path", str, "/metrics"),
        enable_lifecycle=s.get("enable_lifecycle", bool, False),
        max_connections=s.positive("max_connections", int, 256),
        header_timeout=s.positive("header_timeout", float, 10.0),
    )
    try:
        parse_listen(server.listen)
    except ValueError as exc:
        raise s.error("listen", str(exc)) from None
    try:
        check_telemetry_path(server.telemetry_path)
    except ValueError as exc:
        raise s.error("telemetry_path", str(exc)) from None
    s.finish()
    cfg["server"] = server

    s = top.table("sources")
    mode = s.get("socket_mode", str, "0660")
    try:
        mode_int = int(mode, 8)
    except ValueError:
        raise s.error("socket_mode", f"must be an octal string like '0660', got {mode!r}") from None
    watch = s.get("watch", str, "auto")
    if watch not in ("auto", "inotify", "poll"):
        raise s.error("watch", "must be auto, inotify or poll")
    cfg["sources"] = SourcesConfig(
        tail=_strings(s, "tail"),
        socket=s.get("socket", str, ""),
        socket_datagram=s.get("socket_datagram", str, ""),
        socket_mode=mode_int,
        socket_group=s.get("socket_group", str, ""),
        socket_queue=s.positive("socket_queue", int, 10000),
        socket_queue_bytes=s.positive("socket_queue_bytes", int, 4 * 1024 * 1024),
        socket_max_connections=s.positive("socket_max_connections", int, 256),
        socket_buffer_bytes=s.positive("socket_buffer_bytes", int, 8 * 1024 * 1024),
        max_line_bytes=s.positive("max_line_bytes", int, 256 * 1024),
        watch=watch,
        follow_symlinked_dirs=s.get("follow_symlinked_dirs", bool, False),
        poll_interval=s.positive("poll_interval", float, 1.0),
        flush_interval=s.positive("flush_interval", float, 0.25),
        max_open_files=s.positive("max_open_files", int, 256),
    )
    s.finish()

    s = top.table("labels")
    cfg["labels"] = tuple((k, _label_value(s, k)) for k in s.data)
    s = top.table("labels_from_env")
    cfg["labels_from_env"] = tuple((k, _label_value(s, k)) for k in s.data)
    for table in ("labels", "labels_from_env"):
        for k, _ in cfg[table]:
            problem = label_name_problem(k)
            if problem:
                raise ConfigError(source, f"{table}.{k}", problem)

    s = top.table("limits")
    cfg["limits"] = LimitsConfig(
        max_series_per_metric=s.positive("max_series_per_metric", int, 10000),
        label_value_length=s.positive("label_value_length", int, 128),
        max_series=s.positive("max_series", int, DEFAULT_MAX_SERIES),
        max_user_metrics=s.positive("max_user_metrics", int, 500),
    )
    s.finish()

    s = top.table("expire")
    expire = []
    for name in s.data:
        v = s.get(name, float, 0.0)
        if v < 0:
            raise s.error(name, "must be >= 0 seconds (0 = never)")
        expire.append((name, v))
    cfg["expire"] = tuple(expire)

    s = top.table("metrics")
    cfg["metric_prefix"] = s.get("prefix", str, "")
    buckets = s.get("buckets", tuple, ())
    if buckets and (any(type(b) not in (int, float) for b in buckets) or list(buckets) != sorted(buckets)):
        raise s.error("buckets", "must be a sorted list of numbers")
    cfg["metric_buckets"] = tuple(float(b) for b in buckets)
    s.finish()

    cfg["mappings"] = usermap.parse(top, "mappings")
    cfg["expire"] = _check_expire(source, cfg["expire"], cfg["mappings"])
    cfg["collectors"] = collectors.parse_config(top.table("collectors"))
    cfg["analytics"] = analytics_settings.parse(top.table("analytics"))
    cfg["cost"] = cost.parse(top.table("cost"))
    cfg["impact"] = impact.parse(top.table("impact"))
    top.finish()
    return Config(**cfg)


def _check_expire(source: str, expire: tuple[tuple[str, float], ...],
                  mappings: tuple[UserMapping, ...]) -> tuple[tuple[str, float], ...]:
    """An [expire] entry must name a metric: built in, from a mapping, or (outside the
    reserved ml_/mlsidecar_ prefixes) one that `metric` events may create. A counter may be
    named with or without ``_total``; the family name is returned."""
    known = set(catalogue.builtin()) | {m.name for mp in mappings for m in mp.metrics}
    known |= {n[:-6] for n in known if n.endswith("_total")}
    out = []
    for name, seconds in expire:
        out.append((name + "_total" if name + "_total" in known else name, seconds))
        if name in known:
            continue
        if not METRIC_NAME.match(name):
            raise ConfigError(source, f"expire.{name}", "is not a valid metric name")
        if name.startswith(("ml_", "mlsidecar_")):
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else " (see docs/metrics.md)"
            raise ConfigError(source, f"expire.{name}", f"no such built-in metric{extra}")
    return tuple(out)


def check_environment(cfg: Config, state_dir: bool = True) -> None:
    """What the config names on this machine, checked before anything starts (and by
    check-config): the socket group, the web config file, the state dir's layout."""
    group = cfg.sources.socket_group
    if group and (cfg.sources.socket or cfg.sources.socket_datagram):
        import grp

        try:
            grp.getgrnam(group)
        except KeyError:
            raise ConfigError(cfg.source, "sources.socket_group", f"no group {group!r} on this machine") from None
    if cfg.server.web_config_file:
        from . import webconfig

        webconfig.load(cfg.server.web_config_file).ssl_context()
    if state_dir:
        for sub in ("", "metrics", "journal", "status"):
            path = os.path.join(cfg.state_dir, sub)
            if os.path.lexists(path) and not os.path.isdir(path):
                raise ConfigError(cfg.source, "state_dir", f"{path} exists and is not a directory "
                                                           "(move it away, or choose another state_dir)")


def _strings(s: Section, name: str) -> tuple[str, ...]:
    v = s.get(name, tuple, ())
    for i, x in enumerate(v):
        if type(x) is not str:
            raise s.error(f"{name}[{i}]", "must be a string")
    return v


def _label_value(s: Section, name: str) -> str:
    v = s.get(name, str, "")
    return v


def with_overrides(cfg: Config, **flags: Any) -> Config:
    """Apply command-line flags on top of a config (flags win)."""
    server, sources = cfg.server, cfg.sources
    if flags.get("listen"):
        server = replace(server, listen=flags["listen"])
    if flags.get("web_config_file"):
        server = replace(server, web_config_file=flags["web_config_file"])
    if flags.get("multiproc_dir"):
        server = replace(server, multiproc_dirs=tuple(flags["multiproc_dir"]))
    if flags.get("telemetry_path"):
        server = replace(server, telemetry_path=flags["telemetry_path"])
    if flags.get("enable_lifecycle"):
        server = replace(server, enable_lifecycle=True)
    if flags.get("tail"):
        sources = replace(sources, tail=tuple(flags["tail"]))
    if flags.get("socket"):
        sources = replace(sources, socket=flags["socket"])
    if flags.get("socket_datagram"):
        sources = replace(sources, socket_datagram=flags["socket_datagram"])
    if flags.get("watch"):
        sources = replace(sources, watch=flags["watch"])
    out = replace(cfg, server=server, sources=sources)
    if flags.get("state_dir"):
        out = replace(out, state_dir=flags["state_dir"])
    if flags.get("log_level"):
        out = replace(out, log_level=flags["log_level"])
    if flags.get("log_format"):
        out = replace(out, log_format=flags["log_format"])
    toggles = flags.get("collectors") or {}
    if toggles:
        out = replace(out, collectors=collectors.toggle(out.collectors, toggles))
    return out
