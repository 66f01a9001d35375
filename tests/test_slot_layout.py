"""Keeping busy slots on consecutive sequence ids (runtime/slot_layout.py): pure, table-driven."""

from __future__ import annotations

import itertools

import pytest

from modelyard.runtime.slot_layout import compaction_moves, keeps_consecutive


def busy(pattern: str) -> list[bool]:
    return [c == "x" for c in pattern]


@pytest.mark.parametrize(
    ("pattern", "last_used", "expected"),
    [
        pytest.param("", [], [], id="no-slots"),
        pytest.param("....", [0, 0, 0, 0], [], id="idle"),
        pytest.param("..x.", [0, 0, 0, 0], [], id="one-busy-anywhere"),
        pytest.param("xx..", [0, 0, 0, 0], [], id="already-a-run"),
        pytest.param("..xx", [0, 0, 0, 0], [], id="a-run-at-the-end"),
        pytest.param("x.x.", [0, 5, 0, 0], [(0, 3)], id="not-the-hole-of-a-recent-cache"),
        pytest.param("x.x.", [0, 1, 0, 5], [(2, 1)], id="fill-the-hole"),
        pytest.param("x..x", [0, 1, 2, 0], [(3, 1)], id="give-up-the-older-cache"),
        pytest.param("x..x", [0, 2, 1, 0], [(0, 2)], id="give-up-the-older-cache-other-side"),
        pytest.param("x.x.x.x.", [0] * 8, [(4, 1), (6, 3)], id="scattered"),
        pytest.param("xx.xx...", [0, 0, 9, 0, 0, 1, 1, 1], [(4, 2)], id="fewest-moves-beat-a-recent-cache"),
        pytest.param("x.xxxxxx", [0, 3, 0, 0, 0, 0, 0, 0], [(7, 1)], id="one-hole-in-a-full-house"),
    ],
)
def test_compaction_moves(pattern: str, last_used: list[int], expected: list[tuple[int, int]]) -> None:
    assert compaction_moves(busy(pattern), last_used) == expected


@pytest.mark.parametrize("slots", [2, 3, 5, 8])
def test_every_layout_ends_in_one_run_with_fewest_moves(slots: int) -> None:
    for flags in itertools.product([False, True], repeat=slots):
        layout = list(flags)
        moves = compaction_moves(layout, list(range(slots)))
        for source, target in moves:
            assert layout[source] and not layout[target]
            layout[source], layout[target] = False, True
        ids = [i for i, b in enumerate(layout) if b]
        assert sum(layout) == sum(flags)
        assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True
        n = sum(flags)
        fewest = min((n - sum(flags[s : s + n]) for s in range(slots - n + 1)), default=0)
        assert len(moves) == fewest


@pytest.mark.parametrize(
    ("pattern", "index", "expected"),
    [
        pytest.param("....", 2, True, id="the-first-busy-slot-anywhere"),
        pytest.param(".xx.", 0, True, id="before-the-run"),
        pytest.param(".xx.", 3, True, id="after-the-run"),
        pytest.param("xx..", 3, False, id="a-gap"),
        pytest.param("x.x.", 1, True, id="fills-the-hole"),
        pytest.param("x..x", 1, False, id="one-of-two-holes"),
    ],
)
def test_keeps_consecutive(pattern: str, index: int, expected: bool) -> None:
    assert keeps_consecutive(busy(pattern), index) is expected
