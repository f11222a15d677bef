"""A built-in demo workload: an inference service, a training job and a data pipeline.

It appends realistic events of every built-in kind to a JSON-lines file, so
``mlsidecar demo`` shows live ``ml_*`` series within seconds, and the
end-to-end tests (and the Grafana dashboards) have something real to look at.

The healthy demo raises no alert of deploy/prometheus/rules; ``--inject KIND``
makes it unhealthy after ``--inject-after`` seconds, so that a newcomer can watch
an alert fire (``--prometheus`` starts a Prometheus with the rules beside it).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

# What --inject can break, and the alert that then fires.
INJECTIONS = {
    "accuracy-drop": "ModelAccuracyDrop",
    "pipeline-stalled": "DataPipelineStalled",
    "training-stalled": "TrainingJobStalled",
    "loss-nan": "TrainingLossExplosion",
    "schema-violations": "SchemaViolationsDetected",
    "canary-worse": "ModelCandidateWorse",
}

# One step each, in turn: resnet50 serves a canary (v4 gets a third of its traffic and is 20%
# faster: a real, significant difference within a minute that is no alert; with --inject
# canary-worse it is less accurate and slower instead), and fraud-detector is a binary classifier
# reporting a score (ROC AUC).
MODELS = (("resnet50", "v3"), ("resnet50", "v4"), ("bert-intent", "v12"), ("resnet50", "v3"),
          ("fraud-detector", "v2"))
ACCURACY = {"v3": 0.95, "v4": 0.95}
WORSE_CANARY = {"v4": 0.88}  # accuracy with --inject canary-worse
SLOWER = {"v4": 1.25}  # latency factor with --inject canary-worse
FASTER = {"v4": 0.8}  # latency factor of the healthy canary
FEATURES = ("age", "income", "country")
# Payload sizes of one request and one response, by model.
PAYLOAD_BYTES = {"resnet50": (150_528, 96), "bert-intent": (512, 64), "fraud-detector": (256, 32)}
COUNTRIES = ("de", "fr", "us", "jp")


class DemoWorkload:
    """Writes ``rate`` events per second to ``path`` (bounded by ``duration`` when given).

    ``accuracy_drop_after`` makes the labelled predictions go bad after that
    many seconds (the alert-rule end-to-end test uses it); ``drift_after``
    shifts the 'income' feature; ``inject`` (names of INJECTIONS) breaks those
    parts after ``inject_after`` seconds.
    """

    def __init__(self, path: str, rate: float = 50.0, seed: int = 7,
                 accuracy_drop_after: float | None = None, drift_after: float | None = None,
                 inject: tuple[str, ...] = (), inject_after: float = 0.0):
        unknown = set(inject) - set(INJECTIONS)
        if unknown:
            raise ValueError(f"unknown injection {', '.join(sorted(unknown))} (one of {', '.join(INJECTIONS)})")
        self.path = path
        self.rate = rate
        self.rng = random.Random(seed)
        self.accuracy_drop_after = accuracy_drop_after
        if "accuracy-drop" in inject:
            self.accuracy_drop_after = inject_after
        self.drift_after = drift_after
        self.inject = frozenset(inject)
        self.inject_after = inject_after
        self.start = time.time()
        self.step = 0

    def events(self, now: float) -> list[dict]:
        rng = self.rng
        elapsed = now - self.start
        out: list[dict] = []
        model, version = MODELS[self.step % len(MODELS)]
        bad = self.accuracy_drop_after is not None and elapsed > self.accuracy_drop_after
        shifted = self.drift_after is not None and elapsed > self.drift_after
        broken = self.inject if elapsed > self.inject_after else frozenset()
        y_true = rng.choice(("cat", "dog", "bird"))
        canary_worse = "canary-worse" in broken
        accuracy = (WORSE_CANARY if canary_worse else ACCURACY).get(version, ACCURACY.get(version, 0.93))
        correct = rng.random() < (0.35 if bad else accuracy)
        y_pred = y_true if correct else rng.choice([c for c in ("cat", "dog", "bird") if c != y_true])
        age = round(rng.gauss(40, 12), 1)
        ev = {
            "event": "prediction", "model": model, "version": version,
            "status": "error" if rng.random() < 0.005 else "success",
            "latency_s": round(rng.lognormvariate(math.log(0.03), 0.6)
                               * (SLOWER if canary_worse else FASTER).get(version, 1.0), 5),
            "confidence": round(min(1.0, max(0.0, rng.betavariate(8, 2))), 4),
            "y_true": y_true, "y_pred": y_pred,
            "request_bytes": PAYLOAD_BYTES[model][0], "response_bytes": PAYLOAD_BYTES[model][1],
            "features": {"age": age,
                         "income": round(rng.gauss(80000 if shifted else 50000, 15000)
                                         + 400 * (age - 40), 0),
                         "country": rng.choice(COUNTRIES)},
        }
        if model == "fraud-detector":
            fraud = rng.random() < 0.3
            score = round(rng.betavariate(6, 2) if fraud else rng.betavariate(2, 6), 4)
            ev.update(y_true=int(fraud), y_pred=int(score >= 0.5), score=score,
                      confidence=round(max(score, 1 - score), 4))
            if bad:
                ev["y_true"] = int(rng.random() < 0.3)
        out.append(ev)
        self.step += 1
        s = self.step
        training = "training-stalled" not in broken
        if s % 10 == 0 and training:
            out.append({"event": "batch", "job": "demo-train", "duration_s": round(rng.uniform(0.2, 1.8), 3),
                        "batch_size": 64})
        if s % 25 == 0 and training:
            epoch = s // 250
            train_loss = round(2.0 / (1 + s / 500) + rng.random() * 0.05, 4)
            out.append({"event": "training", "job": "demo-train", "epoch": epoch, "status": "running",
                        "losses": {"train": "NaN" if "loss-nan" in broken else train_loss,
                                   "validation": round(2.2 / (1 + s / 600) + rng.random() * 0.05, 4)},
                        "learning_rate": 0.001 * (0.95 ** epoch)})
        if s % 1000 == 0 and training:  # a run ends; the next training event starts another
            out.append({"event": "training", "job": "demo-train", "status": "completed"})
        if s % 500 == 0 and training:
            out.append({"event": "checkpoint", "job": "demo-train", "size_bytes": 97_800_000 + s,
                        "duration_s": round(rng.uniform(1, 4), 2)})
        if s % 5 == 0 and "pipeline-stalled" not in broken:
            stage = rng.choice(("extract", "transform", "load"))
            out.append({"event": "pipeline", "pipeline": "features", "stage": stage,
                        "records": rng.randint(50, 500), "duration_s": round(rng.uniform(0.05, 2), 3),
                        "status": "error" if rng.random() < 0.005 else "success"})
            out.append({"event": "queue", "pipeline": "features",
                        "queues": {"raw": rng.randint(0, 200), "enriched": rng.randint(0, 50)}})
            out.append({"event": "freshness", "pipeline": "features", "source": "clickstream",
                        "data_ts": round(now - rng.uniform(5, 30), 3)})
        if s % 50 == 0:
            out.append({"event": "drift", "model": "resnet50", "version": "v4", "feature": "brightness",
                        "score": round(abs(rng.gauss(0.05, 0.02)), 4)})
            out.append({"event": "data_quality", "model": "resnet50", "version": "v4",
                        "scores": {"completeness": round(rng.uniform(0.97, 1.0), 4),
                                   "validity": round(rng.uniform(0.95, 1.0), 4)}})
            out.append({"event": "evaluation", "model": "bert-intent", "version": "v12",
                        "dataset": "holdout", "accuracy": 0.91, "precision": 0.9, "recall": 0.89})
        if s % 200 == 0:
            if "schema-violations" in broken:
                out.append({"event": "schema_violation", "pipeline": "features",
                            "violation_type": "missing_column", "count": 1})
            out.append({"event": "metric", "name": "business_conversions_total", "type": "counter",
                        "value": rng.randint(1, 5), "labels": {"model": "resnet50"}})
        if s % 500 == 1:
            for v in ("v3", "v4"):
                out.append({"event": "feature_importance", "model": "resnet50", "version": v,
                            "method": "permutation",
                            "importances": {"age": round(0.35 + rng.uniform(-0.02, 0.02), 4),
                                            "income": round(0.5 + rng.uniform(-0.02, 0.02), 4),
                                            "country": round(0.15 + rng.uniform(-0.02, 0.02), 4)}})
        if s == 1:
            out.append({"event": "deployment", "model": "resnet50", "version": "v4", "size_bytes": 102_483_968})
        return out

    def run(self, duration: float | None = None, stop=lambda: False) -> int:
        """Append events until ``duration`` passes or ``stop()`` says so; returns lines written."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        written = 0
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        end = None if duration is None else next_at + duration
        with open(self.path, "ab", buffering=0) as fh:
            while not stop() and (end is None or time.monotonic() < end):
                lines = b"".join(orjson.dumps(e) + b"\n" for e in self.events(time.time()))
                fh.write(lines)
                written += lines.count(b"\n")
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return written


