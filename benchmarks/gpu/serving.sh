#!/usr/bin/env bash
# On a lent GPU machine (one device call; benchmarks/gpu/fetch.sh first, here): builds
# llama-cpp-python with CUDA (about 280 s on 16 cores), then measures one stream served over HTTP
# against the runner driven directly, every layer on the GPU, on random F16 weights in Gemma 3
# 270M's shape (that machine cannot receive Gemma):
#   1. diag_server_one_stream.py: where a 128- and 512-token stream's time goes, with the runner's
#      default threads (one, every layer being on the GPU) and with one per CPU (the old default);
#   2. bench_server.py, one stream, serve and runner in pairs, llama-cpp-python's servers beside.
# Everything it prints lands in $OUT; each step has its own time limit, so a slow one leaves the
# rest their time. Size: about 9 minutes; run(timeout_s=590).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log="$OUT/gpu_serving.txt"
say() { echo "== $* ($(date +%T))" | tee -a "$log"; }

say "install"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -3
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16
start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
    .whl/llama_cpp_python-*.tar.gz >"$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
say "built in $((SECONDS - start)) s"
python3 -c "import llama_cpp, modelyard; print('llama-cpp-python', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())" | tee -a "$log"

model=/tmp/gemma-shape.gguf
python3 - "$model" <<'PY'
import argparse, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, "benchmarks")
import bench_server
written = bench_server.model_for(argparse.Namespace(model=None, random_gemma_shape=True), Path(tempfile.mkdtemp()))
shutil.move(written, sys.argv[1])
PY
say "diag, default threads"
timeout 100 python3 benchmarks/diag_server_one_stream.py --gpu --model "$model" --pairs 20 2>&1 | tee -a "$log"
say "diag, --threads $(nproc)"
timeout 100 python3 benchmarks/diag_server_one_stream.py --gpu --model "$model" --pairs 20 --threads "$(nproc)" 2>&1 | tee -a "$log"
say "bench, one stream, default threads"
timeout 150 python3 benchmarks/bench_server.py --gpu --model "$model" --streams 1 --rounds 2 --pairs 8 \
    --ttft-bursts 12 2>&1 | tee -a "$log"
say "done"
