"""A GPU's decode step, emulated on a CPU, for `bench_server.py --step-floor-ms` (not part of modelyard).

On a GPU a decode step of a small model costs about the same for 1 sequence as for 8, and the
runner's CPU thread mostly waits for it; on a CPU a step's cost grows with its sequences and keeps
the cores busy. With this directory on PYTHONPATH and MODELYARD_BENCH_STEP_FLOOR_MS set, every
`llama_decode` of a runner process (`modelyard.runtime.runner_main`) lasts at least that long,
sleeping out the rest: with a small model, steps of a GPU's length and shape, so that serving's
overhead at a GPU's token rates can be measured where no GPU is lent. Other processes (the server,
the benchmark) are left as they are.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _run_the_next_sitecustomize() -> None:
    """Python runs the first sitecustomize on its path only: this one, put first, would hide the
    interpreter's or the user's own (a review). Run the one it would have found."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_run_the_next_sitecustomize()

_FLOOR_S = float(os.environ.get("MODELYARD_BENCH_STEP_FLOOR_MS") or 0) / 1000


def _is_runner() -> bool:
    # sys.argv holds only "-m" this early, not the module's name
    with open("/proc/self/cmdline", "rb") as cmdline:
        return b"modelyard.runtime.runner_main" in cmdline.read()


if _FLOOR_S > 0 and _is_runner():
    import time

    from modelyard.runtime import llama

    _decode = llama.Context.decode

    def _decode_at_least_the_floor(self: llama.Context, batch: llama.Batch) -> int:
        started = time.perf_counter()
        rc = _decode(self, batch)
        left = _FLOOR_S - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        return rc

    llama.Context.decode = _decode_at_least_the_floor  # type: ignore[method-assign]
