"""Real runner processes on the tiny GGUF and on Gemma 3 270M: batching, sampling, stops, JSON,
cancellation, embeddings, LoRA, crashes and bad requests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_defaults import model_defaults

from modelyard.errors import InferenceRequestError, ModelLoadError, RunnerCrashedError
from modelyard.runtime.options import PROMPT_LOGPROB_ROWS, LoadOptions, SamplingOptions
from modelyard.runtime.prompt_cache import common_prefix
from modelyard.runtime.protocol import CompletionRequest, Done
from modelyard.runtime.runner import Failure, Runner, RunnerSpec, RunnerState, Token

GEMMA_PROMPT = "<start_of_turn>user\nName three colours.<end_of_turn>\n<start_of_turn>model\n"
GEMMA_PROMPTS = [
    GEMMA_PROMPT,
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWrite a haiku about rain.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nTranslate 'good morning' to French.<end_of_turn>\n<start_of_turn>model\n",
]
GREEDY = SamplingOptions(temperature=0.0)


def greedy(n: int, **kw: object) -> SamplingOptions:
    return SamplingOptions(temperature=0.0, num_predict=n, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gemma_runner(gemma_gguf: Path) -> Iterator[Runner]:
    # Flash attention pinned on (llama.cpp's "auto" picks it on CPU too) so that the reference
    # Llama below, whose default is off, can be given the very same setting.
    options = LoadOptions(num_ctx=1024, num_parallel=4, flash_attention=True)
    runner = Runner.start(RunnerSpec("gemma", gemma_gguf, options=options))
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def tiny_runner(tiny_gguf: Path) -> Iterator[Runner]:
    runner = Runner.start(
        RunnerSpec("tiny", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=4, flash_attention=True))
    )
    yield runner
    runner.stop()


def reference_llama(path: Path, repack: bool, **kwargs: object) -> llama_cpp.Llama:
    """llama-cpp-python's own high-level Llama, loaded as our runner loaded the same model.

    On a CPU where repacked weights die of SIGILL (the runner then loaded without repacking), the
    reference must skip repacking too, or this test process dies."""
    with model_defaults(repack=repack):
        return llama_cpp.Llama(
            model_path=str(path), verbose=False, n_threads=os.cpu_count(), flash_attn=True, **kwargs
        )  # type: ignore[arg-type]


# --- correctness against llama-cpp-python ---------------------------------------------------


@pytest.mark.gemma
def test_greedy_matches_llama_cpp_python_on_gemma(gemma_runner: Runner, gemma_gguf: Path) -> None:
    """Token for token, one a step as llama-cpp-python decodes: checking guesses evaluates several
    rows a step, whose kernels round otherwise on a CPU with repacked weights, enough to flip a
    near tie in this list's repetitions (the guesses' own test: test_engine_decoding)."""
    assert gemma_runner.info is not None
    text, done = gemma_runner.complete(CompletionRequest(GEMMA_PROMPT, greedy(48, draft_num_predict=0)))
    reference = reference_llama(gemma_gguf, gemma_runner.info.repack, n_ctx=1024)
    expected = reference.create_completion(GEMMA_PROMPT, max_tokens=48, temperature=0.0)
    reference.close()
    assert text == expected["choices"][0]["text"]
    assert done.eval_count == expected["usage"]["completion_tokens"] == 48
    assert done.prompt_eval_count == expected["usage"]["prompt_tokens"]
    assert done.done_reason == "length"


def test_greedy_matches_llama_cpp_python_on_tiny(tiny_runner: Runner, tiny_gguf: Path) -> None:
    text, _ = tiny_runner.complete(CompletionRequest("the cat sat on", greedy(24)))
    reference = reference_llama(tiny_gguf, True, n_ctx=128)
    expected = reference.create_completion("the cat sat on", max_tokens=24, temperature=0.0)
    reference.close()
    assert text == expected["choices"][0]["text"]


@pytest.mark.gemma
def test_prompt_logprobs_match_llama_cpp_pythons_scores(gemma_runner: Runner, gemma_gguf: Path) -> None:
    """Echo with log-probs (what lm-evaluation-harness's loglikelihood asks for): each prompt
    token's log-probability given the tokens before it, as llama.cpp's own scores give it when it
    reads the prompt in the same batches (PROMPT_LOGPROB_ROWS tokens: its rounding depends on the
    batch size, README says how much)."""
    assert gemma_runner.info is not None
    prompt = "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level." * 3
    echoed: list[Token] = []
    done = None
    for event in gemma_runner.generate(CompletionRequest(prompt, greedy(0), top_logprobs=2, echo=True)):
        if isinstance(event, Token):
            echoed.append(event)
        else:
            done = event
    [first] = echoed  # max 0 tokens: the prompt only
    assert first.prompt and first.text == prompt  # Gemma's BOS shows as nothing
    rows = PROMPT_LOGPROB_ROWS
    reference = reference_llama(
        gemma_gguf, gemma_runner.info.repack, n_ctx=1024, n_batch=rows, n_ubatch=rows, logits_all=True
    )
    try:
        ids = reference.tokenize(prompt.encode(), add_bos=True, special=True)
        reference.eval(ids)
        scores = np.array(reference.scores[: reference.n_tokens], dtype=np.float64)
    finally:
        reference.close()
    assert (
        done is not None and [e["id"] for e in first.logprobs] == ids and done.prompt_eval_count == len(ids)
    )
    assert len(ids) > 3 * rows  # several steps of scoring rows
    peaks = scores.max(axis=1, keepdims=True)
    log_softmax = scores - (peaks + np.log(np.exp(scores - peaks).sum(axis=1, keepdims=True)))
    expected = [log_softmax[i - 1][ids[i]] for i in range(1, len(ids))]
    assert first.logprobs[0]["logprob"] is None
    assert [e["logprob"] for e in first.logprobs[1:]] == pytest.approx(expected, abs=1e-5)
    for i, entry in enumerate(first.logprobs[1:], start=1):
        assert entry["top"][0]["id"] == int(np.argmax(scores[i - 1]))


def greedy_steps(
    runner: Runner, prompt: str, n: int, **options: object
) -> tuple[list[dict[str, object]], Done]:
    """The greedy continuation, token by token, with each step's five best candidates; and the
    request's counts."""
    steps: list[dict[str, object]] = []
    done = None
    for event in runner.generate(CompletionRequest(prompt, greedy(n, **options), top_logprobs=5)):
        if isinstance(event, Token):
            steps.extend(event.logprobs)
        elif isinstance(event, Done):
            done = event
    assert done is not None
    return steps, done


def greedy_tokens(runner: Runner, prompt: str, n: int, **options: object) -> list[dict[str, object]]:
    return greedy_steps(runner, prompt, n, **options)[0]


def _candidate_drift(solo: dict[str, object], together: dict[str, object]) -> float:
    """The largest difference in logit, between the two runs, of a token both ranked in their top."""
    mine = {c["id"]: c["logit"] for c in solo["top"]}  # type: ignore[attr-defined]
    theirs = {c["id"]: c["logit"] for c in together["top"]}  # type: ignore[attr-defined]
    shared = mine.keys() & theirs.keys()
    assert shared, "the two runs share no candidate at this step"
    return max(abs(mine[t] - theirs[t]) for t in shared)


def same_up_to_rounding(
    reference: list[list[dict[str, object]]], other: list[list[dict[str, object]]], tolerance: float, n: int
) -> tuple[float, list[tuple[int, int, float]]]:
    """Each of `other`'s greedy runs against the same prompt's in `reference`: every shared
    candidate's logit within `tolerance`, and where the tokens part, the token taken ranked within
    it of the best. Returns the largest drift and the flips (prompt, token, gap)."""
    flips, drift = [], 0.0
    for i, (solo, together) in enumerate(zip(reference, other, strict=True)):
        for k, (a, b) in enumerate(zip(solo, together, strict=False)):
            step_drift = _candidate_drift(a, b)
            drift = max(drift, step_drift)
            assert step_drift < tolerance, (
                f"prompt {i}, token {k}: logits moved by {step_drift:.3f} > {tolerance:.3f}"
            )
            if a["id"] != b["id"]:
                ranked = {c["id"]: c["logit"] for c in a["top"]}  # type: ignore[attr-defined]
                assert b["id"] in ranked, (
                    f"prompt {i}, token {k}: the other run took a token far from the top"
                )
                gap = a["logit"] - ranked[b["id"]]  # type: ignore[operator]
                assert gap < tolerance, (
                    f"prompt {i}, token {k}: the other run took a token {gap:.3f} below the best"
                )
                flips.append((i, k, round(gap, 4)))
                break  # past a flip the two runs continue different texts, of any length
        else:
            assert len(solo) == len(together) == n, f"prompt {i}: same tokens, different lengths"
    return drift, flips


def llama_cpp_batch_noise(path: Path, repack: bool, prompt: str, steps: list[dict[str, object]]) -> float:
    """How far llama.cpp itself moves logits when a sequence is decoded in one batch instead of a
    token at a time: the prompt and the runner's one-at-a-time greedy continuation are evaluated
    in a single batch by llama-cpp-python, and each step's candidates compared with the runner's.
    The batch must rank the runner's tokens first at nearly every step, or it is not the same
    computation and its drift no measure of ours."""
    import numpy as np

    reference = reference_llama(path, repack, n_ctx=1024, logits_all=True)
    try:
        prompt_ids = reference.tokenize(prompt.encode(), add_bos=True, special=True)
        reference.eval(prompt_ids + [int(s["id"]) for s in steps[:-1]])  # type: ignore[call-overload]
        scores = np.array(reference.scores[: reference.n_tokens])
    finally:
        reference.close()
    first = len(prompt_ids) - 1
    agree = sum(int(np.argmax(scores[first + k])) == step["id"] for k, step in enumerate(steps))
    assert agree >= 0.8 * len(steps), f"the reference ranks only {agree} of {len(steps)} tokens first"
    return max(
        abs(float(scores[first + k][c["id"]]) - c["logit"])
        for k, step in enumerate(steps)
        for c in step["top"]  # type: ignore[attr-defined]
    )


@pytest.mark.gemma
def test_greedy_output_is_the_same_alone_and_batched(gemma_runner: Runner, gemma_gguf: Path) -> None:
    """Four prompts decoded alone, then together in one batch: each sequence must come out as it
    did alone, up to the rounding that llama.cpp's kernels give any batch.

    That rounding is not small everywhere: CPU kernels sum in an order that depends on how many
    rows a batch has, and where weights are repacked (every CPU but one whose AMX faults) a batch
    takes other kernels than a single token does. Logits then move by up to about one unit, so the
    bound is measured, not fixed: llama.cpp's own batch-versus-single drift on the same prompts.
    A sequence that read another's KV cache or got another's logits moves by whole units, at once.
    Where the tokens part, rounding flipped a near tie: the batch took a token that the solo run
    ranked within that drift of its best."""
    assert gemma_runner.info is not None
    prompts = GEMMA_PROMPTS
    alone = [greedy_tokens(gemma_runner, p, 32) for p in prompts]
    batched: dict[int, list[dict[str, object]]] = {}

    def run(i: int) -> None:
        batched[i] = greedy_tokens(gemma_runner, prompts[i], 32)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    noise = max(
        llama_cpp_batch_noise(gemma_gguf, gemma_runner.info.repack, prompt, solo)
        for prompt, solo in zip(prompts, alone, strict=True)
    )
    # Twice llama.cpp's own drift, and a floor for kernels that are exact across batch sizes. Its
    # drift measured 1.0-1.3 on this model (repacked or not); far more and the bound would no
    # longer tell rounding from a sequence that read another's cache.
    assert noise < 2.0, f"llama.cpp's own batch-vs-single drift is {noise:.2f}"
    tolerance = max(2 * noise, 0.05)
    drift, flips = same_up_to_rounding(alone, [batched[i] for i in range(len(prompts))], tolerance, 32)
    # pytest -rP shows the drift beside llama.cpp's own, and where rounding flipped a near tie.
    print(
        f"logit drift in the batch {drift:.4f}, llama.cpp's batch-vs-single {noise:.4f}; flips:",
        flips or "none",
    )


@pytest.mark.gemma
@pytest.mark.parametrize("draft", [4, 16])
def test_greedy_output_is_the_same_with_guessed_tokens(
    gemma_runner: Runner, gemma_gguf: Path, draft: int
) -> None:
    """Prompt lookup feeds guesses beside each sampled token and keeps those greedy agrees with:
    the text must be greedy's token by token, up to the rounding of a batch of 1 + `draft` rows,
    bounded as above by llama.cpp's own batch-versus-single drift. Gemma's answers here repeat
    themselves (a base model), so most guesses hold and long runs are checked in one step."""
    assert gemma_runner.info is not None
    n = 32
    alone = [greedy_tokens(gemma_runner, p, n, draft_num_predict=0) for p in GEMMA_PROMPTS]
    guessed, counts = [], []
    for prompt in GEMMA_PROMPTS:
        steps, done = greedy_steps(gemma_runner, prompt, n, draft_num_predict=draft)
        guessed.append(steps)
        counts.append((done.draft_tokens, done.draft_accepted))
    assert sum(accepted for _, accepted in counts) > n, f"few guesses held: {counts}"
    noise = max(
        llama_cpp_batch_noise(gemma_gguf, gemma_runner.info.repack, prompt, solo)
        for prompt, solo in zip(GEMMA_PROMPTS, alone, strict=True)
    )
    assert noise < 2.0, f"llama.cpp's own batch-vs-single drift is {noise:.2f}"
    drift, flips = same_up_to_rounding(alone, guessed, max(2 * noise, 0.05), n)
    print(
        f"guesses (drafted, accepted) {counts}; logit drift {drift:.4f}, llama.cpp's {noise:.4f}; flips:",
        flips or "none",
    )


@pytest.mark.gemma
def test_guesses_past_gemmas_sliding_window_change_nothing(gemma_runner: Runner, gemma_gguf: Path) -> None:
    """Gemma 3's sliding-window layers (512 positions) may reuse cells that fell out of the window;
    a failed guess is cut back, and the tokens after it must still see every cell they attend to.
    A 700-token list that the answer continues: long runs of guesses hold, some fail, all past
    position 512. The answer with guesses must be the answer without, up to llama.cpp's rounding,
    bounded as in the tests above by its own batch-versus-single drift on this prompt: a lost
    cell moves logits by whole units."""
    item = "Item %d: the quick brown fox jumps over the lazy dog near the river bank. "
    prompt = "".join(item % i for i in range(40)) + "Item 40:"
    assert len(gemma_runner.tokenize(prompt)) > 600
    greedy_steps(gemma_runner, prompt, 48, draft_num_predict=0)  # both runs below take it cached
    plain, _ = greedy_steps(gemma_runner, prompt, 48, draft_num_predict=0)
    guessed, done = greedy_steps(gemma_runner, prompt, 48, draft_num_predict=8)
    assert done.draft_accepted > 24 and done.draft_tokens > done.draft_accepted, done
    assert gemma_runner.info is not None
    noise = llama_cpp_batch_noise(gemma_gguf, gemma_runner.info.repack, prompt, plain)
    assert noise < 2.0, f"llama.cpp's own batch-vs-single drift is {noise:.2f}"
    drift, flips = same_up_to_rounding([plain], [guessed], max(2 * noise, 0.05), 48)
    # Measured: up to 1.3 at this length (0.0 on short prompts), from the first 2-row step on,
    # before any guess had failed: rounding by batch shape, as llama.cpp's own 1.0 here.
    print(
        f"guesses {done.draft_tokens}, held {done.draft_accepted}; drift {drift:.4f}, llama.cpp's {noise:.4f}"
    )
    print("flips:", flips or "none")


# --- sampling and stopping -----------------------------------------------------------------


def test_num_predict_and_stop_strings(tiny_runner: Runner) -> None:
    full, done = tiny_runner.complete(CompletionRequest("the cat sat on", greedy(30)))
    assert done.eval_count == 30 and done.done_reason == "length"
    # A stop string that starts inside one token and ends inside another.
    start = len(full) // 3
    stop = full[start : start + 5]
    assert stop.strip(), "the tiny model's greedy text has something to stop on"
    cut, done = tiny_runner.complete(CompletionRequest("the cat sat on", greedy(30, stop=(stop,))))
    assert cut == full[: full.index(stop)]
    assert done.done_reason == "stop"
    # Log-probs come for the tokens of the text sent, not for those the stop cut away: their text
    # starts with the output, and only the last of them may reach past it (into the stop).
    entries = [
        e
        for event in tiny_runner.generate(
            CompletionRequest("the cat sat on", greedy(30, stop=(stop,)), top_logprobs=1)
        )
        if isinstance(event, Token)
        for e in event.logprobs
    ]
    spelled = [bytes(e["bytes"]).decode("utf-8", "replace") for e in entries]
    assert "".join(spelled).startswith(cut) and len("".join(spelled[:-1])) < len(cut)


def test_seed_reproducibility(tiny_runner: Runner) -> None:
    def sample(seed: int) -> str:
        options = SamplingOptions(temperature=1.5, top_k=0, top_p=1.0, seed=seed, num_predict=24)
        return tiny_runner.complete(CompletionRequest("the cat sat on", options))[0]

    assert sample(42) == sample(42)
    assert len({sample(42), sample(43), sample(44)}) > 1


@pytest.mark.gemma
def test_json_format_output_parses(gemma_runner: Runner) -> None:
    # Asked cold, the 270M model writes JSON objects that never close, and which prompt it closes
    # depends on the CPU's kernels; two worked examples make it answer with a short object, so the
    # test is about the grammar, not the model's luck. Once the object closes, the grammar allows
    # only whitespace and the end of generation.
    turn = "<start_of_turn>{}\n{}<end_of_turn>\n".format
    prompt = (
        turn("user", 'Reply with a JSON object with one key, "colour".')
        + turn("model", '{"colour": "red"}')
        + turn("user", "Another one.")
        + turn("model", '{"colour": "green"}')
        + turn("user", "One more.")
        + "<start_of_turn>model\n"
    )
    text, done = gemma_runner.complete(CompletionRequest(prompt, greedy(100), format="json"))
    assert done.done_reason == "stop"
    assert isinstance(json.loads(text), dict), text
    prompt = "<start_of_turn>user\nDescribe a cat as JSON.<end_of_turn>\n<start_of_turn>model\n"
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "legs": {"type": "integer"}},
        "required": ["name", "legs"],
        "additionalProperties": False,
    }
    text, done = gemma_runner.complete(CompletionRequest(prompt, greedy(256), format=schema))
    value = json.loads(text)
    assert set(value) == {"name", "legs"} and isinstance(value["legs"], int)
    assert done.done_reason == "stop"


