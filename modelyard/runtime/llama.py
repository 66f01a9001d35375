"""A thin, typed layer over llama-cpp-python's low-level (ctypes) API, used inside a runner process.

Only what the engine needs: load a model (mmapped in place), make contexts, tokenize and
detokenize, fill batches, build sampler chains, apply LoRA adapters, read embeddings. llama.cpp's
log lines are captured (not printed): they carry the loader's error messages and the measured
buffer sizes, which `parse_buffer_sizes` turns into memory figures.

ctypes callbacks are kept referenced on their owners: a collected callback is a segfault.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np  # llama_cpp imports it anyway
import numpy.typing as npt

from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.topk import top_candidates

MIB = 1024 * 1024

_BUFFER_LINE = re.compile(
    r"(?P<buffer>[A-Za-z0-9_]+)\s+(?P<kind>model|KV|compute|output)\s+buffer size"
    r"\s*=\s*(?P<mib>[0-9.]+)\s*MiB"
)
# Buffers in host memory: the CPU backend's own, its repacked-weight buffers (CPU_REPACK, AMX) and
# the pinned host buffers GPU backends use for staging (CUDA_Host, …).
_HOST_BUFFER = re.compile(r"CPU.*|AMX|KLEIDIAI|.*_Host")


_OFFLOAD_LINE = re.compile(r"offloaded (?P<on_gpu>\d+)/(?P<layers>\d+) layers to GPU")


def all_layers_offloaded(lines: Iterable[str]) -> bool:
    """Whether llama.cpp's load log says every layer went to a GPU ("offloaded 19/19 layers to
    GPU"; a build without a GPU backend logs no such line) (pure)."""
    for line in lines:
        match = _OFFLOAD_LINE.search(line)
        if match is not None:
            return int(match["layers"]) > 0 and int(match["on_gpu"]) >= int(match["layers"])
    return False


@dataclass(frozen=True)
class BufferSizes:
    """Bytes llama.cpp allocated, by kind, summed over devices; and the part on GPUs."""

    weights: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0
    weights_device: int = 0
    kv_device: int = 0
    compute_device: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.output

    @property
    def device_total(self) -> int:
        return self.weights_device + self.kv_device + self.compute_device


def parse_buffer_sizes(lines: Iterable[str]) -> BufferSizes:
    """Memory figures from llama.cpp's log, as Ollama reads llama-server's stderr (pure)."""
    totals = {"model": 0, "KV": 0, "compute": 0, "output": 0}
    device = {"model": 0, "KV": 0, "compute": 0}
    for line in lines:
        match = _BUFFER_LINE.search(line)
        if match is None:
            continue
        size = int(float(match["mib"]) * MIB)
        kind = match["kind"]
        totals[kind] += size
        if kind in device and not _HOST_BUFFER.fullmatch(match["buffer"]):
            device[kind] += size
    return BufferSizes(
        weights=totals["model"],
        kv=totals["KV"],
        compute=totals["compute"],
        output=totals["output"],
        weights_device=device["model"],
        kv_device=device["KV"],
        compute_device=device["compute"],
    )


class LogCapture:
    """Receives llama.cpp's log lines (all threads); keeps the last ones for error messages."""

    def __init__(self, keep: int = 400) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.load_lines: list[str] = []  # the lines that say where the model went and how big
        self._partial = ""
        self._lock = threading.Lock()
        self._callback = L.llama_log_callback(self._on_log)

    def install(self) -> None:
        L.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        chunk = text.decode("utf-8", "replace") if text else ""
        with self._lock:
            data = self._partial + chunk
            *complete, self._partial = data.split("\n")
            for line in complete:
                self.lines.append(line)
                if "buffer size" in line or "layers to GPU" in line:
                    self.load_lines.append(line)

    def errors(self) -> list[str]:
        """Lines that look like the loader explaining a failure."""
        with self._lock:
            lines = list(self.lines)
        return [line.strip() for line in lines if re.search(r"error|failed|invalid|unable", line, re.I)]


_backend_ready = False


def init_backend(logs: LogCapture) -> None:
    global _backend_ready  # llama_backend_init is once per process, by llama.cpp's contract
    logs.install()
    if not _backend_ready:
        L.llama_backend_init()
        _backend_ready = True


