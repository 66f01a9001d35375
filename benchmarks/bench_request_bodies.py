"""How long one request body holds `modelyard serve`'s event loop, this tree against a baseline.

Parsing a JSON body and validating it against a route's model are single calls into C and Rust
that hold the GIL: whatever thread makes them, the event loop, and every other request with it,
waits. Their cost is in the count of JSON values, not in bytes. Each body below is posted to
`/api/chat` (Ollama's shape) while a thread asks `GET /health` every 5 ms; the longest /health
answer is how long the loop was held. The servers have an empty store: a body that validates gets
its 404, which no model's work delays.

Two servers run side by side: this tree's, and the one in `--baseline` (a checkout: `git worktree
add /tmp/base REV`), each body in turn on each, `--rounds` times; medians.

    python benchmarks/bench_request_bodies.py --baseline /tmp/base [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import free_port, serve_process, stop

HERE = Path(__file__).resolve().parent.parent


def bodies() -> dict[str, bytes]:
    """Bodies a client can send under the 16 MiB limit: pathological ones, and two that are not."""

    def chat(**fields: object) -> bytes:
        return json.dumps({"model": "absent", **fields}).encode()

    return {
        "2.5 M empty messages (9.5 MiB)": chat(messages=[{}] * 2_500_000),
        "65,532 empty messages (0.3 MiB)": chat(messages=[{}] * 65_532),
        "21,844 valid messages (0.7 MiB)": chat(messages=[{"role": "user", "content": "x"}] * 21_844),
        "2 M zeros as messages (5.7 MiB)": chat(messages=[0] * 2_000_000),
        "1 M empty messages in UTF-16 (7.6 MiB)": json.dumps(
            {"model": "\u2200", "messages": [{}] * 1_000_000}, ensure_ascii=False
        ).encode("utf-16-le"),
        "1 M option keys (10 MiB)": chat(messages=[], options={str(i): 1 for i in range(1_000_000)}),
        "5 M brackets in a string (14 MiB)": chat(messages=[{"role": "user", "content": "{[:" * 5_000_000}]),
        "an image-sized string (15 MiB)": chat(messages=[{"role": "user", "content": "a" * 15_000_000}]),
    }


def start(checkout: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "MODELYARD_HOME": str(home), "PYTHONPATH": str(checkout)}
    home.mkdir(parents=True)
    return serve_process(free_port(), env, home / "serve.log", cwd=checkout)


def held(url: str, body: bytes) -> tuple[float, float, int]:
    """(the request's wall time, the longest /health answer meanwhile, its status)."""
    longest = 0.0
    done = threading.Event()

    def probe() -> None:
        nonlocal longest
        with httpx.Client(timeout=300) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{url}/health")
                longest = max(longest, time.perf_counter() - started)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.1)
    started = time.perf_counter()
    answer = httpx.post(
        f"{url}/api/chat", content=body, headers={"content-type": "application/json"}, timeout=300
    )
    wall = time.perf_counter() - started
    done.set()
    prober.join()
    return wall, longest, answer.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another revision's checkout")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = {"this tree": HERE, "baseline": args.baseline.resolve()}
    work = Path(tempfile.mkdtemp(prefix="bench-bodies-"))
    servers = {name: start(tree, work / name.replace(" ", "-")) for name, tree in trees.items()}
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    try:
        for _ in range(args.rounds):
            for shape, body in bodies().items():
                for name, (_, url) in servers.items():
                    results.setdefault((shape, name), []).append(held(url, body))
    finally:
        for process, _ in servers.values():
            stop(process)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"baseline: {args.baseline}; {args.rounds} rounds, medians\n")
    print("| body | status, baseline → this tree | loop held, baseline | loop held, this tree | request |")
    print("|---|---|---|---|---|")
    for shape in bodies():
        base, this = results[(shape, "baseline")], results[(shape, "this tree")]
        status = f"{base[0][2]} → {this[0][2]}"
        held_base = statistics.median(h for _, h, _ in base)
        held_this = statistics.median(h for _, h, _ in this)
        wall_base = statistics.median(w for w, _, _ in base)
        wall_this = statistics.median(w for w, _, _ in this)
        request = f"{wall_base:.2f} → {wall_this:.2f} s"
        print(f"| {shape} | {status} | {held_base:.2f} s | {held_this:.2f} s | {request} |")


if __name__ == "__main__":
    main()
