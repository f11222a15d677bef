"""Reference distributions for feature drift: build, save, load.

A reference is a small JSON summary of a training-time sample, so the sidecar
never keeps raw reference data. ``mlsidecar reference`` writes one from a
JSON-lines or CSV sample; the sidecar can also build the same summary from the
first N values it sees (see :mod:`mlsidecar.analytics.drift`).

Format (``"format": "mlsidecar-reference/1"``)::

    {
      "format": "mlsidecar-reference/1",
      "rows": 10000,                      # rows read from the sample
      "features": {
        "amount": {
          "type": "numeric",
          "count": 9990,                  # non-missing numeric values summarised
          "edges": [e0, ..., ek],         # quantile bin edges (k = bins, deduplicated)
          "proportions": [p_under, p_1, ..., p_k, p_over],   # len(edges) + 1, sums to 1
          "quantiles": [q0, ..., qQ]      # Q + 1 quantiles at i/Q (KS reference CDF)
        },
        "country": {
          "type": "categorical",
          "count": 10000,
          "categories": {"DE": 0.31, "FR": 0.22, ...},       # top max_categories
          "unseen": 0.0                   # mass of categories folded out of the list
        }
      }
    }

Bins of a numeric feature: index 0 is the underflow bin ``x < e0``; bin ``i``
(1 <= i < len(edges)) is ``[e(i-1), e(i))``, the last interior bin being closed
``[e(k-1), ek]``; the last index is the overflow bin ``x > ek``. The under- and
overflow bins have zero reference mass by construction (the edges run from
the sample's minimum to its maximum). A sample whose values are all equal has
edges ``[v, v]``: three bins ``< v``, ``== v``, ``> v``.

Quantiles use linear interpolation between order statistics (numpy's
default, "type 7").
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from typing import Any, TypeGuard

FORMAT = "mlsidecar-reference/1"
NUMERIC = "numeric"
CATEGORICAL = "categorical"
DEFAULT_BINS = 10
DEFAULT_QUANTILES = 100
DEFAULT_MAX_CATEGORIES = 50


class ReferenceError(ValueError):
    """A reference file that cannot be used."""


def quantile(sorted_values: list[float], p: float) -> float:
    """The p-quantile (0 <= p <= 1) of sorted values, linear interpolation (numpy default)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    h = (n - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def bin_index(edges: list[float], x: float) -> int:
    """The bin of ``x`` (see the module docstring): 0 underflow, len(edges) overflow."""
    i = bisect_right(edges, x)
    if i == len(edges) and x == edges[-1]:
        i -= 1
    return i


def category(v) -> str | None:
    """A categorical value as its label string; None for a type that cannot be a category."""
    t = type(v)
    if t is str:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    return None


def summarise_numeric(values: Iterable[float], bins: int = DEFAULT_BINS,
                      quantiles: int = DEFAULT_QUANTILES) -> dict:
    """The reference summary of numeric values (non-finite values must be removed first)."""
    vals = sorted(float(v) for v in values)
    if not vals:
        raise ValueError("no values to summarise")
    edges: list[float] = []
    for i in range(bins + 1):
        e = quantile(vals, i / bins)
        if not edges or e > edges[-1]:
            edges.append(e)
    if len(edges) == 1:
        edges.append(edges[0])
    counts = [0] * (len(edges) + 1)
    for v in vals:
        counts[bin_index(edges, v)] += 1
    n = len(vals)
    return {
        "type": NUMERIC,
        "count": n,
        "edges": edges,
        "proportions": [c / n for c in counts],
        "quantiles": [quantile(vals, i / quantiles) for i in range(quantiles + 1)],
    }


def summarise_categorical(values: Iterable, max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict:
    """The reference summary of categorical values: the top categories and the folded rest."""
    counts = Counter(c for c in (category(v) for v in values) if c is not None)
    n = sum(counts.values())
    if not n:
        raise ValueError("no values to summarise")
    top = counts.most_common(max_categories)
    kept = sum(c for _, c in top)
    return {
        "type": CATEGORICAL,
        "count": n,
        "categories": {k: c / n for k, c in top},
        "unseen": (n - kept) / n,
    }


def is_missing(v) -> bool:
    return v is None or (type(v) is float and not math.isfinite(v))


def build(rows: Iterable[dict], *, bins: int = DEFAULT_BINS, quantiles: int = DEFAULT_QUANTILES,
          max_categories: int = DEFAULT_MAX_CATEGORIES, categorical: Iterable[str] = (),
          only: Iterable[str] = ()) -> dict:
    """A reference from rows of {feature: value}; a feature is numeric when all its values are."""
    categorical = set(categorical)
    only = set(only)
    columns: dict[str, list] = {}
    n_rows = 0
    for row in rows:
        n_rows += 1
        for name, v in row.items():
            if only and name not in only:
                continue
            if is_missing(v):
                columns.setdefault(name, [])
                continue
            columns.setdefault(name, []).append(v)
    features = {}
    for name, vals in sorted(columns.items()):
        if not vals:
            continue
        numeric = name not in categorical and all(
            type(v) in (int, float) and type(v) is not bool for v in vals)
        if numeric:
            features[name] = summarise_numeric(vals, bins, quantiles)
        else:
            features[name] = summarise_categorical(vals, max_categories)
    return {"format": FORMAT, "rows": n_rows, "features": features}


# --- loading ---------------------------------------------------------------------
def validate(data) -> dict:
    """Check a parsed reference; return its ``features`` mapping. Raises ReferenceError."""
    if type(data) is not dict:
        raise ReferenceError("a reference must be a JSON object")
    if data.get("format") != FORMAT:
        raise ReferenceError(f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
    feats = data.get("features")
    if type(feats) is not dict:
        raise ReferenceError("'features' must be an object")
    for name, f in feats.items():
        where = f"features.{name}"
        if type(f) is not dict:
            raise ReferenceError(f"{where} must be an object")
        t = f.get("type")
        if t == NUMERIC:
            edges, props, qs = f.get("edges"), f.get("proportions"), f.get("quantiles")
            if not _numbers(edges) or len(edges) < 2 or edges != sorted(edges):
                raise ReferenceError(f"{where}.edges must be >= 2 sorted numbers")
            if not _numbers(props) or len(props) != len(edges) + 1 or any(p < 0 for p in props):
                raise ReferenceError(f"{where}.proportions must be len(edges)+1 numbers >= 0")
            if abs(sum(props) - 1.0) > 1e-6:
                raise ReferenceError(f"{where}.proportions must sum to 1")
            if not _numbers(qs) or len(qs) < 2 or qs != sorted(qs):
                raise ReferenceError(f"{where}.quantiles must be >= 2 sorted numbers")
        elif t == CATEGORICAL:
            cats = f.get("categories")
            if type(cats) is not dict or not _numbers(list(cats.values())):
                raise ReferenceError(f"{where}.categories must be an object of proportions")
            unseen = f.get("unseen", 0.0)
            if not _numbers([unseen]) or unseen < 0 or any(p < 0 for p in cats.values()):
                raise ReferenceError(f"{where}: proportions must be >= 0")
            if abs(sum(cats.values()) + unseen - 1.0) > 1e-6:
                raise ReferenceError(f"{where}: categories + unseen must sum to 1")
        else:
            raise ReferenceError(f"{where}.type must be 'numeric' or 'categorical'")
    return feats


def _numbers(v: Any) -> TypeGuard[list[float]]:
    return type(v) is list and all(type(x) in (int, float) and math.isfinite(x) for x in v)


def load(path: str) -> dict:
    """Read and validate a reference file; return {feature: summary}."""
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except OSError as exc:
        raise ReferenceError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReferenceError(f"{path} is not valid JSON: {exc}") from None
    return validate(data)


# --- the `mlsidecar reference` subcommand ------------------------------------------
def _read_jsonl(fh) -> Iterable[dict]:
    for lineno, line in enumerate(fh, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ReferenceError(f"line {lineno}: not JSON: {exc}") from None
        if type(obj) is not dict:
            raise ReferenceError(f"line {lineno}: not a JSON object")
        feats = obj.get("features")
        if type(feats) is dict:
            yield feats
        else:
            yield {k: v for k, v in obj.items() if k != "event"}


def _parse_cell(s: str):
    if s == "":
        return None
    try:
        v = float(s)
    except ValueError:
        return s
    return v if math.isfinite(v) else None


def _read_csv(fh) -> Iterable[dict]:
    for row in csv.DictReader(fh):
        yield {k: _parse_cell(v or "") for k, v in row.items() if k is not None}


def main(argv: list[str] | None = None) -> int:
    """``mlsidecar reference SAMPLE -o reference.json``: summarise a training-time sample."""
    p = argparse.ArgumentParser(
        prog="mlsidecar reference",
        description="Summarise a training-time sample (JSON lines or CSV) into a drift reference.")
    p.add_argument("sample", help="JSON lines (objects of features, or prediction events with "
                                  "'features') or CSV with a header; '-' reads stdin")
    p.add_argument("-o", "--output", default="-", help="reference JSON to write ('-': stdout)")
    p.add_argument("--input-format", choices=("auto", "jsonl", "csv"), default="auto")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help="quantile bins for PSI")
    p.add_argument("--quantiles", type=int, default=DEFAULT_QUANTILES,
                   help="quantiles stored for the KS reference CDF")
    p.add_argument("--max-categories", type=int, default=DEFAULT_MAX_CATEGORIES)
    p.add_argument("--categorical", default="", help="comma-separated features to treat as categorical")
    p.add_argument("--features", default="", help="comma-separated features to keep (default: all)")
    args = p.parse_args(argv)
    if args.bins < 1 or args.quantiles < 2 or args.max_categories < 1:
        print("mlsidecar reference: --bins >= 1, --quantiles >= 2, --max-categories >= 1",
              file=sys.stderr)
        return 2
    fmt = args.input_format
    if fmt == "auto":
        fmt = "csv" if args.sample.lower().endswith(".csv") else "jsonl"
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    try:
        fh = sys.stdin if args.sample == "-" else open(args.sample, newline="" if fmt == "csv" else None,
                                                        encoding="utf-8")
        with fh:
            rows = _read_csv(fh) if fmt == "csv" else _read_jsonl(fh)
            ref = build(rows, bins=args.bins, quantiles=args.quantiles,
                        max_categories=args.max_categories, categorical=split(args.categorical),
                        only=split(args.features))
    except (OSError, ReferenceError, UnicodeDecodeError, csv.Error) as exc:
        print(f"mlsidecar reference: {args.sample}: {exc}", file=sys.stderr)
        return 1
    if not ref["features"]:
        print(f"mlsidecar reference: {args.sample}: no feature values found", file=sys.stderr)
        return 1
    text = json.dumps(ref, indent=1, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
        import os

        os.replace(tmp, args.output)
        print(f"mlsidecar reference: {len(ref['features'])} features from {ref['rows']} rows "
              f"-> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
