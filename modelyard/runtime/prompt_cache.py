"""Reusing KV cells across requests: which free slot a prompt takes, how much of what that slot
last held it keeps, and when it copies its start from a busy slot instead (pure functions; the
engine does the cutting and copying).

A chat sends its whole history again every turn. A slot keeps the KV cells of its last request when
it is freed; the next prompt that starts with the same tokens evaluates only the rest, as
llama-server (`cache_prompt`, which Ollama turns on) and llama-cpp-python's `Llama` do. Requests
that start the same way at the same time (n choices, one system prompt for many users) find no free
slot holding it yet: they copy it from the busy slot that does, or wait for the one evaluating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.int32]


@dataclass(frozen=True)
class CacheRules:
    """What the model's memory allows: how far its sliding-window layers look back (0: none), and
    whether a sequence can be cut short at all (recurrent and hybrid models keep a state, not cells
    by position: all of it or nothing)."""

    n_swa: int = 0
    can_cut: bool = True


@dataclass(frozen=True)
class FreeSlot:
    cached: Tokens  # the tokens whose KV the slot still holds, from position 0
    last_used: int  # when it was last released (a counter)
    pos_min: int = 0  # the oldest position it still holds (sliding windows drop older cells)
    beside_busy: bool = True  # taking it keeps the busy slots on consecutive ids (slot_layout.py)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many leading tokens `a` and `b` share (numpy: admission compares the prompt with every
    free slot's cache, up to tens of thousands of tokens each, on the thread that decodes)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = a[:n] != b[:n]
    first = int(differs.argmax())
    return first if differs[first] else n


def reusable_prefix(shared: int, prompt_length: int, pos_min: int, n_swa: int) -> int:
    """How many leading prompt tokens can keep their KV cells, given `shared` tokens in common with
    the slot's cache.

    The last prompt token is always evaluated again: its logits give the first new token. A model
    with sliding-window layers (`n_swa` > 0, Gemma 3) may drop cells older than the window as it
    goes; reusing a prefix of length p needs that layer's cells from p − n_swa on, so a cache whose
    oldest cell (`pos_min`) is past that point cannot be cut back to p, and the prompt is evaluated
    whole (llama-server's rule)."""
    keep = max(0, min(shared, prompt_length - 1))
    if keep and n_swa > 0 and pos_min > max(0, keep - n_swa):
        return 0
    return keep


def kept_tokens(slot: FreeSlot, prompt: Tokens, rules: CacheRules) -> int:
    """How many of `prompt`'s tokens this slot's cache would really keep."""
    keep = reusable_prefix(common_prefix(slot.cached, prompt), len(prompt), slot.pos_min, rules.n_swa)
    if not rules.can_cut and keep < len(slot.cached):
        return 0  # it would have to cut the sequence short: it is cleared instead
    return keep


def choose_slot(free: list[FreeSlot], prompt: Tokens, rules: CacheRules) -> tuple[int, int]:
    """The index in `free` of the slot to give `prompt`, and how many prompt tokens it keeps.

    The slot that keeps more of the prompt than it throws away of its own cache, the most so: a
    chat's next turn goes back to its own slot, where it keeps everything and loses nothing. Of
    slots that gain the same (conversations with one system prompt), one beside the busy ones, then
    the least recently used. Where no slot gains, the least recently used of those beside the busy
    ones (else of all): a new conversation that shares only a system prompt with a long one does
    not cut that one down, caches nobody came back to are the first to go, and no other slot's
    cache is given up to move the request next to the others (the engine keeps busy slots on
    consecutive ids)."""
    if not free:
        raise ValueError("no free slot")
    kept = [kept_tokens(slot, prompt, rules) for slot in free]
    gains = [k - (len(slot.cached) - k) for k, slot in zip(kept, free, strict=True)]
    best = max(range(len(free)), key=lambda i: (gains[i], free[i].beside_busy, -free[i].last_used))
    if kept[best] == 0 or gains[best] <= 0:
        best = expendable_slot(free)
    return best, kept[best]


def expendable_slot(free: list[FreeSlot]) -> int:
    """The free slot whose cache is the least worth keeping: the least recently used of those
    beside the busy ones (else of all)."""
    return min(range(len(free)), key=lambda i: (not free[i].beside_busy, free[i].last_used))


def scored_prefix(kept: int, cached_scores: int, pos_min: int, rules: CacheRules) -> tuple[int, int]:
    """For a prompt whose every token is scored (echo with log-probs): how many leading tokens'
    scores the slot's cache gives (`cached_scores` it holds, for `kept` tokens in common), and how
    many cells it keeps. A token is scored by the logits after the token before it, so the cells
    stop one short of the scores: that token is evaluated again, to score the next. Returns
    (scores, cells), (0, 0) where nothing can be used."""
    scores = min(kept, cached_scores)
    if scores <= 1 or not rules.can_cut:  # the first token's score is nothing; a state cannot go back
        return 0, 0
    cells = scores - 1
    if reusable_prefix(cells, cells + 1, pos_min, rules.n_swa) != cells:  # the window lost its cells
        return 0, 0
    return scores, cells


@dataclass(frozen=True)
class BusySlot:
    """A slot serving a request, as a source of KV cells for another prompt: the tokens whose cells
    it holds exactly (no context shift in between), from position 0; the oldest position it still
    holds; and the prompt tokens it has yet to evaluate, which follow `cached`."""

    cached: Tokens
    pos_min: int = 0
    pending: Tokens = dataclass_field(default_factory=lambda: np.zeros(0, dtype=np.int32))


@dataclass(frozen=True)
class Sharing:
    """Take a prompt's first `keep` tokens' cells from busy slot `source` (a copy of its KV stream,
    cut), or with `wait`, admit the prompt later: `source` is evaluating those tokens now."""

    source: int
    keep: int
    wait: bool = False


MIN_SHARED_TOKENS = 32


def worth_sharing(gain: int, n_ctx_seq: int) -> bool:
    """Whether evaluating `gain` fewer prompt tokens pays for copying a KV stream. Between the
    streams of a non-unified cache llama.cpp copies a whole stream (`n_ctx_seq` cells, used or
    not), a memory copy: tens of bytes a cell per layer, against the matrix work of a token through
    every layer. One token of prompt for each 256 cells copied leaves a wide margin on CPUs and
    GPUs alike, and 32 tokens at least keep small gains from churning the caches."""
    return gain >= max(MIN_SHARED_TOKENS, n_ctx_seq // 256)


def share_from_busy(
    busy: list[BusySlot], prompt: Tokens, rules: CacheRules, kept: int, n_ctx_seq: int
) -> Sharing | None:
    """Whether a prompt should take its first tokens' cells from a busy slot rather than evaluate
    them, `kept` being what the free slot chosen for it already keeps.

    n choices of one prompt, and requests that share a long system prompt, arrive together: one
    evaluates the common part, and the others copy its cells. The most that a busy slot holds now
    is copied at once, unless a slot still evaluating a prompt that shares more (its `pending`
    tokens) would give enough more to be worth waiting for: evaluating the same tokens side by
    side takes that much longer for each. What is copied is checked against the source's oldest
    cell (`pos_min`, reusable_prefix), for models whose sliding window drops cells; the engine
    checks again when it copies after a wait. A memory that cannot cut a sequence short shares
    nothing."""
    if not rules.can_cut:
        return None
    best: Sharing | None = None
    held = [common_prefix(slot.cached, prompt) for slot in busy]  # each slot's cells now in common
    for index, slot in enumerate(busy):
        now = reusable_prefix(held[index], len(prompt), slot.pos_min, rules.n_swa)
        if worth_sharing(now - kept, n_ctx_seq) and (best is None or now > best.keep):
            best = Sharing(index, now)
    have = max(kept, best.keep if best is not None else 0)
    for index, slot in enumerate(busy):
        if not len(slot.pending) or held[index] < len(slot.cached):
            continue  # nothing to come, or what comes does not follow this prompt's start
        whole = np.concatenate([slot.cached, slot.pending])
        later = reusable_prefix(common_prefix(whole, prompt), len(prompt), slot.pos_min, rules.n_swa)
        if worth_sharing(later - have, n_ctx_seq) and (best is None or later > best.keep):
            best = Sharing(index, later, wait=True)
    return best
