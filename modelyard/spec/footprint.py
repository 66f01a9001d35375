"""The memory a model takes once loaded, estimated from its GGUF header before it is loaded: the
reconciler's admission (host.py) and the Kubernetes memory requests (kubernetes.py) use this one
function, so the two always agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.runtime.memory import RUNNER_PROCESS_BYTES, estimate
from modelyard.runtime.options import DEFAULT_NUM_CTX, parse_load_options
from modelyard.runtime.servable import Servable


def footprint(servable: Servable, options: Mapping[str, Any]) -> int:
    """Bytes `servable` takes loaded with `options` over its own parameters: weights, KV cache and
    compute buffers for num_ctx as set (else the default, never past the training context) and
    num_parallel as set (else the image's, else 1: the least the scheduler's automatic choice
    takes), and its runner process, as the scheduler counts it. Raises ModelyardError when the
    options do not parse."""
    merged = {**servable.params, **options}
    load = parse_load_options(merged)
    shape = servable.gguf.shape
    n_ctx = load.num_ctx if "num_ctx" in merged else DEFAULT_NUM_CTX
    if shape.n_ctx_train:
        n_ctx = min(n_ctx, shape.n_ctx_train)
    model = estimate(shape, n_ctx=n_ctx, slots=load.num_parallel, n_batch=load.n_batch).total
    return model + RUNNER_PROCESS_BYTES
