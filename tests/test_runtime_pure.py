"""The runner's pure decisions: options, stop matching, prompt fitting, memory figures from logs."""

from __future__ import annotations

import pytest

from modelyard.errors import InferenceRequestError
from modelyard.runtime.engine import RequestRejected, fit_prompt
from modelyard.runtime.llama import BufferSizes, all_layers_offloaded, parse_buffer_sizes
from modelyard.runtime.options import (
    LoadOptions,
    SamplingOptions,
    merge_options,
    parse_load_options,
    parse_request_options,
)
from modelyard.runtime.stops import StopMatcher

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(None, SamplingOptions(), id="none-means-defaults"),
        pytest.param({"temperature": 0}, SamplingOptions(temperature=0.0), id="int-for-float"),
        pytest.param({"stop": "x"}, SamplingOptions(stop=("x",)), id="stop-string"),
        pytest.param(
            {"stop": ["a", "b"], "seed": 7}, SamplingOptions(stop=("a", "b"), seed=7), id="stop-list-seed"
        ),
        pytest.param({"mirostat": 2, "numa": True}, SamplingOptions(), id="old-ollama-options-ignored"),
        pytest.param({"num_ctx": 8192}, SamplingOptions(), id="load-option-not-sampling"),
        pytest.param(
            {"tfs_z": 1.0, "embedding_only": False}, SamplingOptions(), id="ollama-python-options-ignored"
        ),
        pytest.param({"temperature": None, "top_k": None}, SamplingOptions(), id="null-is-not-set"),
        pytest.param(
            {"num_predict": 2.0, "seed": 7.0}, SamplingOptions(num_predict=2, seed=7), id="whole-float"
        ),
        # As Ollama's FromMap (Go's int64()): a float for an int option is cut toward zero.
        pytest.param({"num_predict": 1.5, "seed": -2.7}, SamplingOptions(num_predict=1, seed=-2), id="cut"),
    ],
)
def test_parse_request_options(options: dict | None, expected: SamplingOptions) -> None:
    assert parse_request_options(options).sampling == expected


def test_load_options_are_split_out() -> None:
    parsed = parse_request_options({"num_ctx": 8192, "num_parallel": 2, "top_k": 3, "draft_num_predict": 0})
    assert parsed.load == {"num_ctx": 8192, "num_parallel": 2}
    assert parsed.sampling.top_k == 3
    assert parsed.sampling.draft_num_predict == 0  # per request: guessing needs no other runner
    assert parse_request_options({}).sampling.draft_num_predict == 4  # Ollama's default
    # Ollama takes any count; guesses are bounded by the logits rows every context reserves.
    assert parse_request_options({"draft_num_predict": 100}).sampling.draft_num_predict == 16


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        pytest.param({"temprature": 1}, "did you mean 'temperature'", id="unknown-with-hint"),
        pytest.param({"frobnicate": 1}, "unknown option 'frobnicate'", id="unknown"),
        pytest.param({"top_k": "many"}, "option 'top_k'", id="wrong-type"),
        pytest.param({"top_k": True}, "option 'top_k'", id="bool-is-not-int"),
        pytest.param({"num_predict": float("nan")}, "option 'num_predict'", id="nan-is-not-int"),
        pytest.param({"stop": [1]}, "option 'stop'", id="stop-not-strings"),
        pytest.param(
            {"draft_num_predict": -1},
            r"^option 'draft_num_predict' must be at least 0, got -1$",
            id="draft-negative",
        ),
        pytest.param({"repeat_last_n": -2}, "must be at least -1, got -2", id="repeat-last-n"),
        pytest.param({"num_ctx": 0}, "option 'num_ctx' must be at least 1, got 0", id="no-context"),
        pytest.param([1, 2], "must be an object", id="not-an-object"),
    ],
)
def test_bad_request_options(options: object, fragment: str) -> None:
    # The sampling cut-offs take any value, as in Ollama: llama.cpp reads top_k <= 0 and top_p >= 1
    # as "off" (vLLM's clients send top_k -1).
    assert parse_request_options({"top_k": -1, "top_p": 1.5, "min_p": 2}).sampling.top_k == -1
    with pytest.raises(InferenceRequestError, match=fragment):
        parse_request_options(options)  # type: ignore[arg-type]


def test_unknown_options_skipped_when_asked() -> None:
    parsed = parse_request_options({"temprature": 0.5, "top_k": 3, "x": 1}, ignore_unknown=True)
    assert parsed.sampling.top_k == 3 and parsed.sampling.temperature == SamplingOptions().temperature
    assert parsed.unknown == (
        "unknown option 'temprature' (did you mean 'temperature'?)",
        "unknown option 'x'",
    )
    with pytest.raises(InferenceRequestError, match="option 'top_k'"):  # a wrong type still is not
        parse_request_options({"top_k": "many", "x": 1}, ignore_unknown=True)


def test_load_options_and_merge() -> None:
    merged = merge_options({"num_ctx": 2048, "temperature": 1.0}, {"num_ctx": 4096}, None)
    assert merged == {"num_ctx": 4096, "temperature": 1.0}
    assert parse_load_options(merged) == LoadOptions(num_ctx=4096)
    with pytest.raises(InferenceRequestError, match="num_parallel"):
        parse_load_options({"num_parallel": 0})


