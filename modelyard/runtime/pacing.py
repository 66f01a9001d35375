"""How much of a new prompt a step reads while other slots generate, sized by the last steps.

A step decodes the next token of every generating slot and, in the same batch, prompt tokens of
the slots still reading theirs. Filled to `n_batch` (512) with prompt tokens, a step on two CPU
cores lasted 1.6 s: every stream froze that long for each chunk of a pasted document, as in
llama.cpp's server (Sarathi-Serve, OSDI '24, names it the generation stall). While slots generate,
a step now reads only what fits in about a time slice beside them; alone, a prompt is read in whole
batches. On a GPU a slice holds thousands of prompt tokens, so the batch stays full there.

Pure: the engine times its steps and hands the times in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# A step with fewer prompt tokens than this is not measured for the time per prompt token: a few
# tokens beside the streams' are mostly the step's fixed cost, and would shrink the next slice.
MIN_MEASURED_PROMPT_TOKENS = 16


@dataclass(frozen=True)
class StepTimes:
    """Moving averages (each new measure weighs half) of the last steps: one of the generating
    slots alone, and the time each prompt token adds to a step (None: not measured yet)."""

    streams_s: float | None = None
    per_prompt_token_s: float | None = None


@dataclass(frozen=True)
class PromptSlice:
    """How much of a new prompt a step reads beside generating slots: about `seconds` of work, but
    at least `least_tokens` (with fewer a batch loses its speed: on two CPU cores a token in a
    batch of 64 cost a third more than in one of 512, in one of 128 a fifth more)."""

    seconds: float = 0.4
    least_tokens: int = 128


def _averaged(last: float | None, new: float) -> float:
    return new if last is None else (last + new) / 2


def measured(times: StepTimes, seconds: float, prompt_tokens: int, generated_tokens: int) -> StepTimes:
    """`times` after a step of `seconds` that read `prompt_tokens` of prompts and fed
    `generated_tokens` (the generating slots' tokens and guesses)."""
    if prompt_tokens == 0:
        return replace(times, streams_s=_averaged(times.streams_s, seconds)) if generated_tokens else times
    if prompt_tokens < MIN_MEASURED_PROMPT_TOKENS:
        return times
    streams = times.streams_s if generated_tokens and times.streams_s is not None else 0.0
    # At least half the step counts as the prompt's: a slow streams' average (measured on another
    # batch size, or on a busier machine) must not make prompt tokens seem free.
    prompt_s = max(seconds - streams, seconds / 2)
    return replace(times, per_prompt_token_s=_averaged(times.per_prompt_token_s, prompt_s / prompt_tokens))


def prompt_tokens_beside_streams(times: StepTimes, slice_: PromptSlice) -> int | None:
    """How many prompt tokens a step reads beside generating slots so that it lasts about the
    slice (None: no measure yet, read what the batch holds). Streams whose own step already takes
    the slice or more share steps half and half with the prompt: it still advances."""
    if times.per_prompt_token_s is None:
        return None
    streams = times.streams_s or 0.0
    tokens = int(max(slice_.seconds - streams, streams) / times.per_prompt_token_s)
    return max(slice_.least_tokens, tokens, 1)
