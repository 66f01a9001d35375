"""How the Engine decodes, driven in this process on the tiny random-weight model: speculative
decoding (runtime/drafting.py), whose answer is the one decoding token by token gives, whatever
the guesses, with nothing of a failed guess left behind; and busy slots kept on consecutive
sequence ids (runtime/slot_layout.py).

A random-weight model seldom repeats itself, so prompt lookup would seldom guess right here (the
lookup is tested in test_drafting.py, on Gemma in test_runner.py). These tests guess from the
answer itself, read from a run without guesses, and make every few guesses wrong on purpose: the
engine then takes long runs of right guesses and cuts wrong ones, in every situation below."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.runtime import engine as engine_module
from modelyard.runtime import llama
from modelyard.runtime.drafting import NgramIndex
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


def answer_ids(answer: Answer) -> list[int]:
    return [int(entry["id"]) for entry in answer.logprobs]


def guess_from(monkeypatch: pytest.MonkeyPatch, answer: list[int], wrong_every: int) -> None:
    """Requests guess `answer`'s next tokens, every `wrong_every`-th of them (by position) wrong."""

    class Oracle(NgramIndex):
        def __init__(self, tokens: list[int]) -> None:
            super().__init__(tokens)
            self.prompt_length = len(tokens)

        def draft(self, limit: int) -> list[int]:
            done = len(self.tokens) - self.prompt_length
            guesses = answer[done : done + limit]
            return [
                t + 1 if (done + i) % wrong_every == wrong_every - 1 else t for i, t in enumerate(guesses)
            ]

    monkeypatch.setattr(engine_module, "NgramIndex", Oracle)


def generate(engines: Engines, prompt: str = PROMPT, top_logprobs: int = 0, **options: Any) -> Answer:
    engine, events = engines.new()
    request = CompletionRequest(prompt, SamplingOptions(**options), top_logprobs=top_logprobs)
    engine.waiting.append((1, request))
    run_all(engine)
    return answer(events, 1)


def plain_and_guessed(
    engines: Engines,
    monkeypatch: pytest.MonkeyPatch,
    draft: int = 4,
    wrong_every: int = 7,
    top_logprobs: int = 0,
    **options: Any,
) -> tuple[Answer, Answer]:
    """The answer without guesses, then with guesses read from it (some wrong on purpose)."""
    plain = generate(engines, top_logprobs=max(1, top_logprobs), **options, draft_num_predict=0)
    guess_from(monkeypatch, answer_ids(plain), wrong_every)
    guessed = generate(engines, top_logprobs=top_logprobs, **options, draft_num_predict=draft)
    assert plain.done["draft_tokens"] == 0
    return plain, guessed


def held_and_failed(answer: Answer) -> None:
    drafted, accepted = answer.done["draft_tokens"], answer.done["draft_accepted"]
    assert 0 < accepted < drafted, (drafted, accepted)