def sampled_values(
    runner: Runner, prompt: str, schema: dict[str, Any], key: str, num_predict: int = 32
) -> set[Any]:
    """`key`'s values in answers to `schema` sampled hot with six seeds: far from greedy, where a
    grammar that lets too much through shows."""
    values = set()
    for seed in range(1, 7):
        options = SamplingOptions(temperature=1.5, top_k=0, top_p=1.0, seed=seed, num_predict=num_predict)
        text, _ = runner.complete(CompletionRequest(prompt, options, format=schema))
        values.add(json.loads(text)[key])
    return values


def test_an_integer_schema_keeps_its_minimum_and_maximum(gemma_runner: Runner) -> None:
    """A conformance review: llama-cpp-python's converter left them out, and a sampled answer to
    {"n": integer 10..20} was 7, 3705, -8158407308471808…; llama.cpp's own converter keeps them."""
    prompt = "<start_of_turn>user\nPick a number, as JSON.<end_of_turn>\n<start_of_turn>model\n"
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 20}},
        "required": ["n"],
    }
    answers = sampled_values(gemma_runner, prompt, schema, "n")
    assert answers and all(isinstance(n, int) and 10 <= n <= 20 for n in answers), answers


def test_a_number_schema_keeps_its_minimum_and_maximum(gemma_runner: Runner) -> None:
    """Neither llama-cpp-python's converter nor llama.cpp's holds a number to its range: a score of
    pydantic's `Field(ge=0, le=1)` could be 37.5. Ours writes the range into the grammar."""
    prompt = "<start_of_turn>user\nRate this, as JSON.<end_of_turn>\n<start_of_turn>model\n"
    score = {"type": "number", "minimum": 0, "maximum": 1}
    schema = {"type": "object", "properties": {"s": score}, "required": ["s"]}
    answers = sampled_values(gemma_runner, prompt, schema, "s", num_predict=48)
    assert answers and all(isinstance(s, int | float) and 0 <= s <= 1 for s in answers), answers
    above = {"type": "number", "exclusiveMinimum": -1.5, "exclusiveMaximum": -1.25}
    schema = {"type": "object", "properties": {"t": above}, "required": ["t"]}
    answers = sampled_values(gemma_runner, prompt, schema, "t", num_predict=48)
    assert answers and all(-1.5 < t < -1.25 for t in answers), answers


