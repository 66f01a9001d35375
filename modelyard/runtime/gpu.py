"""GPUs: what is there (discovery, an effect) and how many layers to put on them (planning, pure).

Discovery asks llama.cpp whether it was built with GPU offload at all, then the vendor's own
tool for memory figures: NVML (`nvidia-ml-py`) for CUDA, `rocm-smi` for ROCm, the recommended
working set for Metal on macOS. None found means CPU.

Planning walks the blocks from the last to the first, as llama.cpp offloads them, putting each on
the device with the most room left, and adds the output head last, once every block is placed.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.runtime.memory import ModelShape, compute_bytes, kv_layer_bytes
from modelyard.runtime.options import PROMPT_LOGPROB_ROWS

DEFAULT_GPU_RESERVE = 512 * 1024 * 1024  # driver, other processes, fragmentation


@dataclass(frozen=True)
class Device:
    id: str  # llama.cpp's name for it: CUDA0, ROCm0, Metal
    backend: str  # cuda | rocm | metal
    name: str
    total: int
    free: int


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int
    device_bytes: tuple[tuple[str, int], ...]  # per device: weights + KV + compute placed there
    tensor_split: tuple[float, ...]  # share of the offloaded layers per device, in device order
    fits: bool  # False when an explicit num_gpu asks for more than the devices hold
    reason: str

    @property
    def total_device_bytes(self) -> int:
        return sum(size for _, size in self.device_bytes)


def plan_offload(
    shape: ModelShape,
    devices: Sequence[Device],
    *,
    n_ctx: int,
    slots: int,
    n_batch: int = 512,
    reserve: int = DEFAULT_GPU_RESERVE,
    num_gpu: int = -1,
    swa_full: bool = True,
    prompt_logprob_rows: int = PROMPT_LOGPROB_ROWS,
) -> OffloadPlan:
    """Choose `n_gpu_layers` (num_gpu < 0), or check an explicit choice (num_gpu >= 0); the
    compute graph as memory.estimate counts it."""
    max_layers = shape.n_layers + 1  # the blocks, and the output head as one more
    if not devices or num_gpu == 0:
        reason = "no GPU found" if not devices else "num_gpu 0: CPU only"
        return OffloadPlan(0, (), (), True, reason)
    graph = compute_bytes(shape, n_batch, slots + prompt_logprob_rows)
    room = {d.id: max(d.free - reserve - graph, 0) for d in devices}
    placed: dict[str, int] = {d.id: 0 for d in devices}
    layers_on: dict[str, int] = {d.id: 0 for d in devices}
    wanted = max_layers if num_gpu < 0 else min(num_gpu, max_layers)
    count = 0
    for layer in _offload_order(shape, wanted):
        size = _layer_size(shape, layer, n_ctx, slots, n_batch, swa_full)
        device = max(devices, key=lambda d: room[d.id] - placed[d.id])
        if placed[device.id] + size > room[device.id] and num_gpu < 0:
            break  # auto: as many as fit; an explicit num_gpu is placed anyway, and flagged below
        placed[device.id] += size
        layers_on[device.id] += 1
        count += 1
    used = [d for d in devices if layers_on[d.id]]
    device_bytes = tuple((d.id, placed[d.id] + graph) for d in used)
    fits = all(placed[d.id] <= room[d.id] for d in used)
    split = tuple(layers_on[d.id] / count for d in devices) if count else ()
    if num_gpu >= 0:
        reason = f"num_gpu {num_gpu} as asked" + (
            "" if fits else " (more than the GPUs hold: expect an error)"
        )
    elif count == max_layers:
        reason = "every layer fits on the GPU"
    elif count:
        reason = f"{count} of {max_layers} layers fit in free GPU memory"
    else:
        reason = "not one layer fits in free GPU memory"
    return OffloadPlan(count, device_bytes if count else (), split, fits, reason)


def _offload_order(shape: ModelShape, wanted: int) -> list[int]:
    """Layer indices in the order llama.cpp offloads them: the last block first, the head (index
    n_layers) only after every block."""
    order = list(range(shape.n_layers - 1, -1, -1))
    order = order[: min(wanted, shape.n_layers)]
    if wanted > shape.n_layers:
        order.append(shape.n_layers)
    return order


def _layer_size(shape: ModelShape, layer: int, n_ctx: int, slots: int, n_batch: int, swa_full: bool) -> int:
    if layer == shape.n_layers:
        return shape.output_bytes
    return shape.layer_bytes[layer] + kv_layer_bytes(shape, layer, n_ctx, slots, n_batch, swa_full)


def processor_split(size: int, size_vram: int) -> str:
    """As `ollama ps` prints it: 100% CPU, 100% GPU, 40%/60% CPU/GPU."""
    if size_vram <= 0 or size <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


# --- discovery (effects) ---------------------------------------------------------------------


def discover_devices() -> list[Device]:
    """The GPUs llama.cpp can use here, with their memory; [] means CPU only."""
    from modelyard.runtime.llama import supports_gpu_offload

    if not supports_gpu_offload():
        return []
    for probe in (_nvml_devices, _rocm_devices, _metal_devices):
        devices = probe()
        if devices:
            return devices
    return []


def _nvml_devices() -> list[Device]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            devices.append(Device(f"CUDA{i}", "cuda", name, int(memory.total), int(memory.free)))
        return devices
    finally:
        pynvml.nvmlShutdown()


def _rocm_devices() -> list[Device]:
    if shutil.which("rocm-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["rocm-smi", "--showmeminfo", "vram", "--json"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        cards = json.loads(out)
    except (subprocess.SubprocessError, OSError, ValueError):
        return []
    devices = []
    for i, (card, info) in enumerate(sorted(cards.items())):
        total = int(info.get("VRAM Total Memory (B)", 0))
        used = int(info.get("VRAM Total Used Memory (B)", 0))
        devices.append(Device(f"ROCm{i}", "rocm", card, total, total - used))
    return devices


def _metal_devices() -> list[Device]:
    if platform.system() != "Darwin":
        return []
    try:
        total = int(
            subprocess.run(
                ["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5, check=True
            ).stdout
        )
    except (subprocess.SubprocessError, OSError, ValueError):
        return []
    # Metal's recommendedMaxWorkingSetSize is about two thirds of unified memory on small machines
    # and three quarters on large ones; llama.cpp plans with the same figure.
    working_set = total * 3 // 4 if total >= 36 * 1024**3 else total * 2 // 3
    return [Device("Metal", "metal", platform.machine(), working_set, working_set)]
