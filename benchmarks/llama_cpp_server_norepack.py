"""`python -m llama_cpp.server`, unchanged, except that `LLAMA_REPACK=0` loads the weights without
llama.cpp's repacked CPU layouts.

Some VMs advertise CPU instructions (AMX) they cannot run; llama.cpp's repacked weights use them
and the process dies of SIGILL. modelyard's runner notices and loads again without repacking;
`Llama()` has no argument for it, so this runs the server inside `tests/llama_defaults.py`'s
`model_defaults`. The benchmark passes what our runner found, so that both load the same weights.

    LLAMA_REPACK=0 python benchmarks/llama_cpp_server_norepack.py --model M.gguf --port 8000 …
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llama_cpp.server.__main__ import main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from llama_defaults import model_defaults

if __name__ == "__main__":
    with model_defaults(repack=os.environ.get("LLAMA_REPACK", "1") != "0"):
        main()
