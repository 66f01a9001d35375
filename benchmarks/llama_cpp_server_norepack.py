"""`python -m llama_cpp.server`, unchanged, except that `LLAMA_REPACK=0` loads the weights without
llama.cpp's repacked CPU layouts.

Some VMs advertise CPU instructions (AMX) they cannot run; llama.cpp's repacked weights use them
and the process dies of SIGILL. modelyard's runner notices and loads again without repacking;
`Llama()` has no argument for it, so this wraps its default model parameters for the whole run.
The benchmark passes what our runner found, so that both load the same weight layout.

    LLAMA_REPACK=0 python benchmarks/llama_cpp_server_norepack.py --model M.gguf --port 8000 …
"""

from __future__ import annotations

import os

import llama_cpp
from llama_cpp.server.__main__ import main


def _without_repack() -> None:
    original = llama_cpp.llama_cpp.llama_model_default_params

    def params() -> llama_cpp.llama_model_params:
        value = original()
        value.use_extra_bufts = False
        return value

    llama_cpp.llama_cpp.llama_model_default_params = params


if __name__ == "__main__":
    if os.environ.get("LLAMA_REPACK", "1") == "0":
        _without_repack()
    main()
