"""Prompt lookup guesses and how many to make (runtime/drafting.py): pure, table-driven."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from modelyard.runtime.drafting import MAX_PAUSE, DraftPace, NgramIndex, draft_limit, next_pace


def naive_draft(tokens: Sequence[int], limit: int, sizes: Sequence[int]) -> list[int]:
    """The definition: for the longest n with an earlier occurrence of the last n tokens that has a
    token after it, what followed the latest such occurrence."""
    for n in sizes:
        if len(tokens) <= n:
            continue
        key = list(tokens[-n:])
        for end in range(len(tokens) - 1, n - 1, -1):  # end: where the occurrence's follower starts
            if list(tokens[end - n : end]) == key:
                return list(tokens[end : end + limit])
    return []


@pytest.mark.parametrize(
    ("tokens", "limit", "expected"),
    [
        pytest.param([], 4, [], id="empty"),
        pytest.param([1, 2, 3], 4, [], id="nothing-repeats"),
        pytest.param([1, 2, 3, 4, 1, 2], 4, [3, 4, 1, 2], id="bigram-seen-before"),
        pytest.param([1, 2, 3, 4, 1, 2], 2, [3, 4], id="limit"),
        pytest.param([1, 2, 3, 4, 1, 2], 0, [], id="limit-zero"),
        pytest.param([7, 1, 2, 5, 9, 1, 2, 6, 1, 2], 3, [6, 1, 2], id="latest-occurrence-wins"),
        # The trigram [9, 1, 2] outranks the later bigram [1, 2] that was followed by 6.
        pytest.param([9, 1, 2, 5, 8, 1, 2, 6, 9, 1, 2], 2, [5, 8], id="longer-match-wins"),
        pytest.param([4, 4, 4], 3, [4], id="a-loop-continues-itself"),
        pytest.param([1, 2, 1, 2, 1, 2], 4, [1, 2], id="overlapping-occurrences"),
        pytest.param([3, 1, 2], 4, [], id="single-token-match-is-not-enough"),
        pytest.param([1, 2], 4, [], id="the-suffix-never-matches-itself"),
    ],
)
def test_draft(tokens: list[int], limit: int, expected: list[int]) -> None:
    assert NgramIndex(tokens).draft(limit) == expected
    assert naive_draft(tokens, limit, (3, 2)) == expected


def test_tokens_appended_after_a_draft_are_indexed_on_the_next() -> None:
    index = NgramIndex([1, 2, 3])
    assert index.draft(4) == []
    for token in (9, 1, 2):
        index.append(token)
    assert index.draft(4) == [3, 9, 1, 2]
    index.append(5)
    assert index.draft(4) == []  # [2, 5] is new
    index.append(1)
    index.append(2)
    assert index.draft(4) == [5, 1, 2]  # the latest [1, 2] is now the one followed by 5


@pytest.mark.parametrize("seed", range(20))
def test_matches_the_definition_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = rng.randint(2, 6)  # small, so that n-grams repeat
    tokens = [rng.randrange(vocabulary) for _ in range(rng.randint(0, 30))]
    index = NgramIndex(tokens)
    for _ in range(60):
        limit = rng.randint(1, 5)
        assert index.draft(limit) == naive_draft(index.tokens, limit, index.sizes)
        index.append(rng.randrange(vocabulary))


@pytest.mark.parametrize(
    ("pace", "drafted", "accepted", "maximum", "expected"),
    [
        pytest.param(DraftPace(4), 0, 0, 4, DraftPace(4), id="no-draft-keeps-the-length"),
        pytest.param(DraftPace(8), 0, 0, 4, DraftPace(4), id="no-draft-clamps-to-a-lowered-maximum"),
        pytest.param(
            DraftPace(1, 3, 2), 0, 0, 4, DraftPace(1, 2, 2), id="a-step-without-counts-the-pause-down"
        ),
        pytest.param(DraftPace(1, 0, 2), 0, 0, 4, DraftPace(1, 0, 2), id="the-pause-stops-at-zero"),
        pytest.param(DraftPace(2), 2, 2, 8, DraftPace(4), id="all-held-doubles"),
        pytest.param(DraftPace(4), 4, 4, 4, DraftPace(4), id="all-held-at-the-maximum"),
        pytest.param(
            DraftPace(4), 3, 3, 16, DraftPace(8), id="all-held-of-a-shorter-draft-doubles-the-length"
        ),
        pytest.param(DraftPace(8), 8, 5, 8, DraftPace(6), id="just-past-the-run-that-held"),
        pytest.param(DraftPace(8, 0, 3), 8, 1, 8, DraftPace(2), id="a-guess-that-holds-forgets-the-misses"),
        pytest.param(DraftPace(8), 8, 0, 8, DraftPace(1, 2, 1), id="nothing-held-one-token-after-a-pause"),
        pytest.param(DraftPace(1, 0, 1), 1, 0, 8, DraftPace(1, 4, 2), id="the-pause-doubles"),
        pytest.param(DraftPace(1, 0, 9), 1, 0, 8, DraftPace(1, MAX_PAUSE, 10), id="up-to-the-longest-pause"),
        pytest.param(DraftPace(0), 1, 1, 4, DraftPace(2), id="grows-from-zero"),
    ],
)
def test_next_pace(pace: DraftPace, drafted: int, accepted: int, maximum: int, expected: DraftPace) -> None:
    assert next_pace(pace, drafted, accepted, maximum) == expected


@pytest.mark.parametrize(
    ("length", "n_past", "n_ctx", "generated", "num_predict", "free_outputs", "expected"),
    [
        pytest.param(4, 10, 100, 0, -1, 16, 4, id="length"),
        pytest.param(4, 97, 100, 0, -1, 16, 2, id="context-room"),  # guesses at 98 and 99
        pytest.param(4, 99, 100, 0, -1, 16, 0, id="context-full"),
        pytest.param(4, 10, 100, 5, 8, 16, 2, id="num-predict-left"),  # 3 left: the token and 2
        pytest.param(4, 10, 100, 7, 8, 16, 0, id="last-token-to-predict"),
        pytest.param(4, 10, 100, 0, -2, 16, 4, id="fill-context-has-no-token-limit"),
        pytest.param(4, 10, 100, 0, -1, 3, 3, id="free-outputs"),
        pytest.param(4, 10, 100, 0, -1, -1, 0, id="no-free-outputs"),
    ],
)
def test_draft_limit(
    length: int, n_past: int, n_ctx: int, generated: int, num_predict: int, free_outputs: int, expected: int
) -> None:
    limit = draft_limit(
        length,
        n_past=n_past,
        n_ctx=n_ctx,
        generated=generated,
        num_predict=num_predict,
        free_outputs=free_outputs,
    )
    assert limit == expected