def test_an_optional_enum_keeps_its_values(gemma_runner: Runner) -> None:
    """`type: [string, null]` with an enum (OpenAI's strict mode for an optional field): the
    converter's union of bare types let any string through; llama.cpp's keeps the enum."""
    prompt = "<start_of_turn>user\nName a colour, as JSON.<end_of_turn>\n<start_of_turn>model\n"
    colour = {"type": ["string", "null"], "enum": ["red", "green", None]}
    schema = {"type": "object", "properties": {"c": colour}, "required": ["c"]}
    answers = sampled_values(gemma_runner, prompt, schema, "c")
    assert answers and answers <= {"red", "green", None}, answers


def test_invalid_schema_fails_only_that_request(tiny_runner: Runner) -> None:
    with pytest.raises(InferenceRequestError, match="schema"):
        tiny_runner.complete(CompletionRequest("x", greedy(4), format={"type": "no-such-type"}))
    with pytest.raises(InferenceRequestError, match="format"):
        tiny_runner.complete(CompletionRequest("x", greedy(4), format="yaml"))
    assert tiny_runner.complete(CompletionRequest("the cat", greedy(4)))[1].eval_count == 4


# --- context limits ------------------------------------------------------------------------


def test_prompt_longer_than_context(tiny_runner: Runner) -> None:
    assert tiny_runner.info is not None
    n_ctx = tiny_runner.info.n_ctx_per_slot  # llama.cpp rounds a slot up to 256 cells
    long_prompt = "the cat sat on the mat " * 150  # about 900 tokens
    with pytest.raises(InferenceRequestError, match=f"context holds {n_ctx}"):
        tiny_runner.complete(CompletionRequest(long_prompt, greedy(4), truncate=False))
    _, done = tiny_runner.complete(CompletionRequest(long_prompt, greedy(4)))
    assert done.truncated > 0 and done.prompt_eval_count == n_ctx // 2, (
        "truncated to half the context, said so"
    )


