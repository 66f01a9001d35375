"""What serving over HTTP costs in CPU time per token, against driving the runner directly (issue 6).

Throughput ratios on a 2-core VM swing by ±10% between rounds, more than the 5% the HTTP target
asks about. CPU time is steadier: this counts, per token generated, the CPU seconds of each
process involved, for the same streams as `bench_server.py` (greedy, the same raw prompt, 1 and 8
concurrent streaming requests):

  serve      `modelyard serve` (HTTP, scheduler, its runner handle) + this process (the HTTP client)
  runner     this process (the `Runner` handle and the same client threads), no HTTP
  + the runner process in both, which decodes.

What HTTP adds is (serve process + HTTP client) − (runner handle + client threads). On a machine
whose cores llama.cpp keeps busy, that CPU time is taken from decoding, so its share of all the
CPU time spent per token bounds the throughput it can cost.

    python benchmarks/bench_server_cpu.py [--rounds 5] [--tokens 128] [--gpu] [--model GGUF]

On a GPU, where a step is short and the host's work per token counts, the server process's busy
share (its CPU time over the wall time) says whether serving keeps up or lags behind the runner.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import (
    ALL_LAYERS,
    N_CTX,
    SLOTS,
    THREADS,
    HttpxClient,
    Stream,
    http_stream,
    level,
    model_for,
    runner_stream,
    start_modelyard,
    stop,
)

from modelyard.runtime.options import LoadOptions
from modelyard.runtime.runner import Runner, RunnerSpec

STREAMS = (1, 8)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, all its threads, not its children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(one: Callable[[], Stream], streams: int, pids: dict[str, int]) -> dict[str, float]:
    """CPU microseconds per token of each process (and of this one, as "client"), over one level."""
    before = {name: process_cpu(pid) for name, pid in pids.items()}
    client_before, started = own_cpu(), time.perf_counter()
    result = level(one, streams)
    wall = time.perf_counter() - started
    tokens = result.tokens_per_s * wall
    used = {name: process_cpu(pid) - before[name] for name, pid in pids.items()}
    used["client"] = own_cpu() - client_before
    per_token = {name: seconds / tokens * 1e6 for name, seconds in used.items()}
    per_token["wall"] = wall / tokens * 1e6
    return per_token


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gpu", action="store_true", help="offload every layer, on both sides")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    model.add_argument(
        "--random-gemma-shape", action="store_true", help="random F16 weights in Gemma 3 270M's shape"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-server-cpu-"))
    gguf = model_for(args, home)
    options = LoadOptions(
        num_ctx=N_CTX, num_parallel=SLOTS, num_thread=THREADS, num_gpu=ALL_LAYERS if args.gpu else 0
    )
    runner = Runner.start(RunnerSpec("bench", gguf, options=options))
    serve, serve_url, _ = start_modelyard(home / "modelyard", gguf, gpu=args.gpu)
    # The runner serving "bench", as /api/ps names it (the server also keeps one started ahead).
    models = httpx.get(f"{serve_url}/api/ps", timeout=30).json()["models"]
    serve_runner = next(int(m["runner_pid"]) for m in models if m["name"].startswith("bench"))
    client = HttpxClient()
    systems: dict[str, tuple[Callable[[], Stream], dict[str, int]]] = {
        "serve": (
            lambda: http_stream(client, serve_url, "bench", args.tokens),
            {"server": serve.pid, "runner process": serve_runner},
        ),
        "runner": (lambda: runner_stream(runner, args.tokens), {"runner process": runner.pid}),
    }
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for one, _ in systems.values():
            one()  # warm-up
        for round_ in range(args.rounds):
            for streams in STREAMS:
                order = list(systems) if round_ % 2 == 0 else list(systems)[::-1]
                for name in order:
                    one, pids = systems[name]
                    results.setdefault((name, streams), []).append(measure(one, streams, pids))
            print(f"round {round_ + 1} done", file=sys.stderr)
    finally:
        client.close()
        runner.stop()
        stop(serve)
        shutil.rmtree(home, ignore_errors=True)

    def med(name: str, streams: int, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in results[(name, streams)])

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {gguf.name}{', every layer on the GPU' if args.gpu else ''}; "
        f"{args.rounds} rounds, {args.tokens} tokens per stream; "
        "CPU µs per token, medians\n"
    )
    print(
        "| streams | serve: server process | serve: HTTP client | runner: handle + client | "
        "HTTP adds | runner process (serve / runner) | all CPU per token, serve | HTTP's share | "
        "server process busy | wall per token (serve / runner) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for streams in STREAMS:
        server, http_client = med("serve", streams, "server"), med("serve", streams, "client")
        direct = med("runner", streams, "client")
        added = server + http_client - direct
        decode_a, decode_b = med("serve", streams, "runner process"), med("runner", streams, "runner process")
        total = server + http_client + decode_a
        wall_a, wall_b = med("serve", streams, "wall"), med("runner", streams, "wall")
        print(
            f"| {streams} | {server:.0f} | {http_client:.0f} | {direct:.0f} | {added:+.0f} | "
            f"{decode_a:.0f} / {decode_b:.0f} | {total:.0f} | {added / total:.1%} | "
            f"{server / wall_a:.0%} | {wall_a:.0f} / {wall_b:.0f} |"
        )


if __name__ == "__main__":
    main()
