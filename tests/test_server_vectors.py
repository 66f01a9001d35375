"""What each API makes of the runner's pooled embeddings (modelyard/server/vectors.py)."""

from __future__ import annotations

import math

import pytest

from modelyard.server.vectors import l2_normalised, unit_vector


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([3.0, 4.0], [0.6, 0.8]),
        ([0.0, -2.0], [0.0, -1.0]),
        ([0.0, 0.0], [0.0, 0.0]),  # no direction to keep: left as it is, no division by zero
        ([1e-30, 1e-30], [math.sqrt(0.5), math.sqrt(0.5)]),  # tiny, not zero
        ([], []),
    ],
)
def test_l2_normalised(vector: list[float], expected: list[float]) -> None:
    assert l2_normalised(vector) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("dimensions", "expected"),
    [
        (None, [0.5, 0.5, 0.5, 0.5]),
        (0, [0.5, 0.5, 0.5, 0.5]),  # as Ollama: only 0 < dimensions < the model's count
        (-3, [0.5, 0.5, 0.5, 0.5]),
        (4, [0.5, 0.5, 0.5, 0.5]),
        (9, [0.5, 0.5, 0.5, 0.5]),
        (2, [math.sqrt(0.5), math.sqrt(0.5)]),  # cut, then normalised again
        (1, [1.0]),
    ],
)
def test_unit_vector_cuts_then_normalises(dimensions: int | None, expected: list[float]) -> None:
    assert unit_vector([2.0, 2.0, 2.0, 2.0], dimensions) == pytest.approx(expected)
