"""Request options → typed sampling and load options: pure, validated, one error per bad request.

Options merge as Ollama merges them: defaults ⊕ the image's PARAMETERs ⊕ the request's `options`.
Names and types are the Modelfile's (builder/params.py). A request may also carry options Ollama
clients still send that Ollama itself no longer honours (mirostat, numa, …): those are accepted and
ignored, as Ollama does. A name nobody knows, or a value of the wrong type, is an
InferenceRequestError naming the option; the runner goes on serving everyone else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.builder.params import (
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    ParameterType,
    parameter_type,
    validate_parameter,
)
from modelyard.errors import InferenceRequestError, ModelfileError

# Options that affect how the model is loaded, not how one request samples. A request that changes
# them needs another runner (the scheduler decides); the runner itself ignores them per request.
LOAD_OPTION_NAMES = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_thread", "num_parallel"}
)
# Sent by clients written for older Ollama versions (the official ollama-python still lists tfs_z
# and embedding_only in its Options); Ollama ignores them, so do we. `keep_alive` is an image
# parameter the scheduler reads, not a sampling option.
IGNORED_OPTION_NAMES = DEPRECATED_PARAMETERS | {
    "numa",
    "keep_alive",
    "tfs_z",
    "embedding_only",
}

DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_BATCH = 512
DEFAULT_NUM_KEEP = 4
# Logits rows a batch may hold beyond one per slot, for prompt tokens whose log-probabilities are
# asked for (OpenAI's legacy `echo` with `logprobs`): a longer prompt is read this many tokens per
# step. Each row is n_vocab floats, 1 MiB for Gemma's vocabulary, reserved in every context.
PROMPT_LOGPROB_ROWS = 16
# Tokens guessed ahead by prompt lookup and checked in the same decode step (runtime/drafting.py):
# Ollama's draft_num_predict, with its default. Guesses use the logits rows reserved above, so a
# larger value means as many as those (Ollama takes any count).
DEFAULT_DRAFT_NUM_PREDICT = 4
MAX_DRAFT_NUM_PREDICT = PROMPT_LOGPROB_ROWS


@dataclass(frozen=True)
class SamplingOptions:
    """How one request samples and when it stops (Ollama's defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1: a fresh random seed per request
    num_predict: int = -1  # -1: until a stop, end of generation, or the context is full
    num_keep: int = DEFAULT_NUM_KEEP
    stop: tuple[str, ...] = ()
    draft_num_predict: int = DEFAULT_DRAFT_NUM_PREDICT  # 0: decode one token a step

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class LoadOptions:
    """How a runner loads its model."""

    num_ctx: int = DEFAULT_NUM_CTX  # tokens of context per slot
    num_parallel: int = 1  # slots: requests decoded together in one batch
    num_batch: int = DEFAULT_NUM_BATCH  # the largest batch handed to llama_decode (prefill chunk size)
    num_gpu: int = -1  # layers to offload; -1 = as many as the backend takes, 0 = CPU only
    main_gpu: int = 0
    use_mmap: bool = True
    use_mlock: bool = False
    num_thread: int = 0  # 0 = auto: see threads()
    flash_attention: bool | None = None  # None: llama.cpp decides (on where the backend supports it)

    @property
    def n_batch(self) -> int:
        """The batch llama.cpp is given: `num_batch`, but at least a token for every slot, since a
        step decodes one for each slot generating (llama.cpp aborts on a batch over its n_batch).
        A small `num_batch` only makes prefill slow, as with Ollama."""
        return max(self.num_batch, self.num_parallel)

    def threads(self, cores: int, all_layers_on_gpu: bool = False) -> int:
        """llama.cpp's CPU threads: `num_thread` when set; else one when every layer runs on a GPU,
        else one per core this process may use (`cores`: modelyard.cpus.usable_cores).

        With every layer on a GPU, what is left to the CPU backend is the lookup of a small batch's
        token embeddings (llama.cpp keeps that table in host memory). More threads only cost: after
        each step libgomp's idle workers spin for milliseconds on every core, the cores that the
        server, the HTTP clients and the runner's own Python thread need between steps. llama.cpp
        made the same choice (PR #2915, "use 1 thread if model is fully offloaded") before its
        backend scheduler replaced that code; on an H100 our runner ran as fast with 1 thread as
        with 16, within that machine's noise (benchmarks/RESULTS.md, "On a GPU: NVIDIA H100")."""
        if self.num_thread > 0:
            return self.num_thread
        if all_layers_on_gpu:
            return 1
        return max(cores, 1)


@dataclass(frozen=True)
class RequestOptions:
    sampling: SamplingOptions
    load: dict[str, Any] = field(default_factory=dict)  # load options the request asked for, if any
    unknown: tuple[str, ...] = ()  # names skipped under ignore_unknown, each with a did-you-mean


def merge_options(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers win; `stop` from a later layer replaces, as Ollama's options do."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    return merged


def parse_request_options(
    options: Mapping[str, Any] | None, *, ignore_unknown: bool = False
) -> RequestOptions:
    """Validate an `options` object (already merged with the image's parameters).

    An unknown name is an error, except with `ignore_unknown`: a request to the API skips it, as
    Ollama's server does (it only logs it), so that a client written for a newer Ollama, sending
    an option we do not know yet, still works. Spec files and the CLI reject it, as Ollama's
    `create` does: there a typo is the user's to fix."""
    if options is None:
        return RequestOptions(SamplingOptions())
    if not isinstance(options, Mapping):
        raise InferenceRequestError(f"options must be an object, got {type(options).__name__}")
    sampling: dict[str, Any] = {}
    load: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in options.items():
        if name in IGNORED_OPTION_NAMES or value is None:
            continue  # Ollama skips null values: "not set"
        if name not in PARAMETER_TYPES:
            if not ignore_unknown:
                raise InferenceRequestError(_unknown_option(name))
            unknown.append(_unknown_option(name))
            continue
        if parameter_type(name) is ParameterType.INT and isinstance(value, float) and math.isfinite(value):
            # JSON has one number type: Ollama takes a float for an int option cut toward zero
            # (2048.0 is 2048, and 1.5 is 1), as Go's int64() does.
            value = int(value)
        try:
            typed = validate_parameter(name, value)
        except ModelfileError as exc:
            raise _option_error(name, exc) from None
        (load if name in LOAD_OPTION_NAMES else sampling)[name] = typed
    if "draft_num_predict" in sampling:
        sampling["draft_num_predict"] = min(sampling["draft_num_predict"], MAX_DRAFT_NUM_PREDICT)
    return RequestOptions(SamplingOptions(**sampling), load, tuple(unknown))


def parse_load_options(options: Mapping[str, Any] | None) -> LoadOptions:
    """Load options from an image's parameters and a spec or request (unknown names ignored here:
    parse_request_options reports them)."""
    values: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if name in LOAD_OPTION_NAMES:
            try:
                values[name] = validate_parameter(name, value)
            except ModelfileError as exc:
                raise _option_error(name, exc) from None
    return LoadOptions(**values)


def _option_error(name: str, error: ModelfileError) -> InferenceRequestError:
    """A bad option's value, told as an option: `option 'num_ctx' must be at least 1, got -5`."""
    message = error.message.removeprefix(f"parameter {name!r} ")
    joined = f"option {name!r} {message}" if message != error.message else f"option {name!r}: {message}"
    return InferenceRequestError(joined)


def _unknown_option(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, [*PARAMETER_TYPES], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown option {name!r}{hint}"
