"""Speculative decoding by prompt lookup: guess the next tokens, let one decode step check them all.

A request's text often repeats what came before it: a summary quotes its source, code edits
copy the code, a small model loops. When the last few tokens appeared earlier in the prompt or the
answer, the tokens that followed them then are a guess at what follows now (prompt lookup
decoding, as in llama.cpp's lookup examples and llama-cpp-python's `LlamaPromptLookupDecoding`).
The engine feeds the guesses in the same `llama_decode` as the token just sampled, with a row of
logits for each, and samples the rows in order: the answer keeps every guess that equals the token
the request's own sampler picks from the row before it, plus the first token that differs. Each
token is still drawn from the model's distribution given the tokens before it, so the answer is the
one decoding token by token gives, except where llama.cpp's rounding differs between batch shapes.

A wrong guess costs its share of a bigger batch and nothing else; guesses that keep failing make
the request guess less often. The decisions here are pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The n-gram lengths looked up, longest first: a match on more tokens is a better guess; a single
# token matches too often in ordinary text to guess well.
NGRAM_SIZES = (3, 2)


class NgramIndex:
    """The tokens of one request (prompt, then answer) and, for every n-gram that has a token after
    it, where its latest occurrence ends. New tokens are indexed when the next guess is asked for,
    so a request that never drafts pays only for appending them."""

    def __init__(self, tokens: Iterable[int] = (), sizes: tuple[int, ...] = NGRAM_SIZES) -> None:
        self.tokens = list(tokens)
        self.sizes = sizes
        self._follows: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in _follows

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the last n tokens,
        for the longest n that has one; none when nothing matches."""
        if limit <= 0:
            return []
        self._catch_up()
        tokens = self.tokens
        for n in self.sizes:
            if len(tokens) > n:
                start = self._follows.get(tuple(tokens[-n:]))
                if start is not None:
                    return tokens[start : start + limit]
        return []

    def _catch_up(self) -> None:
        tokens = self.tokens
        # An n-gram ending at `end` (exclusive) is indexed once tokens[end] exists to follow it;
        # the last n tokens themselves have nothing after them yet, so they never match themselves.
        for end in range(max(self._indexed, 1), len(tokens)):
            for n in self.sizes:
                if end >= n:
                    self._follows[tuple(tokens[end - n : end])] = end
        self._indexed = max(self._indexed, len(tokens))


# After a draft of which nothing held, guessing pauses for 2, 4, 8… steps (at most this many), so
# that text that does not repeat itself costs little; a guess that holds ends the pause.
MAX_PAUSE = 32


@dataclass(frozen=True)
class DraftPace:
    """How a request guesses: `length` tokens next time, after `pause` more steps without, with
    `misses` drafts in a row of which nothing held."""

    length: int
    pause: int = 0
    misses: int = 0


def next_pace(pace: DraftPace, drafted: int, accepted: int, maximum: int) -> DraftPace:
    """After a step that fed `drafted` guesses, of which the first `accepted` held: double the
    length after a full run of right guesses (the text is repeating), else go just past the run
    that held; after a draft of which nothing held, guess one token at a time, and pause first, for
    twice as many steps as after the previous such draft. A step without guesses only counts the
    pause down."""
    if drafted == 0:
        return DraftPace(min(pace.length, maximum), max(0, pace.pause - 1), pace.misses)
    if accepted == drafted:
        return DraftPace(min(maximum, max(1, pace.length) * 2))
    if accepted > 0:
        return DraftPace(min(maximum, accepted + 1))
    misses = pace.misses + 1
    return DraftPace(min(1, maximum), min(MAX_PAUSE, 2**misses), misses)


def draft_limit(
    length: int, *, n_past: int, n_ctx: int, generated: int, num_predict: int, free_outputs: int
) -> int:
    """Guesses one slot may add to this step beside its sampled token at position `n_past`: no more
    than its draft length, the context's room after that token, the tokens left to predict after it
    (num_predict < 0: no limit), and the batch's free logits rows."""
    room = n_ctx - n_past - 1
    left = num_predict - generated - 1 if num_predict >= 0 else length
    return max(0, min(length, room, left, free_outputs))
