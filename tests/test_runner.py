"""Real runner processes on the tiny GGUF and on Gemma 3 270M: batching, sampling, stops, JSON,
cancellation, embeddings, LoRA, crashes and bad requests."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from modelyard.errors import InferenceRequestError, ModelLoadError, RunnerCrashedError
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, RunnerState, Token

GEMMA_PROMPT = "<start_of_turn>user\nName three colours.<end_of_turn>\n<start_of_turn>model\n"
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
    reference must skip repacking too, or this test process dies: Llama() has no parameter for
    it, so its default model parameters are wrapped for the duration of the load."""
    original = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        value = original()
        value.use_extra_bufts = repack
        return value

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        return llama_cpp.Llama(
            model_path=str(path), verbose=False, n_threads=os.cpu_count(), flash_attn=True, **kwargs
        )  # type: ignore[arg-type]
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original


# --- correctness against llama-cpp-python ---------------------------------------------------


@pytest.mark.gemma
def test_greedy_matches_llama_cpp_python_on_gemma(gemma_runner: Runner, gemma_gguf: Path) -> None:
    assert gemma_runner.info is not None
    text, done = gemma_runner.complete(CompletionRequest(GEMMA_PROMPT, greedy(48)))
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


def greedy_tokens(runner: Runner, prompt: str, n: int) -> list[dict[str, object]]:
    """The greedy continuation, token by token, with each step's two best candidates."""
    steps: list[dict[str, object]] = []
    for event in runner.generate(CompletionRequest(prompt, greedy(n), top_logprobs=2)):
        if isinstance(event, Token):
            steps.extend(event.logprobs)
    return steps


@pytest.mark.gemma
def test_greedy_output_is_the_same_alone_and_batched(gemma_runner: Runner) -> None:
    """Four prompts decoded alone, then together in one batch. The tokens must agree; where they
    don't, it must be batch rounding flipping a near tie, and the test says where.

    llama.cpp's CPU matrix kernels sum in an order that depends on how many rows a batch has, so a
    sequence's logits move in the last bits with the company it keeps; greedy argmax only turns on
    that when the two best logits are (nearly) tied."""
    prompts = [
        GEMMA_PROMPT,
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nWrite a haiku about rain.<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nTranslate 'good morning' to French.<end_of_turn>\n<start_of_turn>model\n",
    ]
    alone = [greedy_tokens(gemma_runner, p, 32) for p in prompts]
    batched: dict[int, list[dict[str, object]]] = {}

    def run(i: int) -> None:
        batched[i] = greedy_tokens(gemma_runner, prompts[i], 32)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    flips = []
    for i, solo in enumerate(alone):
        together = batched[i]
        same = [a["id"] == b["id"] for a, b in zip(solo, together, strict=False)]
        if all(same) and len(solo) == len(together):
            continue
        k = same.index(False) if False in same else min(len(solo), len(together))
        first, second = solo[k]["top"][:2]  # type: ignore[index]
        gap = first["logit"] - second["logit"]
        flips.append((i, k, gap))
        assert gap < 0.05, f"prompt {i} diverged at token {k}, where the best logit led by {gap:.4f}"
        assert together[k]["id"] == second["id"], "the batch took the runner-up of a near tie"
    # Where flips happened they are reported with their position and logit gap (pytest -rP shows it).
    print("batch-rounding flips (prompt, token, logit gap):", flips or "none")


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


def test_seed_reproducibility(tiny_runner: Runner) -> None:
    def sample(seed: int) -> str:
        options = SamplingOptions(temperature=1.5, top_k=0, top_p=1.0, seed=seed, num_predict=24)
        return tiny_runner.complete(CompletionRequest("the cat sat on", options))[0]

    assert sample(42) == sample(42)
    assert len({sample(42), sample(43), sample(44)}) > 1


@pytest.mark.gemma
def test_json_format_output_parses(gemma_runner: Runner) -> None:
    # A prompt that the 270M model answers with a JSON value that ends (greedy): most prompts make
    # it write an object that never closes, which no grammar can help.
    prompt = "<start_of_turn>user\nList three colours as a JSON array.<end_of_turn>\n<start_of_turn>model\n"
    text, done = gemma_runner.complete(CompletionRequest(prompt, greedy(300), format="json"))
    assert done.done_reason == "stop"
    assert isinstance(json.loads(text), (dict, list)), text
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


# --- concurrency, cancellation, crashes ----------------------------------------------------


def test_cancel_frees_the_slot(tiny_gguf: Path) -> None:
    runner = Runner.start(RunnerSpec("one-slot", tiny_gguf, options=LoadOptions(num_ctx=128, num_parallel=1)))
    try:
        stream = runner.generate(CompletionRequest("the cat", SamplingOptions(temperature=0, num_predict=-1)))
        assert isinstance(next(stream), Token)
        assert runner.stats()["slots_busy"] == 1
        stream.close()  # the client goes away
        _, done = runner.complete(CompletionRequest("the cat", greedy(5)))
        assert done.eval_count == 5, "the only slot was freed for the next request"
        assert runner.stats() == {"slots_busy": 0, "slots": 1, "waiting": 0, "kv_tokens": 0}
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
        expected = reference.embed(text, normalize=True)
        assert len(vector) == len(expected)
        assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < 1e-4
        assert abs(sum(v * v for v in vector) - 1.0) < 1e-4, "L2-normalised"
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
