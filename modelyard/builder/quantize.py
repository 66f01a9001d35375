"""Quantization at build time, through llama.cpp's own quantizer (`llama_model_quantize`).

The list of types is llama.cpp's (`LLAMA_FTYPE_MOSTLY_*`), so a newer llama-cpp-python brings its
new types with it. Only F32, F16 and BF16 sources are accepted: re-quantizing quantized weights
compounds the error, and llama.cpp would do it silently.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from modelyard.cpus import cpu_facts, usable_cores
from modelyard.errors import QuantizeError

UNQUANTIZED_TYPES = frozenset({"F32", "F16", "BF16"})
_FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"
_FTYPE_ALL_F32 = "LLAMA_FTYPE_ALL_F32"
# Types llama.cpp's quantizer refuses without an importance matrix, which `build` does not take
# (seen with llama-cpp-python 0.3.36; tests/test_build.py checks each is still refused).
NEEDS_IMPORTANCE_MATRIX = frozenset(
    {"IQ1_M", "IQ1_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ3_XS", "IQ3_XXS", "Q2_K_S"}
)
# Named in llama.h, but its quantizer answers "invalid output file type".
NOT_PRODUCED = frozenset({"NVFP4"})
# Made by llama.cpp, but of a tensor type the gguf package (which reads a build's weights) does
# not know yet: the build failed after the whole quantize (Q2_0 is ggml type 42 to gguf 0.19).
NOT_READABLE = frozenset({"Q2_0"})
# How llama.cpp's quantizer starts its line for each tensor: `[  12/ 236] name - …`.
_TENSOR = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def quantization_types() -> dict[str, int]:
    """Every type llama.cpp can quantize to, by the name users write (`Q4_K_M`)."""
    import llama_cpp  # heavy import: only when quantizing

    types = {
        name.removeprefix(_FTYPE_PREFIX): getattr(llama_cpp, name)
        for name in dir(llama_cpp)
        if name.startswith(_FTYPE_PREFIX) and isinstance(getattr(llama_cpp, name), int)
    }
    if hasattr(llama_cpp, _FTYPE_ALL_F32):
        types["F32"] = llama_cpp.LLAMA_FTYPE_ALL_F32
    return types


def buildable_types() -> list[str]:
    """The types `--quantize` takes, sorted."""
    refused = NEEDS_IMPORTANCE_MATRIX | NOT_PRODUCED | NOT_READABLE
    return sorted(t for t in quantization_types() if not t.startswith("GUESSED") and t not in refused)


def check_quantization(target: str, source_type: str, source: str) -> str:
    """Validate a `--quantize` request before any work; returns the normalised type name.
    `source`: the weights as the user named them (the Modelfile's FROM)."""
    name = target.upper()
    types = quantization_types()
    buildable = ", ".join(buildable_types())
    if name not in types:
        raise QuantizeError(f"unknown quantization type {target!r}; a build can make: {buildable}")
    if name in NEEDS_IMPORTANCE_MATRIX:
        raise QuantizeError(
            f"{name} needs an importance matrix (llama.cpp's imatrix), which a build does not take; "
            "quantize with llama.cpp's llama-quantize and build FROM its output, or choose one of: "
            + buildable
        )
    if name in NOT_PRODUCED | NOT_READABLE:
        raise QuantizeError(
            f"this llama.cpp names {name} but a build cannot make it; choose one of: {buildable}"
        )
    if source_type not in UNQUANTIZED_TYPES:
        raise QuantizeError(
            f"FROM {source} is already quantized ({source_type}); --quantize needs F32, F16 or BF16 weights. "
            "Build without --quantize, or start from the unquantized GGUF."
        )
    return name


def quantize(
    source: Path,
    destination: Path,
    target: str,
    threads: int | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> None:
    """Quantize `source` into `destination` (written over: the build holds it empty and flocked);
    `on_tensor(done, total)` after each tensor (what llama.cpp logs), which may raise to stop.

    In a child process: llama.cpp's quantizer cannot be stopped from within. A Ctrl-C raised while
    it runs lands in its log callback, where ctypes drops it, and the C call goes on to the end; a
    child is killed, and its partial output removed, at once."""
    command = [
        sys.executable,
        "-m",
        "modelyard.builder.quantize",
        str(source),
        str(destination),
        target,
        str(threads or usable_cores(cpu_facts())),
    ]
    child = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    kept = bytearray()
    stderr = child.stderr
    reader = threading.Thread(target=lambda: kept.extend(stderr.read()), name="quantize-log", daemon=True)
    reader.start()
    try:
        for line in child.stdout:  # the child's word after each tensor: `tensor DONE TOTAL`
            word, _, counts = line.decode("ascii", "replace").partition(" ")
            done, _, total = counts.partition(" ")
            if word == "tensor" and on_tensor is not None and done.isdigit() and total.strip().isdigit():
                on_tensor(int(done), int(total))
        child.wait()
    except BaseException:  # Ctrl-C, or the build abandoned: stop the quantizer, keep nothing of it
        child.kill()
        child.wait()
        destination.unlink(missing_ok=True)
        raise
    finally:
        reader.join()  # the child has ended: its stderr is read to the end
        child.stdout.close()
        stderr.close()
    errors = bytes(kept)
    if child.returncode != 0 or not destination.is_file() or destination.stat().st_size == 0:
        destination.unlink(missing_ok=True)
        lines = errors.decode("utf-8", "replace").splitlines()
        said = [line.strip() for line in lines if re.search(r"error|failed|invalid|unable", line, re.I)]
        raise QuantizeError(
            f"llama.cpp failed to quantize {source} to {target} ({_describe(child.returncode)})"
            + (": " + "; ".join(said[-3:]) if said else "")
        )


def _describe(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"return code {returncode}"


def _quantize_here(source: str, destination: str, target: str, threads: int) -> int:
    """The child's work: llama.cpp's log kept, and written to stderr only if quantizing failed."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quantization_types()[target]
    params.nthread = threads
    parent = os.getppid()

    def stop_if_orphaned() -> None:
        # The build was killed outright (SIGKILL, an OOM kill): nobody waits for this output. Only
        # a process exit stops llama.cpp's C call; llama.cpp logs once per tensor, so soon.
        if os.getppid() != parent:
            with contextlib.suppress(OSError):
                os.unlink(destination)
            os._exit(1)

    def watch_parent() -> None:
        # Also between log lines: one tensor can take seconds on a busy machine (a CI run: the
        # output stayed 10 s after the build was killed). ctypes lets this thread run meanwhile.
        while True:
            time.sleep(0.1)
            stop_if_orphaned()

    total = 0

    def say_done(done: int) -> None:
        sys.stdout.write(f"tensor {done} {total}\n")
        sys.stdout.flush()

    def on_piece(text: str) -> None:
        nonlocal total
        stop_if_orphaned()
        # llama.cpp's `[  12/ 236] blk.1.attn_k.weight - …`, as tensor 12 starts: 11 are done.
        tensor = _TENSOR.search(text)
        if tensor is not None:
            total = int(tensor[2])
            say_done(int(tensor[1]) - 1)

    threading.Thread(target=watch_parent, name="orphan-watch", daemon=True).start()
    with _llama_log_kept(on_piece) as log:
        rc = int(llama_cpp.llama_model_quantize(source.encode(), destination.encode(), params))
    if rc == 0 and total:
        say_done(total)
    if rc != 0:
        sys.stderr.write("".join(log))  # llama.cpp logs in pieces, not always a line at a time
    return rc


@contextlib.contextmanager
def _llama_log_kept(on_piece: Callable[[str], None]) -> Iterator[list[str]]:
    """llama.cpp's log text while the block runs, kept rather than printed: quantizing logs a line
    per tensor, which is noise beside the build's own progress (and only an error explains).
    `on_piece` is called with each piece logged."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        piece = text.decode("utf-8", "replace") if text else ""
        lines.append(piece)
        on_piece(piece)

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


if __name__ == "__main__":
    sys.exit(_quantize_here(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
