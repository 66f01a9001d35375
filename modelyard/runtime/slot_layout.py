"""Keeping the busy slots on consecutive sequence ids, so that a decode step is one pass (pure).

Each slot is a llama.cpp sequence with a KV stream of its own. llama.cpp decodes a batch over
several streams in ubatches of consecutive sequence ids only (`split_equal`, sequential): a step
whose sequences are 0, 2, 4 and 6 runs four passes over the weights where 0 to 3 run one. On the
2-core test VM with Gemma 3 270M, four tokens took 98 ms on sequences 0, 2, 4, 6 and 44 ms on 0 to
3, and a move 5 ms (`benchmarks/RESULTS.md`). Requests end at different times, and the prompt
cache sends a new one to whichever free slot holds most of its prompt, so the busy set breaks up
as a server runs.

Admission prefers a free slot beside the run where the prompt cache has no better choice. The
engine mends the rest by copying a busy sequence's KV stream into a free slot inside the run
(`llama_memory_seq_cp` across streams copies the whole stream once); the copy costs less than one
extra pass over the weights, which the split would cost on every step.
"""

from __future__ import annotations

from collections.abc import Sequence


def compaction_moves(busy: Sequence[bool], last_used: Sequence[int]) -> list[tuple[int, int]]:
    """Moves (busy slot, free slot) that leave the busy slots on consecutive ids, as few as can be:
    the window of that many ids that holds the most busy slots, and among those the one whose free
    slots were released longest ago (`last_used`, a clock), since their prompt caches are lost."""
    n_busy = sum(busy)
    if n_busy <= 1:
        return []
    best: tuple[tuple[int, int], int] | None = None
    for start in range(len(busy) - n_busy + 1):
        window = range(start, start + n_busy)
        inside = sum(busy[i] for i in window)
        given_up = sum(last_used[i] for i in window if not busy[i])
        key = (-inside, given_up)
        if best is None or key < best[0]:
            best = (key, start)
    assert best is not None
    start = best[1]
    end = start + n_busy
    outside = [i for i, b in enumerate(busy) if b and not start <= i < end]
    holes = [i for i in range(start, end) if not busy[i]]
    return list(zip(outside, holes, strict=True))


def keeps_consecutive(busy: Sequence[bool], index: int) -> bool:
    """Whether the busy slots stay on consecutive ids when slot `index` becomes busy too."""
    ids = [i for i, b in enumerate(busy) if b or i == index]
    return ids[-1] - ids[0] + 1 == len(ids)
