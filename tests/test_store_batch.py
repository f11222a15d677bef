"""Batch.observe_all (a chunk's values at once) counts exactly what observe does value by value."""

from __future__ import annotations

import math
import random

import pytest

from mlsidecar import catalogue as C
from mlsidecar.store import Batch

FAM = C.PREDICTION_LATENCY


def one_by_one(values: list[float]) -> list[float]:
    b = Batch()
    for v in values:
        b.observe(FAM, ("m", "v"), v)
    return b.histograms[(FAM, ("m", "v"))]


def at_once(values: list[float], chunks: int = 1) -> list[float]:
    b = Batch()
    size = max(1, math.ceil(len(values) / chunks))
    for i in range(0, len(values), size):
        b.observe_all(FAM, ("m", "v"), values[i:i + size])
    return b.histograms[(FAM, ("m", "v"))]


def test_values_on_every_bound_and_between_and_beyond():
    bounds = list(FAM.buckets)
    values = bounds + [b * 0.999 for b in bounds] + [b * 1.001 for b in bounds] + [0.0, 1e9, math.inf]
    random.Random(3).shuffle(values)
    expected = one_by_one(values)
    got = at_once(values)
    assert got[:-1] == expected[:-1]  # bucket counts: exact
    assert got[-1] == math.fsum(values)


@pytest.mark.parametrize("draw", range(5))
def test_random_chunks_count_what_one_by_one_counts(draw):
    rnd = random.Random(draw)
    values = [rnd.choice([rnd.random() * 2, rnd.expovariate(5.0), rnd.choice(FAM.buckets)]) for _ in range(3000)]
    expected = one_by_one(values)
    got = at_once(values, chunks=7)
    assert got[:-1] == expected[:-1]
    assert got[-1] == pytest.approx(expected[-1], rel=1e-12)


def test_all_in_the_first_bucket_or_all_past_the_last():
    assert at_once([0.0] * 5)[:-1] == one_by_one([0.0] * 5)[:-1]
    assert at_once([1e6] * 5)[:-1] == one_by_one([1e6] * 5)[:-1]
    b = Batch()
    b.observe_all(FAM, ("m", "v"), [])
    assert b.histograms[(FAM, ("m", "v"))] == [0.0] * (len(FAM.buckets) + 2)


def test_a_nan_is_counted_as_observe_counts_it():
    values = [0.1, math.nan, 3.0, 0.001]
    expected, got = one_by_one(values), at_once(values)
    assert got[:-1] == expected[:-1]
    assert math.isnan(got[-1]) and math.isnan(expected[-1])
