"""The runner's Engine driven in this process (no socket): what a request that fails while its
token is picked leaves behind, the prompt cache's choice across slots, and prompts scored token by
token (echo with log-probs) beside other work."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.runtime import llama
from modelyard.runtime.engine import EmbeddingContext, EmbeddingJob, Engine, RequestRejected
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.pacing import StepTimes, WorkSlice
from modelyard.runtime.protocol import CompletionRequest

SCORING_ROWS = 4


@pytest.fixture
def engine(tiny_gguf: Path) -> Iterator[tuple[Engine, list[dict[str, Any]]]]:
    # Not repacked: some VMs advertise CPU instructions the repacked kernels need and cannot run.
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    # Few rows for prompt log-probs, so that scoring a prompt takes several steps.
    ctx = llama.Context(
        model, n_ctx=2 * 128, n_seq_max=2, n_batch=64, threads=2, prompt_logprob_rows=SCORING_ROWS
    )
    events: list[dict[str, Any]] = []
    yield Engine(model, ctx, 2, events.append), events
    ctx.close()
    model.close()


def run(engine: Engine, request_id: int, prompt: str, n: int) -> None:
    engine.waiting.append(
        (request_id, CompletionRequest(prompt, SamplingOptions(temperature=0, num_predict=n)))
    )
    run_all(engine)


def run_all(engine: Engine) -> None:
    while engine._has_work():
        engine._admit()
        engine.step()


def scored(prompt: str = "", n: int = 0, *, tokens: tuple[int, ...] = (), **kwargs: Any) -> CompletionRequest:
    """Echo the prompt with every token's log-prob, then generate `n` tokens greedily."""
    options = SamplingOptions(temperature=0, num_predict=n)
    return CompletionRequest(prompt, options, tokens=tokens, **{"top_logprobs": 3, "echo": True} | kwargs)


def forget_scores(engine: Engine) -> None:
    """As a fresh engine: no slot holds a scored prompt's entries."""
    for slot in engine.slots:
        slot.scores = []


def echoed(events: list[dict[str, Any]], request_id: int) -> dict[str, Any]:
    [event] = [e for e in events if e["event"] == "token" and e["id"] == request_id and e.get("prompt")]
    return event