class Model:
    def __init__(
        self,
        path: Path,
        load: LoadOptions,
        *,
        repack: bool = True,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        params = L.llama_model_default_params()
        params.n_gpu_layers = load.num_gpu if load.num_gpu >= 0 else -1
        params.main_gpu = load.main_gpu
        params.load_mode = _load_mode(load)
        # Weight repacking picks the fastest CPU layout, but on CPUs that report AMX without
        # letting a VM use it the repacked kernels die with SIGILL; the parent retries without.
        params.use_extra_bufts = repack
        if progress is not None:

            def on_progress(fraction: float, _user: ctypes.c_void_p) -> bool:
                progress(fraction)
                return True

            self._progress_cb = L.llama_progress_callback(on_progress)
            params.progress_callback = self._progress_cb
        self.ptr = L.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise OSError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._piece_buffer = ctypes.create_string_buffer(256)

    @property
    def n_ctx_train(self) -> int:
        return int(L.llama_model_n_ctx_train(self.ptr))

    @property
    def n_embd(self) -> int:
        return int(L.llama_model_n_embd(self.ptr))

    @property
    def n_swa(self) -> int:
        """The sliding attention window of the layers that have one (Gemma 3), else 0."""
        return int(L.llama_model_n_swa(self.ptr))

    @property
    def keeps_a_state(self) -> bool:
        """Recurrent or hybrid (Mamba, RWKV, Granite 4…): a sequence's memory is a state, which
        cannot be cut back to an earlier position."""
        return bool(L.llama_model_is_recurrent(self.ptr) or L.llama_model_is_hybrid(self.ptr))

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None where the file has no such key."""
        buffer = ctypes.create_string_buffer(256)
        length = L.llama_model_meta_val_str(self.ptr, key.encode(), buffer, len(buffer))
        if length < 0:
            return None
        if length >= len(buffer):  # cut short: ask again with room for all of it
            buffer = ctypes.create_string_buffer(length + 1)
            L.llama_model_meta_val_str(self.ptr, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace")

    @property
    def declares_pooling(self) -> bool:
        """The GGUF names a pooling type other than none: an embedding model, as
        memory.ModelShape.pooled reads the same key before loading."""
        value = self.metadata(f"{self.metadata('general.architecture')}.pooling_type")
        return value is not None and value.strip() not in ("", "0")

    @property
    def size_bytes(self) -> int:
        return int(L.llama_model_size(self.ptr))

    @property
    def has_encoder(self) -> bool:
        return bool(L.llama_model_has_encoder(self.ptr))

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        tokens = (L.llama_token * capacity)()
        n = L.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:  # the buffer was too small: llama.cpp says how large it must be
            capacity = -n
            tokens = (L.llama_token * capacity)()
            n = L.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        return list(tokens[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        n = L.llama_token_to_piece(self.vocab, token, self._piece_buffer, len(self._piece_buffer), 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
            return buffer.raw[:n]
        return self._piece_buffer.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of a whole token sequence, as llama.cpp renders it (SentencePiece's leading space
        of the first token removed, special tokens as text)."""
        array = (L.llama_token * len(tokens))(*tokens)
        capacity = 8 * len(tokens) + 16
        buffer = ctypes.create_string_buffer(capacity)
        n = L.llama_detokenize(self.vocab, array, len(tokens), buffer, capacity, False, True)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = L.llama_detokenize(self.vocab, array, len(tokens), buffer, -n, False, True)
        return buffer.raw[:n].decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = L.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    @property
    def bos_text(self) -> str:
        return self.token_text(L.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.token_text(L.llama_vocab_eos(self.vocab))

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None


def _load_mode(load: LoadOptions) -> int:
    if load.use_mmap and load.use_mlock:
        return int(L.LLAMA_LOAD_MODE_MMAP_MLOCK)
    if load.use_mlock:
        return int(L.LLAMA_LOAD_MODE_MLOCK)
    if load.use_mmap:
        return int(L.LLAMA_LOAD_MODE_MMAP)
    return int(L.LLAMA_LOAD_MODE_NONE)


def _ggml_functions() -> Any:
    """ggml's own functions, for the tensors an eval callback is shown (llama-cpp-python loads the
    library; its module says "internal": without it, embeddings are pooled by llama.cpp as before)."""
    try:
        from llama_cpp._ggml import libggml
    except (ImportError, OSError):  # pragma: no cover - another build of llama-cpp-python
        return None
    libggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    libggml.ggml_get_name.restype = ctypes.c_char_p
    libggml.ggml_nrows.argtypes = [ctypes.c_void_p]
    libggml.ggml_nrows.restype = ctypes.c_int64
    libggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
    libggml.ggml_nbytes.restype = ctypes.c_size_t
    libggml.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    libggml.ggml_backend_tensor_get.restype = None
    return libggml


_ggml = _ggml_functions()


class _HiddenStates:
    """An eval callback that copies a batch's final hidden states, the output norm's result (every
    llama.cpp model builder names it "result_norm") while `read` is set, and once `stop` is set
    too, stops the computation there.

    An embeddings context of a chat model still computes the lm_head for every token (llama.cpp
    builds the logits into the graph, and pooling marks every token an output): for Gemma 3's
    262,144-token vocabulary that was most of an embeddings batch's time. The mean of a
    sequence's rows is what llama.cpp's mean pooling computes from the same tensor (its user checks
    that once before it sets `stop`). A tensor of another shape than one row of n_embd floats per
    token of the batch is left alone: llama.cpp then computes and pools as usual, `rows` None."""

    NAME = b"result_norm"

    def __init__(self, n_embd: int) -> None:
        self.n_embd = n_embd
        self.expected_rows = 0
        self.rows: npt.NDArray[np.float32] | None = None
        self.read = True
        self.stop = False
        self.callback = L.ggml_backend_sched_eval_callback(self._on_tensor)  # referenced: see top

    def _on_tensor(self, tensor: int, ask: bool, _user_data: int) -> bool:
        # Asked, True: "show me this tensor once computed"; shown, False: "stop the computation".
        try:
            if not self.read or _ggml.ggml_get_name(tensor) != self.NAME:
                return not ask
            if ask:
                return True
            rows, nbytes = self.expected_rows, self.expected_rows * self.n_embd * 4
            if _ggml.ggml_nrows(tensor) != rows or _ggml.ggml_nbytes(tensor) != nbytes:
                return True
            hidden = np.empty((rows, self.n_embd), dtype=np.float32)
            _ggml.ggml_backend_tensor_get(tensor, hidden.ctypes.data, 0, nbytes)
            self.rows = hidden
            return not self.stop
        except BaseException:  # ctypes cannot raise it into C; it would print it and return False
            return True  # (stop, copied nothing): go on, and the usual computation answers


class Context:
    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        threads: int,
        embeddings: bool = False,
        pooling: int | None = None,
        flash_attention: bool | None = None,
        prompt_logprob_rows: int = 0,
        hidden_states: bool = False,
    ) -> None:
        """With `embeddings`, pooled embeddings are read; otherwise one row of logits per sequence
        and, per batch, `prompt_logprob_rows` more for the prompt tokens whose log-probabilities
        are asked for (each row costs n_vocab floats, in the compute and the output buffers).
        With `hidden_states` (and `embeddings`), a decode also copies the batch's final hidden
        states, read as `hidden_states`; after `read_hidden_states(read=True, stop=True)`, it
        computes no further (_HiddenStates)."""
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_seq_max = n_seq_max
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        self.prompt_logprob_rows = 0 if embeddings else prompt_logprob_rows
        # Pooling needs every token's output, so an embeddings context keeps the default (n_batch).
        # Otherwise we read one row of logits per sequence per batch, and the scored prompt rows:
        # reserving the default would cost n_batch × n_vocab floats (512 MiB for Gemma's vocab). A
        # batch with more outputs than this makes llama.cpp abort: the engine keeps below it.
        self.n_outputs_max = n_batch if embeddings else n_seq_max + self.prompt_logprob_rows
        if embeddings:
            # One KV buffer for all sequences, as llama-cpp-python's embed() uses: with a stream per
            # sequence, pooled embeddings of several sequences in one batch come out wrong.
            params.kv_unified = True
        else:
            params.n_outputs_max = self.n_outputs_max
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        params.embeddings = embeddings
        if pooling is not None:
            params.pooling_type = pooling
        self._hidden = (
            _HiddenStates(model.n_embd) if embeddings and hidden_states and _ggml is not None else None
        )
        if self._hidden is not None:
            params.cb_eval = self._hidden.callback
        if flash_attention is not None:
            params.flash_attn_type = (
                L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise OSError("llama.cpp could not create a context (out of memory?)")
        self.memory = L.llama_get_memory(self.ptr)
        self.n_ctx = int(L.llama_n_ctx(self.ptr))
        self.n_ctx_seq = int(L.llama_n_ctx_seq(self.ptr))
        self.n_batch = int(L.llama_n_batch(self.ptr))
        self.pooling = int(L.llama_pooling_type(self.ptr))

    def clear(self) -> None:
        L.llama_memory_clear(self.memory, True)

    def decode(self, batch: Batch) -> int:
        if self._hidden is not None:
            self._hidden.rows = None
            self._hidden.expected_rows = batch.size
        return int(L.llama_decode(self.ptr, batch.raw))

    @property
    def hidden_states(self) -> npt.NDArray[np.float32] | None:
        """The last decode's final hidden states, a row per token of its batch, in its order (None:
        not read)."""
        return self._hidden.rows if self._hidden is not None and self._hidden.read else None

    @property
    def stops_at_hidden_states(self) -> bool:
        return self._hidden is not None and self._hidden.stop  # (set only with read)

    def read_hidden_states(self, *, read: bool, stop: bool = False) -> None:
        """Whether a decode copies the final hidden states (`hidden_states`), and whether it then
        computes no further (nothing llama.cpp computes from them, pooled embeddings or logits, is
        there to read then). Reading needs a context made with `hidden_states`."""
        if self._hidden is None:
            if read:
                raise ValueError("this context was made without hidden_states")
            return
        self._hidden.read, self._hidden.stop = read, read and stop

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(L.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, source: int, target: int) -> None:
        """Copy every cell of `source` to `target` (whose own cells are dropped); between the
        streams of a non-unified cache, the whole stream is copied at the next decode."""
        L.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def seq_pos_min(self, seq: int) -> int:
        """The oldest position still in the cache for `seq` (-1: none)."""
        return int(L.llama_memory_seq_pos_min(self.memory, seq))

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        L.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    @property
    def can_shift(self) -> bool:
        return bool(L.llama_memory_can_shift(self.memory))

    def set_adapters(self, adapters: Sequence[tuple[LoraAdapter, float]]) -> None:
        if not adapters:
            return
        n = len(adapters)
        pointer_type = L.llama_adapter_lora_p_ctypes
        pointers = (pointer_type * n)(*[ctypes.cast(a.ptr, pointer_type) for a, _ in adapters])
        scales = (ctypes.c_float * n)(*[s for _, s in adapters])
        rc = L.llama_set_adapters_lora(self.ptr, pointers, n, scales)
        if rc != 0:
            raise OSError(f"llama.cpp refused the LoRA adapters (code {rc})")

    def sequence_embedding(self, seq: int, n_embd: int) -> list[float]:
        pointer = L.llama_get_embeddings_seq(self.ptr, seq)
        if not pointer:
            raise OSError(f"no pooled embedding for sequence {seq}")
        return list(pointer[:n_embd])

    def close(self) -> None:
        if self.ptr:
            L.llama_free(self.ptr)
            self.ptr = None


class Batch:
    def __init__(self, capacity: int, n_seq_max: int) -> None:
        self.capacity = capacity
        self.raw = L.llama_batch_init(capacity, 0, n_seq_max)
        self.size = 0
        self.outputs = 0  # tokens whose logits are asked for

    def clear(self) -> None:
        self.size = self.outputs = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; returns its index in the batch (where its logits will be)."""
        i = self.size
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq
        raw.logits[i] = logits
        self.outputs += bool(logits)
        self.size = i + 1
        raw.n_tokens = self.size
        return i

    def close(self) -> None:
        L.llama_batch_free(self.raw)


class LoraAdapter:
    def __init__(self, model: Model, path: Path) -> None:
        self.ptr = L.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not self.ptr:
            raise OSError(f"llama.cpp could not load the LoRA adapter {path}")


# A top-k above this goes through the chain on the whole row: the preselection's gain shrinks as k
# grows, and a k near the vocabulary size means top-k keeps nearly everything anyway.
PRESELECT_TOP_K_MAX = 1024


# The best tokens greedy hands the grammar when it refused the best one, before the whole row.
GRAMMAR_CANDIDATES = 1024


def _valid_only(data: ctypes.Array[L.llama_token_data]) -> tuple[ctypes.Array[L.llama_token_data], int]:
    """The candidates a grammar left (its refused ones are -inf), alone: the chain after it must not
    see them, as -inf x a repeat_penalty of 0 is NaN, which llama.cpp's greedy then keeps (a review
    found the runner aborted so, accepting a refused token). Raises when none is left."""
    view = np.frombuffer(memoryview(data), dtype=_TOKEN_DATA)
    valid = np.isfinite(view["logit"])
    if valid.all():
        return data, len(data)
    count = int(valid.sum())
    if count == 0:
        raise RuntimeError("the grammar takes no token of the row")
    kept = (L.llama_token_data * count)()
    np.frombuffer(memoryview(kept), dtype=_TOKEN_DATA)[:] = view[valid]
    return kept, count


# llama_token_data as numpy reads it, to fill the candidates a field at a time (np.ctypeslib would
# derive this from the struct on every call, at ~30 µs).
_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]


class Sampler:
    """A llama.cpp sampler chain for one request, in llama-server's order: logit bias → penalties →
    top_k → typical_p → top_p → min_p → temperature → distribution; and a grammar, which checks the
    token the chain picks, as llama-server and Ollama do.

    A grammar first in the chain masks all of the row at every token (262,144 tokens for Gemma:
    most of a step's time, 5× a token's time on a 2-core VM). Instead the chain picks from the row
    as it is (in place where it can, see below) and the grammar checks that one token; only when it
    refuses it is the whole row masked and the chain run again (llama.cpp's common_sampler_sample,
    Ollama's Sampler.Sample). Greedy picks the same token either way. A sampled token is drawn from
    the row before the mask: a valid one is taken with its own probability, not renormalised over
    the valid ones; the peers make the same trade."""

    def __init__(
        self,
        model: Model,
        options: SamplingOptions,
        seed: int,
        grammar: str | None = None,
        n_ctx: int = 4096,
        *,
        logit_bias: Sequence[tuple[int, float]] = (),
        in_place: bool = True,
    ) -> None:
        """`logit_bias`: (token, bias) pairs added to those tokens' logits (OpenAI's `logit_bias`).
        `in_place` False: always through llama.cpp's chain on the whole row, a grammar first in it
        (the reference that tests and benchmarks hold the in-place reading to)."""
        self.ptr = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        # llama_sampler_sample first copies the logits row into n_vocab candidates (3 MiB for
        # Gemma's 262,144 tokens) and the chain works on all of them: 0.5-2 ms a token on a 2-core
        # VM, and on an H100 running a 270M model ~1.2 ms for greedy, more than half of an
        # 8-stream step (benchmarks/RESULTS.md, "Sampling one token"). Where nothing comes first that
        # needs the whole row (a grammar), `sample` reads the row in place instead: greedy is its
        # argmax (the first of equal maxima, as llama.cpp's greedy sampler picks), and top-k gets
        # only the candidates that can be in the top k (topk.py), on which the same chain then
        # picks the same token with the same random draws (where logits tie exactly, the chain's
        # sort may order them otherwise on the shorter array). Penalties change only the tokens of
        # their window: after them, the top k lie among the k + |window| best of the row and the
        # window itself, which is what the chain gets, penalties included (greedy: top 1). A logit
        # bias changes only its own tokens, which go to the chain the same way.
        self._n_vocab = model.n_vocab
        self._argmax = False
        self._greedy = options.greedy
        self._preselect = 0  # top-k: hand the chain this many best candidates, not the whole row
        self._window: deque[int] | None = None  # the penalties' last tokens, as their sampler keeps them
        self._grammar = None  # checks the chain's token (in place); else first in the chain
        self._row: ctypes.Array[L.llama_token_data] | None = None  # candidates for the whole row, reused
        add = self._add
        if grammar:
            gsampler = L.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            if not gsampler:
                L.llama_sampler_free(self.ptr)
                raise ValueError("the grammar could not be compiled")
            if in_place:
                self._grammar = gsampler
            else:
                add(gsampler)
        self._biased = np.unique(np.fromiter((t for t, _ in logit_bias), dtype=np.int64))
        if logit_bias:
            pairs = (L.llama_logit_bias * len(logit_bias))(*(L.llama_logit_bias(t, b) for t, b in logit_bias))
            add(L.llama_sampler_init_logit_bias(model.n_vocab, len(logit_bias), pairs))
        penalties = options.repeat_penalty != 1.0 or options.presence_penalty or options.frequency_penalty
        if penalties and options.repeat_last_n != 0:
            # Ollama's repeat_last_n -1 means the whole context; llama.cpp wants the count itself.
            last_n = n_ctx if options.repeat_last_n < 0 else min(options.repeat_last_n, n_ctx)
            self._window = deque(maxlen=last_n)
            add(
                L.llama_sampler_init_penalties(
                    model.n_vocab,
                    last_n,
                    options.repeat_penalty,
                    options.frequency_penalty,
                    options.presence_penalty,
                )
            )
        # A caller that asks for the chain gets it on the whole row.
        whole_row_first = not in_place
        if options.greedy:
            if not whole_row_first:
                changed = self._window is not None or bool(logit_bias)  # logits moved before greedy
                self._argmax = not changed
                self._preselect = 1 if changed else 0
            add(L.llama_sampler_init_greedy())
            return
        if options.top_k > 0:
            if not whole_row_first and options.top_k <= PRESELECT_TOP_K_MAX:
                self._preselect = options.top_k
            add(L.llama_sampler_init_top_k(options.top_k))
        if options.typical_p < 1.0:
            add(L.llama_sampler_init_typical(options.typical_p, 1))
        if options.top_p < 1.0:
            add(L.llama_sampler_init_top_p(options.top_p, 1))
        if options.min_p > 0.0:
            add(L.llama_sampler_init_min_p(options.min_p, 1))
        add(L.llama_sampler_init_temp(options.temperature))
        add(L.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, sampler: object) -> None:
        L.llama_sampler_chain_add(self.ptr, sampler)

    @property
    def reads_row(self) -> str | None:
        """How `sample` reads the logits row itself: "argmax", "candidates" (the chain gets only
        those that can win), or None (the chain gets the whole row)."""
        return "argmax" if self._argmax else "candidates" if self._preselect else None

    def sample(self, ctx: Context, index: int) -> int:
        """Sample from the logits at batch index `index`; the chain (and grammar) accept the token."""
        if self._grammar is None and not (self._argmax or self._preselect):
            return int(L.llama_sampler_sample(self.ptr, ctx.ptr, index))
        row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx.ptr, index), shape=(self._n_vocab,))
        token = self._pick(row)
        if self._grammar is not None and not self._grammar_takes(token):
            token = self._pick_valid(row)
            if not self._grammar_takes(token):  # accepted, a refused token aborts the process
                raise RuntimeError(f"the sampler picked token {token}, which the grammar refuses")
        if self._grammar is not None:
            L.llama_sampler_accept(self._grammar, token)
        L.llama_sampler_accept(self.ptr, token)
        if self._window is not None:
            self._window.append(token)
        return token

    def _pick(self, row: npt.NDArray[np.float32]) -> int:
        """The token the chain picks from the row, not yet accepted."""
        if self._argmax:
            token = int(row.argmax())
            if not np.isnan(row[token]):  # numpy's argmax stops at a NaN; llama.cpp's greedy skips it
                return token
        if not self._preselect:
            return self._pick_from_whole_row(row, masked=False)
        data, _ = self._candidates(row, self._preselect)
        return self._chain_picks(data, len(data))

    def _candidates(
        self, row: npt.NDArray[np.float32], k: int
    ) -> tuple[ctypes.Array[L.llama_token_data], npt.NDArray[np.int64]]:
        """Candidates holding the k best tokens after the logits the chain moves before it ranks
        them (the penalties' window and the biased tokens: these are `changed`): they lie among the
        k + that many best of the row, and the changed ones."""
        changed = self._biased
        if self._window:
            changed = np.union1d(changed, np.fromiter(set(self._window), dtype=np.int64))
        if len(changed):
            ids = np.union1d(top_candidates(row, k + len(changed)), changed)
        else:
            ids = top_candidates(row, k)
        data = (L.llama_token_data * len(ids))()
        view = np.frombuffer(memoryview(data), dtype=_TOKEN_DATA)
        view["id"] = ids
        view["logit"] = row[ids]
        return data, changed

    def _pick_valid(self, row: npt.NDArray[np.float32]) -> int:
        """The chain's pick among the tokens the grammar takes, once it refused the chain's own.

        Greedy looks among the GRAMMAR_CANDIDATES best tokens first: if one of them that nothing
        moved is valid, no token outside, ranked below it with its logit as it is, can be the best
        valid one, and the pick is the one a grammar first in the chain makes. Elsewhere, and when
        none is, the grammar masks the whole row (llama.cpp's own fallback). Sampling needs all the
        valid tokens: at a JSON structure point there are fewer in the vocabulary than top-k keeps."""
        if self._greedy:  # (in place, as a grammar checks only there: argmax, or a candidate)
            data, changed = self._candidates(row, GRAMMAR_CANDIDATES)
            candidates = L.llama_token_data_array(data, len(data), -1, False)
            L.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
            view = np.frombuffer(memoryview(data), dtype=_TOKEN_DATA)
            if (np.isfinite(view["logit"]) & ~np.isin(view["id"], changed)).any():
                return self._chain_picks(*_valid_only(data))
        return self._pick_from_whole_row(row, masked=True)

    def _pick_from_whole_row(self, row: npt.NDArray[np.float32], *, masked: bool) -> int:
        """The token the chain picks from every token of the row (`masked`: the grammar's invalid
        ones set to -inf first), not yet accepted."""
        if self._row is None:
            self._row = (L.llama_token_data * self._n_vocab)()
        view = np.frombuffer(memoryview(self._row), dtype=_TOKEN_DATA)
        view["id"] = np.arange(self._n_vocab, dtype=np.int32)  # a sampler may have sorted them
        view["logit"] = row
        view["p"] = 0.0
        if masked:
            candidates = L.llama_token_data_array(self._row, self._n_vocab, -1, False)
            L.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
            return self._chain_picks(*_valid_only(self._row))
        return self._chain_picks(self._row, self._n_vocab)

    def _chain_picks(self, data: ctypes.Array[L.llama_token_data], size: int) -> int:
        candidates = L.llama_token_data_array(data, size, -1, False)
        L.llama_sampler_apply(self.ptr, ctypes.byref(candidates))
        if not 0 <= candidates.selected < candidates.size:  # where llama_sampler_sample aborts
            raise RuntimeError(f"the sampler chain selected no token ({candidates.selected})")
        # As llama_sampler_sample does; a sampler may point `data` elsewhere, so read it from there.
        return int(candidates.data[candidates.selected].id)

    def _grammar_takes(self, token: int) -> bool:
        single = (L.llama_token_data * 1)(L.llama_token_data(token, 1.0, 0.0))
        candidates = L.llama_token_data_array(single, 1, -1, False)
        L.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        return bool(candidates.data[0].logit != -math.inf)

    def close(self) -> None:
        if self.ptr:
            L.llama_sampler_free(self.ptr)
            self.ptr = None
        if self._grammar is not None:
            L.llama_sampler_free(self._grammar)
            self._grammar = None


def top_logprobs(
    ctx: Context, model: Model, index: int, chosen: int, k: int, *, special: bool = False
) -> dict[str, Any]:
    """The chosen token's log-probability and the `k` most likely tokens at batch row `index`,
    from the raw logits (before sampling's penalties and temperature), with their logits.
    `special`: control tokens shown as their text (`<eos>`), else as nothing (as in the output)."""
    return logprob_entries(ctx, model, index, [chosen], k, special=special)[0]


def logprob_entries(
    ctx: Context, model: Model, first: int, chosen: Sequence[int], k: int, *, special: bool = False
) -> list[dict[str, Any]]:
    """`top_logprobs` of the batch rows `first`, `first` + 1, … for the tokens `chosen` (a prompt's
    tokens, each scored by the row of the token before it), computed for all rows at once."""
    if not chosen:
        return []
    rows = np.stack(
        [
            np.ctypeslib.as_array(L.llama_get_logits_ith(ctx.ptr, first + i), shape=(model.n_vocab,))
            for i in range(len(chosen))
        ]
    )
    peaks = rows.max(axis=1, keepdims=True)
    # exp in float32 (one temporary the size of the rows), summed in float64.
    log_totals = peaks[:, 0].astype(np.float64) + np.log(np.exp(rows - peaks).sum(axis=1, dtype=np.float64))
    if k >= model.n_vocab:
        best = np.broadcast_to(np.arange(model.n_vocab), rows.shape)
    elif k == 1:
        best = rows.argmax(axis=1, keepdims=True)
    else:
        best = np.argpartition(-rows, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(rows, best, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)

    def entry(row: int, token: int) -> dict[str, Any]:
        piece = model.piece(token, special=special)
        logit = float(rows[row, token])
        return {
            "id": token,
            "token": piece.decode("utf-8", "replace"),
            "bytes": list(piece),  # a token may hold part of a UTF-8 character
            "logit": logit,
            "logprob": logit - float(log_totals[row]),
        }

    return [
        {**entry(row, int(token)), "top": [entry(row, int(t)) for t in best[row]]}
        for row, token in enumerate(chosen)
    ]


def json_schema_grammar(schema: object) -> str:
    """GBNF for a JSON schema (llama-cpp-python's converter, taught as _schema_converter says).
    Raises ValueError for a bad schema."""
    import json

    from modelyard.runtime.json_schemas import bounded, check_grammar, for_the_converter

    try:
        # Bounded before the converter, which unrolls some repetitions itself, and its grammar
        # checked before llama.cpp's parser, which aborts the runner on too many.
        converter = _schema_converter()
        converted = converter.resolve_refs(
            json.loads(json.dumps(for_the_converter(bounded(schema)))), "stdin"
        )
        converter.visit(converted, "")
        grammar = str(converter.format_grammar())
        check_grammar(grammar)
        return grammar
    except Exception as exc:  # the converter raises assorted types for unsupported or broken schemas
        # Its MemoryError says nothing (a serving review: "invalid JSON schema: " and no more).
        raise ValueError(f"invalid JSON schema: {exc or type(exc).__name__}") from None


def _schema_converter() -> Any:
    """llama-cpp-python's SchemaConverter (as its json_schema_to_gbnf makes one), taught what
    llama.cpp's own C++ converter (Ollama's) does: an integer's minimum and maximum, which it
    leaves out ("TODO"; json_schemas.integer_range_rule), a list of types read with the rest of
    the schema (json_schemas.each_type), `items` of `{}`, `true` or `false` (after `prefixItems`
    too: json_schemas.items_as_read), and literals with backslashes (json_schemas.gbnf_literal);
    and what neither converter does: a number's minimum and maximum (json_schemas.number_range_rule)."""
    from llama_cpp import llama_grammar

    from modelyard.runtime.json_schemas import (
        bounded_kind,
        each_type,
        gbnf_literal,
        integer_bounds,
        integer_range_rule,
        items_as_read,
        number_bounds,
        number_range_rule,
    )

    class AsLlamaCppReadsThem(llama_grammar.SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            return gbnf_literal(literal)

        def visit(self, schema: Any, name: str) -> Any:
            rule_name = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
            alternatives = each_type(schema)  # each visited here again: the rest applies to it
            if alternatives is not None:
                return self._add_rule(rule_name, self._generate_union_rule(name, alternatives))
            if isinstance(schema, dict) and "items" in schema:
                schema = items_as_read(schema)
                if schema.get("items") is False:  # no items at all
                    return self._add_rule(rule_name, '"[" space "]" space')
            kind = bounded_kind(schema)
            if kind == "integer":
                return self._add_rule(rule_name, f"({integer_range_rule(*integer_bounds(schema))}) space")
            if kind == "number":
                return self._add_rule(rule_name, f"({number_range_rule(*number_bounds(schema))}) space")
            return super().visit(schema, name)

    return AsLlamaCppReadsThem(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def json_grammar() -> str:
    from llama_cpp import llama_grammar

    return str(llama_grammar.JSON_GBNF)


def supports_gpu_offload() -> bool:
    return bool(L.llama_supports_gpu_offload())