# --- `mlsidecar demo` ---------------------------------------------------------------

# Prices, budgets and business facts of the demo, so the Cost & health dashboard has something to
# show (a config with its own [cost] or [impact] table keeps them).
DEMO_COST_TOML = """
[cost]
currency = "USD"
default_gpu_hour = 2.5
cpu_core_hour = 0.04
memory_gib_hour = 0.005
capacity = "on_demand"
budgets = [{ scope = "model", name = "resnet50", monthly = 300.0 },
           { scope = "job", name = "demo-train", monthly = 200.0 },
           { scope = "pipeline", name = "features", monthly = 100.0 }]
[cost.gpu_hour]
"NVIDIA H200" = 3.5

[impact.models.resnet50]
impact = 0.9
urgency = 0.8
revenue_per_hour = 10000.0
active_users = 100000
[impact.models.fraud-detector]
impact = 1.0
revenue_per_hour = 2500.0
active_users = 20000
"""


def with_demo_prices(cfg):
    """The demo's [cost] and [impact] where the config has none of its own."""
    import tomllib
    from dataclasses import replace

    from . import config as configmod

    demo = configmod.from_dict(tomllib.loads(DEMO_COST_TOML), "(demo prices)")
    if cfg.cost is None or not cfg.cost.enabled:
        cfg = replace(cfg, cost=demo.cost)
    if cfg.impact is None or not cfg.impact.configured:
        cfg = replace(cfg, impact=demo.impact)
    return cfg


