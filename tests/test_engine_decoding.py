"""How the Engine decodes, driven in this process on the tiny random-weight model: speculative
decoding by prompt lookup (runtime/drafting.py), whose answer is the one decoding token by token
gives, whatever the guesses, with nothing of a failed guess left behind (the tiny model's answers
repeat themselves often enough to be guessed); and busy slots kept on consecutive sequence ids
(runtime/slot_layout.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.runtime import llama
from modelyard.runtime.engine import Engine
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest

PROMPT = "the cat sat on the mat and the dog ran in the park"
N_CTX = 256


@dataclass
class Answer:
    text: str
    done: dict[str, Any]
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class Engines:
    """Fresh engines on one loaded model: a run never finds another's cache."""

    def __init__(self, path: Path) -> None:
        # Not repacked: some VMs advertise CPU instructions the repacked kernels need and cannot run.
        self.model = llama.Model(path, LoadOptions(num_gpu=0), repack=False)
        self.contexts: list[llama.Context] = []

    def new(self, slots: int = 2, n_ctx: int = N_CTX) -> tuple[Engine, list[dict[str, Any]]]:
        ctx = llama.Context(
            self.model, n_ctx=slots * n_ctx, n_seq_max=slots, n_batch=64, threads=2, prompt_logprob_rows=16
        )
        self.contexts.append(ctx)
        events: list[dict[str, Any]] = []
        return Engine(self.model, ctx, slots, events.append), events

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()
        self.model.close()


@pytest.fixture
def engines(tiny_gguf: Path) -> Iterator[Engines]:
    made = Engines(tiny_gguf)
    yield made
    made.close()


def run_all(engine: Engine) -> None:
    while engine._has_work():
        engine._admit()
        engine.step()


def answer(events: list[dict[str, Any]], request_id: int) -> Answer:
    tokens = [e for e in events if e["event"] == "token" and e["id"] == request_id]
    [done] = [e for e in events if e["event"] == "done" and e["id"] == request_id]
    logprobs = [entry for e in tokens for entry in e.get("logprobs", [])]
    return Answer("".join(e["text"] for e in tokens), done, logprobs)


def generate(engines: Engines, prompt: str = PROMPT, top_logprobs: int = 0, **options: Any) -> Answer:
    engine, events = engines.new()
    request = CompletionRequest(prompt, SamplingOptions(**options), top_logprobs=top_logprobs)
    engine.waiting.append((1, request))
    run_all(engine)
    return answer(events, 1)


def test_greedy_answer_is_the_same_with_guesses(engines: Engines) -> None:
    plain = generate(engines, temperature=0, num_predict=96, draft_num_predict=0)
    guessed = generate(engines, temperature=0, num_predict=96, draft_num_predict=4)
    assert plain.done["draft_tokens"] == 0
    assert guessed.done["draft_accepted"] > 0, "the tiny model's answer repeats: some guesses hold"
    assert guessed.done["draft_accepted"] <= guessed.done["draft_tokens"]
    assert guessed.text == plain.text
    assert guessed.done["eval_count"] == plain.done["eval_count"] == 96


@pytest.mark.parametrize("draft", [1, 2, 8, 16])
def test_seeded_sampling_draws_the_same_answer_with_guesses(engines: Engines, draft: int) -> None:
    # One draw from the request's random stream per token, in the same order, whatever was guessed.
    options = dict(temperature=0.9, top_k=40, top_p=0.95, seed=1234, num_predict=80)
    plain = generate(engines, **options, draft_num_predict=0)
    guessed = generate(engines, **options, draft_num_predict=draft)
    assert guessed.done["draft_tokens"] > 0
    assert guessed.text == plain.text


def test_some_guesses_fail_and_the_answer_does_not_show_it(engines: Engines) -> None:
    # Sampling breaks the answer's repetitions: most guesses fail.
    options = dict(temperature=0.5, top_k=3, seed=1, num_predict=120)
    plain = generate(engines, **options, draft_num_predict=0)
    guessed = generate(engines, **options, draft_num_predict=8)
    assert 0 < guessed.done["draft_accepted"] < guessed.done["draft_tokens"]
    assert guessed.text == plain.text


