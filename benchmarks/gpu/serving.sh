#!/usr/bin/env bash
# On a lent GPU machine (one device call; benchmarks/gpu/fetch.sh first, here): builds
# llama-cpp-python with CUDA (200-370 s on 16 cores; skipped when a build from an earlier call on the
# same warm machine is there), then measures 8 streams served over HTTP against the runner driven
# directly, every layer on the GPU, on random F16 weights in Gemma 3 270M's shape (that machine
# cannot receive Gemma). On 2026-11-27 the H100 gave serve / runner 97.5% at 1 stream, 98.5% at 4
# and 93.0% at 8 (RESULTS.md); this asks where 8 streams lose their time. Steps, in this order:
#   httpx   bench_server.py at 1, 4 and 8 streams, serve and runner in pairs, httpx client (the
#           official clients' own);
#   graphs  the same with llama.cpp's CUDA graphs off on both sides: the suspect since 2026-11-28
#           (on the 2-core VM with a GPU's steps emulated, --step-floor-ms, serve / runner was 99%
#           at 8 streams; a GPU step changes its graph whenever the batch's sequences change, which
#           serve's staggered requests make happen more often than the direct runner's burst);
#   diag    diag_server_one_stream.py --streams 8: the runner's own time per token under serve and
#           directly, against the pace the client sees (a slower runner, or delivery lagging);
#   stdlib  bench_server.py with the standard library's lighter client: the client's CPU;
#   cpu     bench_server_cpu.py: CPU time per token of each process: whether serving keeps up;
#   long    (not by default) the httpx pairs with 512-token streams: per-request costs amortised;
#   age     (not by default) diag_server_age.py: one serve process, 8 streams a round, 400 rounds;
#   grammar (not by default) bench_grammar.py --gpu: a token's time under a JSON grammar, checked
#           in place against masked first (2026-11-28, measured on the CPU only; random weights
#           here, so the grammar refuses more first picks than a trained model's).
# $STEPS picks steps and their order (default "httpx graphs diag stdlib cpu"): a second call on the
# warm machine (the build kept) runs what the first one's deadline cut, e.g. STEPS="diag stdlib cpu".
# Everything it prints lands in $OUT. Each step has its own time limit, cut to what is left before
# $DEADLINE_S (default 570 s from the start), so a slow build leaves the first step its time and
# the script ends inside run(timeout_s=590).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log="$OUT/gpu_serving.txt"
say() { echo "== $* ($(date +%T))" | tee -a "$log"; }
deadline=${DEADLINE_S:-570}
# A step's limit: its own, or what is left before the deadline, whichever is less (at least 1 s:
# `timeout 0` would mean none).
limit() { local left=$((deadline - SECONDS)); left=$(( left < $1 ? left : $1 )); echo $(( left > 1 ? left : 1 )); }

say "install"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -3
if python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" 2>/dev/null; then
    say "llama-cpp-python with CUDA already built on this machine"
else
    export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16
    start=$SECONDS
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
        .whl/llama_cpp_python-*.tar.gz >"$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
    say "built in $((SECONDS - start)) s"
fi
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
bench() {  # serve and runner in pairs at 1, 4 and 8 streams; extra arguments for bench_server.py
    timeout "$(limit 80)" python3 benchmarks/bench_server.py --gpu --model "$model" --rounds 3 --pairs 4 \
        --ttft-bursts 0 --without-peers "$@" 2>&1 | tee -a "$log"
}
for step in ${STEPS:-httpx graphs diag stdlib cpu}; do
    case $step in
    httpx)
        say "bench, 1/4/8 streams, httpx client"
        bench --client httpx ;;
    graphs)
        # llama.cpp's CUDA graphs are kept only while a step's graph keeps its shape: every change of
        # the batch's sequences costs a step without them and a capture. Serve's 8 requests reach
        # the runner over a step or two (the direct runner's all at once), and end as unevenly.
        say "bench, 1/4/8 streams, httpx client, CUDA graphs off (GGML_CUDA_DISABLE_GRAPHS=1)"
        GGML_CUDA_DISABLE_GRAPHS=1 bench --client httpx ;;
    diag)
        say "diag, 8 streams"
        timeout "$(limit 100)" python3 benchmarks/diag_server_one_stream.py --gpu --model "$model" --streams 8 \
            --pairs 10 2>&1 | tee -a "$log" ;;
    stdlib)
        say "bench, 1/4/8 streams, stdlib client"
        bench --client stdlib ;;
    long)
        # 512 tokens a stream: a level lasts ~1.4 s at 8 streams, so what a request costs once
        # (its time to first token, a step's stagger) weighs a quarter as much as at 128.
        say "bench, 1/4/8 streams, httpx client, 512 tokens a stream"
        bench --client httpx --tokens 512 --rounds 2 --pairs 3 ;;
    cpu)
        say "CPU per token by process, 1 and 8 streams"
        timeout "$(limit 90)" python3 benchmarks/bench_server_cpu.py --gpu --model "$model" --rounds 3 2>&1 | tee -a "$log" ;;
    grammar)
        say "grammar: a token's time under a JSON grammar"
        timeout "$(limit 120)" python3 benchmarks/bench_grammar.py --gpu --model "$model" --rounds 3 2>&1 | tee -a "$log" ;;
    age)
        say "age: one serve process, 8 streams a round"
        timeout "$(limit 240)" python3 benchmarks/diag_server_age.py --gpu --model "$model" --rounds 400 \
            --block 40 2>&1 | tee -a "$log" ;;
    *)
        say "unknown step $step (httpx graphs diag stdlib cpu long age grammar)" ;;
    esac
done
say "done"
