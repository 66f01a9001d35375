"""How much other work the generating slots wait for: new prompts read in their steps, and
embeddings computed between them, sized by the last steps' times.

A step decodes the next token of every generating slot and, in the same batch, prompt tokens of
the slots still reading theirs. Filled to `n_batch` (512) with prompt tokens, a step on two CPU
cores lasted 1.6 s: every stream froze that long for each chunk of a pasted document, as in
llama.cpp's server (Sarathi-Serve, OSDI '24, names it the generation stall). While slots generate,
a step now reads only what fits in about a time slice beside them; alone, a prompt is read in whole
batches. On a GPU a slice holds thousands of prompt tokens, so the batch stays full there. An
embeddings request is computed a batch at a time between the steps, its batches of the same slice.

Pure: the engine times its steps and hands the times in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# A step with fewer prompt tokens than this is not measured for the time per prompt token once one
# is known: a few tokens beside the streams' are mostly the step's fixed cost, and would shrink the
# next slice. The first measure is taken from any step: too slow, it only holds the first slices
# at the least tokens; none would let the first prompt beside streams hold them a full batch.
MIN_MEASURED_PROMPT_TOKENS = 16

# A new measure counts for at most this many times the average: one step slowed by something else
# (a page-in of the weights, the VM's host) would otherwise hand the next prompt's steps full
# batches (a review: one 2 s step made every chunk of the next prompt 1.5 s).
MOST_TIMES_THE_AVERAGE = 4.0


@dataclass(frozen=True)
class StepTimes:
    """Moving averages (each new measure weighs half) of the last steps: one of the generating
    slots alone, and the time each prompt token adds to a step (None: not measured yet)."""

    streams_s: float | None = None
    per_prompt_token_s: float | None = None


@dataclass(frozen=True)
class WorkSlice:
    """How much other work generating slots wait for at a time: about `seconds` of it, but at
    least `least_tokens` (with fewer a batch loses its speed: on two CPU cores a prompt token in a
    batch of 64 cost a third more than in one of 512, in one of 128 a fifth more; embeddings in
    0.15 s batches took 64% longer, in 0.4 s ones 16%: benchmarks/RESULTS.md)."""

    seconds: float = 0.4
    least_tokens: int = 128


def averaged(last: float | None, new: float) -> float:
    """A moving average's next value: the new measure weighs half, at most MOST_TIMES_THE_AVERAGE."""
    return new if last is None else (last + min(new, MOST_TIMES_THE_AVERAGE * last)) / 2


def measured(times: StepTimes, seconds: float, prompt_tokens: int, generated_tokens: int) -> StepTimes:
    """`times` after a step of `seconds` that read `prompt_tokens` of prompts and fed
    `generated_tokens` (the generating slots' tokens and guesses). The caller leaves out steps
    that did other work: a failed decode, prompt tokens scored for their log-probs."""
    if prompt_tokens == 0:
        return replace(times, streams_s=averaged(times.streams_s, seconds)) if generated_tokens else times
    if prompt_tokens < MIN_MEASURED_PROMPT_TOKENS and times.per_prompt_token_s is not None:
        return times
    streams = times.streams_s if generated_tokens and times.streams_s is not None else 0.0
    # At least half the step counts as the prompt's: a slow streams' average (measured on another
    # batch size, or on a busier machine) must not make prompt tokens seem free.
    prompt_s = max(seconds - streams, seconds / 2)
    return replace(times, per_prompt_token_s=averaged(times.per_prompt_token_s, prompt_s / prompt_tokens))


def prompt_tokens_beside_streams(times: StepTimes, slice_: WorkSlice) -> int | None:
    """How many prompt tokens a step reads beside generating slots so that it lasts about the
    slice (None: no measure yet, read what the batch holds). Streams whose own step already takes
    the slice or more share steps half and half with the prompt: it still advances."""
    streams = times.streams_s or 0.0
    return _tokens_within(
        max(slice_.seconds - streams, streams), times.per_prompt_token_s, slice_.least_tokens
    )


def embedding_tokens_beside_streams(per_token_s: float | None, slice_: WorkSlice) -> int | None:
    """How many tokens of inputs an embeddings batch takes between two steps of generating slots
    (None: no measure yet, what the batch holds)."""
    return _tokens_within(slice_.seconds, per_token_s, slice_.least_tokens)


def _tokens_within(seconds: float, per_token_s: float | None, least: int) -> int | None:
    if per_token_s is None:
        return None
    return max(least, int(seconds / per_token_s), 1)
