"""The naive baseline of bench_ingest.py: the seed's exporter code, one client call per event.

prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before the import, as a
gunicorn-style deployment does), reading the log line by line with json.loads and calling
``labels().inc()`` / ``observe()`` for every event; then one MultiProcessCollector scrape.

    python3 bench/naive_baseline.py LOG MULTIPROC_DIR [--single]

Prints one JSON line: {"seconds": ..., "predictions": <sum of ml_predictions_total in the scrape>}.
``--single`` uses the default (single-process) registry instead, for comparison.

    python3 bench/naive_baseline.py LOG - --follow PORT

``--follow PORT`` (bench_overhead.py): the textbook tailer in one process: the default
registry served by ``start_http_server`` on 127.0.0.1:PORT, the file followed from its start
with ``readline`` and a 0.1 s sleep at its end; runs until SIGTERM.
"""

import json
import os
import sys
import time

log_path, mp_dir = sys.argv[1], sys.argv[2]
follow_port = int(sys.argv[sys.argv.index("--follow") + 1]) if "--follow" in sys.argv else None
single = "--single" in sys.argv[3:] or follow_port is not None
if not single:
    os.makedirs(mp_dir, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir

from prometheus_client import (  # noqa: E402
    REGISTRY,  # noqa: E402
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

LATENCY = (.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
CONFIDENCE = (.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .99, 1)

predictions = Counter("ml_predictions_total", "Predictions served.",
                      ["model_name", "model_version", "status"])
latency = Histogram("ml_prediction_latency_seconds", "Prediction latency.",
                    ["model_name", "model_version"], buckets=LATENCY)
confidence = Histogram("ml_prediction_confidence_score", "Prediction confidence.",
                       ["model_name", "model_version"], buckets=CONFIDENCE)


def count(ev: dict) -> None:
    if ev.get("event") != "prediction":
        return
    model, version = ev["model"], ev.get("version", "")
    predictions.labels(model, version, ev.get("status", "success")).inc()
    latency.labels(model, version).observe(ev["latency_s"])
    if "confidence" in ev:
        confidence.labels(model, version).observe(ev["confidence"])


if follow_port is not None:
    from prometheus_client import start_http_server

    start_http_server(follow_port, addr="127.0.0.1")
    with open(log_path, encoding="utf-8") as fh:
        partial = ""
        while True:
            line = fh.readline()
            if not line:
                time.sleep(0.1)
                continue
            if not line.endswith("\n"):  # the writer is mid-line: wait for the rest
                partial += line
                continue
            count(json.loads(partial + line))
            partial = ""

t0 = time.perf_counter()
with open(log_path, encoding="utf-8") as fh:
    for line in fh:
        ev = json.loads(line)
        if ev.get("event") != "prediction":
            continue
        model, version = ev["model"], ev.get("version", "")
        predictions.labels(model, version, ev.get("status", "success")).inc()
        latency.labels(model, version).observe(ev["latency_s"])
        if "confidence" in ev:
            confidence.labels(model, version).observe(ev["confidence"])

if single:
    text = generate_latest(REGISTRY).decode()
else:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=mp_dir)
    text = generate_latest(registry).decode()
seconds = time.perf_counter() - t0
total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("ml_predictions_total{"))
print(json.dumps({"seconds": seconds, "predictions": total}))
