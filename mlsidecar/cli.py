"""Command line: ``mlsidecar run | demo | check-config | probe``.

Errors an operator can fix (a config typo, a port in use) end the program
with one clear line on stderr and exit code 2, before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from . import __version__
from . import config as configmod
from .config import DEFAULT_LISTEN, DEFAULT_STATE_DIR, LOG_FORMATS, ConfigError

log = logging.getLogger("mlsidecar")

EXIT_USAGE = 2

EPILOG = """\
examples:
  mlsidecar demo                                   # demo workload + sidecar on 127.0.0.1:9877
  mlsidecar run --tail '/var/log/app/*.jsonl'      # follow a workload's event log
  mlsidecar run --config /etc/mlsidecar/config.toml --listen :9877
  mlsidecar check-config /etc/mlsidecar/config.toml

docs: README.md, docs/events.md (what to write), docs/metrics.md (what you get)
"""

ENDPOINTS = """\
endpoints:
  /metrics          Prometheus text, or OpenMetrics when asked (--web.telemetry-path moves it)
  /healthz /-/healthy   alive
  /readyz  /-/ready     every worker is up and its sources are open
  POST /-/reload    re-read the config (with --web.enable-lifecycle)
  /                 status page
"""


class Parser(argparse.ArgumentParser):
    """A bad flag or value: one line naming it, exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _listen(value: str) -> str:
    try:
        configmod.parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _telemetry_path(value: str) -> str:
    try:
        return configmod.check_telemetry_path(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _collector_classes() -> dict:
    from . import collectors

    return dict(sorted(collectors.load_all().items()))


def _collector_names() -> list[str]:
    return list(_collector_classes())


def _add_run_flags(p: argparse.ArgumentParser, demo: bool = False) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    if not demo:
        p.add_argument("--tail", action="append", metavar="PATH_OR_GLOB",
                       help="JSON-lines file or glob to follow (repeatable); quote globs")
        p.add_argument("--socket", metavar="PATH", help="unix stream socket to listen on for events")
        p.add_argument("--socket-datagram", metavar="PATH", help="unix datagram socket for events")
    p.add_argument("--web.listen-address", "--listen", dest="listen", metavar="HOST:PORT", type=_listen,
                   help=f"scrape address (default {'127.0.0.1:9877' if demo else DEFAULT_LISTEN})")
    p.add_argument("--web.telemetry-path", dest="telemetry_path", metavar="PATH", type=_telemetry_path,
                   help="path the metrics are served on (default /metrics)")
    p.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                   help="allow POST /-/reload (re-read the config, like SIGHUP)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="metric files and read positions "
                        f"(default {'a temporary directory' if demo else DEFAULT_STATE_DIR}"
                        f"{'' if demo else ', or $STATE_DIRECTORY under systemd'})")
    p.add_argument("--multiproc-dir", action="append", metavar="DIR",
                   help="a workload's prometheus_client multiprocess directory to serve too (repeatable)")
    p.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="TLS and basic-auth config, the exporter-toolkit format node_exporter uses")
    p.add_argument("--watch", choices=("auto", "inotify", "poll"),
                   help="how to notice file changes (default auto: inotify, polling where it fails)")
    p.add_argument("--log.level", "--log-level", dest="log_level", metavar="LEVEL",
                   choices=("debug", "info", "warning", "error"), help="debug, info (default), warning or error")
    p.add_argument("--log.format", dest="log_format", choices=LOG_FORMATS, metavar="FORMAT",
                   help="logfmt (default) or json, one object per line")
    for name, cls in _collector_classes().items():
        default = "on" if cls.default_enabled else "off"
        p.add_argument(f"--collector.{name}", dest=f"collector_{name}", action=argparse.BooleanOptionalAction,
                       help=f"{cls.summary or name} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mlsidecar",
        description="Turn an ML workload's JSON-lines events, GPU and process readings "
                    "into Prometheus metrics on one port.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlsidecar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the sidecar",
                         description="Run the sidecar: follow sources, collect, serve /metrics.",
                         epilog=ENDPOINTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(run)

    demo = sub.add_parser("demo", help="run the sidecar on a built-in demo workload",
                          description="Start a demo workload that writes prediction, training and "
                                      "pipeline events, and a sidecar that serves them.")
    _add_run_flags(demo, demo=True)
    demo.add_argument("--rate", type=float, default=50.0, help="demo predictions per second (default 50)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--events-file", metavar="PATH", help="where the demo writes (default: in the state dir)")
    from .demo import add_demo_flags

    add_demo_flags(demo)

    check = sub.add_parser("check-config", help="validate a config file",
                           description="Validate a config file; print what is wrong, naming the key.")
    check.add_argument("file", help="TOML config file")

    sub.add_parser("reference", help="summarise a training-time sample into a drift reference",
                   add_help=False)

    probe = sub.add_parser("probe", help="print what each collector can read on this machine",
                           description="Run every collector once and print what it read: "
                                       "for operators debugging a box.")
    probe.add_argument("--config", metavar="FILE", help="TOML config file")
    probe.add_argument("--collector", action="append", metavar="NAME", help="only these collectors")
    return parser


def _flags(args: argparse.Namespace) -> dict:
    toggles = {}
    for name in _collector_names():
        on = getattr(args, f"collector_{name}", None)
        if on is not None:
            toggles[name] = on
    return {
        "listen": args.listen, "tail": getattr(args, "tail", None),
        "socket": getattr(args, "socket", None), "socket_datagram": getattr(args, "socket_datagram", None),
        "state_dir": args.state_dir, "multiproc_dir": args.multiproc_dir,
        "web_config_file": args.web_config_file, "watch": args.watch, "log_level": args.log_level,
        "log_format": args.log_format, "telemetry_path": args.telemetry_path,
        "enable_lifecycle": args.enable_lifecycle, "collectors": toggles,
    }


def _fail(msg: str) -> int:
    print(f"mlsidecar: {msg}", file=sys.stderr)
    return EXIT_USAGE


def user_state_dir(environ=os.environ) -> str:
    """$XDG_STATE_HOME/mlsidecar, or ~/.local/state/mlsidecar (the XDG base directory default)."""
    home = environ.get("HOME") or os.path.expanduser("~")
    base = environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return os.path.join(base, "mlsidecar")


def _unwritable(path: str) -> str:
    """Why ``path`` cannot be the state dir ("" when it can): created if missing, then written."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _state_dir_chosen(args: argparse.Namespace, flags: dict) -> bool:
    """Whether someone asked for the state dir (flag, $STATE_DIRECTORY, or the config file)."""
    if flags.get("state_dir"):
        return True
    if not args.config:
        return False
    import tomllib

    try:
        with open(args.config, "rb") as fh:
            return "state_dir" in tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return True


def load_config(args: argparse.Namespace, flags: dict) -> configmod.Config:
    cfg = configmod.load(args.config)
    if not args.config and not flags.get("state_dir") and os.environ.get("STATE_DIRECTORY"):
        flags["state_dir"] = os.environ["STATE_DIRECTORY"].split(":")[0]
    return configmod.with_overrides(cfg, **flags)


def _watch_demo_workload(cfg: configmod.Config, pid_file: str) -> configmod.Config:
    """Point the process collector at the demo workload, so the demo shows ml_process_* too."""
    from dataclasses import replace

    def adjust(name, settings):
        if name != "process":
            return settings
        return replace(settings, options={**settings.options, "mode": "pid_file",
                                          "pid_file": pid_file, "job_name": "demo-train"})

    return replace(cfg, collectors=tuple((n, adjust(n, st)) for n, st in cfg.collectors))


def cmd_run(args: argparse.Namespace, demo_path: str | None = None,
            demo_pid_file: str | None = None, on_bound=None) -> int:
    from . import logs
    from .listen import bind  # not .server: the supervisor must not import aiohttp (every worker would)
    from .runtime.supervisor import Supervisor

    flags = _flags(args)
    try:
        cfg = load_config(args, flags)
        if demo_path:
            cfg = configmod.with_overrides(cfg, tail=[demo_path])
        if demo_pid_file:
            cfg = _watch_demo_workload(cfg, demo_pid_file)
        if demo_path:
            from .demo import with_demo_prices

            cfg = with_demo_prices(cfg)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    logs.setup(cfg.log_level, cfg.log_format)
    try:
        configmod.check_environment(cfg, state_dir=False)  # the socket group, the web config
    except ConfigError as exc:
        return _fail(str(exc))
    problem = _unwritable(cfg.state_dir)
    if problem and cfg.state_dir == DEFAULT_STATE_DIR and not _state_dir_chosen(args, flags):
        # Not root (a first try on a laptop): a directory of this user's own, said in the log.
        fallback = user_state_dir()
        if not _unwritable(fallback):
            log.warning("state dir %s is not writable (%s): using %s instead (choose one with --state-dir)",
                        cfg.state_dir, problem, fallback)
            cfg = configmod.with_overrides(cfg, state_dir=fallback)
            flags["state_dir"] = fallback  # a reload keeps it
            problem = ""
    if problem:
        return _fail(f"state dir {cfg.state_dir} is not writable: {problem} "
                     "(set --state-dir or state_dir in the config)")
    try:
        configmod.check_environment(cfg)  # e.g. a plain file where the state dir needs a directory
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        sock = bind(cfg.server.listen)
    except OSError as exc:
        return _fail(f"cannot listen on {cfg.server.listen}: {exc.strerror} "
                     "(another process has the port? choose one with --listen)")
    if on_bound is not None:
        on_bound(cfg)  # the demo: what to run next, now that the port is ours
    if not (cfg.sources.tail or cfg.sources.socket or cfg.sources.socket_datagram):
        log.warning("no sources configured (--tail, --socket): serving collector and self metrics only")
    notify = None
    if os.environ.get("NOTIFY_SOCKET"):
        from .runtime import sdnotify

        notify = sdnotify.Notifier.from_env()
    sup = Supervisor(cfg, sock, config_path=args.config, overrides=flags, notify=notify)
    return sup.run()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args, cmd_run)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = configmod.load(args.file)
        configmod.check_environment(cfg)  # what it names on this machine: group, web config file
    except ConfigError as exc:
        return _fail(str(exc))
    enabled = [n for n, s in cfg.collectors if s.enabled]
    print(f"{args.file}: OK ({len(cfg.sources.tail)} tail patterns, "
          f"{len(cfg.mappings)} mappings, collectors: {', '.join(enabled) or 'none'})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .probe import probe

    try:
        cfg = configmod.load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    return probe(cfg, args.collector, sys.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reference"]:
        from .analytics.reference import main as reference_main

        return reference_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handlers = {"run": cmd_run, "demo": cmd_demo, "check-config": cmd_check_config, "probe": cmd_probe}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
