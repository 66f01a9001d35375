"""llama-cpp-python's high-level `Llama()`, loaded with or without llama.cpp's repacked weights.

Some VMs advertise CPU instructions (AMX) they cannot run; llama.cpp's repacked weights use them
and the process dies of SIGILL. modelyard's runner notices and loads again without repacking. A
reference `Llama()` (in tests and benchmarks) must then load the same way, but it has no argument
for it: `model_defaults` wraps its default model parameters while inside."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp


@contextmanager
def model_defaults(*, repack: bool) -> Iterator[None]:
    original = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        value = original()
        value.use_extra_bufts = repack
        return value

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original