def test_context_shift_and_its_refusal(tiny_runner: Runner) -> None:
    assert tiny_runner.info is not None
    n_ctx = tiny_runner.info.n_ctx_per_slot
    _, done = tiny_runner.complete(CompletionRequest("the cat", greedy(3 * n_ctx)))
    assert done.eval_count == 3 * n_ctx and done.context_shifts >= 2
    _, done = tiny_runner.complete(CompletionRequest("the cat", greedy(3 * n_ctx), shift=False))
    assert done.done_reason == "length" and done.eval_count < n_ctx and done.context_shifts == 0
    # num_predict -2: until the context is full, never shifting (it would run forever otherwise).
    _, filled = tiny_runner.complete(CompletionRequest("the cat", greedy(-2)))
    assert filled.done_reason == "length" and filled.context_shifts == 0
    # Every position of the context holds a token; the last one sampled is emitted, never decoded.
    assert filled.prompt_eval_count + filled.eval_count == n_ctx + 1


def test_num_predict_zero_reads_the_prompt_and_predicts_nothing(tiny_runner: Runner) -> None:
    text, done = tiny_runner.complete(CompletionRequest("the cat sat on", greedy(0)))
    assert text == "" and done.eval_count == 0 and done.done_reason == "length"
    assert done.prompt_eval_count > 0


