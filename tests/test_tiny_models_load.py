"""The tiny GGUFs are real: llama.cpp loads them, generates text, applies the LoRA, quantizes them.

These document facts later code relies on:

- `Llama(model_path=tiny)` greedily generates 8 tokens of text from the F32 and F16 tiny models.
- A LoRA laid out as `blk.N.<proj>.weight.lora_a` (numpy (rank, in)) and `.lora_b` (numpy
  (out, rank)), F32, with `general.type = adapter`, `adapter.type = lora` and `adapter.lora.alpha`,
  loads through `Llama(lora_path=...)` and changes the logits and the greedy text; scale 0 gives
  back the base model exactly.
- `llama_model_quantize(src, dst, byref(params))` with `llama_model_quantize_default_params()` and
  `ftype = LLAMA_FTYPE_MOSTLY_Q8_0` returns 0 and writes a Q8_0 GGUF that llama.cpp loads and runs.

Quantized weights are run with the model parameter `use_extra_bufts = False`. On a CPU that
reports AMX but whose hypervisor does not let processes use the tile registers (this project's
Firecracker VMs), ggml's AMX buffer type dies with SIGILL in the first matmul of a Q8_0 or Q4_K
model; `Llama` has no way to turn it off, so those tests use the low-level API. F32/F16 weights
never go to the AMX buffer.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from modelyard.builder.gguf_info import is_quantized, read_gguf_info

PROMPT = "Why is the sky blue?"
N_TOKENS = 8


def greedy_completion(model: Path, lora: Path | None = None, lora_scale: float = 1.0) -> tuple[str, int]:
    llm = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=128,
        verbose=False,
        lora_path=None if lora is None else str(lora),
        lora_scale=lora_scale,
    )
    with closing(llm):
        completion = llm.create_completion(PROMPT, max_tokens=N_TOKENS, temperature=0.0)
    assert isinstance(completion, dict)  # not a stream
    return completion["choices"][0]["text"], completion["usage"]["completion_tokens"]


def last_logits(model: Path, lora: Path | None = None, lora_scale: float = 1.0) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=128,
        verbose=False,
        logits_all=True,  # without it, Llama.eval does not keep logits in .scores
        lora_path=None if lora is None else str(lora),
        lora_scale=lora_scale,
    )
    with closing(llm):
        tokens = llm.tokenize(PROMPT.encode())
        llm.eval(tokens)
        return np.array(llm.scores[len(tokens) - 1])


@pytest.mark.parametrize(
    "fixture", [pytest.param("tiny_gguf", id="f32"), pytest.param("tiny_gguf_f16", id="f16")]
)
def test_tiny_model_generates_text_greedily(request: pytest.FixtureRequest, fixture: str) -> None:
    model = request.getfixturevalue(fixture)

    text, n_generated = greedy_completion(model)

    assert n_generated == N_TOKENS  # never stops early: </s> has a zero output row
    assert text.strip()
    assert text.isprintable()
    assert greedy_completion(model)[0] == text  # greedy is deterministic


def test_tiny_model_tokenizes_words_and_falls_back_to_bytes(tiny_gguf: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=128, verbose=False, vocab_only=True)
    with closing(llm):
        words = llm.tokenize(b"why is the sky blue", add_bos=False)
        emoji = llm.tokenize("🙂".encode(), add_bos=False)
        assert [llm.detokenize([token]) for token in words] == [b" why", b" is", b" the", b" sky", b" blue"]
        assert llm.detokenize(emoji) == " 🙂".encode()  # SPM adds the leading space


def test_lora_changes_logits_and_greedy_output(tiny_gguf: Path, tiny_lora: Path) -> None:
    base = last_logits(tiny_gguf)
    adapted = last_logits(tiny_gguf, tiny_lora)

    assert np.abs(adapted - base).max() > 0.1
    assert greedy_completion(tiny_gguf, tiny_lora)[0] != greedy_completion(tiny_gguf)[0]


def test_lora_at_scale_zero_is_the_base_model(tiny_gguf: Path, tiny_lora: Path) -> None:
    np.testing.assert_array_equal(last_logits(tiny_gguf, tiny_lora, lora_scale=0.0), last_logits(tiny_gguf))


def test_llama_cpp_quantizes_tiny_model_to_q8_0(tiny_gguf: Path, tmp_path: Path) -> None:
    quantized = tmp_path / "tiny-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0

    status = llama_cpp.llama_model_quantize(
        str(tiny_gguf).encode(), str(quantized).encode(), ctypes.byref(params)
    )

    assert status == 0
    info = read_gguf_info(quantized)
    assert (info.file_type, is_quantized(info.file_type)) == ("Q8_0", True)
    assert info.parameter_count == read_gguf_info(tiny_gguf).parameter_count
    assert info.size_bytes < read_gguf_info(tiny_gguf).size_bytes / 3
    assert len(greedy_tokens_without_extra_buffers(quantized, N_TOKENS)) == N_TOKENS


def test_quantize_reports_failure_for_a_missing_input(tmp_path: Path) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0

    status = llama_cpp.llama_model_quantize(
        str(tmp_path / "missing.gguf").encode(), str(tmp_path / "out.gguf").encode(), ctypes.byref(params)
    )

    assert status != 0  # an error code, not an exception: callers must check it


# --- the low-level API, for quantized weights (see the module docstring) -----------------------


def greedy_tokens_without_extra_buffers(model_path: Path, n_tokens: int) -> list[int]:
    with _raw_model(model_path) as model, _raw_context(model) as context:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        batch_tokens = _tokenize(vocab, PROMPT)
        generated: list[int] = []
        for _ in range(n_tokens):
            batch = llama_cpp.llama_batch_get_one(batch_tokens, len(batch_tokens))
            assert llama_cpp.llama_decode(context, batch) == 0
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context, -1), shape=(n_vocab,))
            token = int(np.argmax(logits))
            generated.append(token)
            batch_tokens = (llama_cpp.llama_token * 1)(token)
        return generated


@contextmanager
def _raw_model(model_path: Path) -> Iterator[llama_cpp.llama_model_p]:
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False  # no AMX repacking: SIGILL on hosts that hide AMX state
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    assert model, f"llama.cpp could not load {model_path}"
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


@contextmanager
def _raw_context(model: llama_cpp.llama_model_p) -> Iterator[llama_cpp.llama_context_p]:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 128
    context = llama_cpp.llama_init_from_model(model, params)
    assert context
    try:
        yield context
    finally:
        llama_cpp.llama_free(context)


def _tokenize(vocab: llama_cpp.llama_vocab_p, text: str) -> ctypes.Array[ctypes.c_int32]:
    raw = text.encode()
    tokens = (llama_cpp.llama_token * 128)()
    n_tokens = llama_cpp.llama_tokenize(vocab, raw, len(raw), tokens, len(tokens), True, False)
    assert n_tokens > 0
    return (llama_cpp.llama_token * n_tokens)(*tokens[:n_tokens])


@pytest.mark.parametrize(("pooling", "declared"), [(None, False), (0, False), (1, True), (2, True)])
def test_model_reads_its_metadata_and_declared_pooling(
    tmp_path: Path, pooling: int | None, declared: bool
) -> None:
    """The runner sizes an embeddings context by the pooling the GGUF declares, as the scheduler
    does from the same key before loading (memory.ModelShape.pooled): both must agree."""
    from tinygguf import write_tiny_llama

    from modelyard.builder.gguf_info import read_gguf
    from modelyard.runtime import llama
    from modelyard.runtime.memory import shape_from_gguf
    from modelyard.runtime.options import LoadOptions

    path = write_tiny_llama(tmp_path / "m.gguf", pooling=pooling, chat_template="x" * 1000)
    contents = read_gguf(path)
    assert shape_from_gguf(contents.metadata, contents.tensors).pooled is declared
    model = llama.Model(path, LoadOptions(num_gpu=0))
    try:
        assert model.declares_pooling is declared
        assert model.metadata("general.architecture") == "llama"
        assert model.metadata("no.such.key") is None
        assert model.metadata("tokenizer.chat_template") == "x" * 1000, "longer than the first buffer"
    finally:
        model.close()
