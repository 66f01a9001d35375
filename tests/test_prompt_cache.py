"""Choosing a slot for a prompt and how much of its cache to keep (runtime/prompt_cache.py)."""

from __future__ import annotations

import pytest

from modelyard.runtime.prompt_cache import FreeSlot, choose_slot, common_prefix, reusable_prefix


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], 0),
        ([], [1, 2], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2], [1, 2, 3], 2),
        ([1, 2, 3], [1, 9, 3], 1),
        ([5], [1], 0),
        ([1] * 5000 + [2], [1] * 5000 + [3], 5000),
        ([1] * 5000, [1] * 4999 + [0] + [1] * 9, 4999),
        (list(range(3000)), [*range(1234), -1, *range(1235, 3000)], 1234),
    ],
)
def test_common_prefix(a: list[int], b: list[int], expected: int) -> None:
    assert common_prefix(a, b) == expected


@pytest.mark.parametrize(
    ("free", "prompt", "expected"),
    [
        # a chat's next turn: its own slot, which it extends, over one that shares less
        ([FreeSlot([1, 2], 5), FreeSlot([1, 2, 3, 4], 1), FreeSlot([], 0)], [1, 2, 3, 4, 5], 1),
        # nothing shared anywhere: the smallest loss, then the least recently used
        ([FreeSlot([7, 8], 3), FreeSlot([9], 1), FreeSlot([6], 2)], [1, 2], 1),
        ([FreeSlot([7], 3), FreeSlot([9], 1), FreeSlot([6], 2)], [1, 2], 1),
        # an empty slot rather than throwing a cache away
        ([FreeSlot([7, 8], 3), FreeSlot([], 0)], [1, 2], 1),
        # a new conversation that shares only the system prompt [1, 2] with a long one: not there
        ([FreeSlot([1, 2, 3, 4, 5, 6, 7, 8], 1), FreeSlot([], 2)], [1, 2, 9], 1),
        # ... unless what it keeps outweighs what it loses
        ([FreeSlot([1, 2, 3, 4, 5, 6, 7, 8], 1), FreeSlot([], 2)], [1, 2, 3, 4, 5, 9], 0),
        # equal prefixes, equal losses: the older of the two
        ([FreeSlot([1, 2, 9], 4), FreeSlot([1, 2, 8], 2)], [1, 2, 3], 1),
        ([FreeSlot([1], 1)], [2], 0),
    ],
)
def test_choose_slot(free: list[FreeSlot], prompt: list[int], expected: int) -> None:
    assert choose_slot(free, prompt) == expected


def test_choose_slot_needs_a_free_slot() -> None:
    with pytest.raises(ValueError):
        choose_slot([], [1])


@pytest.mark.parametrize(
    ("shared", "prompt_length", "pos_min", "n_swa", "expected"),
    [
        (0, 10, -1, 0, 0),  # nothing cached
        (6, 10, 0, 0, 6),
        (10, 10, 0, 0, 9),  # the whole prompt cached: its last token is evaluated again for logits
        (12, 10, 0, 0, 9),  # the cache goes on past the prompt (the previous answer)
        (1, 1, 0, 0, 0),  # a one-token prompt is always evaluated
        # a sliding window of 4: a prefix of 6 needs cells from position 2 on
        (6, 10, 2, 4, 6),
        (6, 10, 3, 4, 0),  # the window dropped position 2 already: evaluate the whole prompt
        (3, 10, 0, 4, 3),  # within the window from the start
        (3, 10, 1, 4, 0),  # position 0 is needed and gone
    ],
)
def test_reusable_prefix(shared: int, prompt_length: int, pos_min: int, n_swa: int, expected: int) -> None:
    assert reusable_prefix(shared, prompt_length, pos_min, n_swa) == expected