# --- concurrency, cancellation, crashes ----------------------------------------------------


def test_a_runner_that_stops_reading_never_blocks_its_caller(tiny_gguf: Path) -> None:
    """The server submits from its event loop: a write that waited for a stuck runner would freeze
    every model's requests and /health (found with a stopped runner and a 660 KB format schema)."""
    runner = Runner.start(RunnerSpec("stuck", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=2)))
    try:
        os.kill(runner.pid, signal.SIGSTOP)
        prompts = ["word " * 200_000, "the cat"]  # 1 MB: more than the socket's buffer takes
        events: list[list[object]] = [[], []]
        started = time.monotonic()
        for prompt, into in zip(prompts, events, strict=True):
            request = CompletionRequest(prompt, SamplingOptions(temperature=0, num_predict=2))
            runner.submit(request, into.append)
        assert time.monotonic() - started < 1, "submit waited for the stopped runner"
        assert runner._channel is not None and runner._channel.backlog_bytes() > 0
        os.kill(runner.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while not all(into and isinstance(into[-1], Done) for into in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
        assert runner._channel.backlog_bytes() == 0, "written out, in order, once it read again"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner.pid, signal.SIGCONT)
        runner.stop()


@pytest.mark.parametrize("num_batch", [1, 3])
def test_a_batch_smaller_than_the_slots_and_the_prompt_only_slows_prefill(
    tiny_gguf: Path, tiny_runner: Runner, num_batch: int
) -> None:
    """`num_batch` below the warm-up's prefill or the count of slots generating at once aborted
    llama.cpp (GGML_ASSERT n_tokens_all <= n_batch): the runner died at load."""
    prompt = "the cat sat on the mat and then the dog"
    expected, _ = tiny_runner.complete(CompletionRequest(prompt, greedy(8)))
    options = LoadOptions(num_ctx=128, num_parallel=4, num_batch=num_batch)
    runner = Runner.start(RunnerSpec(f"batch-{num_batch}", tiny_gguf, options=options))
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda _: runner.complete(CompletionRequest(prompt, greedy(8)))[0], range(4))
            )
        assert answers == [expected] * 4
    finally:
        runner.stop()


