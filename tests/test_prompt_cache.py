"""Choosing a slot for a prompt and how much of its cache to keep (runtime/prompt_cache.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from modelyard.runtime.prompt_cache import (
    BusySlot,
    CacheRules,
    FreeSlot,
    Sharing,
    choose_slot,
    common_prefix,
    reusable_prefix,
    scored_prefix,
    share_from_busy,
    worth_sharing,
)


def tokens(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def slot(cached: Sequence[int], last_used: int, pos_min: int = 0, beside: bool = True) -> FreeSlot:
    return FreeSlot(tokens(cached), last_used, pos_min, beside_busy=beside)


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
        (list(range(3000)), [*range(1234), -1, *range(1235, 3000)], 1234),
    ],
)
def test_common_prefix(a: list[int], b: list[int], expected: int) -> None:
    assert common_prefix(tokens(a), tokens(b)) == expected == common_prefix(tokens(b), tokens(a))


PLAIN = CacheRules()


@pytest.mark.parametrize(
    ("free", "prompt", "rules", "expected"),
    [
        # a chat's next turn: its own slot, which it extends, over one that shares less
        ([slot([1, 2], 5), slot([1, 2, 3, 4], 1), slot([], 0)], [1, 2, 3, 4, 5], PLAIN, (1, 4)),
        # nothing shared anywhere: the least recently used, however long its cache (stale caches go)
        ([slot([7, 8], 3), slot([9] * 20, 1), slot([6], 2)], [1, 2], PLAIN, (1, 0)),
        # an empty slot never used (0) is the least recently used
        ([slot([7, 8], 3), slot([], 0)], [1, 2], PLAIN, (1, 0)),
        # a new conversation that shares only the system prompt [1, 2] with a long one: not there
        ([slot([1, 2, 3, 4, 5, 6, 7, 8], 2), slot([], 1)], [1, 2, 9], PLAIN, (1, 0)),
        # ... unless what it keeps outweighs what it throws away
        ([slot([1, 2, 3, 4, 5, 6, 7, 8], 2), slot([], 1)], [1, 2, 3, 4, 5, 9], PLAIN, (0, 5)),
        # equal gains beside the busy slots, or apart: the one beside them, older or not
        ([slot([1, 2, 3, 9], 1, beside=False), slot([1, 2, 3, 8], 2)], [1, 2, 3, 4], PLAIN, (1, 3)),
        # equal gains: the older of the two
        ([slot([1, 2, 3, 9], 4), slot([1, 2, 3, 8], 2)], [1, 2, 3, 4], PLAIN, (1, 3)),
        # the least recently used keeps what it shares, little as it is
        ([slot([1, 7, 7, 7], 1), slot([5, 5], 2)], [1, 2], PLAIN, (0, 1)),
        # nothing to gain anywhere: the least recently used of the slots beside the busy ones
        ([slot([7], 1, beside=False), slot([8], 3), slot([9], 2)], [1, 2], PLAIN, (2, 0)),
        # ... of all, when none is beside them
        ([slot([7], 3, beside=False), slot([8], 1, beside=False)], [1, 2], PLAIN, (1, 0)),
        # a gain wins over the layout (the engine moves the request next to the others)
        ([slot([1, 2, 3], 3, beside=False), slot([], 1)], [1, 2, 3, 4], PLAIN, (0, 3)),
        # the whole prompt cached: its last token is evaluated again
        ([slot([1, 2, 3], 1)], [1, 2, 3], PLAIN, (0, 2)),
        # a state that cannot be cut short: kept only where the prompt goes on from all of it
        ([slot([1, 2, 3], 1), slot([], 2)], [1, 2, 3, 4], CacheRules(can_cut=False), (0, 3)),
        ([slot([1, 2, 3, 4, 5], 2), slot([], 1)], [1, 2, 3, 9], CacheRules(can_cut=False), (1, 0)),
        # a sliding window of 4 that dropped cells 0-2: a prefix of 5 needs cells from 1 on
        (
            [slot([1, 2, 3, 4, 5, 6, 7], 2, pos_min=3), slot([], 1)],
            [1, 2, 3, 4, 5, 9],
            CacheRules(n_swa=4),
            (1, 0),
        ),
        (
            [slot([1, 2, 3, 4, 5, 6, 7], 2, pos_min=3), slot([], 1)],
            [1, 2, 3, 4, 5, 6, 7, 8],
            CacheRules(n_swa=4),
            (0, 7),
        ),
    ],
)
def test_choose_slot(
    free: list[FreeSlot], prompt: list[int], rules: CacheRules, expected: tuple[int, int]
) -> None:
    assert choose_slot(free, tokens(prompt), rules) == expected


def test_choose_slot_needs_a_free_slot() -> None:
    with pytest.raises(ValueError):
        choose_slot([], tokens([1]), PLAIN)


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


@pytest.mark.parametrize(
    ("kept", "cached_scores", "pos_min", "rules", "expected"),
    [
        pytest.param(
            40, 50, 0, PLAIN, (40, 39), id="scores-for-all-kept: the last kept token evaluated again"
        ),
        pytest.param(40, 25, 0, PLAIN, (25, 24), id="fewer-scores-than-cells"),
        pytest.param(40, 0, 0, PLAIN, (0, 0), id="no-scores: a cache that was not scored"),
        pytest.param(0, 50, 0, PLAIN, (0, 0), id="nothing-in-common"),
        pytest.param(1, 50, 0, PLAIN, (0, 0), id="only-the-first-token: its score is nothing"),
        pytest.param(2, 50, 0, PLAIN, (2, 1), id="two-tokens"),
        pytest.param(40, 50, 0, CacheRules(n_swa=0, can_cut=False), (0, 0), id="a-state-cannot-go-back"),
        pytest.param(600, 700, 0, CacheRules(n_swa=512, can_cut=True), (600, 599), id="window-keeps-all"),
        pytest.param(
            600, 700, 100, CacheRules(n_swa=512, can_cut=True), (0, 0), id="window-lost-what-599-needs"
        ),
        pytest.param(600, 700, 87, CacheRules(n_swa=512, can_cut=True), (600, 599), id="window-just-enough"),
    ],
)
def test_scored_prefix(
    kept: int, cached_scores: int, pos_min: int, rules: CacheRules, expected: tuple[int, int]
) -> None:
    assert scored_prefix(kept, cached_scores, pos_min, rules) == expected


def busy(cached: Sequence[int], pending: Sequence[int] = (), pos_min: int = 0) -> BusySlot:
    return BusySlot(tokens(cached), pos_min, tokens(pending))


SYSTEM = list(range(100, 180))  # 80 tokens in common
N_CTX = 1024  # worth_sharing: 32 tokens at least


@pytest.mark.parametrize(
    ("slots", "prompt", "rules", "kept", "expected"),
    [
        # nothing busy, or nothing in common: evaluate the prompt
        ([], [*SYSTEM, 1, 2], PLAIN, 0, None),
        ([busy([7, *SYSTEM])], [*SYSTEM, 1], PLAIN, 0, None),
        # a generating slot holds the system prompt: copy its cells now
        ([busy([*SYSTEM, 5, 6, 7])], [*SYSTEM, 1, 2], PLAIN, 0, Sharing(0, 80)),
        # the same prompt (n choices): all but its last token, which gives the first logits
        ([busy([*SYSTEM, 9])], [*SYSTEM, 9], PLAIN, 0, Sharing(0, 80)),
        # the free slot chosen already keeps most of it: the 31 more are not worth a copy
        ([busy([*SYSTEM, 5])], [*SYSTEM, 1], PLAIN, 49, None),
        ([busy([*SYSTEM, 5])], [*SYSTEM, 1], PLAIN, 48, Sharing(0, 80)),
        # the slot that shares the most
        ([busy(SYSTEM[:40]), busy([*SYSTEM, 3])], [*SYSTEM, 1], PLAIN, 0, Sharing(1, 80)),
        # a slot still evaluating the same prompt: wait for it, rather than evaluate it beside
        ([busy(SYSTEM[:10], pending=[*SYSTEM[10:], 9])], [*SYSTEM, 9], PLAIN, 0, Sharing(0, 80, wait=True)),
        # ... unless what it has yet to evaluate does not follow this prompt
        ([busy([1, 2], pending=SYSTEM)], [*SYSTEM, 9], PLAIN, 0, None),
        # ... or what it adds is too little to wait for; what it holds now is copied
        ([busy(SYSTEM[:60], pending=SYSTEM[60:])], [*SYSTEM, 9], PLAIN, 0, Sharing(0, 60)),
        # ... or what waiting would add to the best copy on offer now, from another slot
        (
            [busy([*SYSTEM, 5]), busy(SYSTEM[:10], pending=[*SYSTEM[10:], *range(10)])],
            [*SYSTEM, *range(10), 11],
            PLAIN,
            0,
            Sharing(0, 80),
        ),
        (
            [busy([*SYSTEM, 5]), busy(SYSTEM[:10], pending=[*SYSTEM[10:], *range(40)])],
            [*SYSTEM, *range(40), 11],
            PLAIN,
            0,
            Sharing(1, 120, wait=True),
        ),
        # a sliding window that keeps its cells (llama.cpp's full-size window cache): as any
        (
            [busy(SYSTEM[:10], pending=[*SYSTEM[10:], 9])],
            [*SYSTEM, 9],
            CacheRules(n_swa=64),
            0,
            Sharing(0, 80, wait=True),
        ),
        # ... and a copy only where the window still holds the cells the rest needs
        ([busy([*SYSTEM, 5], pos_min=30)], [*SYSTEM, 1], CacheRules(n_swa=64), 0, None),
        ([busy([*SYSTEM, 5], pos_min=16)], [*SYSTEM, 1], CacheRules(n_swa=64), 0, Sharing(0, 80)),
        # a recurrent state cannot be cut back to the common part
        ([busy([*SYSTEM, 5])], [*SYSTEM, 1], CacheRules(can_cut=False), 0, None),
    ],
)
def test_share_from_busy(
    slots: list[BusySlot], prompt: list[int], rules: CacheRules, kept: int, expected: Sharing | None
) -> None:
    assert share_from_busy(slots, tokens(prompt), rules, kept, N_CTX) == expected


@pytest.mark.parametrize(
    ("gain", "n_ctx_seq", "expected"),
    [(31, 1024, False), (32, 1024, True), (32, 16384, False), (64, 16384, True), (0, 256, False)],
)
def test_worth_sharing(gain: int, n_ctx_seq: int, expected: bool) -> None:
    assert worth_sharing(gain, n_ctx_seq) is expected
