"""The runner process: `python -m modelyard.runtime.runner_main --fd N`.

Receives a `load` message on the inherited socket, loads the model (mmapped in place), reports
`loaded` with its measured memory, then serves requests until `shutdown` or until the parent goes
away (EOF on the socket: a runner never outlives its parent).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from modelyard.cpus import cpu_facts, usable_cores
from modelyard.runtime.options import PROMPT_LOGPROB_ROWS, LoadOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelyard-runner", description="A modelyard model runner (internal)."
    )
    parser.add_argument("--fd", type=int, required=True, help="the inherited socket to the parent")
    args = parser.parse_args(argv)

    from modelyard.runtime import llama  # llama.cpp, imported before the load is asked for
    from modelyard.runtime.engine import VOCABULARY_OPS
    from modelyard.runtime.protocol import Channel

    logs = llama.LogCapture()
    llama.init_backend(logs)
    channel = Channel(socket.socket(fileno=args.fd))
    message = channel.receive()
    if message is None or message.get("op") != "load":
        return 2
    # The engine's events wait in `send` until `flush`: a step's events for every slot go out in
    # one write, and the parent's reader wakes once for them.
    send, flush = channel.batch()
    try:
        engine = _load(channel, message, logs, send)
    except _LoadFailed as exc:
        channel.send({"event": "load_failed", "message": str(exc)})
        return 1

    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    aside: queue.Queue[dict[str, Any]] = queue.Queue()  # VOCABULARY_OPS: not the steps' to wait for

    def read() -> None:
        while True:
            try:
                received = channel.receive()
            except (OSError, ValueError):
                received = None
            if received is not None and received.get("op") in VOCABULARY_OPS:
                aside.put(received)
                continue
            inbox.put(received)
            if received is None:
                return

    def answer_aside() -> None:
        while True:
            with contextlib.suppress(OSError):  # the parent gone: the reader ends the runner
                channel.send(engine.answer_from_vocabulary(aside.get()))

    threading.Thread(target=read, name="runner-reader", daemon=True).start()
    threading.Thread(target=answer_aside, name="runner-vocabulary", daemon=True).start()
    engine.run(inbox, flush)
    return 0


class _LoadFailed(Exception):
    pass


def _load(channel: Any, message: dict[str, Any], logs: Any, send: Any) -> Any:
    from modelyard.runtime import llama
    from modelyard.runtime.engine import EmbeddingContext, Engine
    from modelyard.runtime.memory import embedding_context_tokens
    from modelyard.runtime.protocol import RunnerInfo

    started = time.perf_counter()
    options = LoadOptions(**message["options"])
    repack = bool(message.get("repack", True))
    weights = Path(message["weights"])
    last_sent = [-1.0]

    def progress(fraction: float) -> None:
        if fraction - last_sent[0] >= 0.05 or fraction >= 1.0:
            last_sent[0] = fraction
            channel.send({"event": "progress", "fraction": round(fraction, 3)})

    try:
        model = llama.Model(weights, options, repack=repack, progress=progress)
    except OSError as exc:
        raise _LoadFailed(_explain(str(exc), logs)) from None
    threads = options.threads(
        usable_cores(cpu_facts()), all_layers_on_gpu=llama.all_layers_offloaded(logs.load_lines)
    )
    try:
        adapters = [
            (llama.LoraAdapter(model, Path(path)), float(scale)) for path, scale in message["adapters"]
        ]
        ctx = llama.Context(
            model,
            n_ctx=options.num_ctx * options.num_parallel,
            n_seq_max=options.num_parallel,
            n_batch=options.n_batch,
            threads=threads,
            flash_attention=options.flash_attention,
            prompt_logprob_rows=PROMPT_LOGPROB_ROWS,
        )
        ctx.set_adapters(adapters)
    except OSError as exc:
        raise _LoadFailed(_explain(str(exc), logs)) from None
    _warm_up(model, ctx)
    sizes = llama.parse_buffer_sizes(logs.load_lines)
    info = RunnerInfo(
        pid=os.getpid(),
        n_ctx=ctx.n_ctx,
        n_ctx_per_slot=ctx.n_ctx_seq,
        slots=options.num_parallel,
        n_ctx_train=model.n_ctx_train,
        n_embd=model.n_embd,
        weights_bytes=sizes.weights or model.size_bytes,
        kv_bytes=sizes.kv,
        compute_bytes=sizes.compute,
        # The output buffer as logged at load holds a row per slot; it grows by the scored rows the
        # first time a prompt is scored (llama.cpp logs that only at debug level).
        output_bytes=sizes.output + 4 * PROMPT_LOGPROB_ROWS * model.n_vocab,
        device_bytes=sizes.device_total,
        load_seconds=time.perf_counter() - started,
        repack=repack,
        threads=threads,
        bos=model.bos_text,
        eos=model.eos_text,
        adapters=len(adapters),
    )
    channel.send({"event": "loaded", "info": info.__dict__})

    def embedder() -> EmbeddingContext:
        # As many tokens as the scheduler counted for it (memory.embedding_estimate).
        n_ctx = embedding_context_tokens(options.num_ctx, model.n_ctx_train, model.declares_pooling)
        return EmbeddingContext(model, n_ctx=n_ctx, threads=threads, flash_attention=options.flash_attention)

    return Engine(model, ctx, options.num_parallel, send, embedder=embedder)


def _warm_up(model: Any, ctx: Any) -> None:
    """A short prefill and one decode step, so that a CPU that cannot run the chosen kernels fails
    now, at load, where the parent can retry, and not on a user's first request."""
    from modelyard.runtime import llama

    sentence = model.tokenize("The quick brown fox jumps over the lazy dog.", add_special=True) or [0]
    tokens = sentence[: min(16, ctx.n_batch)]  # one decode: at most the context's batch
    batch = llama.Batch(len(tokens), 1)
    try:
        for pos, token in enumerate(tokens):
            batch.add(token, pos, 0, pos == len(tokens) - 1)
        rc = ctx.decode(batch)
        if rc == 0:
            batch.clear()
            batch.add(tokens[-1], len(tokens), 0, True)
            rc = ctx.decode(batch)
    finally:
        ctx.seq_rm(0)
        batch.close()
    if rc != 0:
        raise _LoadFailed(f"the warm-up decode failed (code {rc})")


def _explain(error: str, logs: Any) -> str:
    details = logs.errors()[-3:]
    return error + (": " + "; ".join(details) if details else "")


if __name__ == "__main__":
    sys.exit(main())
