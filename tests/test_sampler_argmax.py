"""Greedy sampling without a chain: the runner reads the argmax of the logits row in place, and
must pick exactly the token llama.cpp's greedy sampler chain picks, wherever nothing else (grammar,
penalties) would change the row first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp as L
import pytest

from modelyard.runtime import llama
from modelyard.runtime.options import LoadOptions, SamplingOptions


@pytest.fixture(scope="module")
def tiny_model(tiny_gguf: Path) -> Iterator[llama.Model]:
    # Not repacked: some VMs advertise CPU instructions the repacked kernels need and cannot run.
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    yield model
    model.close()


@pytest.mark.parametrize(
    ("options", "with_grammar", "argmax"),
    [
        (SamplingOptions(temperature=0.0), False, True),
        (SamplingOptions(temperature=-1.0), False, True),
        (SamplingOptions(temperature=0.0), True, False),  # the grammar masks the row first
        (SamplingOptions(temperature=0.0, repeat_penalty=1.1), False, False),
        (SamplingOptions(temperature=0.0, presence_penalty=0.5), False, False),
        (SamplingOptions(temperature=0.0, frequency_penalty=0.5), False, False),
        # repeat_last_n 0 turns the penalties off: nothing before greedy again
        (SamplingOptions(temperature=0.0, repeat_penalty=1.1, repeat_last_n=0), False, True),
        (SamplingOptions(temperature=0.8), False, False),
    ],
)
def test_which_requests_read_the_argmax(
    tiny_model: llama.Model, options: SamplingOptions, with_grammar: bool, argmax: bool
) -> None:
    grammar = llama.json_grammar() if with_grammar else None
    sampler = llama.Sampler(tiny_model, options, seed=1, grammar=grammar)
    try:
        assert sampler.reads_argmax is argmax
    finally:
        sampler.close()


@pytest.mark.parametrize("which", ["tiny", "gemma"])
def test_the_argmax_is_the_token_llama_cpps_greedy_chain_picks(
    which: str, tiny_gguf: Path, gemma_gguf: Path
) -> None:
    """Every row of logits of a prompt (one output per prompt token), sampled both ways."""
    path = tiny_gguf if which == "tiny" else gemma_gguf
    model = llama.Model(path, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=256, n_seq_max=1, n_batch=256, threads=2)
    tokens = model.tokenize("The quick brown fox jumps over the lazy dog, and then", add_special=True)
    batch = llama.Batch(len(tokens), 1)
    # n_outputs_max is one row per sequence: decode token by token, a row each.
    reference = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(reference, L.llama_sampler_init_greedy())
    ours = llama.Sampler(model, SamplingOptions(temperature=0.0), seed=1)
    try:
        assert ours.reads_argmax
        picked = []
        for pos, token in enumerate(tokens):
            batch.clear()
            batch.add(token, pos, 0, True)
            assert ctx.decode(batch) == 0
            expected = int(L.llama_sampler_sample(reference, ctx.ptr, 0))
            assert ours.sample(ctx, 0) == expected, f"row {pos}"
            picked.append(expected)
        assert len(set(picked)) > 1, "a varied prompt gives varied greedy tokens"
    finally:
        ours.close()
        L.llama_sampler_free(reference)
        batch.close()
        ctx.close()
        model.close()
