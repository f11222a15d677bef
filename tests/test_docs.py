"""Docs that match the code."""

import pathlib

from mlsidecar.docgen import metrics_markdown

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_metrics_doc_is_generated_from_the_catalogue():
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == metrics_markdown(), \
        "docs/metrics.md is out of date: run python -m mlsidecar.docgen > docs/metrics.md"