def test_cancel_frees_the_slot(tiny_gguf: Path) -> None:
    runner = Runner.start(RunnerSpec("one-slot", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=1)))
    try:
        stream = runner.generate(CompletionRequest("the cat", SamplingOptions(temperature=0, num_predict=-1)))
        assert isinstance(next(stream), Token)
        assert runner.stats()["slots_busy"] == 1
        stream.close()  # the client goes away
        _, done = runner.complete(CompletionRequest("the cat", greedy(5)))
        assert done.eval_count == 5, "the only slot was freed for the next request"
        assert runner.stats() == {
            "slots_busy": 0,
            "slots": 1,
            "waiting": 0,
            "kv_tokens": 0,
            "prompt_shared_tokens": 0,
        }
    finally:
        runner.stop()


def test_killed_runner_fails_its_requests_promptly(tiny_gguf: Path) -> None:
    exited: list[Runner] = []
    runner = Runner.start(
        RunnerSpec("doomed", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=2)),
        on_exit=exited.append,
    )
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in runner.generate(CompletionRequest("the cat", SamplingOptions(num_predict=-1))):
                pass
        except RunnerCrashedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.kill(runner.pid, signal.SIGKILL)
    started = time.monotonic()
    for t in threads:
        t.join(5)
    assert time.monotonic() - started < 2.0
    assert len(errors) == 2 and all("SIGKILL" in str(e) for e in errors)
    assert exited == [runner] and runner.state is RunnerState.FAILED
    with pytest.raises(RunnerCrashedError):
        runner.complete(CompletionRequest("x", greedy(1)))


def test_a_dead_runners_owner_is_told_before_its_requests_fail(tiny_gguf: Path) -> None:
    """The scheduler learns of the exit (on_exit) before any request hears of it, so a client that
    gets the error and asks for the model's status finds it failed, not ready."""
    heard: list[str] = []
    runner = Runner.start(
        RunnerSpec("doomed", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=2)),
        on_exit=lambda _: heard.append("owner"),
    )
    working = threading.Event()

    def on_event(event: object) -> None:
        if isinstance(event, Failure):
            heard.append("request")
        else:
            working.set()

    runner.submit(CompletionRequest("the cat", SamplingOptions(num_predict=-1)), on_event)
    assert working.wait(10)
    runner.kill_unresponsive("killed by the test")
    deadline = time.monotonic() + 5
    while len(heard) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heard == ["owner", "request"]


def test_tokenizing_a_huge_prompt_holds_up_no_stream(tiny_gguf: Path) -> None:
    """A security review: tokenizing ran between the steps, and a prompt of megabytes (seconds to
    tokenize, more than linearly with the tiny model's vocabulary) stopped every stream of the model
    for as long (a request waited 42 s). It runs beside the steps now."""
    runner = Runner.start(RunnerSpec("t", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=1)))
    try:
        arrivals: list[float] = []
        runner.submit(
            CompletionRequest("the cat", SamplingOptions(num_predict=-1)),
            lambda event: arrivals.append(time.monotonic()),
        )
        while len(arrivals) < 5:
            time.sleep(0.01)
        began = time.monotonic()
        tokens = runner.tokenize("é" * 150_000)  # over a second on a quiet 2-core machine
        ended = time.monotonic()
        assert len(tokens) > 150_000 and ended - began > 0.3, "long enough to tell"
        during = [t for t in arrivals if began < t < ended]
        assert len(during) > 10, f"{len(during)} tokens in the {ended - began:.1f} s of tokenizing"
    finally:
        runner.stop()


def test_load_failure_reports_the_loaders_message(tmp_path: Path, tiny_gguf: Path) -> None:
    from tinygguf import write_truncated_gguf

    broken = write_truncated_gguf(tiny_gguf, tmp_path / "broken.gguf", 0.6)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        Runner.start(RunnerSpec("broken", broken))
    assert time.monotonic() - started < 30, "a failed load is reported, not hung"
    assert "broken" in str(info.value) and "could not load" in str(info.value)


# --- embeddings and adapters ---------------------------------------------------------------