def test_penalties_see_the_tokens_that_were_guessed_right(engines: Engines) -> None:
    options = dict(temperature=0, repeat_penalty=1.3, repeat_last_n=16, frequency_penalty=0.2, num_predict=64)
    plain = generate(engines, **options, draft_num_predict=0)
    guessed = generate(engines, **options, draft_num_predict=4)
    assert guessed.done["draft_tokens"] > 0
    assert guessed.text == plain.text


def test_log_probs_of_guessed_tokens_come_from_their_own_rows(engines: Engines) -> None:
    plain = generate(engines, top_logprobs=3, temperature=0, num_predict=48, draft_num_predict=0)
    guessed = generate(engines, top_logprobs=3, temperature=0, num_predict=48, draft_num_predict=4)
    assert guessed.done["draft_accepted"] > 0
    assert [e["token"] for e in guessed.logprobs] == [e["token"] for e in plain.logprobs]
    assert [e["offset"] for e in guessed.logprobs] == [e["offset"] for e in plain.logprobs]
    np.testing.assert_allclose(
        [e["logprob"] for e in guessed.logprobs], [e["logprob"] for e in plain.logprobs], atol=1e-4
    )
    for a, b in zip(guessed.logprobs, plain.logprobs, strict=True):
        assert [t["token"] for t in a["top"]] == [t["token"] for t in b["top"]]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_num_predict_is_exact_with_guesses(engines: Engines, n: int) -> None:
    full = generate(engines, temperature=0, num_predict=40, draft_num_predict=0)
    short = generate(engines, temperature=0, num_predict=n, draft_num_predict=8)
    assert short.done["eval_count"] == n
    assert short.done["done_reason"] == "length"
    assert full.text.startswith(short.text)


def test_a_stop_string_inside_a_guessed_run_cuts_exactly(engines: Engines) -> None:
    full = generate(engines, temperature=0, num_predict=96, draft_num_predict=0)
    stop = full.text[60:66]  # somewhere the guesses run through
    expected = full.text[: full.text.index(stop)]
    stopped = generate(engines, temperature=0, num_predict=96, draft_num_predict=8, stop=(stop,))
    assert stopped.done["draft_accepted"] > 0
    assert stopped.done["done_reason"] == "stop"
    assert stopped.text == expected


def test_the_cache_holds_only_what_was_fed_and_the_next_turn_reuses_it(engines: Engines) -> None:
    engine, events = engines.new()
    options = SamplingOptions(temperature=0.5, top_k=3, seed=1, num_predict=120, draft_num_predict=8)
    engine.waiting.append((1, CompletionRequest(PROMPT, options)))
    run_all(engine)
    first = answer(events, 1)
    assert first.done["draft_tokens"] > first.done["draft_accepted"] > 0  # some guesses were cut
    [slot] = [s for s in engine.slots if len(s.cache)]
    last = int(llama.L.llama_memory_seq_pos_max(engine.ctx.memory, slot.seq))
    assert last + 1 == len(slot.cache), "no cell of a failed guess is left"
    generated = engine.model.tokenize(PROMPT + first.text, add_special=True)
    # The cache is the prompt and the answer but its last token, which was sampled, never fed.
    assert list(slot.cache) == generated[: len(slot.cache)]
    prompt_tokens = len(engine.model.tokenize(PROMPT, add_special=True))

    follow_up = PROMPT + first.text + " and then"
    engine.waiting.append((2, CompletionRequest(follow_up, SamplingOptions(temperature=0, num_predict=32))))
    run_all(engine)
    reused = answer(events, 2)
    assert reused.done["prompt_cached"] > prompt_tokens  # the answer's cells too
    fresh = generate(engines, follow_up, temperature=0, num_predict=32)
    assert reused.text == fresh.text