def add_demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inject", action="append", default=[], metavar="KIND",
                   help="make the demo unhealthy: " + ", ".join(f"{k} ({a})" for k, a in INJECTIONS.items())
                        + "; repeat or separate with commas")
    p.add_argument("--inject-after", type=float, default=60.0, metavar="SECONDS",
                   help="healthy for this long first (default 60)")
    p.add_argument("--prometheus", action="store_true",
                   help="also start `prometheus` (found on PATH) with deploy/prometheus/prometheus-local.yml "
                        "and the rules, on loopback")
    p.add_argument("--prometheus-listen", default="127.0.0.1:9090", metavar="HOST:PORT",
                   help="where that Prometheus listens (default 127.0.0.1:9090)")


def deploy_dir() -> Path | None:
    """deploy/prometheus of a source checkout (the package's parent), or of the current directory."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        d = base / "deploy" / "prometheus"
        if (d / "prometheus-local.yml").is_file():
            return d
    return None


def prometheus_config(listen: str, out_dir: str) -> str:
    """prometheus-local.yml, scraping the demo at ``listen``, with the rule files by absolute path."""
    d = deploy_dir()
    if d is None:
        raise SystemExit("mlsidecar demo --prometheus: deploy/prometheus/prometheus-local.yml not found "
                         "(run it from a checkout of mlsidecar)")
    text = (d / "prometheus-local.yml").read_text()
    text = text.replace('"127.0.0.1:9877"', f'"{listen}"').replace("  - rules/*.yml", f"  - {d / 'rules'}/*.yml")
    path = os.path.join(out_dir, "prometheus.yml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def start_prometheus(listen: str, prom_listen: str, out_dir: str) -> subprocess.Popen:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("mlsidecar demo --prometheus: no `prometheus` on PATH (Debian: apt-get install prometheus)")
    cfg = prometheus_config(listen, out_dir)
    log = open(os.path.join(out_dir, "prometheus.log"), "ab")
    return subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(out_dir, 'tsdb')}",
                             f"--web.listen-address={prom_listen}", "--storage.tsdb.retention.time=1d"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def banner(args: argparse.Namespace, path: str, listen: str, prometheus: bool) -> str:
    lines = [f"mlsidecar demo: serving on http://{listen}/ (workload writing {path})",
             f"  metrics:    curl http://{listen}/metrics"]
    if prometheus:
        p = args.prometheus_listen
        lines += [f"  prometheus: http://{p}/alerts  (queries: http://{p}/graph)",
                  f"              log and data in {os.path.dirname(path)}"]
    else:
        lines += ["  prometheus: mlsidecar demo --prometheus   (or: prometheus "
                  "--config.file=deploy/prometheus/prometheus-local.yml)"]
    if args.inject:
        lines.append(f"  injecting:  {', '.join(args.inject)} after {args.inject_after:g}s "
                     f"(alerts: {', '.join(INJECTIONS[k] for k in args.inject)})")
    else:
        lines.append("  unhealthy:  mlsidecar demo --inject accuracy-drop   (also: "
                     + ", ".join(k for k in INJECTIONS if k != "accuracy-drop") + ")")
    lines.append("  stop:       Ctrl-C")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace, cmd_run) -> int:
    """The demo workload in a child process and the sidecar on it; everything temporary goes."""
    import multiprocessing
    import signal
    import threading

    args.inject = [k.strip() for v in args.inject for k in v.split(",") if k.strip()]
    unknown = [k for k in args.inject if k not in INJECTIONS]
    if unknown:
        print(f"mlsidecar: --inject {unknown[0]}: not one of {', '.join(INJECTIONS)}", file=sys.stderr)
        return 2
    own_dir = None
    if not args.state_dir:
        own_dir = tempfile.mkdtemp(prefix="mlsidecar-demo-")
        args.state_dir = own_dir
    state_dir = args.state_dir
    args.listen = args.listen or "127.0.0.1:9877"
    if getattr(args, "collector_host", None) is None:
        args.collector_host = True  # the demo shows the host too
    path = args.events_file or os.path.join(state_dir, "demo-events.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    open(path, "ab").close()
    children: list = []
    timer = None
    try:
        def write() -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            DemoWorkload(path, rate=args.rate, inject=tuple(args.inject),
                         inject_after=args.inject_after).run(args.duration)

        writer = multiprocessing.get_context("fork").Process(target=write, name="demo-workload", daemon=True)
        writer.start()
        children.append(writer)
        pid_file = os.path.join(state_dir, "demo-workload.pid")
        with open(pid_file, "w") as fh:
            fh.write(f"{writer.pid}\n")

        def bound(cfg) -> None:
            if args.prometheus:
                children.append(start_prometheus(cfg.server.listen, args.prometheus_listen, state_dir))
            print(banner(args, path, cfg.server.listen, args.prometheus), file=sys.stderr, flush=True)

        if args.duration:
            timer = threading.Timer(args.duration + 2.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
        return cmd_run(args, demo_path=path, demo_pid_file=pid_file, on_bound=bound)
    finally:
        if timer is not None:
            timer.cancel()
        for child in children:
            child.terminate()
        for child in children:
            try:
                (child.join if hasattr(child, "join") else child.wait)(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