def test_a_request_that_fails_while_sampling_fails_alone(
    engine: tuple[Engine, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, events = engine
    real = llama.Sampler.sample
    calls = {"n": 0}

    def failing_once(self: llama.Sampler, ctx: llama.Context, index: int) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the sampler chain selected no token (-1)")
        return real(self, ctx, index)

    monkeypatch.setattr(llama.Sampler, "sample", failing_once)
    run(runner, 1, "the cat sat on", 8)
    errors = [e for e in events if e["event"] == "error"]
    assert [(e["id"], e["kind"]) for e in errors] == [(1, "internal")]
    assert "selected no token" in errors[0]["message"]
    assert not any(s.busy for s in runner.slots)
    assert all(len(s.cache) == 0 for s in runner.slots), "what the failed request left is not reused"

    run(runner, 2, "the cat sat on", 8)  # the engine goes on serving
    done = [e for e in events if e["event"] == "done"]
    assert [(e["id"], e["eval_count"]) for e in done] == [(2, 8)]


def test_the_next_turn_goes_back_to_its_slot(engine: tuple[Engine, list[dict[str, Any]]]) -> None:
    runner, events = engine
    run(runner, 1, "the cat sat on the mat and", 6)
    first = next(s for s in runner.slots if len(s.cache))
    run(runner, 2, "a dog ran", 4)  # another conversation: the other, never used, slot
    assert sum(1 for s in runner.slots if len(s.cache)) == 2
    text = "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == 1)
    run(runner, 3, "the cat sat on the mat and" + text + " then", 4)
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[3]["prompt_cached"] >= len(
        runner.model.tokenize("the cat sat on the mat and", add_special=True)
    )
    assert (
        list(first.cache[: done[3]["prompt_cached"]])
        == runner.model.tokenize("the cat sat on the mat and" + text + " then", add_special=True)[
            : done[3]["prompt_cached"]
        ]
    )


PROMPT = "the cat sat on the mat and the dog ran in the park while the bird sang"


def test_a_scored_prompt_has_every_tokens_logprob_after_the_ones_before(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    runner, events = engine
    tokens = runner.model.tokenize(PROMPT, add_special=True)
    assert len(tokens) > 3 * SCORING_ROWS  # scored over several steps
    runner.waiting.append((1, scored(PROMPT, 2)))
    run_all(runner)
    entries = echoed(events, 1)["logprobs"]
    assert [e["id"] for e in entries] == tokens
    assert entries[0]["logprob"] is None and entries[0]["top"] is None  # nothing scores the first
    # The reference: each prefix evaluated afresh in a clean context, its last row scoring the next token.
    model = runner.model
    ctx = llama.Context(model, n_ctx=128, n_seq_max=1, n_batch=64, threads=2)
    try:
        for k in range(1, len(tokens)):
            ctx.clear()
            batch = llama.Batch(64, 1)
            for i in range(k):
                batch.add(tokens[i], i, 0, i == k - 1)
            assert ctx.decode(batch) == 0
            [reference] = llama.logprob_entries(ctx, model, k - 1, [tokens[k]], 3)
            batch.close()
            assert entries[k]["logprob"] == pytest.approx(reference["logprob"], abs=1e-4)
            assert [c["id"] for c in entries[k]["top"]] == [c["id"] for c in reference["top"]]
    finally:
        ctx.close()
    assert sum(1 for e in events if e["event"] == "token" and not e.get("prompt")) == 2  # then generates


def test_scoring_beside_a_generation_gives_both_what_each_gives_alone(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    runner, events = engine
    runner.waiting.append((1, scored(PROMPT, 3)))
    run_all(runner)
    alone = echoed(events, 1)["logprobs"]
    run(runner, 2, "a dog ran", 12)
    generated_alone = "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == 2)
    for slot in runner.slots:  # no cache to tell the two runs apart
        runner.ctx.seq_rm(slot.seq)
        slot.cache, slot.exact = type(slot.cache)("i"), 0
    events.clear()
    runner.waiting.append((3, CompletionRequest("a dog ran", SamplingOptions(temperature=0, num_predict=12))))
    runner._admit()
    runner.step()  # the generation is under way when the scoring joins
    runner.waiting.append((4, scored(PROMPT, 3)))
    run_all(runner)
    together = echoed(events, 4)["logprobs"]
    assert [e["id"] for e in together] == [e["id"] for e in alone]
    assert [e["logprob"] for e in together[1:]] == pytest.approx([e["logprob"] for e in alone[1:]], abs=1e-4)
    assert "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == 3) == generated_alone


def test_a_scored_prompt_leaves_its_cells_and_its_scores(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    runner, events = engine
    prompt_length = len(runner.model.tokenize(PROMPT, add_special=True))
    runner.waiting.append((1, scored(PROMPT)))
    run_all(runner)
    [scoring_slot] = [s for s in runner.slots if len(s.cache)]
    run(runner, 2, PROMPT + " again", 1)  # goes on from the scored prompt's cells
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[2]["prompt_cached"] == prompt_length
    latest = max(s.last_used for s in runner.slots)
    assert [s for s in runner.slots if s.last_used == latest] == [scoring_slot]
    runner.waiting.append((3, scored(PROMPT)))  # the plain request kept its prefix's scores
    run_all(runner)
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[3]["prompt_cached"] == prompt_length - 2  # the last two tokens evaluated again
    again, first = echoed(events, 3)["logprobs"], echoed(events, 1)["logprobs"]
    assert again[:-1] == first[:-1]  # from the cache: the very numbers
    assert again[-1]["id"] == first[-1]["id"] and again[-1]["logprob"] == pytest.approx(
        first[-1]["logprob"], abs=1e-4
    )


def test_two_scored_prompts_share_the_rows_of_a_step(engine: tuple[Engine, list[dict[str, Any]]]) -> None:
    runner, events = engine
    other = "a dog ran in the park and the bird sang while the cat sat on the mat"
    for request_id, prompt in ((1, PROMPT), (2, other)):
        runner.waiting.append((request_id, scored(prompt, 2)))
        run_all(runner)
    alone = {i: echoed(events, i)["logprobs"] for i in (1, 2)}
    forget_scores(runner)
    events.clear()
    runner.waiting.extend([(3, scored(PROMPT, 2)), (4, scored(other, 2))])
    runner._admit()
    runner.step()
    assert [s.scored_rows[2] if s.scored_rows else 0 for s in runner.slots] == [SCORING_ROWS, 0]
    run_all(runner)
    for together, by_itself in ((3, 1), (4, 2)):
        entries = echoed(events, together)["logprobs"]
        assert [e["id"] for e in entries] == [e["id"] for e in alone[by_itself]]
        assert [e["logprob"] for e in entries[1:]] == pytest.approx(
            [e["logprob"] for e in alone[by_itself][1:]], abs=1e-4
        )


def test_a_scoring_cancelled_midway_leaves_nothing_behind(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    runner, events = engine
    runner.waiting.append((1, scored(PROMPT, 2)))
    runner._admit()
    runner.step()
    [slot] = [s for s in runner.slots if s.busy]
    assert slot.prefilling and slot.prompt_logprobs
    runner.handle({"op": "cancel", "id": 1})
    runner.step()
    assert not slot.busy and slot.prompt_logprobs is None
    assert [e["done_reason"] for e in events if e["event"] == "done"] == ["cancel"]
    assert not any(e.get("prompt") for e in events), "a cancelled scoring sends no prompt"
    runner.waiting.append((2, scored(PROMPT, 2)))
    run_all(runner)
    assert len(echoed(events, 2)["logprobs"]) == len(runner.model.tokenize(PROMPT, add_special=True))


def test_answer_offsets_point_into_the_text_a_stop_string_leaves(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    """A stop string holds text back, so a token's text does not start where its event's does:
    each entry says where it starts in the answer."""
    runner, events = engine
    run(runner, 1, PROMPT, 24)
    free = "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == 1)
    stop = free[len(free) // 2 :][:3]
    options = SamplingOptions(temperature=0, num_predict=24, stop=(stop,))
    runner.waiting.append((2, CompletionRequest(PROMPT, options, top_logprobs=1)))
    run_all(runner)
    mine = [e for e in events if e["event"] == "token" and e["id"] == 2]
    text = "".join(e["text"] for e in mine)
    assert text == free[: free.index(stop)]
    entries = [entry for e in mine for entry in e.get("logprobs", ())]
    assert entries and [e["offset"] for e in entries] == sorted(e["offset"] for e in entries)
    for entry in entries:
        assert text[entry["offset"] :].startswith(entry["token"][: len(text) - entry["offset"]])


def test_token_ids_are_the_prompt_as_they_are(engine: tuple[Engine, list[dict[str, Any]]]) -> None:
    runner, events = engine
    tokens = runner.model.tokenize(PROMPT, add_special=True)
    run(runner, 1, PROMPT, 6)
    runner.waiting.append(
        (2, CompletionRequest("", SamplingOptions(temperature=0, num_predict=6), tokens=tuple(tokens[1:])))
    )
    runner.waiting.append(
        (3, CompletionRequest("", SamplingOptions(temperature=0, num_predict=6), tokens=tuple(tokens)))
    )
    run_all(runner)
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[2]["prompt_eval_count"] == len(tokens) - 1  # no BOS added
    text = {i: "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == i) for i in (1, 3)}
    assert text[3] == text[1]


@pytest.mark.parametrize(
    ("request_", "message", "kind"),
    [
        pytest.param(
            CompletionRequest("", tokens=(1, 10**6)),
            "prompt token id 1000000 is not in the vocabulary",
            "request",
            id="huge",
        ),
        pytest.param(
            CompletionRequest("", tokens=(-1,)),
            "prompt token id -1 is not in the vocabulary",
            "request",
            id="negative",
        ),
        # Cut, the scores would be of another prompt.
        pytest.param(scored(PROMPT * 20), "is never truncated", "too_long", id="scored-too-long"),
        pytest.param(
            CompletionRequest(PROMPT * 20, SamplingOptions(num_predict=2), truncate=False),
            "shorten it, or serve the model with a larger num_ctx",
            "too_long",
            id="too-long-not-to-be-cut",
        ),
    ],
)
def test_a_bad_prompt_fails_alone(
    engine: tuple[Engine, list[dict[str, Any]]], request_: CompletionRequest, message: str, kind: str
) -> None:
    runner, events = engine
    runner.waiting.append((1, request_))
    run(runner, 2, "a dog ran", 2)
    [error] = [e for e in events if e["event"] == "error"]
    assert (error["id"], error["kind"]) == (1, kind) and message in error["message"]
    assert [e["id"] for e in events if e["event"] == "done"] == [2]


def test_a_runner_without_scoring_rows_refuses_to_score(tiny_gguf: Path) -> None:
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=128, n_seq_max=1, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    try:
        engine = Engine(model, ctx, 1, events.append)
        engine.waiting.append((1, scored(PROMPT)))
        run_all(engine)
    finally:
        ctx.close()
        model.close()
    [error] = events
    assert error["event"] == "error" and "log-probabilities" in error["message"]


@pytest.mark.parametrize(
    ("prompt", "tokens", "shown"),
    [
        # A text: its BOS and SentencePiece's leading space are not in it.
        pytest.param(PROMPT, False, PROMPT, id="text"),
        pytest.param("", False, "", id="empty-text"),
        # Token ids: every token as the model read it, control tokens too, as llama.cpp's
        # detokenizer renders them (SentencePiece puts a space before each text between control
        # tokens; a text prompt with a control token in it: test_server_e2e, on Gemma's BPE).
        pytest.param("the cat</s>sat", True, "<s> the cat</s> sat", id="token-ids"),
    ],
)
def test_an_echoed_prompt_shows_its_tokens_as_its_text(
    engine: tuple[Engine, list[dict[str, Any]]], prompt: str, tokens: bool, shown: str
) -> None:
    runner, events = engine
    ids = tuple(runner.model.tokenize(prompt, add_special=True)) if tokens else ()
    runner.waiting.append((1, scored("" if tokens else prompt, tokens=ids)))
    run_all(runner)
    event = echoed(events, 1)
    assert event["text"] == shown
    assert b"".join(bytes(e["bytes"]) for e in event["logprobs"]).decode() == shown
    assert [e["token"] for e in event["logprobs"]] == [bytes(e["bytes"]).decode() for e in event["logprobs"]]


def test_echo_gives_the_end_of_generation_its_entry(
    engine: tuple[Engine, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-evaluation-harness reads the last entry as the one generated token's: when that is the
    end of generation, it must be there (the model's pick is forced: a random model rarely ends)."""
    runner, events = engine
    eos = runner.model.tokenize("</s>", add_special=False)[0]
    assert runner.model.is_eog(eos)
    monkeypatch.setattr(llama.Sampler, "sample", lambda self, ctx, index: eos)
    runner.waiting.append((1, scored(PROMPT, 1)))
    runner.waiting.append((2, CompletionRequest(PROMPT, SamplingOptions(num_predict=1), top_logprobs=1)))
    run_all(runner)
    prompt_length = len(runner.model.tokenize(PROMPT, add_special=True))
    entries = {
        i: [
            entry for e in events if e["event"] == "token" and e["id"] == i for entry in e.get("logprobs", ())
        ]
        for i in (1, 2)
    }
    assert len(entries[1]) == prompt_length + 1 and entries[1][-1]["id"] == eos
    assert entries[1][-1]["token"] == "</s>" and entries[1][-1]["logprob"] < 0
    assert entries[2] == [], "without echo, the end of generation has no entry (as chat's logprobs)"
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[1]["done_reason"] == "stop" and done[1]["eval_count"] == 0


def test_a_prompt_that_starts_as_a_scored_one_did_reuses_its_scores(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    """lm-evaluation-harness scores one context with each of its answers: the context's scores
    come from the cache, and only the answer (and the context's last token, whose logits score the
    answer's first) is evaluated."""
    runner, events = engine
    context = runner.model.tokenize(PROMPT, add_special=True)
    yes, no = (runner.model.tokenize(word, add_special=False) for word in ("yes indeed", "no way"))
    runner.waiting.append((1, scored(tokens=tuple(context + yes))))
    run_all(runner)
    runner.waiting.append((2, scored(tokens=tuple(context + no))))
    run_all(runner)
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[2]["prompt_cached"] == len(context) - 1
    first, second = echoed(events, 1)["logprobs"], echoed(events, 2)["logprobs"]
    assert second[: len(context)] == first[: len(context)]  # the very numbers, from the cache
    # The answer as a fresh engine scores it (its batches differ: rounding aside).
    forget_scores(runner)
    runner.waiting.append((3, scored(tokens=tuple(context + no))))
    run_all(runner)
    fresh = echoed(events, 3)["logprobs"]
    assert done[2]["prompt_eval_count"] == len(fresh) == len(second)
    assert [e["id"] for e in second] == [e["id"] for e in fresh]
    assert [e["logprob"] for e in second[1:]] == pytest.approx([e["logprob"] for e in fresh[1:]], abs=1e-4)
    assert [[c["id"] for c in e["top"]] for e in second[1:]] == [
        [c["id"] for c in e["top"]] for e in fresh[1:]
    ]


@pytest.mark.parametrize(
    ("first", "then", "reused"),
    [
        pytest.param(dict(top_logprobs=1), dict(top_logprobs=3), False, id="more-candidates-than-cached"),
        pytest.param(dict(top_logprobs=3), dict(top_logprobs=1), True, id="fewer-candidates-than-cached"),
        pytest.param(dict(echo=False), dict(), False, id="cells-without-scores"),
    ],
)
def test_cached_scores_serve_only_what_they_hold(
    engine: tuple[Engine, list[dict[str, Any]]], first: dict[str, Any], then: dict[str, Any], reused: bool
) -> None:
    runner, events = engine
    context = tuple(runner.model.tokenize(PROMPT, add_special=True))
    runner.waiting.append((1, scored(tokens=(*context, 100), **first)))
    run_all(runner)
    runner.waiting.append((2, scored(tokens=(*context, 200), **then)))
    run_all(runner)
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[2]["prompt_cached"] == (len(context) - 1 if reused else 0)
    entries = echoed(events, 2)["logprobs"]
    k = then.get("top_logprobs", 3)
    assert all(len(e["top"]) == k for e in entries[1:]) and entries[0]["top"] is None


def test_reused_scores_are_shown_as_this_prompt_shows_them(
    engine: tuple[Engine, list[dict[str, Any]]],
) -> None:
    runner, events = engine
    context = tuple(runner.model.tokenize(PROMPT, add_special=True))
    runner.waiting.append((1, scored(tokens=context)))  # token ids: the BOS shown
    run_all(runner)
    runner.waiting.append((2, scored(PROMPT + " again")))  # a text: the BOS the tokenizer added is not
    run_all(runner)
    assert [e["event"] for e in events if e["event"] == "done" and e["prompt_cached"]] == ["done"]
    assert echoed(events, 1)["logprobs"][0]["token"] == "<s>"
    assert echoed(events, 2)["logprobs"][0]["token"] == ""
    assert echoed(events, 2)["text"] == PROMPT + " again"


def test_the_engine_says_it_is_alive_while_it_works_and_only_then(
    engine: tuple[Engine, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent kills a runner with requests that says nothing for its hang timeout: a long
    prompt, which says nothing until its first token, must not look hung. While it works the
    engine sends an "alive" event every HEARTBEAT_S; idle, none."""
    import queue
    import threading
    import time

    from modelyard.runtime import engine as engine_module

    monkeypatch.setattr(engine_module, "HEARTBEAT_S", 0.01)
    eng, events = engine
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    worker = threading.Thread(target=eng.run, args=(inbox,))
    worker.start()
    time.sleep(0.3)  # idle
    assert not [e for e in events if e.get("event") == "alive"]
    options = {"temperature": 0, "num_predict": 200}
    inbox.put({"op": "complete", "id": 1, "prompt": "the cat", "options": options})
    deadline = time.monotonic() + 30
    while not any(e.get("event") == "done" for e in events) and time.monotonic() < deadline:
        time.sleep(0.05)
    inbox.put(None)
    worker.join(10)
    assert any(e.get("event") == "done" for e in events)
    assert [e for e in events if e.get("event") == "alive"], "alive events while it worked"


def test_embeddings_take_turns_with_the_steps(tiny_gguf: Path) -> None:
    """An embeddings request is computed a group of inputs at a time, a step of the streams
    between two groups: a request of thousands of inputs held every stream until it ended (22 s
    for 400 inputs on Gemma 3 270M, benchmarks/bench_beside_streams.py)."""
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=2 * 128, n_seq_max=2, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    engine = Engine(model, ctx, 2, events.append, embedder=lambda: EmbeddingContext(model, 128, threads=2))
    inputs = [f"text number {i}" for i in range(4 * EmbeddingContext.MAX_SEQUENCES)]  # 4 groups
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    generation = CompletionRequest("the cat sat on", SamplingOptions(temperature=0, num_predict=60))
    inbox.put(generation.to_message(1))
    inbox.put({"op": "embed", "id": 2, "inputs": inputs})
    thread = threading.Thread(target=engine.run, args=(inbox,))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not {("done", 1), ("result", 2)} <= {(e["event"], e.get("id")) for e in events}:
            assert time.monotonic() < deadline, events[-3:]
            time.sleep(0.01)
    finally:
        inbox.put(None)
        thread.join()
    answered = next(i for i, e in enumerate(events) if e["event"] == "result" and e["id"] == 2)
    steps_before = [e for e in events[:answered] if e["event"] == "token" and e["id"] == 1]
    assert len(steps_before) >= 3, "a step of the stream between each two groups"
    reply = events[answered]
    alone = EmbeddingContext(model, 128, threads=2)
    job = EmbeddingJob(0, inputs, truncate=True)
    while not job.done:
        alone.next_group(job)
    assert reply["prompt_eval_count"] == job.tokens > len(inputs)
    assert len(reply["embeddings"]) == len(inputs)
    for ours, theirs in zip(reply["embeddings"], job.vectors, strict=True):
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4
    alone.ctx.close()
    ctx.close()
    model.close()


def test_an_input_too_long_fails_its_request_and_no_other(tiny_gguf: Path) -> None:
    """Inputs are tokenized as their batch comes (token lists of queued requests took ten times
    their text's memory): one too long, with truncate false, fails its request when reached."""
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=128, n_seq_max=1, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    engine = Engine(model, ctx, 1, events.append, embedder=lambda: EmbeddingContext(model, 64, threads=2))
    long_one = ["word " * 100]  # past the embeddings context's 64 tokens
    engine.handle({"op": "embed", "id": 1, "inputs": ["short"] * 40 + long_one, "truncate": False})
    engine.handle({"op": "embed", "id": 2, "inputs": ["short", "text"], "truncate": False})
    engine.handle({"op": "embed", "id": 3, "inputs": long_one, "truncate": True})
    assert not events, "nothing answered before the loop's turns"
    while engine._has_work():
        engine._embed_next_group()
    [failed] = [e for e in events if e["id"] == 1]
    assert failed["event"] == "error" and failed["kind"] == "too_long" and "holds 64" in failed["message"]
    second, third = (next(e for e in events if e["id"] == i) for i in (2, 3))
    assert second["event"] == "result" and len(second["embeddings"]) == 2
    assert third["event"] == "result" and third["prompt_eval_count"] == 64  # cut to the context
    ctx.close()
    model.close()


def test_a_cancelled_embeddings_request_is_dropped(tiny_gguf: Path) -> None:
    """Its client gone, the batches not yet computed are not (the next request's turn comes)."""
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=128, n_seq_max=1, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    engine = Engine(model, ctx, 1, events.append, embedder=lambda: EmbeddingContext(model, 64, threads=2))
    engine.handle({"op": "embed", "id": 1, "inputs": ["text"] * 64})
    engine.handle({"op": "embed", "id": 2, "inputs": ["other"]})
    engine._embed_next_group()  # a batch of the first
    engine.handle({"op": "cancel", "id": 1})
    while engine._has_work():
        engine._embed_next_group()
    assert [(e["event"], e["id"]) for e in events] == [("result", 2)]
    ctx.close()
    model.close()


def test_an_embeddings_batch_beside_streams_takes_a_slice_of_time(tiny_gguf: Path) -> None:
    """While a stream generates, a batch holds about a slice of work (by the last batches' time
    per token, or before any, a prompt token's), but at least its least tokens: on two cores, 16
    inputs held a stream for a second. Alone, a batch takes all it can."""
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=128, n_seq_max=1, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    slice_ = WorkSlice(seconds=0.4, least_tokens=1)
    embedder = EmbeddingContext(model, 128, threads=2)
    engine = Engine(model, ctx, 1, events.append, embedder=lambda: embedder, beside_streams=slice_)
    engine.waiting.append((2, CompletionRequest("the cat", SamplingOptions(temperature=0, num_predict=30))))
    engine._admit()
    assert engine.slots[0].busy
    engine.handle({"op": "embed", "id": 1, "inputs": ["short text"] * 40})  # 8 tokens each
    job = engine._embeddings[0]

    def group() -> int:
        before = len(job.vectors)
        engine._embed_next_group()
        return len(job.vectors) - before

    engine.step_times = StepTimes(streams_s=0.0, per_prompt_token_s=slice_.seconds / 16)
    assert group() == 2  # not timed yet: a prompt token's pace, 16 tokens a slice
    assert embedder.seconds_per_token is not None  # timed now
    embedder.seconds_per_token = slice_.seconds / 8
    assert group() == 1  # its own pace: 8 tokens
    embedder.seconds_per_token = 10.0
    assert group() == 1  # slower than the slice: still one input
    engine.beside_streams = WorkSlice(seconds=0.4, least_tokens=24)
    embedder.seconds_per_token = 10.0
    assert group() == 3  # but at least the least tokens
    engine._cancel(2)
    engine.step()
    assert not engine.slots[0].busy
    assert group() == EmbeddingContext.MAX_SEQUENCES  # alone: a full batch
    ctx.close()
    model.close()


def test_a_prompt_beside_a_stream_is_read_a_slice_at_a_time(tiny_gguf: Path) -> None:
    """While a slot generates, a step reads the prompt tokens of the slice's time (by the last
    steps' times), not the whole batch: a batch of 512 held every stream 1.6 s on two cores. Alone,
    or before any measure, a prompt takes the batch; what it generates is what it does alone."""
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=2 * 256, n_seq_max=2, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    engine = Engine(model, ctx, 2, events.append, beside_streams=WorkSlice(seconds=0.4, least_tokens=1))
    long_prompt = " ".join([PROMPT] * 8)
    run(engine, 1, long_prompt, 6)
    alone = [e["text"] for e in events if e["event"] == "token" and e["id"] == 1]
    for slot in engine.slots:  # no cache to tell the two runs apart
        engine.ctx.seq_rm(slot.seq)
        slot.cache, slot.exact = type(slot.cache)("i"), 0
    engine.waiting.append(
        (2, CompletionRequest("a dog ran", SamplingOptions(temperature=0, num_predict=200)))
    )
    engine._admit()
    engine.step()  # the stream's prompt
    engine.waiting.append((3, CompletionRequest(long_prompt, SamplingOptions(temperature=0, num_predict=6))))
    engine._admit()
    [reading] = [s for s in engine.slots if s.request_id == 3]
    assert len(reading.prompt) > 100
    engine.step_times = StepTimes(streams_s=0.0, per_prompt_token_s=0.04)  # 10 tokens a slice
    engine.step()
    assert reading.fed == 10
    engine.step_times = StepTimes(streams_s=0.1, per_prompt_token_s=0.01)  # 30
    engine.step()
    assert reading.fed == 40
    engine.step_times = StepTimes(streams_s=0.1, per_prompt_token_s=None)  # not known: the batch
    engine.step()
    assert reading.fed == 40 + 63  # the stream's token and the prompt's
    engine._cancel(2)
    engine.step()  # the stream ends: alone, the prompt takes the batch again
    engine.step_times = StepTimes(streams_s=0.0, per_prompt_token_s=0.04)
    fed = reading.fed
    engine.step()
    assert reading.fed == min(len(reading.prompt), fed + 64)
    run_all(engine)
    assert [e["text"] for e in events if e["event"] == "token" and e["id"] == 3] == alone
    ctx.close()
    model.close()


def test_only_steps_that_read_plain_prompts_time_a_prompt_token(
    engine: tuple[Engine, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scored prompt's steps also compute its log-probs, and a failed decode did nothing: neither
    may set the pace at which prompts are read beside streams (a review: a scored prompt made it 4x)."""
    runner, events = engine
    runner.waiting.append((1, scored(PROMPT, 2)))
    run_all(runner)
    assert echoed(events, 1)["logprobs"]
    assert runner.step_times.per_prompt_token_s is None
    assert runner.step_times.streams_s is not None  # its generated tokens' steps count
    monkeypatch.setattr(runner.ctx, "decode", lambda batch: 1)
    runner.waiting.append((2, CompletionRequest("a dog ran", SamplingOptions(temperature=0, num_predict=2))))
    run_all(runner)
    assert [e for e in events if e["id"] == 2] == [
        {"event": "error", "id": 2, "message": "llama_decode failed with code 1", "kind": "internal"}
    ]
    assert runner.step_times.per_prompt_token_s is None
    monkeypatch.undo()
    run(runner, 3, "a dog ran", 2)
    assert runner.step_times.per_prompt_token_s is not None


def llama_mean_pooling(model: llama.Model, token_lists: list[list[int]]) -> list[list[float]]:
    """llama.cpp's own mean pooling of each token list (a context that reads no hidden states)."""
    pooled = llama.Context(
        model,
        n_ctx=256,
        n_seq_max=16,
        n_batch=256,
        threads=2,
        embeddings=True,
        pooling=llama.L.LLAMA_POOLING_TYPE_MEAN,
    )
    batch = llama.Batch(256, 16)
    for seq, tokens in enumerate(token_lists):
        for pos, token in enumerate(tokens):
            batch.add(token, pos, seq, True)
    assert pooled.decode(batch) == 0 and pooled.hidden_states is None
    vectors = [pooled.sequence_embedding(seq, model.n_embd) for seq in range(len(token_lists))]
    batch.close()
    pooled.close()
    return vectors


def assert_same_vectors(ours: list[list[float]], theirs: list[list[float]]) -> None:
    assert len(ours) == len(theirs)
    for vector, expected in zip(ours, theirs, strict=True):
        scale = max(abs(x) for x in expected)
        assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < 1e-5 * scale


@pytest.mark.parametrize("which", ["tiny", pytest.param("gemma", marks=pytest.mark.gemma)])
def test_a_chat_models_embeddings_stop_at_its_hidden_states(
    which: str, tiny_gguf: Path, request: pytest.FixtureRequest
) -> None:
    """A chat model's embeddings are the mean of its final hidden states: checked once against
    llama.cpp's mean pooling as the context is made, then read as the computation stops there (no
    lm_head for every token): the vectors llama.cpp's pooling of the same batch gives."""
    path = tiny_gguf if which == "tiny" else request.getfixturevalue("gemma_gguf")
    model = llama.Model(path, LoadOptions(num_gpu=0), repack=False)
    texts = ["the cat sat", "a dog ran on the mat in the park", "hello", "red", "a spreadsheet formula"]
    embedder = EmbeddingContext(model, 256, threads=2)
    job = EmbeddingJob(1, texts, truncate=True)
    assert embedder.ctx.stops_at_hidden_states  # checked
    stopped = []
    while not job.done:
        first = len(job.vectors)
        embedder.next_group(job, most_tokens=12)
        stopped.append(embedder.ctx.hidden_states is not None and embedder.ctx.stops_at_hidden_states)
        # llama.cpp's pooling of the same batch (another batch rounds differently: by up to 3% of
        # Gemma's largest component, against llama.cpp's own pooling too).
        group = [embedder.tokens(text, truncate=True) for text in texts[first : len(job.vectors)]]
        assert_same_vectors(job.vectors[first:], llama_mean_pooling(model, group))
    assert len(stopped) >= 2 and all(stopped)
    embedder.ctx.close()
    model.close()


def test_hidden_states_that_are_not_llamas_pooling_are_not_used(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose tensor of that name is not what llama.cpp pools (here: the first layer's
    attention norm) fails the check: the context pools as llama.cpp does."""
    monkeypatch.setattr(llama._HiddenStates, "NAME", b"attn_norm-0")
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    texts = ["the cat sat", "a dog ran on the mat in the park", "hello"]
    embedder = EmbeddingContext(model, 256, threads=2)
    job = EmbeddingJob(1, texts, truncate=True)
    assert not embedder.ctx.stops_at_hidden_states
    embedder.next_group(job, most_tokens=10)
    first = len(job.vectors)
    embedder.next_group(job)
    assert job.done and embedder.ctx.hidden_states is None  # no longer read
    for start, end in ((0, first), (first, len(texts))):
        group = [embedder.tokens(text, truncate=True) for text in texts[start:end]]
        assert_same_vectors(job.vectors[start:end], llama_mean_pooling(model, group))
    embedder.ctx.close()
    model.close()


def test_an_embedding_models_own_pooling_is_left_to_llama_cpp(tmp_path: Path) -> None:
    """A GGUF that declares its pooling is pooled by llama.cpp, after what layers it has of its own."""
    from tinygguf import write_tiny_llama

    path = write_tiny_llama(tmp_path / "pooled.gguf", pooling=1, file_type="F32")
    model = llama.Model(path, LoadOptions(num_gpu=0), repack=False)
    embedder = EmbeddingContext(model, 128, threads=2)
    job = EmbeddingJob(1, ["the cat sat", "hello"], truncate=True)
    embedder.next_group(job)
    assert job.done and len(job.vectors[0]) == model.n_embd
    assert embedder.ctx.hidden_states is None
    embedder.ctx.close()
    model.close()


def test_an_input_of_no_tokens_fails_its_request(tmp_path: Path) -> None:
    """A model that adds no BOS reads "" as no tokens: a clear refusal, not a vector of NaN (the
    mean of no rows; a review) nor llama.cpp's "no pooled embedding"."""
    from tinygguf import write_tiny_llama

    path = write_tiny_llama(tmp_path / "no-bos.gguf", file_type="F32", add_bos=False)
    model = llama.Model(path, LoadOptions(num_gpu=0), repack=False)
    embedder = EmbeddingContext(model, 128, threads=2)
    job = EmbeddingJob(1, ["the cat sat", ""], truncate=True)
    with pytest.raises(RequestRejected, match="no tokens"):
        embedder.next_group(job)
    embedder.ctx.close()
    model.close()
