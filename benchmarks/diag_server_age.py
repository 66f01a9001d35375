"""Does `modelyard serve` slow down with the requests it has served?

The GPU runs' 8-stream level comes last and loses the most (RESULTS.md, "On a GPU: NVIDIA H100,
2026-11-27, late": in one run its four pairs fell from 2,753 to 2,412 tok/s). This drives one serve
process with bursts of N concurrent streams, many rounds, and prints the aggregate tokens/s of each
block of rounds with the server's RSS and CPU seconds per 1,000 tokens: a steady fall with age says
something in serve grows with the requests served; flat blocks say the loss is elsewhere.

    python benchmarks/diag_server_age.py --model /tmp/small.gguf --rounds 240
    python benchmarks/diag_server_age.py --gpu --model /tmp/gemma-shape.gguf --rounds 400

On the 2-core VM (2026-11-28, a 38 MB F16 model at ~2,000 tok/s over 8 streams, 240 rounds, twice)
the blocks were noisy (1,400-2,500 tok/s) with flat RSS and no steady fall.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import HttpxClient, http_stream, level, start_modelyard, stop


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a GGUF")
    parser.add_argument("--gpu", action="store_true", help="offload every layer")
    parser.add_argument("--rounds", type=int, default=240)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--block", type=int, default=20, help="rounds a printed line sums up")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="diag-age-"))
    process, url, _ = start_modelyard(home, args.model, args.gpu)
    client = HttpxClient()
    rates: list[float] = []
    try:
        cpu, tokens = cpu_seconds(process.pid), 0
        for round_ in range(1, args.rounds + 1):
            burst = level(lambda: http_stream(client, url, "bench", args.tokens), args.streams)
            rates.append(burst.tokens_per_s)
            tokens += args.streams * args.tokens  # each stream asks for --tokens, at temperature 0
            if round_ % args.block == 0:
                now = cpu_seconds(process.pid)
                block = statistics.median(rates[-args.block :])
                print(
                    f"rounds {round_ - args.block + 1:4d}-{round_:4d}: median {block:8.1f} tok/s"
                    f"  serve RSS {rss_mb(process.pid):6.1f} MB"
                    f"  serve CPU {1000 * (now - cpu) / tokens:6.3f} s per 1k tokens",
                    flush=True,
                )
                cpu, tokens = now, 0
        first, last = rates[: args.block], rates[-args.block :]
        print(f"last block / first block: {statistics.median(last) / statistics.median(first):.1%}")
    except httpx.HTTPError as exc:
        raise SystemExit(f"a request failed: {exc}") from None
    finally:
        client.close()
        stop(process)


if __name__ == "__main__":
    main()