def test_greedy_answer_is_the_same_with_guesses(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, guessed = plain_and_guessed(engines, monkeypatch, temperature=0, num_predict=96)
    held_and_failed(guessed)
    assert guessed.done["draft_accepted"] > 48  # most tokens came as guesses
    assert guessed.text == plain.text
    assert guessed.done["eval_count"] == plain.done["eval_count"] == 96


@pytest.mark.parametrize("draft", [1, 2, 8, 16])
def test_seeded_sampling_draws_the_same_answer_with_guesses(
    engines: Engines, monkeypatch: pytest.MonkeyPatch, draft: int
) -> None:
    # One draw from the request's random stream per token, in the same order, whatever was guessed.
    options = dict(temperature=0.9, top_k=40, top_p=0.95, seed=1234, num_predict=80)
    plain, guessed = plain_and_guessed(engines, monkeypatch, draft, wrong_every=5, **options)
    held_and_failed(guessed)
    assert guessed.text == plain.text


def test_penalties_see_the_tokens_that_were_guessed_right(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(temperature=0, repeat_penalty=1.3, repeat_last_n=16, frequency_penalty=0.2, num_predict=64)
    plain, guessed = plain_and_guessed(engines, monkeypatch, **options)
    held_and_failed(guessed)
    assert guessed.text == plain.text


def test_log_probs_of_guessed_tokens_come_from_their_own_rows(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, guessed = plain_and_guessed(engines, monkeypatch, top_logprobs=3, temperature=0, num_predict=48)
    held_and_failed(guessed)
    assert [e["token"] for e in guessed.logprobs] == [e["token"] for e in plain.logprobs]
    assert [e["offset"] for e in guessed.logprobs] == [e["offset"] for e in plain.logprobs]
    np.testing.assert_allclose(
        [e["logprob"] for e in guessed.logprobs], [e["logprob"] for e in plain.logprobs], atol=2e-3
    )
    for a, b in zip(guessed.logprobs, plain.logprobs, strict=True):
        assert [t["token"] for t in a["top"]] == [t["token"] for t in b["top"]]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_num_predict_is_exact_with_guesses(engines: Engines, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    full = generate(engines, top_logprobs=1, temperature=0, num_predict=40, draft_num_predict=0)
    guess_from(monkeypatch, answer_ids(full), wrong_every=100)
    short = generate(engines, temperature=0, num_predict=n, draft_num_predict=8)
    assert short.done["eval_count"] == n
    assert short.done["done_reason"] == "length"
    assert full.text.startswith(short.text)
    # The first token comes from the prompt's row; each step after it takes up to 8 guesses and
    # samples one more token, and never guesses past num_predict.
    steps = math.ceil((n - 1) / 9)
    assert short.done["draft_tokens"] == short.done["draft_accepted"] == n - 1 - steps


def test_a_stop_string_inside_a_guessed_run_cuts_exactly(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, _ = plain_and_guessed(engines, monkeypatch, temperature=0, num_predict=96)
    stop = full.text[60:66]  # somewhere inside a run of guesses
    expected = full.text[: full.text.index(stop)]
    stopped = generate(engines, temperature=0, num_predict=96, draft_num_predict=8, stop=(stop,))
    assert stopped.done["draft_accepted"] > 0
    assert stopped.done["done_reason"] == "stop"
    assert stopped.text == expected


def test_the_cache_holds_only_what_was_fed_and_the_next_turn_reuses_it(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(temperature=0.5, top_k=3, seed=1, num_predict=120)
    plain = generate(engines, top_logprobs=1, **options, draft_num_predict=0)
    guess_from(monkeypatch, answer_ids(plain), wrong_every=3)
    engine, events = engines.new()
    engine.waiting.append((1, CompletionRequest(PROMPT, SamplingOptions(**options, draft_num_predict=8))))
    run_all(engine)
    first = answer(events, 1)
    held_and_failed(first)
    assert first.text == plain.text
    [slot] = [s for s in engine.slots if len(s.cache)]
    last = int(llama.L.llama_memory_seq_pos_max(engine.ctx.memory, slot.seq))
    assert last + 1 == len(slot.cache), "no cell of a failed guess is left"
    prompt_tokens = engine.model.tokenize(PROMPT, add_special=True)
    # The cache is the prompt and the answer but its last token, which was sampled, never fed.
    assert list(slot.cache) == prompt_tokens + answer_ids(plain)[:-1]

    follow_up = PROMPT + first.text + " and then"
    engine.waiting.append((2, CompletionRequest(follow_up, SamplingOptions(temperature=0, num_predict=32))))
    run_all(engine)
    reused = answer(events, 2)
    assert reused.done["prompt_cached"] > len(prompt_tokens)  # the answer's cells too
    fresh = generate(engines, follow_up, temperature=0, num_predict=32, draft_num_predict=0)
    assert reused.text == fresh.text


def test_no_guesses_while_another_request_generates(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, _ = plain_and_guessed(engines, monkeypatch, temperature=0, num_predict=48)
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
    assert one.text == alone.text


def test_guesses_stop_at_the_end_of_the_context_and_shifts_work(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(temperature=0, num_predict=600, num_keep=4)
    answers = []
    for draft in (0, 8):
        engine, events = engines.new(n_ctx=256)
        request = CompletionRequest(
            PROMPT, SamplingOptions(**options, draft_num_predict=draft), top_logprobs=1
        )
        engine.waiting.append((1, request))
        run_all(engine)
        answers.append(answer(events, 1))
        guess_from(monkeypatch, answer_ids(answers[0]), wrong_every=7)
    plain, guessed = answers
    assert guessed.done["context_shifts"] == plain.done["context_shifts"] > 0
    held_and_failed(guessed)
    assert guessed.done["eval_count"] == 600
    assert guessed.text == plain.text


def test_a_context_that_cannot_shift_fills_to_the_last_cell(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = []
    for draft in (0, 8):
        engine, events = engines.new(n_ctx=256)
        options = SamplingOptions(temperature=0, num_predict=-2, draft_num_predict=draft)
        engine.waiting.append((1, CompletionRequest(PROMPT, options, shift=False, top_logprobs=1)))
        run_all(engine)
        answers.append(answer(events, 1))
        guess_from(monkeypatch, answer_ids(answers[0]), wrong_every=100)
        assert engine.n_ctx_seq == 256
    plain, guessed = answers
    assert guessed.done["draft_accepted"] > 100
    # Every cell filled, and the token sampled from the last one's row: one past the context.
    assert plain.done["prompt_eval_count"] + plain.done["eval_count"] == 256 + 1
    assert guessed.done["done_reason"] == plain.done["done_reason"] == "length"
    assert guessed.done["eval_count"] == plain.done["eval_count"]
    assert guessed.text == plain.text


def test_guesses_that_keep_failing_are_made_less_and_less_often(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, guessed = plain_and_guessed(engines, monkeypatch, wrong_every=1, temperature=0, num_predict=96)
    assert guessed.done["draft_accepted"] == 0
    # 4 guesses, then pauses of 2, 4, 8, 16 and 32 steps, each followed by one guess: 6 drafts, 9
    # tokens, in 96.
    assert guessed.done["draft_tokens"] == 4 + 5
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


def test_a_new_conversation_takes_a_free_slot_beside_the_busy_ones(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = engines.new(slots=4)
    for request_id in range(4):  # every slot holds a cache
        engine.waiting.append(
            (request_id, CompletionRequest(f"{request_id} {PROMPT}", SamplingOptions(num_predict=2)))
        )
    run_all(engine)
    for seq, clock in enumerate([9, 7, 8, 1]):  # slot 3 is the least recently used
        engine.slots[seq].last_used = clock
    long = SamplingOptions(temperature=0, num_predict=20, draft_num_predict=0)
    engine.waiting.append((10, CompletionRequest("a first conversation", long)))
    engine._admit()
    assert engine.slots[3].request_id == 10
    moves: list[tuple[int, int]] = []
    copies: list[tuple[int, int]] = []
    real_move, real_copy = Engine._move, llama.Context.seq_cp
    monkeypatch.setattr(
        Engine, "_move", lambda self, a, b: (moves.append((a.seq, b.seq)), real_move(self, a, b))
    )
    monkeypatch.setattr(
        llama.Context, "seq_cp", lambda self, a, b: (copies.append((a, b)), real_copy(self, a, b))
    )
    engine.waiting.append((11, CompletionRequest("a second conversation", long)))
    engine._admit()
    # Not slot 1, the least recently used of the rest: slot 2, beside the busy one; nothing moves.
    assert engine.slots[2].request_id == 11
    run_all(engine)
    assert moves == [] and copies == []


def test_a_request_with_no_cells_yet_moves_without_a_copy(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, events = engines.new(slots=4)
    long = SamplingOptions(temperature=0, num_predict=12, draft_num_predict=0)
    for request_id, seq, text in (
        (1, 0, PROMPT),
        (2, 2, "another prompt"),
    ):  # apart, the second without cells
        free = [engine.slots[seq]]
        engine._start(free, engine._view(free), request_id, CompletionRequest(text, long))
    copies: list[tuple[int, int]] = []
    real_copy = llama.Context.seq_cp
    monkeypatch.setattr(
        llama.Context, "seq_cp", lambda self, a, b: (copies.append((a, b)), real_copy(self, a, b))
    )
    engine.step()
    assert [s.request_id for s in engine.slots[:3]] == [1, 2, -1]
    assert copies == []  # nothing to copy: the stream is not
    run_all(engine)
    alone = generate(engines, "another prompt", temperature=0, num_predict=12, draft_num_predict=0)
    assert answer(events, 2).text == alone.text
