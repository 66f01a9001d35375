"""Reusing a slot's KV cache across requests: which free slot a prompt takes, and how much of what
that slot last held it can keep (pure functions; the engine does the cutting).

A chat sends its whole history again every turn. A slot keeps the KV cells of its last request when
it is freed; the next prompt that starts with the same tokens evaluates only the rest, as
llama-server (`cache_prompt`, which Ollama turns on) and llama-cpp-python's `Llama` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FreeSlot:
    cached: Sequence[int]  # the tokens whose KV the slot still holds, from position 0
    last_used: int  # when it was last released (a counter): the oldest cache is the one to lose


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share. A binary search on slice equality, which Python
    compares in C: admitting a request compares the prompt with every free slot's cache, tens of
    thousands of tokens on long contexts, on the thread that runs the decode steps."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    same, differs = 0, n  # a[:same] == b[:same]; a[:differs] != b[:differs]
    while differs - same > 1:
        middle = (same + differs) // 2
        if a[same:middle] == b[same:middle]:
            same = middle
        else:
            differs = middle
    return same


def choose_slot(free: Sequence[FreeSlot], prompt: Sequence[int]) -> int:
    """The index in `free` of the slot to give `prompt`: the most tokens kept for it, less the
    cached tokens it would throw away, which another request (the next turn of that slot's chat)
    may still want; among equals, the least recently used.

    So a chat's next turn goes back to its own slot (it keeps everything and loses nothing), while
    a new conversation that only shares a system prompt with a long one takes an empty slot rather
    than cut that conversation's cache down to the system prompt."""
    if not free:
        raise ValueError("no free slot")

    def value(i: int) -> tuple[int, int]:
        kept = common_prefix(free[i].cached, prompt)
        lost = len(free[i].cached) - kept
        return kept - lost, -free[i].last_used

    return max(range(len(free)), key=value)


def reusable_prefix(shared: int, prompt_length: int, pos_min: int, n_swa: int) -> int:
    """How many leading prompt tokens can keep their KV cells, given `shared` tokens in common with
    the slot's cache.

    The last prompt token is always evaluated again: its logits give the first new token. A model
    with sliding-window layers (`n_swa` > 0, Gemma 3) drops cells older than the window as it goes;
    reusing a prefix of length p needs that layer's cells from p − n_swa on, so a cache whose oldest
    cell (`pos_min`) is past that point cannot be cut back to p, and the prompt is evaluated whole
    (llama-server's rule)."""
    keep = max(0, min(shared, prompt_length - 1))
    if keep and n_swa > 0 and pos_min > max(0, keep - n_swa):
        return 0
    return keep
