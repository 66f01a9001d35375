"""Quantization at build time, through llama.cpp's own quantizer (`llama_model_quantize`).

The list of types is llama.cpp's (`LLAMA_FTYPE_MOSTLY_*`), so a newer llama-cpp-python brings its
new types with it. Only F32, F16 and BF16 sources are accepted: re-quantizing quantized weights
compounds the error, and llama.cpp would do it silently.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelyard.errors import QuantizeError

UNQUANTIZED_TYPES = frozenset({"F32", "F16", "BF16"})
_FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"
_FTYPE_ALL_F32 = "LLAMA_FTYPE_ALL_F32"


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


def check_quantization(target: str, source_type: str, source: Path) -> str:
    """Validate a `--quantize` request before any work; returns the normalised type name."""
    name = target.upper()
    types = quantization_types()
    if name not in types:
        known = ", ".join(sorted(t for t in types if not t.startswith("GUESSED")))
        raise QuantizeError(f"unknown quantization type {target!r}; llama.cpp supports: {known}")
    if source_type not in UNQUANTIZED_TYPES:
        raise QuantizeError(
            f"{source} is already quantized ({source_type}); --quantize needs F32, F16 or BF16 weights. "
            "Build without --quantize, or start from the unquantized GGUF."
        )
    return name


def quantize(source: Path, destination: Path, target: str, threads: int | None = None) -> None:
    """Quantize `source` into `destination` (which must not exist yet)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quantization_types()[target]
    params.nthread = threads or max(os.cpu_count() or 1, 1)
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), params)
    if rc != 0 or not destination.is_file():
        destination.unlink(missing_ok=True)
        raise QuantizeError(f"llama.cpp failed to quantize {source} to {target} (return code {rc})")
