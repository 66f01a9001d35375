#!/usr/bin/env bash
# Here, before a GPU session's one device call: what the lent GPU machine lacks, into .whl/ (kept
# out of git). That machine reaches no index; it has Python 3.12, CUDA's compiler, CMake,
# scikit-build-core, numpy, jinja2, httpx, uvloop, rich… (/work/.library/device/KINDS.md) but not
# FastAPI, pydantic, uvicorn, gguf or llama-cpp-python. The working tree that travels is limited to
# 64 MiB: llama-cpp-python's source (77 MB) goes without its git history, llama.cpp's vocabulary
# files, docs, benchmarks and web UI, none of which the library build reads (about 10 MB).
#
#   benchmarks/gpu/fetch.sh            then: run(command="bash benchmarks/gpu/serving.sh",
#                                                carry=[".whl"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_CPP_PYTHON=$(python3 -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
# The versions installed here, which the tests pass with (pydantic pins its pydantic-core).
pinned=$(python3 - <<'PY'
import importlib.metadata as m
names = """fastapi starlette pydantic pydantic-core annotated-types typing-inspection opentelemetry-api
uvicorn httptools gguf diskcache sse-starlette starlette-context pydantic-settings python-dotenv"""
print(" ".join(f"{n}=={m.version(n)}" for n in names.split()))
PY
)
# shellcheck disable=SC2086
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl $pinned
work=$(mktemp -d)
python3 -m pip download --quiet --no-deps --no-binary=:all: -d "$work" "llama-cpp-python==$LLAMA_CPP_PYTHON"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/)
rm -rf "$src/.git" "$src/vendor/llama.cpp/"{models,docs,benches,tools/ui}
tar -czf ".whl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$work" "$(basename "$src")"
rm -rf "$work"
du -sh .whl
ls .whl
