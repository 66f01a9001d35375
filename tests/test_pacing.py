"""How much of a new prompt a step reads beside generating slots (runtime/pacing.py)."""

from __future__ import annotations

import pytest

from modelyard.runtime.pacing import (
    StepTimes,
    WorkSlice,
    embedding_tokens_beside_streams,
    measured,
    prompt_tokens_beside_streams,
)


@pytest.mark.parametrize(
    ("before", "step", "after"),
    [
        pytest.param(StepTimes(), (0.04, 0, 1), StepTimes(0.04, None), id="a-streams-step-is-their-time"),
        pytest.param(StepTimes(0.04, 0.003), (0.02, 0, 3), StepTimes(0.03, 0.003), id="streams-averaged"),
        pytest.param(StepTimes(0.04, 0.003), (0.5, 0, 0), StepTimes(0.04, 0.003), id="nothing-fed"),
        pytest.param(
            StepTimes(0.04, 0.003), (0.1, 15, 1), StepTimes(0.04, 0.003), id="too-few-prompt-tokens"
        ),
        pytest.param(
            StepTimes(0.0, None), (0.1, 10, 0), StepTimes(0.0, 0.01), id="a-first-measure-from-any-step"
        ),
        pytest.param(
            StepTimes(0.04, 0.003), (2.0, 0, 1), StepTimes(0.1, 0.003), id="a-slow-streams-step-counts-4x"
        ),
        pytest.param(
            StepTimes(0.04, 0.002), (10.0, 100, 0), StepTimes(0.04, 0.005), id="a-slow-prompt-step-counts-4x"
        ),
        pytest.param(
            StepTimes(0.04, None), (0.44, 100, 1), StepTimes(0.04, 0.004), id="streams-time-taken-off"
        ),
        pytest.param(
            StepTimes(0.04, None), (0.4, 100, 0), StepTimes(0.04, 0.004), id="prompt-alone-whole-step"
        ),
        pytest.param(StepTimes(None, None), (0.4, 100, 2), StepTimes(None, 0.004), id="streams-not-measured"),
        pytest.param(
            StepTimes(0.3, None),
            (0.4, 100, 1),
            StepTimes(0.3, 0.002),
            id="at-least-half-the-step-is-the-prompt",
        ),
        pytest.param(StepTimes(0.0, 0.002), (0.4, 100, 1), StepTimes(0.0, 0.003), id="per-token-averaged"),
    ],
)
def test_measured(before: StepTimes, step: tuple[float, int, int], after: StepTimes) -> None:
    got = measured(before, *step)
    assert got.streams_s == pytest.approx(after.streams_s)
    assert got.per_prompt_token_s == pytest.approx(after.per_prompt_token_s)


@pytest.mark.parametrize(
    ("times", "slice_", "tokens"),
    [
        pytest.param(StepTimes(0.04, None), WorkSlice(0.4, 128), None, id="not-measured-whole-batch"),
        pytest.param(StepTimes(0.005, 1e-5), WorkSlice(0.4, 128), 39500, id="a-gpu-slice-holds-a-batch"),
        pytest.param(StepTimes(0.04, 0.001), WorkSlice(0.4, 128), 360, id="the-slice-less-the-streams"),
        pytest.param(StepTimes(0.04, 0.003), WorkSlice(0.4, 128), 128, id="at-least-least-tokens"),
        pytest.param(StepTimes(None, 0.003), WorkSlice(0.4, 1), 133, id="streams-not-measured"),
        pytest.param(StepTimes(1.0, 0.01), WorkSlice(0.4, 1), 100, id="slow-streams-half-and-half"),
        pytest.param(StepTimes(0.0, 10.0), WorkSlice(0.4, 0), 1, id="one-token-at-least"),
    ],
)
def test_prompt_tokens_beside_streams(times: StepTimes, slice_: WorkSlice, tokens: int | None) -> None:
    assert prompt_tokens_beside_streams(times, slice_) == tokens


@pytest.mark.parametrize(
    ("per_token_s", "slice_", "tokens"),
    [
        pytest.param(None, WorkSlice(0.4, 128), None, id="not-measured-whole-batch"),
        pytest.param(0.001, WorkSlice(0.4, 128), 400, id="the-slice"),
        pytest.param(0.004, WorkSlice(0.4, 128), 128, id="at-least-least-tokens"),
        pytest.param(10.0, WorkSlice(0.4, 0), 1, id="one-token-at-least"),
    ],
)
def test_embedding_tokens_beside_streams(
    per_token_s: float | None, slice_: WorkSlice, tokens: int | None
) -> None:
    assert embedding_tokens_beside_streams(per_token_s, slice_) == tokens
