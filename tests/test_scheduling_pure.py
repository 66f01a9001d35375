"""The scheduler's pure decisions: keep_alive, eviction, the memory estimate, GPU offload plans, and
/proc parsing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from modelyard.errors import InferenceRequestError
from modelyard.runtime.eviction import Resident, Shortfall, choose_drains, choose_evictions
from modelyard.runtime.gpu import Device, plan_offload, processor_split
from modelyard.runtime.keepalive import format_keep_alive, parse_keep_alive
from modelyard.runtime.memory import (
    ModelShape,
    embedding_context_tokens,
    embedding_estimate,
    estimate,
    kv_cells,
    shape_from_gguf,
)
from modelyard.runtime.options import PROMPT_LOGPROB_ROWS
from modelyard.runtime.procstats import parse_mapped_rss, parse_meminfo, parse_rss

GB = 10**9
MIB = 2**20

# --- keep_alive ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(0, 0.0, id="zero"),
        pytest.param(30, 30.0, id="int-seconds"),
        pytest.param(1.5, 1.5, id="float-seconds"),
        pytest.param(-1, math.inf, id="negative-forever"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("250ms", 0.25, id="millis"),
        pytest.param("1.5h", 5400.0, id="fractional-unit"),
        pytest.param("-1m", math.inf, id="negative-duration-forever"),
        pytest.param("0", 0.0, id="bare-zero-string"),
        pytest.param("forever", math.inf, id="forever-word"),
        pytest.param(292 * 365 * 86400, 292 * 365 * 86400.0, id="292-years-fits-go"),
        pytest.param(1e19, math.inf, id="past-go-duration-forever"),
    ],
)
def test_parse_keep_alive(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("3600", "add a unit", id="bare-number-string"),
        pytest.param("5 minutes", "invalid duration", id="words"),
        pytest.param("", "invalid duration", id="empty"),
        pytest.param(True, "number of seconds", id="bool"),
        pytest.param(None, "number of seconds", id="null"),
        pytest.param([5], "number or a string", id="list"),
        pytest.param("3000000h", "292 years", id="string-past-go-duration"),
    ],
)
def test_bad_keep_alive(value: object, fragment: str) -> None:
    with pytest.raises(InferenceRequestError, match=fragment):
        parse_keep_alive(value)


def test_keep_alive_env_form_and_formatting() -> None:
    assert parse_keep_alive("3600", allow_bare_seconds=True) == 3600.0
    assert [format_keep_alive(s) for s in (300, 5400, 0, math.inf)] == ["5m", "1h30m", "0s", "forever"]


# --- eviction -----------------------------------------------------------------------------------


def resident(
    key: str,
    size: int,
    *,
    busy: bool = False,
    pinned: bool = False,
    loading: bool = False,
    used: float = 0.0,
    expired: bool = False,
    device: int = 0,
    closing: bool = False,
) -> Resident:
    return Resident(key, size, device, busy, pinned, loading, used, expired, closing)


@pytest.mark.parametrize(
    ("residents", "shortfall", "expected"),
    [
        pytest.param([resident("a", 5)], Shortfall(0), [], id="nothing-needed"),
        pytest.param(
            [resident("a", 5, used=1), resident("b", 5, used=2)], Shortfall(4), ["a"], id="lru-first"
        ),
        pytest.param(
            [resident("a", 5, used=1), resident("b", 5, used=2)], Shortfall(8), ["a", "b"], id="several"
        ),
        pytest.param(
            [resident("a", 5, used=1), resident("b", 9, used=1)],
            Shortfall(4),
            ["b"],
            id="larger-first-among-equals",
        ),
        pytest.param(
            [resident("a", 5, used=1), resident("b", 5, used=9, expired=True)],
            Shortfall(4),
            ["b"],
            id="expired-before-lru",
        ),
        pytest.param(
            [resident("a", 5, busy=True), resident("b", 5, used=5)], Shortfall(4), ["b"], id="busy-skipped"
        ),
        pytest.param(
            [resident("a", 5, pinned=True), resident("b", 5, used=5)],
            Shortfall(4),
            ["b"],
            id="pinned-skipped",
        ),
        pytest.param([resident("a", 5, loading=True)], Shortfall(4), None, id="loading-never"),
        pytest.param([resident("a", 5, busy=True)], Shortfall(4), None, id="only-busy-nothing-evicted"),
        pytest.param([resident("a", 3), resident("b", 3)], Shortfall(10), None, id="cannot-free-enough"),
        pytest.param(
            [resident("a", 1, device=8, used=2), resident("b", 9, device=0, used=1)],
            Shortfall(host=0, device=6),
            ["b", "a"],
            id="gpu-shortfall",
        ),
    ],
)
def test_choose_evictions(
    residents: list[Resident], shortfall: Shortfall, expected: list[str] | None
) -> None:
    assert choose_evictions(residents, shortfall) == expected


@pytest.mark.parametrize(
    ("residents", "shortfall", "may_stay", "expected"),
    [
        pytest.param([resident("a", 5)], Shortfall(0), 1, [], id="under-the-cap"),
        pytest.param(
            [resident("a", 5, used=2), resident("b", 5, used=1)], Shortfall(0), 1, ["b"], id="lru-goes"
        ),
        pytest.param([resident("a", 5)], Shortfall(0), 0, ["a"], id="cap-of-one-model"),
        pytest.param(
            [resident("a", 1, used=1), resident("b", 9, used=2)], Shortfall(5), 1, ["a", "b"], id="memory-too"
        ),
        pytest.param([resident("a", 5, busy=True)], Shortfall(0), 0, None, id="busy-stays"),
        pytest.param([resident("a", 5, pinned=True)], Shortfall(0), 0, None, id="pinned-stays"),
    ],
)
def test_choose_evictions_under_a_cap_on_loaded_models(
    residents: list[Resident], shortfall: Shortfall, may_stay: int, expected: list[str] | None
) -> None:
    """A scheduler audit: nothing capped the models loaded (Ollama: $OLLAMA_MAX_LOADED_MODELS);
    twelve small ones loaded under a 100 MB budget. $MODELYARD_MAX_LOADED_MODELS caps them."""
    assert choose_evictions(residents, shortfall, may_stay=may_stay) == expected


@pytest.mark.parametrize(
    ("residents", "shortfall", "may_stay", "expected"),
    [
        pytest.param([resident("a", 5, busy=True)], Shortfall(4), None, ["a"], id="the-busy-one"),
        pytest.param(
            [resident("a", 5, busy=True, used=2), resident("b", 5, busy=True, used=1)],
            Shortfall(4),
            None,
            ["b"],
            id="least-recently-used-busy-one",
        ),
        pytest.param(
            [resident("a", 5, busy=True), resident("b", 3, used=1)],
            Shortfall(7),
            None,
            ["a"],
            id="idle-ones-go-later",
        ),
        pytest.param(
            [resident("a", 5, busy=True, closing=True), resident("b", 5, busy=True)],
            Shortfall(4),
            None,
            [],
            id="one-closing-suffices",
        ),
        pytest.param(
            [resident("a", 5, busy=True, closing=True), resident("b", 5, busy=True, used=1)],
            Shortfall(8),
            None,
            ["b"],
            id="one-closing-and-one-more",
        ),
        pytest.param(
            [resident("a", 5, busy=True, pinned=True), resident("b", 2, busy=True)],
            Shortfall(4),
            None,
            None,
            id="pinned-never",
        ),
        pytest.param(
            [resident("a", 5, busy=True, loading=True)], Shortfall(4), None, None, id="loading-never"
        ),
        pytest.param(
            [resident("a", 5, busy=True, used=1), resident("b", 5, busy=True, used=2)],
            Shortfall(0),
            1,
            ["a"],
            id="the-cap-on-loaded-models",
        ),
        pytest.param(
            [resident("a", 5, busy=True, closing=True), resident("b", 5, busy=True)],
            Shortfall(0),
            1,
            [],
            id="the-cap-and-one-closing",
        ),
    ],
)
def test_choose_drains(
    residents: list[Resident], shortfall: Shortfall, may_stay: int | None, expected: list[str] | None
) -> None:
    """A scheduler audit: a model in steady use kept any other that needed its memory out until
    memory_wait, then 503 (Ollama's scheduler waits for the busy runner it chose to drain)."""
    assert choose_drains(residents, shortfall, may_stay=may_stay) == expected


# --- memory estimate ----------------------------------------------------------------------------


def toy_shape(n_layers: int = 4, layer: int = 100 * MIB, swa: tuple[bool, ...] | None = None) -> ModelShape:
    return ModelShape(
        architecture="toy",
        n_layers=n_layers,
        layer_bytes=(layer,) * n_layers,
        input_bytes=50 * MIB,
        output_bytes=50 * MIB,
        tied_output=False,
        n_embd=1024,
        n_ff=4096,
        n_vocab=32000,
        n_head=8,
        kv_heads=(2,) * n_layers,
        key_length=128,
        value_length=128,
        sliding_window=512 if swa else 0,
        swa_layers=swa or (False,) * n_layers,
        n_ctx_train=8192,
    )


@pytest.mark.parametrize(
    ("n_ctx", "slots", "swa", "swa_full", "kv"),
    [
        pytest.param(4096, 1, None, True, 4096 * 4 * 2 * 256 * 2, id="plain"),
        pytest.param(4096, 4, None, True, 4 * 4096 * 4 * 2 * 256 * 2, id="slots-multiply"),
        pytest.param(1000, 1, None, True, 1024 * 4 * 2 * 256 * 2, id="cells-padded-to-256"),
        pytest.param(4096, 1, (True, True, True, False), True, 4096 * 4 * 2 * 256 * 2, id="swa-full"),
        pytest.param(
            4096,
            1,
            (True, True, True, False),
            False,
            (3 * 1024 + 4096) * 2 * 256 * 2,
            id="swa-window-plus-batch",
        ),
    ],
)
def test_kv_cache_size(n_ctx: int, slots: int, swa: tuple[bool, ...] | None, swa_full: bool, kv: int) -> None:
    shape = toy_shape(swa=swa)
    assert estimate(shape, n_ctx=n_ctx, slots=slots, swa_full=swa_full).kv == kv


def test_offloaded_layers_move_weights_and_kv_to_the_device() -> None:
    shape = toy_shape()
    cpu = estimate(shape, n_ctx=4096, slots=1)
    half = estimate(shape, n_ctx=4096, slots=1, n_gpu_layers=2)
    full = estimate(shape, n_ctx=4096, slots=1, n_gpu_layers=5)
    scored_outputs = 4 * PROMPT_LOGPROB_ROWS * shape.n_vocab  # host memory: llama.cpp's output buffer
    assert cpu.device == 0 and cpu.host == cpu.weights + cpu.kv + cpu.compute + scored_outputs
    per_layer_kv = cpu.kv // 4
    assert half.device == 2 * 100 * MIB + 2 * per_layer_kv + half.compute
    assert full.device == 4 * 100 * MIB + 50 * MIB + cpu.kv + full.compute, "the head goes last"
    assert full.host < half.host < cpu.host


@pytest.mark.parametrize(
    ("num_ctx", "n_ctx_train", "pooled", "tokens"),
    [
        pytest.param(4096, 8192, True, 4096, id="embedding-model-as-loaded"),
        pytest.param(4096, 2048, True, 2048, id="embedding-model-its-training-context"),
        pytest.param(256, 8192, True, 512, id="embedding-model-never-under-512"),
        pytest.param(4096, 0, True, 4096, id="no-training-context-known"),
        pytest.param(32768, 131072, False, 512, id="chat-model-512"),
        pytest.param(4096, 384, True, 384, id="embedding-model-never-past-its-training"),
        pytest.param(4096, 256, False, 256, id="chat-model-never-past-its-training"),
    ],
)
def test_embedding_context_tokens(num_ctx: int, n_ctx_train: int, pooled: bool, tokens: int) -> None:
    assert embedding_context_tokens(num_ctx, n_ctx_train, pooled) == tokens


def test_embedding_context_counts_two_rows_of_logits_a_token() -> None:
    shape = toy_shape()
    cpu = embedding_estimate(shape, n_ctx=512)
    context = estimate(shape, n_ctx=512, slots=1, n_batch=512, prompt_logprob_rows=0)  # it scores no prompt
    graph_logits, output_buffer = 4 * 511 * 32000, 4 * 512 * (32000 + 1024)
    assert cpu.weights == 0 and cpu.device == 0
    assert cpu.kv == context.kv == 512 * 4 * 2 * 256 * 2
    assert cpu.host == cpu.kv + context.compute + graph_logits + output_buffer
    offloaded = embedding_estimate(shape, n_ctx=512, n_gpu_layers=5)
    on_device = estimate(shape, n_ctx=512, slots=1, n_batch=512, n_gpu_layers=5, prompt_logprob_rows=0)
    assert offloaded.device == cpu.kv + on_device.compute + graph_logits, "KV and the graph on the device"
    assert offloaded.host == on_device.compute // 4 + graph_logits // 4 + output_buffer, "staging, outputs"
    partly = embedding_estimate(shape, n_ctx=512, n_gpu_layers=2)
    on_two = estimate(shape, n_ctx=512, slots=1, n_batch=512, n_gpu_layers=2, prompt_logprob_rows=0)
    assert partly.device == cpu.kv // 2 + on_two.compute, "half the KV and the graph, but not the head's"
    assert partly.host == cpu.kv // 2 + on_two.compute // 4 + graph_logits + output_buffer, "head on the CPU"


def test_kv_cells_for_sliding_layers() -> None:
    shape = toy_shape(swa=(True, False, True, False))
    assert kv_cells(shape, 0, 8192, 512, swa_full=False) == 1024
    assert kv_cells(shape, 1, 8192, 512, swa_full=False) == 8192
    assert kv_cells(shape, 0, 300, 512, swa_full=False) == 512, "never more than the full context"


class Tensor:
    def __init__(self, name: str, n_bytes: int) -> None:
        self.name, self.n_bytes = name, n_bytes


def test_shape_from_gguf_metadata() -> None:
    metadata = {
        "general.architecture": "gemma3",
        "gemma3.block_count": 6,
        "gemma3.embedding_length": 640,
        "gemma3.feed_forward_length": 2048,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "gemma3.attention.sliding_window": 512,
        "gemma3.context_length": 32768,
        "tokenizer.ggml.tokens": "[262144 items]",
    }
    tensors = [Tensor("token_embd.weight", 1000), Tensor("output_norm.weight", 10)]
    tensors += [Tensor(f"blk.{i}.attn_q.weight", 100) for i in range(6)]
    shape = shape_from_gguf(metadata, tensors)
    assert shape.layer_bytes == (100,) * 6 and shape.input_bytes == 1000
    assert shape.tied_output and shape.output_bytes == 1010 and shape.weights_bytes == 1600
    assert shape.swa_layers == (True,) * 5 + (False,), "gemma3: every sixth layer is global"
    assert shape.n_vocab == 262144 and shape.kv_heads == (1,) * 6


# --- GPU offload planner ------------------------------------------------------------------------


def layered_shape() -> ModelShape:
    """32 blocks of 200 MB, a 500 MB head: about 7 GB of weights, like a 7B Q4 model.

    At 8192 tokens a block's KV cache is 8192 × 8 heads × 256 × 2 bytes = 33.6 MB, so a block
    takes 233.6 MB; a device keeps 512 MiB in reserve and 134.6 MB for the compute graph (8.2 MB
    of it the 16 rows of logits for scoring prompts). 7 GB free then holds 27 blocks; 3 GB free
    holds 9.97, so 9."""
    return ModelShape(
        architecture="llama",
        n_layers=32,
        layer_bytes=(200 * 10**6,) * 32,
        input_bytes=250 * 10**6,
        output_bytes=500 * 10**6,
        tied_output=False,
        n_embd=4096,
        n_ff=14336,
        n_vocab=128256,
        n_head=32,
        kv_heads=(8,) * 32,
        key_length=128,
        value_length=128,
        sliding_window=0,
        swa_layers=(False,) * 32,
        n_ctx_train=131072,
    )


@pytest.mark.parametrize(
    ("devices", "num_gpu", "layers", "fits", "used"),
    [
        pytest.param([], -1, 0, True, 0, id="no-gpu"),
        pytest.param([Device("CUDA0", "cuda", "24GB", 24 * GB, 23 * GB)], -1, 33, True, 1, id="24GB-all"),
        pytest.param([Device("CUDA0", "cuda", "8GB", 8 * GB, 7 * GB)], -1, 27, True, 1, id="8GB-partial"),
        pytest.param(
            [Device("CUDA0", "cuda", "a", 16 * GB, 3 * GB), Device("CUDA1", "cuda", "b", 16 * GB, 3 * GB)],
            -1,
            18,
            True,
            2,
            id="2x16GB-busy-split",
        ),
        pytest.param(
            [Device("CUDA0", "cuda", "a", 16 * GB, 15 * GB), Device("CUDA1", "cuda", "b", 16 * GB, 15 * GB)],
            -1,
            33,
            True,
            2,
            id="2x16GB-all",
        ),
        pytest.param(
            [Device("CUDA0", "cuda", "8GB", 8 * GB, 7 * GB)], 10, 10, True, 1, id="num-gpu-honoured"
        ),
        pytest.param(
            [Device("CUDA0", "cuda", "8GB", 8 * GB, 7 * GB)], 33, 33, False, 1, id="num-gpu-too-many"
        ),
        pytest.param([Device("CUDA0", "cuda", "24GB", 24 * GB, 23 * GB)], 0, 0, True, 0, id="num-gpu-zero"),
        pytest.param([Device("CUDA0", "cuda", "tiny", 2 * GB, GB // 2)], -1, 0, True, 0, id="nothing-fits"),
    ],
)
def test_plan_offload(devices: list[Device], num_gpu: int, layers: int, fits: bool, used: int) -> None:
    plan = plan_offload(layered_shape(), devices, n_ctx=8192, slots=1, num_gpu=num_gpu)
    assert (plan.n_gpu_layers, plan.fits, len(plan.device_bytes)) == (layers, fits, used), plan.reason
    for device in devices:
        placed = dict(plan.device_bytes).get(device.id, 0)
        if plan.fits:
            assert placed <= device.free, "an automatic plan never exceeds free memory"
    if plan.n_gpu_layers:
        assert abs(sum(plan.tensor_split) - 1.0) < 1e-9


@pytest.mark.parametrize(
    ("size", "vram", "text"),
    [(100, 0, "100% CPU"), (100, 100, "100% GPU"), (100, 60, "40%/60% CPU/GPU"), (0, 0, "100% CPU")],
)
def test_processor_split(size: int, vram: int, text: str) -> None:
    assert processor_split(size, vram) == text


# --- /proc parsing ------------------------------------------------------------------------------


def test_parse_meminfo_status_smaps() -> None:
    meminfo = (
        "MemTotal: 16000 kB\nMemFree: 1000 kB\nMemAvailable: 8000 kB\nSwapTotal: 2000 kB\nSwapFree: 500 kB\n"
    )
    system = parse_meminfo(meminfo)
    assert (system.total, system.available, system.swap_total, system.swap_used) == (
        16000 * 1024,
        8000 * 1024,
        2000 * 1024,
        1500 * 1024,
    )
    assert parse_rss("Name:\tpython\nVmRSS:\t  123 kB\n") == 123 * 1024
    smaps = (
        "7f00-7f10 r--p 00000000 fd:01 42 /store/blobs/sha256/abc\n"
        "Size: 64 kB\nRss: 40 kB\n"
        "7f10-7f20 r--p 00010000 fd:01 42 /store/blobs/sha256/abc\n"
        "Rss: 8 kB\n"
        "7f20-7f30 rw-p 00000000 00:00 0 \n"
        "Rss: 1000 kB\n"
    )
    assert parse_mapped_rss(smaps, "/store/blobs/sha256/abc") == 48 * 1024
    # A blob removed while mapped: the kernel adds " (deleted)" to its name (a metrics review).
    deleted = "7f00-7f10 r--p 00000000 fd:01 42 /store/blobs/sha256/abc (deleted)\nRss: 40 kB\n"
    assert parse_mapped_rss(deleted, "/store/blobs/sha256/abc") == 40 * 1024


def test_weights_resident_follows_a_home_behind_a_link(tmp_path: Path) -> None:
    """smaps names a mapping by its resolved path: a store reached through a link read 0 (a metrics
    review)."""
    import mmap

    from modelyard.runtime.procstats import process_memory

    (tmp_path / "real").mkdir()
    weights = tmp_path / "real" / "weights.bin"
    weights.write_bytes(b"w" * (1 << 20))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with (tmp_path / "link" / "weights.bin").open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert sum(mapped[i] for i in range(0, len(mapped), 4096)) > 0  # touch every page
            memory = process_memory(os.getpid(), tmp_path / "link" / "weights.bin")
            assert memory is not None and memory.weights_resident >= 1 << 20
        finally:
            mapped.close()
