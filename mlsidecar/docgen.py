"""Writes docs/metrics.md from the catalogue, so the docs cannot drift from the code.

    python -m mlsidecar.docgen > docs/metrics.md

A test fails when the committed file differs from this output.
"""

from __future__ import annotations

import math

from . import catalogue

INTRO = """# Metrics

Every metric family mlsidecar can expose. This file is generated from `mlsidecar/catalogue.py` and the
families the collectors and analytics declare (`python -m mlsidecar.docgen > docs/metrics.md`); a
test fails when it is out of date.

Every series also carries the static labels of the config (`[labels]`, `[labels_from_env]`).
"Expires" is how long a series may go without an update before it disappears from `/metrics`
(override per family in the `[expire]` table; `never` for counters so `rate()` stays right).

Names follow the Prometheus conventions (`promtool check metrics` finds nothing to report): base
units (`_seconds`, `_bytes`), `_total` on counters, and shares as `_ratio` from 0 to 1. A name the
specification fixes keeps its form even where the conventions would say otherwise:
`ml_training_gpu_utilization_percent` is in percent (0-100), while the GPU collector's own
`ml_gpu_utilization_ratio` is the same reading from 0 to 1.

Renamed (dashboards and rules here use the new names; update your own queries):

| old name | new name | why |
|---|---|---|
| `ml_process_count` | `ml_process_processes` | `_count` is reserved for histograms and summaries |
| `ml_gpu_utilization_percent` | `ml_gpu_utilization_ratio` | a share, 0-1 |
| `ml_gpu_memory_utilization_percent` | `ml_gpu_memory_utilization_ratio` | a share, 0-1 |
"""

SECTIONS = (
    ("Model", "ml_model_", "ml_prediction", "ml_feature", "ml_data_quality", "ml_anomaly"),
    ("Training", "ml_training_"),
    ("Data pipeline", "ml_pipeline_"),
    ("GPU", "ml_gpu_"),
    ("Workload processes", "ml_process_"),
    ("Host", "ml_host_"),
    ("The sidecar itself", "mlsidecar_", "process_", "python_"),
)


def _expiry(fam: catalogue.Family) -> str:
    s = fam.expire_after
    if math.isinf(s):
        return "never"
    if s % 3600 == 0:
        return f"{int(s // 3600)}h"
    return f"{int(s)}s"


def section_of(name: str) -> str:
    for title, *prefixes in SECTIONS:
        if name.startswith(tuple(prefixes)):
            return title
    return "Model" if name.startswith("ml_predictions") else "Other"


def metrics_markdown() -> str:
    fams = sorted(catalogue.builtin().values(), key=lambda f: f.name)
    out = [INTRO]
    for title, *_ in SECTIONS + (("Other",),):
        rows = [f for f in fams if section_of(f.name) == title]
        if not rows:
            continue
        out.append(f"\n## {title}\n")
        out.append("| name | type | labels | unit | buckets | fed by | expires | help |")
        out.append("|---|---|---|---|---|---|---|---|")
        for f in rows:
            buckets = " ".join(f"{b:g}" for b in f.buckets)
            labels = ", ".join(f.labels)
            out.append(f"| `{f.name}` | {f.type} | {labels} | {f.unit} | {buckets} | {f.fed_by} | "
                       f"{_expiry(f)} | {f.help} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(metrics_markdown(), end="")