def test_embeddings_match_llama_embed(tiny_runner: Runner, tiny_gguf: Path) -> None:
    inputs = ["the cat sat", "a dog ran on the mat", "hello"]
    ours = tiny_runner.embed(inputs)
    assert len(ours["embeddings"]) == 3 and ours["prompt_eval_count"] > 0
    reference = reference_llama(
        tiny_gguf, True, embedding=True, n_ctx=128, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN
    )
    for text, vector in zip(inputs, ours["embeddings"], strict=True):
        # The model's own vectors: whether to normalise them is each API's choice (server/vectors.py).
        expected = reference.embed(text, normalize=False)
        assert len(vector) == len(expected)
        assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < 1e-4
    reference.close()


@pytest.mark.gemma
def test_gemma_embeddings_in_one_batch(gemma_runner: Runner) -> None:
    result = gemma_runner.embed(["red", "crimson", "a spreadsheet formula"])
    red, crimson, formula = result["embeddings"]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert len(red) == 640
    assert cosine(red, crimson) > cosine(red, formula)


def test_lora_changes_the_output(tiny_gguf: Path, tiny_lora: Path, tiny_runner: Runner) -> None:
    runner = Runner.start(
        RunnerSpec(
            "lora", tiny_gguf, adapters=((tiny_lora, 1.0),), options=LoadOptions(num_ctx=128, num_parallel=1)
        )
    )
    try:
        assert runner.info is not None and runner.info.adapters == 1
        with_adapter = runner.complete(CompletionRequest("the cat sat on", greedy(16)))[0]
    finally:
        runner.stop()
    without = tiny_runner.complete(CompletionRequest("the cat sat on", greedy(16)))[0]
    assert with_adapter != without


def test_runner_reports_its_threads(tiny_runner: Runner) -> None:
    # This machine's llama.cpp has no GPU backend: the default is one thread per CPU (with every
    # layer on a GPU it would be one: test_load_options_threads).
    assert tiny_runner.info is not None and tiny_runner.info.threads == max(os.cpu_count() or 1, 1)


def test_tokenize_round_trip(tiny_runner: Runner) -> None:
    tokens = tiny_runner.tokenize("the cat sat")
    assert tokens and tiny_runner.detokenize(tokens) == "the cat sat"


def test_memory_figures_reported(gemma_runner: Runner) -> None:
    info = gemma_runner.info
    assert info is not None
    assert info.slots == 4 and info.n_ctx_per_slot == 1024 and info.n_ctx == 4096
    assert 200e6 < info.weights_bytes < 300e6
    assert info.kv_bytes > 0 and info.compute_bytes > 0
    assert info.compute_bytes < 100e6, "one logits row per slot, not per batch token"


def test_launcher_keeps_a_started_process_ready(tiny_gguf: Path) -> None:
    from modelyard.runtime.runner import Launcher

    launcher = Launcher(spares=1)
    try:
        spare_pid = launcher._ready[0][0].pid
        runner = Runner.start(
            RunnerSpec("spare", tiny_gguf, options=LoadOptions(num_ctx=128)), launcher=launcher
        )
        assert runner.pid == spare_pid, "the load used the process started ahead"
        assert runner.complete(CompletionRequest("the cat", greedy(3)))[1].eval_count == 3
        runner.stop()
        for _ in range(100):
            if launcher._ready:
                break
            time.sleep(0.05)
        assert launcher._ready and launcher._ready[0][0].pid != spare_pid, "a new spare replaces it"
    finally:
        launcher.close()
    assert all(proc.poll() is not None for proc, _ in launcher._ready)


def test_penalties_apply(tiny_runner: Runner) -> None:
    plain, _ = tiny_runner.complete(CompletionRequest("the cat sat on", greedy(40)))
    for options in (
        greedy(40, repeat_penalty=1.5, repeat_last_n=-1),
        greedy(40, presence_penalty=1.5),
        greedy(40, frequency_penalty=1.5, repeat_last_n=16),
    ):
        text, done = tiny_runner.complete(CompletionRequest("the cat sat on", options))
        assert done.eval_count == 40
        assert text != plain, f"{options} changed nothing"


# --- the prompt cache: a slot keeps its KV cells for the next request ------------------------

GEMMA_TURN = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def gemma_fresh(gemma_gguf: Path) -> Iterator[Runner]:
    """A second Gemma runner, as gemma_runner is loaded, whose one slot is cleared before each use
    (by a prompt that shares nothing): what a prompt gives when it is evaluated whole."""
    options = LoadOptions(num_ctx=1024, num_parallel=1, flash_attention=True)
    runner = Runner.start(RunnerSpec("gemma-fresh", gemma_gguf, options=options))
    yield runner
    runner.stop()


def evaluated_whole(runner: Runner, prompt: str, n: int) -> tuple[list[dict[str, object]], Done]:
    # A prompt that shares nothing but the BOS token, whose cell is the same in any sequence.
    runner.complete(CompletionRequest("x", greedy(1)))
    steps, done = greedy_steps(runner, prompt, n)
    assert done.prompt_cached <= 1
    return steps, done