def test_no_guesses_while_another_request_generates(engines: Engines) -> None:
    engine, events = engines.new()
    options = SamplingOptions(temperature=0, num_predict=48, draft_num_predict=4)
    engine.waiting.append((1, CompletionRequest(PROMPT, options)))
    engine.waiting.append((2, CompletionRequest(PROMPT + " again", options)))
    batches: list[int] = []
    while engine._has_work():
        engine._admit()
        engine.step()
        batches.append(engine.batch.size)
    one, two = answer(events, 1), answer(events, 2)
    # Side by side the whole time: each step holds one token of each, and none is guessed.
    assert one.done["eval_count"] == two.done["eval_count"] == 48
    assert one.done["draft_tokens"] == two.done["draft_tokens"] == 0
    assert all(size == 2 for size in batches[1:])
    alone = generate(engines, PROMPT, temperature=0, num_predict=48, draft_num_predict=4)
    assert alone.done["draft_tokens"] > 0
    assert alone.text == one.text


def test_guesses_stop_at_the_end_of_the_context_and_shifts_work(engines: Engines) -> None:
    engine, events = engines.new(n_ctx=256)
    options = dict(temperature=0, num_predict=600, num_keep=4)
    for request_id, draft in ((1, 0), (2, 8)):
        engine.waiting.append(
            (request_id, CompletionRequest(PROMPT, SamplingOptions(**options, draft_num_predict=draft)))
        )
        run_all(engine)
        for slot in engine.slots:  # the second request starts afresh
            engine._release(slot, keep_cache=False)
    plain, guessed = answer(events, 1), answer(events, 2)
    assert guessed.done["context_shifts"] == plain.done["context_shifts"] > 0
    assert guessed.done["draft_accepted"] > 0
    assert guessed.done["eval_count"] == 600
    assert guessed.text == plain.text


def test_a_context_that_cannot_shift_fills_to_the_last_cell(engines: Engines) -> None:
    answers = []
    for draft in (0, 8):
        engine, events = engines.new(n_ctx=256)
        options = SamplingOptions(temperature=0, num_predict=-2, draft_num_predict=draft)
        engine.waiting.append((1, CompletionRequest(PROMPT, options, shift=False)))
        run_all(engine)
        answers.append(answer(events, 1))
        assert engine.n_ctx_seq == 256
    plain, guessed = answers
    assert guessed.done["draft_accepted"] > 0
    # Every cell filled, and the token sampled from the last one's row: one past the context.
    assert plain.done["prompt_eval_count"] + plain.done["eval_count"] == 256 + 1
    assert guessed.done["done_reason"] == plain.done["done_reason"] == "length"
    assert guessed.done["eval_count"] == plain.done["eval_count"]
    assert guessed.text == plain.text


# --- busy slots on consecutive sequence ids (slot_layout.py) -----------------------------------------


def batch_sequences(engine: Engine) -> list[int]:
    raw = engine.batch.raw
    return sorted({int(raw.seq_id[i][0]) for i in range(engine.batch.size)})


def test_a_request_that_ends_early_leaves_no_hole_between_the_others(engines: Engines) -> None:
    engine, events = engines.new(slots=4)
    lengths = {1: 40, 2: 3, 3: 40, 4: 40}  # the second ends first, in the middle of the run
    prompts = {i: f"{PROMPT} {i}" for i in lengths}
    for request_id, n in lengths.items():
        options = SamplingOptions(temperature=0, num_predict=n, draft_num_predict=0)
        engine.waiting.append((request_id, CompletionRequest(prompts[request_id], options)))
    engine._admit()
    assert [s.request_id for s in engine.slots] == [1, 2, 3, 4]
    layouts = []
    while engine._has_work():
        engine._admit()
        engine.step()
        layouts.append(batch_sequences(engine))
    moved = [s for s in layouts if s == [0, 1, 2]]
    assert moved, f"the three left were never decoded on consecutive ids: {layouts}"
    for seqs in layouts:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"a step over {seqs}"
    for request_id, n in lengths.items():  # each answer as the request gives it alone
        done = answer(events, request_id)
        assert done.done["eval_count"] == n
        alone = generate(engines, prompts[request_id], temperature=0, num_predict=n, draft_num_predict=0)
        assert done.text == alone.text
    # The slot the last request left keeps its cells as a prompt cache, as any free slot does.
    follow_up = prompts[4] + answer(events, 4).text
    engine.waiting.append((5, CompletionRequest(follow_up, SamplingOptions(temperature=0, num_predict=4))))
    run_all(engine)
    assert answer(events, 5).done["prompt_cached"] > len(engine.model.tokenize(prompts[4], add_special=True))
