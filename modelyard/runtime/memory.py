"""How much memory a model will take, from its GGUF header alone, before anything is loaded (pure).

    weights  every tensor's bytes, per repeating block and the rest (embeddings, output head)
    KV cache cells × kv heads × (key length + value length) × bytes per element, per layer, per slot;
             sliding-window layers hold the full context (llama.cpp's `swa_full`, which we use) or,
             without it, the window plus one batch, as llama.cpp sizes them
    compute  the activations of one batch (embeddings, FFN, logits of one row per slot)
    embed    the second context a runner makes on its first embeddings request (see
             `embedding_estimate`): two rows of logits a token, on top of the rest

`split` places the last `n_gpu_layers` blocks (and the output head once every block is placed) on
the device, as llama.cpp does, and says what stays in host memory. After loading, the runner's
measured figures replace this estimate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.builder.gguf_info import POOLING_NONE
from modelyard.runtime.options import PROMPT_LOGPROB_ROWS

KV_CELL_PADDING = 256  # llama.cpp rounds each sequence's cells up to this
# A runner's own process beside what llama.cpp reports for its model: the interpreter, llama.cpp's
# code, the vocabulary, the heap. Measured (proportional set size less the model's reported bytes,
# after a few requests): 30-41 MiB with a tiny model, 47-52 MiB with Gemma 3 270M (a vocabulary of
# 262,144 tokens); tests/test_runner.py holds real runners to this bound.
RUNNER_PROCESS_BYTES = 64 * 1024**2
F16_BYTES = 2
F32_BYTES = 4

# Architectures whose sliding-window layers repeat with a fixed period, as llama.cpp hard-codes it
# (`hparams.set_swa_pattern(n)`: every n-th layer uses full attention).
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2, "llama4": 4, "exaone4": 4}

_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    n_layers: int
    layer_bytes: tuple[int, ...]  # weights of each repeating block
    input_bytes: int  # token embeddings and anything else outside the blocks and the head
    output_bytes: int  # the output head and its norm
    tied_output: bool  # no output.weight: the head reuses token_embd (copied only onto a GPU)
    n_embd: int
    n_ff: int
    n_vocab: int
    n_head: int
    kv_heads: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    sliding_window: int
    swa_layers: tuple[bool, ...]  # per layer
    n_ctx_train: int
    pooled: bool = False  # the GGUF declares a pooling type other than none: an embedding model

    @property
    def weights_bytes(self) -> int:
        """Bytes of the file's tensors: what a CPU-only load maps."""
        return self.input_bytes + sum(self.layer_bytes) + (0 if self.tied_output else self.output_bytes)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv: int
    compute: int
    host: int  # bytes in RAM (weights mmapped from the page cache count here)
    device: int  # bytes on the GPU(s)
    n_gpu_layers: int

    @property
    def total(self) -> int:
        return self.host + self.device


def shape_from_gguf(metadata: Mapping[str, Any], tensors: Sequence[Any]) -> ModelShape:
    """`tensors` are objects with `name` and `n_bytes` (gguf_info.TensorInfo)."""
    arch = str(metadata.get("general.architecture", ""))

    def number(key: str, default: int = 0) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        if isinstance(value, list):
            value = max(v for v in value if isinstance(v, int)) if value else default
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default

    n_layers = number("block_count")
    layer_bytes = [0] * n_layers
    input_bytes = output_bytes = 0
    names = {t.name for t in tensors}
    for tensor in tensors:
        block = _BLOCK.match(tensor.name)
        if block and int(block.group(1)) < n_layers:
            layer_bytes[int(block.group(1))] += tensor.n_bytes
        elif tensor.name.startswith(("output.", "output_norm.")):
            output_bytes += tensor.n_bytes
        else:
            input_bytes += tensor.n_bytes
    tied = "output.weight" not in names
    if tied:  # the head is token_embd again; llama.cpp copies it only when it offloads the head
        output_bytes += next((t.n_bytes for t in tensors if t.name == "token_embd.weight"), 0)

    n_head = number("attention.head_count", 1)
    n_embd = number("embedding_length")
    head_dim = n_embd // n_head if n_head else 0
    kv = metadata.get(f"{arch}.attention.head_count_kv", n_head)
    kv_heads = (
        tuple(int(v) for v in kv)
        if isinstance(kv, list) and len(kv) == n_layers
        else (number("attention.head_count_kv", n_head),) * n_layers
    )
    window = number("attention.sliding_window")
    tokens = metadata.get("tokenizer.ggml.tokens")
    n_vocab = number("vocab_size") or (len(tokens) if isinstance(tokens, list) else _summarised_count(tokens))
    return ModelShape(
        architecture=arch,
        n_layers=n_layers,
        layer_bytes=tuple(layer_bytes),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tied_output=tied,
        n_embd=n_embd,
        n_ff=number("feed_forward_length"),
        n_vocab=n_vocab,
        n_head=n_head,
        kv_heads=kv_heads,
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
        sliding_window=window,
        swa_layers=_swa_layers(
            arch, n_layers, window, metadata.get(f"{arch}.attention.sliding_window_pattern")
        ),
        n_ctx_train=number("context_length"),
        pooled=metadata.get(f"{arch}.pooling_type", POOLING_NONE) != POOLING_NONE,
    )