def assert_same_continuation(whole: list[dict[str, object]], cached: list[dict[str, object]]) -> None:
    """Up to rounding: kernels sum in an order that depends on a batch's size, and a prompt whose
    start is cached is evaluated in other batches than one evaluated whole; test_greedy_output_is_
    the_same_alone_and_batched measures that at about one logit unit. Cells of the wrong tokens or
    positions move logits by many units at once."""
    tolerance = 2.5
    for k, (a, b) in enumerate(zip(whole, cached, strict=False)):
        assert _candidate_drift(a, b) < tolerance, f"token {k}: logits moved by {_candidate_drift(a, b):.3f}"
        if a["id"] != b["id"]:
            ranked = {c["id"]: c["logit"] for c in a["top"]}  # type: ignore[attr-defined]
            assert b["id"] in ranked and a["logit"] - ranked[b["id"]] < tolerance, (
                f"token {k}: not a near tie"
            )  # type: ignore[operator]
            return  # past a flip the two continue different texts
    assert len(whole) == len(cached)


@pytest.mark.gemma
def test_a_chats_next_turn_evaluates_only_what_is_new(gemma_runner: Runner, gemma_fresh: Runner) -> None:
    first = GEMMA_TURN.format("Name a large animal that lives in the sea.")
    answer, _ = gemma_runner.complete(CompletionRequest(first, greedy(16)))
    second = first + answer + "<end_of_turn>\n" + GEMMA_TURN.format("Where does it live?")
    n_first = len(gemma_runner.tokenize(first, add_special=True))
    n_second = len(gemma_runner.tokenize(second, add_special=True))

    cached, done = greedy_steps(gemma_runner, second, 24)
    assert done.prompt_eval_count == n_second
    assert n_first <= done.prompt_cached < n_second, "the first turn's tokens were not evaluated again"
    whole, whole_done = evaluated_whole(gemma_fresh, second, 24)
    assert whole_done.prompt_eval_count == n_second
    assert_same_continuation(whole, cached)

    # The same prompt again: everything is cached but its last token, evaluated again for logits.
    _, again = greedy_steps(gemma_runner, second, 1)
    assert again.prompt_cached == n_second - 1


@pytest.mark.gemma
def test_a_long_prompts_cache_serves_what_shares_part_of_it(
    gemma_runner: Runner, gemma_fresh: Runner
) -> None:
    """A 600-token prompt, longer than Gemma 3's 512-position sliding window. The runner's contexts
    keep full-size window caches (llama.cpp's default), so the window drops no cells and a prompt
    that shares the first ~450 tokens keeps them all; the rule for caches that do drop cells is
    table-tested in test_prompt_cache. One that goes on from the slot's whole cache keeps it all."""
    facts = [f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, 40)]
    long_prompt = GEMMA_TURN.format(" ".join(facts))
    n_long = len(gemma_runner.tokenize(long_prompt, add_special=True))
    assert 560 < n_long < 700, n_long
    diverging = GEMMA_TURN.format(" ".join(facts[:28]) + " So what comes after 5?")
    shared = common_prefix(
        np.asarray(gemma_runner.tokenize(long_prompt, add_special=True), dtype=np.int32),
        np.asarray(gemma_runner.tokenize(diverging, add_special=True), dtype=np.int32),
    )
    assert shared > n_long - shared, "it takes the long prompt's slot, for what it shares"

    gemma_runner.complete(CompletionRequest(long_prompt, greedy(4)))
    cached, done = greedy_steps(gemma_runner, diverging, 12)
    assert done.prompt_cached == shared
    whole, _ = evaluated_whole(gemma_fresh, diverging, 12)
    assert_same_continuation(whole, cached)

    answer, _ = gemma_runner.complete(CompletionRequest(long_prompt, greedy(4)))
    extending = long_prompt + answer + "<end_of_turn>\n" + GEMMA_TURN.format("And after 40?")
    cached, done = greedy_steps(gemma_runner, extending, 12)
    assert done.prompt_cached >= n_long + 3, "a prompt that goes on from the slot's whole cache keeps it"
    whole, _ = evaluated_whole(gemma_fresh, extending, 12)
    assert_same_continuation(whole, cached)


def proportional_bytes(pid: int) -> int:
    """The process's memory, its shared pages divided among the processes that share them."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    fields = {key: int(value.split()[0]) * 1024 for key, value in (line.split(":", 1) for line in rollup)}
    return fields["Pss"]


@pytest.mark.parametrize("which", ["tiny_gguf", "gemma_gguf"])
def test_a_runner_process_takes_no_more_than_the_scheduler_counts_beside_its_model(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The scheduler counts RUNNER_PROCESS_BYTES for each runner beside what llama.cpp reports for
    its model (before, nothing: a dozen small models passed the reserve). Measured on a runner that
    has served a few requests, on a copy of the weights that no other process maps (shared pages
    would count in part)."""
    from modelyard.runtime.memory import RUNNER_PROCESS_BYTES

    weights = tmp_path / "model.gguf"
    shutil.copyfile(request.getfixturevalue(which), weights)
    runner = Runner.start(RunnerSpec("m", weights, options=LoadOptions(num_ctx=1024, num_parallel=2)))
    try:
        for _ in range(3):
            assert runner.complete(CompletionRequest("the cat sat on", SamplingOptions(num_predict=16)))[0]
        beside_the_model = proportional_bytes(runner.pid) - runner.info.total_bytes
    finally:
        runner.stop()
    assert 0 < beside_the_model <= RUNNER_PROCESS_BYTES, f"{beside_the_model / 2**20:.1f} MiB"
