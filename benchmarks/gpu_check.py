"""The GPU path, checked once on a machine that has a GPU (issue 5).

1. device discovery (llama.cpp's offload support, then NVML) finds the GPU and its free memory;
2. the offload planner's choice for a model that fits whole, and for a simulated device that
   holds about half of it;
3. a runner loaded with each plan: llama.cpp's measured device buffers against the estimate;
4. decode throughput on the GPU at 1 and 4 streams, for the record.

The model is a random-weight llama written here with the gguf package (a real architecture
llama.cpp loads; about 1.4 GB in F16), since the session's files cannot carry a real one.

    python benchmarks/gpu_check.py [--out results.json] [--small]   (--small: a quick CPU dry run)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tinygguf import write_tiny_llama  # noqa: E402

from modelyard.builder.gguf_info import read_gguf  # noqa: E402
from modelyard.runtime.gpu import discover_devices, plan_offload, processor_split  # noqa: E402
from modelyard.runtime.memory import estimate, shape_from_gguf  # noqa: E402
from modelyard.runtime.options import LoadOptions, SamplingOptions  # noqa: E402
from modelyard.runtime.protocol import CompletionRequest  # noqa: E402
from modelyard.runtime.runner import Runner, RunnerSpec  # noqa: E402

N_CTX, SLOTS = 4096, 4


def decode_rate(runner: Runner, streams: int, tokens: int = 128) -> float:
    counts = [0] * streams

    def one(i: int) -> None:
        options = SamplingOptions(temperature=0.0, num_predict=tokens)
        counts[i] = runner.complete(CompletionRequest("the cat sat on the mat", options))[1].eval_count

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def load(path: Path, num_gpu: int) -> tuple[Runner, float]:
    start = time.perf_counter()
    runner = Runner.start(
        RunnerSpec("check", path, options=LoadOptions(num_ctx=N_CTX, num_parallel=SLOTS, num_gpu=num_gpu))
    )
    return runner, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--small", action="store_true", help="a small model, for a dry run on a CPU")
    args = parser.parse_args()
    report: dict[str, object] = {}
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    dims = (
        dict(n_embd=256, n_layer=4, n_head=8, n_head_kv=2, n_ff=512)
        if args.small
        else dict(n_embd=2048, n_layer=16, n_head=16, n_head_kv=4, n_ff=5632)
    )
    started = time.perf_counter()
    path = write_tiny_llama(folder / "random.gguf", file_type="F16", n_ctx=8192, **dims)
    report["model"] = {
        "file_bytes": path.stat().st_size,
        "write_seconds": round(time.perf_counter() - started, 1),
        **dims,
    }
    contents = read_gguf(path)
    shape = shape_from_gguf(contents.metadata, contents.tensors)

    devices = discover_devices()
    report["devices"] = [asdict(d) for d in devices]
    print("devices:", devices, flush=True)

    full_plan = plan_offload(shape, devices, n_ctx=N_CTX, slots=SLOTS)
    full_estimate = estimate(shape, n_ctx=N_CTX, slots=SLOTS, n_gpu_layers=full_plan.n_gpu_layers)
    runner, seconds = load(path, full_plan.n_gpu_layers)
    info = runner.info
    assert info is not None
    report["full"] = {
        "plan": {"n_gpu_layers": full_plan.n_gpu_layers, "reason": full_plan.reason},
        "estimate_device_bytes": full_estimate.device,
        "measured_device_bytes": info.device_bytes,
        "measured_total_bytes": info.total_bytes,
        "estimate_total_bytes": full_estimate.total,
        "processor": processor_split(info.total_bytes, info.device_bytes),
        "load_seconds": round(seconds, 2),
        "tokens_per_second_1_stream": round(decode_rate(runner, 1), 1),
        "tokens_per_second_4_streams": round(decode_rate(runner, 4), 1),
    }
    runner.stop()
    print("full:", report["full"], flush=True)

    if devices:
        # A device that holds about half the model: the planner must choose fewer layers.
        half = replace(devices[0], free=full_estimate.device // 2 + 512 * 1024**2)
        partial_plan = plan_offload(shape, [half], n_ctx=N_CTX, slots=SLOTS)
        partial_estimate = estimate(shape, n_ctx=N_CTX, slots=SLOTS, n_gpu_layers=partial_plan.n_gpu_layers)
        runner, seconds = load(path, partial_plan.n_gpu_layers)
        info = runner.info
        assert info is not None
        report["partial"] = {
            "simulated_free_bytes": half.free,
            "plan": {
                "n_gpu_layers": partial_plan.n_gpu_layers,
                "reason": partial_plan.reason,
                "planned_device_bytes": partial_plan.total_device_bytes,
            },
            "estimate_device_bytes": partial_estimate.device,
            "measured_device_bytes": info.device_bytes,
            "fits_simulated_device": info.device_bytes <= half.free,
            "processor": processor_split(info.total_bytes, info.device_bytes),
            "tokens_per_second_1_stream": round(decode_rate(runner, 1), 1),
        }
        runner.stop()
        print("partial:", report["partial"], flush=True)

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