def _summarised_count(value: Any) -> int:
    # gguf_metadata writes long arrays as "[262144 items]".
    match = re.fullmatch(r"\[(\d+) items\]", str(value))
    return int(match.group(1)) if match else 0


def _swa_layers(arch: str, n_layers: int, window: int, pattern: Any) -> tuple[bool, ...]:
    if not window:
        return (False,) * n_layers
    if isinstance(pattern, list) and len(pattern) == n_layers:
        return tuple(bool(p) for p in pattern)
    period = _SWA_PERIOD.get(arch)
    if period is None:
        return (True,) * n_layers
    return tuple((layer + 1) % period != 0 for layer in range(n_layers))


def _pad(n: int, to: int = KV_CELL_PADDING) -> int:
    return -(-n // to) * to


def kv_cells(shape: ModelShape, layer: int, n_ctx: int, n_batch: int, swa_full: bool) -> int:
    """KV cells one sequence holds in `layer`."""
    full = _pad(n_ctx)
    if shape.swa_layers[layer] and not swa_full:
        return min(full, _pad(shape.sliding_window + n_batch))
    return full


def kv_layer_bytes(
    shape: ModelShape,
    layer: int,
    n_ctx: int,
    slots: int,
    n_batch: int,
    swa_full: bool,
    bytes_per_element: int = F16_BYTES,
) -> int:
    cells = kv_cells(shape, layer, n_ctx, n_batch, swa_full)
    return cells * slots * shape.kv_heads[layer] * (shape.key_length + shape.value_length) * bytes_per_element


def compute_bytes(shape: ModelShape, n_batch: int, logit_rows: int) -> int:
    """Activations of one batch: a few n_embd-wide and two n_ff-wide rows per token, plus the rows
    of logits asked for at most (a runner's: one per slot, and its prompt log-probabilities'), no
    more than the batch has tokens (llama.cpp reserves min(n_ubatch, n_outputs_max))."""
    per_token = F32_BYTES * (
        6 * shape.n_embd + 2 * shape.n_ff + shape.n_head * (shape.key_length + shape.value_length)
    )
    return n_batch * per_token + F32_BYTES * min(n_batch, logit_rows) * shape.n_vocab


def estimate(
    shape: ModelShape,
    *,
    n_ctx: int,
    slots: int,
    n_batch: int = 512,
    n_gpu_layers: int = 0,
    swa_full: bool = True,
    kv_bytes_per_element: int = F16_BYTES,
    prompt_logprob_rows: int = PROMPT_LOGPROB_ROWS,
) -> MemoryEstimate:
    """Memory for `slots` sequences of `n_ctx` tokens each, with `n_gpu_layers` on the device
    (the last blocks first; the output head counts as one more layer, placed last), and
    `prompt_logprob_rows` rows of logits for scoring prompts (in the graph, and in the output
    buffer, which grows to hold them the first time a prompt is scored)."""
    n_gpu_layers = max(0, min(n_gpu_layers, shape.n_layers + 1))
    first_gpu_layer = shape.n_layers - min(n_gpu_layers, shape.n_layers)
    head_on_device = n_gpu_layers > shape.n_layers
    device_weights = sum(shape.layer_bytes[first_gpu_layer:]) + (shape.output_bytes if head_on_device else 0)
    host_weights = shape.input_bytes + sum(shape.layer_bytes[:first_gpu_layer])
    if not head_on_device and not shape.tied_output:
        host_weights += shape.output_bytes
    kv_per_layer = [
        kv_layer_bytes(shape, layer, n_ctx, slots, n_batch, swa_full, kv_bytes_per_element)
        for layer in range(shape.n_layers)
    ]
    device_kv = sum(kv_per_layer[first_gpu_layer:])
    host_kv = sum(kv_per_layer[:first_gpu_layer])
    compute = compute_bytes(shape, n_batch, slots + prompt_logprob_rows)
    # With any offload the graph runs on the device; the host keeps a staging buffer (~a quarter).
    device_compute, host_compute = (compute, compute // 4) if n_gpu_layers else (0, compute)
    scored_outputs = F32_BYTES * prompt_logprob_rows * shape.n_vocab  # the output buffer is in host memory
    return MemoryEstimate(
        weights=host_weights + device_weights,
        kv=host_kv + device_kv,
        compute=compute,
        host=host_weights + host_kv + host_compute + scored_outputs,
        device=device_weights + device_kv + device_compute,
        n_gpu_layers=n_gpu_layers,
    )


# Tokens of the embeddings context of a model that declares no pooling (a chat model asked for
# embeddings, pooled by mean): llama.cpp's default batch. Ollama takes inputs up to num_ctx; we
# deliberately don't, as each token costs 2 MiB on a 262,144-token vocabulary (see
# `embedding_estimate`) for a use that is rare. Longer inputs are truncated (or refused).
CHAT_MODEL_EMBEDDING_TOKENS = 512
MIN_EMBEDDING_TOKENS = 512


def embedding_context_tokens(num_ctx: int, n_ctx_train: int, pooled: bool) -> int:
    """The tokens an embeddings context holds (one input at most; several inputs share it). An
    embedding model gets its context as loaded, at least 512 but never past what it was trained
    on (absolute positions end there); a chat model gets 512."""
    if not pooled:
        return min(CHAT_MODEL_EMBEDDING_TOKENS, n_ctx_train) if n_ctx_train else CHAT_MODEL_EMBEDDING_TOKENS
    if not n_ctx_train:
        return max(num_ctx, MIN_EMBEDDING_TOKENS)
    return min(max(num_ctx, MIN_EMBEDDING_TOKENS), n_ctx_train)


def embedding_estimate(shape: ModelShape, *, n_ctx: int, n_gpu_layers: int = 0) -> MemoryEstimate:
    """What a pooled-embeddings context of `n_ctx` tokens adds beside the weights already loaded:
    one sequence's KV cells, the activations of a batch of `n_ctx` tokens, and its outputs.

    The outputs dominate for a large vocabulary: pooling marks every token of the batch as an
    output, and llama.cpp computes a row of logits for each in the graph and reserves another in its
    output buffer (`output_reserve`), even where only embeddings are read: 2 × n_vocab floats a
    token, 2 MiB a token for Gemma 3. Measured on Gemma 3 270M: a runner's RSS grew by 1,059 MiB
    embedding 512 tokens (this estimate: 1,054 MiB), and by 2,080 MiB for 1,016 tokens in a
    1,024-token context (before chat models were held to 512). The buffers stay allocated at their
    largest until the runner exits.

    A chat model's embeddings now stop at its hidden states (llama._HiddenStates): on a CPU the
    graph's rows of logits are reserved but never written, and resident memory grows by the rest
    (548 MiB for 512 tokens of Gemma 3). They stay counted: the first check can find a model whose
    hidden states are not what it pools (then they are written), and a GPU allocates them anyway."""
    context = estimate(
        shape, n_ctx=n_ctx, slots=1, n_batch=n_ctx, n_gpu_layers=n_gpu_layers, prompt_logprob_rows=0
    )
    weights = estimate(shape, n_ctx=0, slots=0, n_batch=0, n_gpu_layers=n_gpu_layers, prompt_logprob_rows=0)
    # The graph's logits, one row a token (the context's estimate has the row of its one slot),
    # are the output head's result: on the device when the head is, else in host memory. The
    # output buffer is in host memory.
    graph_logits = F32_BYTES * (n_ctx - 1) * shape.n_vocab
    head_on_device = n_gpu_layers > shape.n_layers
    device_logits, host_logits = (graph_logits, graph_logits // 4) if head_on_device else (0, graph_logits)
    output_buffer = F32_BYTES * n_ctx * (shape.n_vocab + shape.n_embd)
    return MemoryEstimate(
        weights=0,
        kv=context.kv,
        compute=context.compute + graph_logits + output_buffer,
        host=context.host - weights.host + host_logits + output_buffer,
        device=context.device - weights.device + device_logits,
        n_gpu_layers=n_gpu_layers,
    )
