"""Where one stream's time goes, served over HTTP against the runner driven directly (issue 6).

On an H100 (RESULTS.md, "On a GPU: NVIDIA H100"), one 128-token stream through `modelyard serve`
reached 87–90% of the runner's tokens/s in three runs, yet 98.8% with 512-token streams, with its
time to first token only 2–3 ms over the runner's. This tells the candidate causes apart, one
request at a time (or --streams at once: the H100's 8 streams measured 93% on 2026-11-27), serve and
runner alternating, medians over --pairs and the streams:

  ttft       from sending the request to the first text
  pace       (last text - first text) / (tokens - 1), as the client sees them arrive
  runner     the runner's own decode time per token (its eval_duration / eval_count): from
             `/api/generate`'s last line for serve, from the `Done` event directly
  tail       from the last text to the end of the response
  last ttft  with --streams, the time to first token of a level's last stream to start: a level
             lasts until its last stream ends, so streams that reach the runner one by one cost
             tokens/s that the median time to first token does not show

A runner whose own time per token grows under serve is losing cores to the server and client;
the same runner time with a slower pace is delivery lagging behind; a long tail or a long ttft is
per-request cost.

    python benchmarks/diag_server_one_stream.py [--pairs 20] [--tokens 128,512] [--streams 1]
                                                [--gpu] [--threads N]
                                                [--random-gemma-shape | --model GGUF]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_server as B

from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Done, Runner, RunnerSpec, Token


@dataclass(frozen=True)
class Timing:
    ttft: float
    pace: float
    runner: float
    tail: float
    tokens: int


def timing(started: float, arrivals: list[float], ended: float, eval_ns: int, eval_count: int) -> Timing:
    if len(arrivals) < 2:
        raise SystemExit("fewer than two tokens came back: raise --tokens")
    pace = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    own = eval_ns / 1e9 / max(eval_count, 1)
    return Timing(arrivals[0] - started, pace, own, ended - arrivals[-1], len(arrivals))


def served(client: httpx.Client, url: str, tokens: int) -> Timing:
    """One streaming Ollama `/api/generate` (raw, greedy): its last line carries the runner's timings."""
    options = {"num_predict": tokens, "temperature": 0}
    body = {"model": "bench", "prompt": B.PROMPT, "raw": True, "options": options}
    arrivals: list[float] = []
    last: dict[str, int] = {}
    started = time.perf_counter()
    with client.stream("POST", f"{url}/api/generate", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            message = json.loads(line)
            if message.get("response"):
                arrivals.append(time.perf_counter())
            if message.get("done"):
                last = message
    ended = time.perf_counter()
    return timing(started, arrivals, ended, last["eval_duration"], last["eval_count"])


def direct(runner: Runner, tokens: int) -> Timing:
    arrivals: list[float] = []
    done: Done | None = None
    started = time.perf_counter()
    request = CompletionRequest(B.PROMPT, SamplingOptions(temperature=0, num_predict=tokens))
    for event in runner.generate(request):
        if isinstance(event, Token) and event.text:
            arrivals.append(time.perf_counter())
        elif isinstance(event, Done):
            done = event
    ended = time.perf_counter()
    assert done is not None
    return timing(started, arrivals, ended, done.eval_duration, done.eval_count)


def concurrently(one: Callable[[], Timing], streams: int) -> list[Timing]:
    """`streams` requests at once, each on its own thread."""
    if streams == 1:
        return [one()]
    got: list[Timing] = []
    lock = threading.Lock()

    def run() -> None:
        timing = one()
        with lock:
            got.append(timing)

    threads = [threading.Thread(target=run) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(got) != streams:
        raise SystemExit("a stream failed")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument(
        "--tokens", default="128,512", help="tokens per stream, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--streams", type=int, default=1, help="concurrent requests per side (default: 1)")
    parser.add_argument("--gpu", action="store_true", help="offload every layer, on both sides")
    parser.add_argument(
        "--threads",
        type=int,
        default=B.THREADS,
        help="llama.cpp threads on both sides (default: as many as our runner chooses)",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--random-gemma-shape", action="store_true", help="random F16 weights in Gemma 3 270M's shape"
    )
    model.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    args = parser.parse_args()
    lengths = [int(n) for n in args.tokens.split(",")]
    home = Path(tempfile.mkdtemp(prefix="diag-one-stream-"))
    gguf = B.model_for(args, home)
    layers = B.ALL_LAYERS if args.gpu else 0
    options = LoadOptions(num_ctx=B.N_CTX, num_parallel=B.SLOTS, num_thread=args.threads, num_gpu=layers)
    runner = Runner.start(RunnerSpec("bench", gguf, options=options))
    assert runner.info is not None
    threads = runner.info.threads  # what the runner chose, given to serve's runner too
    serve, url, _ = B.start_modelyard(home / "modelyard", gguf, args.gpu, threads)
    client = httpx.Client(timeout=600)
    results: dict[tuple[str, int], list[Timing]] = {}
    last_starts: dict[tuple[str, int], list[float]] = {}  # per level: its streams' longest ttft
    try:
        for tokens in lengths:  # warm-up: caches, first-request paths
            served(client, url, tokens), direct(runner, tokens)
        for pair in range(args.pairs):
            for tokens in lengths:
                sides = [
                    ("serve", partial(served, client, url, tokens)),
                    ("runner", partial(direct, runner, tokens)),
                ]
                for name, one in sides if pair % 2 == 0 else sides[::-1]:
                    level = concurrently(one, args.streams)
                    results.setdefault((name, tokens), []).extend(level)
                    last_starts.setdefault((name, tokens), []).append(max(t.ttft for t in level))
    finally:
        client.close()
        runner.stop()
        B.stop(serve)

    def ms(name: str, tokens: int, field: str) -> float:
        return statistics.median(getattr(t, field) for t in results[(name, tokens)]) * 1000

    print(f"{args.pairs} pairs of {args.streams} streams, threads {threads}, gpu {args.gpu}; medians, ms\n")
    print(
        "| tokens | side | ttft | last ttft | pace per token | runner's own per token | tail "
        "| tokens/s from pace |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for tokens in lengths:
        for name in ("serve", "runner"):
            pace = ms(name, tokens, "pace")
            cells = [ms(name, tokens, f) for f in ("ttft", "pace", "runner", "tail")]
            last = statistics.median(last_starts[(name, tokens)]) * 1000
            print(
                f"| {tokens} | {name} | {cells[0]:.2f} | {last:.2f} | {cells[1]:.3f} | {cells[2]:.3f} | "
                f"{cells[3]:.2f} | {1000 / pace:.0f} |"
            )
    raw = {f"{name}@{tokens}": [vars(t) for t in ts] for (name, tokens), ts in results.items()}
    print("\nraw:", json.dumps(raw))


if __name__ == "__main__":
    main()