@pytest.mark.parametrize(
    ("stops", "chunks", "emitted", "stopped"),
    [
        pytest.param(["END"], ["hello ", "world"], ["hello ", "world"], False, id="no-stop"),
        pytest.param(["END"], ["abcEND", "more"], ["abc", ""], True, id="stop-inside-token"),
        pytest.param(["END"], ["abcE", "N", "Dxyz"], ["abc", "", ""], True, id="stop-across-three-tokens"),
        pytest.param(["END"], ["abcE", "Nx"], ["abc", "ENx"], False, id="false-start-released"),
        pytest.param(["<|end|>", "\n\n"], ["a\n", "\nb"], ["a", ""], True, id="second-stop-wins-earlier"),
        pytest.param(["ab", "abc"], ["xab"], ["x"], True, id="earliest-match"),
        pytest.param([], ["text"], ["text"], False, id="no-stops"),
        pytest.param(["é!"], ["caf", "é", "!"], ["caf", "", ""], True, id="unicode"),
    ],
)
def test_stop_matcher(stops: list[str], chunks: list[str], emitted: list[str], stopped: bool) -> None:
    matcher = StopMatcher(stops)
    assert [matcher.feed(c) for c in chunks] == emitted
    assert matcher.stopped is stopped


def test_stop_matcher_flush_returns_held_text() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abcEN") == "abc"
    assert matcher.flush() == "EN"


@pytest.mark.parametrize(
    ("length", "n_ctx", "keep", "expected_len", "dropped"),
    [
        pytest.param(10, 64, 4, 10, 0, id="fits"),
        pytest.param(63, 64, 4, 63, 0, id="just-fits"),
        pytest.param(64, 64, 4, 32, 32, id="full-context-halved"),
        pytest.param(1000, 64, 4, 32, 968, id="long"),
        pytest.param(1000, 64, 100, 32, 968, id="num-keep-capped"),
    ],
)
def test_fit_prompt(length: int, n_ctx: int, keep: int, expected_len: int, dropped: int) -> None:
    tokens = list(range(length))
    fitted, n_dropped = fit_prompt(tokens, n_ctx, keep, truncate=True)
    assert (len(fitted), n_dropped) == (expected_len, dropped)
    if dropped:
        head = min(keep, n_ctx // 2 - 1)
        assert fitted[:head] == tokens[:head], "num_keep tokens from the start are kept"
        assert fitted[-1] == tokens[-1], "the end of the prompt is kept"


def test_fit_prompt_refuses_when_truncation_is_off() -> None:
    with pytest.raises(RequestRejected, match="100 tokens but the context holds 64"):
        fit_prompt(list(range(100)), 64, 4, truncate=False)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            [
                "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB",
                "llama_context:        CPU  output buffer size =     4.00 MiB",
                "llama_kv_cache:        CPU KV buffer size =    48.00 MiB",
                "llama_kv_cache:        CPU KV buffer size =   240.00 MiB",
                "sched_reserve:        CPU compute buffer size =   21.77 MiB",
            ],
            BufferSizes(weights=int(235.16 * MIB), kv=288 * MIB, compute=int(21.77 * MIB), output=4 * MIB),
            id="cpu-only-gemma",
        ),
        pytest.param(
            ["load_tensors:          AMX model buffer size =   213.91 MiB"],
            BufferSizes(weights=int(213.91 * MIB)),
            id="amx-repack-is-host",
        ),
        pytest.param(
            [
                "load_tensors:        CUDA0 model buffer size =  4000.00 MiB",
                "load_tensors:   CPU_Mapped model buffer size =   500.00 MiB",
                "llama_kv_cache:      CUDA0 KV buffer size =   512.00 MiB",
                "sched_reserve:      CUDA0 compute buffer size =   300.00 MiB",
                "sched_reserve:  CUDA_Host compute buffer size =    20.00 MiB",
            ],
            BufferSizes(
                weights=4500 * MIB,
                kv=512 * MIB,
                compute=320 * MIB,
                weights_device=4000 * MIB,
                kv_device=512 * MIB,
                compute_device=300 * MIB,
            ),
            id="partial-cuda-offload",
        ),
        pytest.param(["nothing to see"], BufferSizes(), id="no-buffer-lines"),
    ],
)
def test_parse_buffer_sizes(lines: list[str], expected: BufferSizes) -> None:
    assert parse_buffer_sizes(lines) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(["load_tensors: offloaded 19/19 layers to GPU"], True, id="every-layer"),
        pytest.param(["llm_load_tensors: offloaded 33/33 layers to GPU"], True, id="older-prefix"),
        pytest.param(["load_tensors: offloaded 18/19 layers to GPU"], False, id="output-layer-on-cpu"),
        pytest.param(["load_tensors: offloaded 0/19 layers to GPU"], False, id="num-gpu-0"),
        pytest.param(["load_tensors:   CPU_Mapped model buffer size =   235.16 MiB"], False, id="cpu-build"),
        pytest.param([], False, id="no-log"),
    ],
)
def test_all_layers_offloaded(lines: list[str], expected: bool) -> None:
    assert all_layers_offloaded(lines) is expected


@pytest.mark.parametrize(
    ("num_thread", "all_layers_on_gpu", "expected"),
    [
        pytest.param(0, False, 5, id="cpu-auto-one-per-core"),
        pytest.param(0, True, 1, id="all-on-gpu-auto-one"),
        pytest.param(6, True, 6, id="asked-on-gpu"),
        pytest.param(3, False, 3, id="asked-on-cpu"),
    ],
)
def test_load_options_threads(num_thread: int, all_layers_on_gpu: bool, expected: int) -> None:
    assert LoadOptions(num_thread=num_thread).threads(5, all_layers_on_gpu=all_layers_on_gpu) == expected
