"""A built-in demo workload: an inference service, a training job and a data pipeline.

It appends realistic events of every built-in kind to a JSON-lines file, so
``mlsidecar demo`` shows live ``ml_*`` series within seconds, and the
end-to-end tests (and the Grafana dashboards) have something real to look at.
"""

from __future__ import annotations

import math
import os
import random
import time

import orjson

# One step each, in turn: resnet50 serves a canary (v4 gets a third of its traffic, is a little
# less accurate and slower, so the comparison is significant after a few minutes), and
# fraud-detector is a binary classifier reporting a score (ROC AUC).
MODELS = (("resnet50", "v3"), ("resnet50", "v4"), ("bert-intent", "v12"), ("resnet50", "v3"),
          ("fraud-detector", "v2"))
ACCURACY = {"v3": 0.95, "v4": 0.88}
SLOWER = {"v4": 1.25}
FEATURES = ("age", "income", "country")
COUNTRIES = ("de", "fr", "us", "jp")


class DemoWorkload:
    """Writes ``rate`` events per second to ``path`` (bounded by ``duration`` when given).

    ``accuracy_drop_after`` makes the labelled predictions go bad after that
    many seconds (the alert-rule end-to-end test uses it); ``drift_after``
    shifts the 'income' feature.
    """

    def __init__(self, path: str, rate: float = 50.0, seed: int = 7,
                 accuracy_drop_after: float | None = None, drift_after: float | None = None):
        self.path = path
        self.rate = rate
        self.rng = random.Random(seed)
        self.accuracy_drop_after = accuracy_drop_after
        self.drift_after = drift_after
        self.start = time.time()
        self.step = 0

    def events(self, now: float) -> list[dict]:
        rng = self.rng
        elapsed = now - self.start
        out: list[dict] = []
        model, version = MODELS[self.step % len(MODELS)]
        bad = self.accuracy_drop_after is not None and elapsed > self.accuracy_drop_after
        shifted = self.drift_after is not None and elapsed > self.drift_after
        y_true = rng.choice(("cat", "dog", "bird"))
        correct = rng.random() < (0.35 if bad else ACCURACY.get(version, 0.93))
        y_pred = y_true if correct else rng.choice([c for c in ("cat", "dog", "bird") if c != y_true])
        age = round(rng.gauss(40, 12), 1)
        ev = {
            "event": "prediction", "model": model, "version": version,
            "status": "error" if rng.random() < 0.02 else "success",
            "latency_s": round(rng.lognormvariate(math.log(0.03), 0.6) * SLOWER.get(version, 1.0), 5),
            "confidence": round(min(1.0, max(0.0, rng.betavariate(8, 2))), 4),
            "y_true": y_true, "y_pred": y_pred,
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
        if s % 10 == 0:
            out.append({"event": "batch", "job": "demo-train", "duration_s": round(rng.uniform(0.2, 1.8), 3),
                        "batch_size": 64})
        if s % 25 == 0:
            epoch = s // 250
            out.append({"event": "training", "job": "demo-train", "epoch": epoch,
                        "losses": {"train": round(2.0 / (1 + s / 500) + rng.random() * 0.05, 4),
                                   "validation": round(2.2 / (1 + s / 600) + rng.random() * 0.05, 4)},
                        "learning_rate": 0.001 * (0.95 ** epoch)})
        if s % 500 == 0:
            out.append({"event": "checkpoint", "job": "demo-train", "size_bytes": 97_800_000 + s,
                        "duration_s": round(rng.uniform(1, 4), 2)})
        if s % 5 == 0:
            stage = rng.choice(("extract", "transform", "load"))
            out.append({"event": "pipeline", "pipeline": "features", "stage": stage,
                        "records": rng.randint(50, 500), "duration_s": round(rng.uniform(0.05, 2), 3),
                        "status": "error" if rng.random() < 0.03 else "success"})
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
            out.append({"event": "deployment", "model": "resnet50", "version": "v4"})
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
