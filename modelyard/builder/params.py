"""The PARAMETER table: which names a Modelfile may set, and the type of each.

The names and types are Ollama's (`api.Options` and its embedded `Runner`, see reference/ollama.md §1.6),
plus two of ours: `use_mlock`, which Ollama dropped but llama.cpp still honours, and `num_parallel`, the
number of slots a runner serves. Names are case-sensitive, as in Ollama: `Temperature` is unknown.

Two ways in:
- `coerce_parameter` reads the text after `PARAMETER <name>` in a Modelfile, with Ollama's spelling of
  ints, floats and bools (Go's `strconv`).
- `validate_parameter(s)` checks values that already have a type (JSON, YAML). These are strict, as
  Ollama's `Options.FromMap` is: a number must be a number, a bool must be a bool.

Deprecated names are not errors: the caller drops them and warns, as Ollama does.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final, TypeVar

from modelyard.errors import ModelfileError

ParameterValue = int | float | bool | str | tuple[str, ...]


class ParameterType(enum.Enum):
    """The type of a parameter; the value is how a message names it ("expected an integer")."""

    INT = "an integer"
    FLOAT = "a number"
    BOOL = "true or false"
    STRINGS = "a string or a list of strings"
    DURATION = "a duration like 5m, 1h30m or 300 (seconds); negative or forever: stay loaded"


PARAMETER_TYPES: Final[Mapping[str, ParameterType]] = MappingProxyType(
    {
        "num_keep": ParameterType.INT,
        "seed": ParameterType.INT,
        "num_predict": ParameterType.INT,
        "top_k": ParameterType.INT,
        "top_p": ParameterType.FLOAT,
        "min_p": ParameterType.FLOAT,
        "typical_p": ParameterType.FLOAT,
        "repeat_last_n": ParameterType.INT,
        "temperature": ParameterType.FLOAT,
        "repeat_penalty": ParameterType.FLOAT,
        "presence_penalty": ParameterType.FLOAT,
        "frequency_penalty": ParameterType.FLOAT,
        "stop": ParameterType.STRINGS,
        "num_ctx": ParameterType.INT,
        "num_batch": ParameterType.INT,
        "num_gpu": ParameterType.INT,
        "main_gpu": ParameterType.INT,
        "use_mmap": ParameterType.BOOL,
        "use_mlock": ParameterType.BOOL,
        "num_thread": ParameterType.INT,
        "draft_num_predict": ParameterType.INT,
        "num_parallel": ParameterType.INT,
        "keep_alive": ParameterType.DURATION,
    }
)

# Ollama removed these (#10574, #10581) and drops them with a warning; so do we. `use_mlock` is on
# Ollama's list but not on ours: llama.cpp still supports it.
DEPRECATED_PARAMETERS: Final[frozenset[str]] = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

# Go's strconv.ParseInt(s, 10, 64) and ParseFloat(s, 32) spellings, ASCII digits only (Python's int()
# would also take "1_000", " 7 " and Arabic-Indic digits). Hex floats and inf/nan are left out on purpose.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOL_TEXT: Final[Mapping[str, bool]] = MappingProxyType(
    {text: True for text in ("1", "t", "T", "TRUE", "true", "True")}
    | {text: False for text in ("0", "f", "F", "FALSE", "false", "False")}
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def is_deprecated(name: str) -> bool:
    return name in DEPRECATED_PARAMETERS


def deprecation_warning(name: str) -> str:
    return f"parameter '{name}' is deprecated and was ignored"


def parameter_type(name: str) -> ParameterType:
    """The type of `name`, or a ModelfileError that suggests the closest valid name."""
    try:
        return PARAMETER_TYPES[name]
    except KeyError:
        raise ModelfileError(_unknown_parameter_message(name)) from None


def _unknown_parameter_message(name: str) -> str:
    if is_deprecated(name):
        return f"parameter {name!r} is deprecated and no longer has any effect"
    message = f"unknown parameter {name!r}"
    suggestion = _closest_name(name)
    if suggestion:
        message += f" (did you mean {suggestion!r}?)"
    return message


def _closest_name(name: str) -> str | None:
    # A case slip is the likeliest mistake, and difflib ranks it below some closer-looking names.
    for valid in PARAMETER_TYPES:
        if valid.lower() == name.lower():
            return valid
    matches = difflib.get_close_matches(name, list(PARAMETER_TYPES), n=1, cutoff=0.6)
    return matches[0] if matches else None


def coerce_parameter(name: str, raw: str) -> int | float | bool | str:
    """The typed value of `PARAMETER name raw`; one `stop` line gives one string."""
    kind = parameter_type(name)
    if kind is ParameterType.STRINGS:
        return raw
    if kind is ParameterType.DURATION:
        if _DURATION_TEXT.fullmatch(raw):
            return raw
    elif kind is ParameterType.BOOL:
        if raw in _BOOL_TEXT:
            return _BOOL_TEXT[raw]
    elif kind is ParameterType.INT:
        if _INT_TEXT.fullmatch(raw):
            return _checked_int(name, int(raw))
    elif _FLOAT_TEXT.fullmatch(raw):
        return _checked_float(name, float(raw))
    raise ModelfileError(f"invalid value {raw!r} for parameter {name!r}: expected {_spelled(kind)}")


def _spelled(kind: ParameterType) -> str:
    examples = {
        ParameterType.INT: "an integer, like 4096",
        ParameterType.FLOAT: "a number, like 0.7",
        ParameterType.BOOL: "true or false",
        ParameterType.STRINGS: "a string",
        ParameterType.DURATION: "a duration, like 10m, 1h30m, 300 or forever",
    }
    return examples[kind]


# The least value a parameter may take, where a smaller one means nothing (a context of -5 tokens,
# a negative count of guesses). Checked wherever a value comes in, so that a build refuses what
# every request would. The sampling cut-offs have none, as in Ollama, which hands any value to
# llama.cpp: there top_k <= 0 and top_p >= 1 turn a cut-off off (vLLM's clients send top_k -1).
MINIMUMS: Final[Mapping[str, int | float]] = MappingProxyType(
    {
        "num_ctx": 1,
        "num_batch": 1,
        "num_parallel": 1,
        "repeat_last_n": -1,  # -1: the whole context
        "num_keep": -1,  # -1: the whole prompt
        "repeat_penalty": 0.0,
        "draft_num_predict": 0,
    }
)


_Number = TypeVar("_Number", int, float)


def _checked_int(name: str, value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        # As a float past 20 digits: 1e300, taken as a whole number, printed 301 digits.
        shown = str(value) if len(str(abs(value))) <= 20 else f"{value:.3g}"
        raise ModelfileError(f"parameter {name!r}: {shown} does not fit in a 64-bit integer")
    return _at_least_minimum(name, value)


def _checked_float(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ModelfileError(f"parameter {name!r} must be a finite number, got {value}")
    # Ollama's options are float32: ParseFloat(s, 32) refuses what rounds past its range (a build
    # review: 1e39 was taken, and would be infinity there), as a round trip through one tells.
    if math.isinf(struct.unpack("f", struct.pack("f", value))[0]):
        raise ModelfileError(f"parameter {name!r}: {value} does not fit in a 32-bit float")
    return _at_least_minimum(name, value)


# The most a parameter may take, where llama.cpp fails on more: ggml's GGML_MAX_N_THREADS (a serving
# review: num_thread 100000 aborted the runner with std::bad_alloc as it loaded).
MAXIMUMS: Final[Mapping[str, int]] = MappingProxyType({"num_thread": 512})


def _at_least_minimum(name: str, value: _Number) -> _Number:
    minimum = MINIMUMS.get(name)
    if minimum is not None and value < minimum:
        raise ModelfileError(f"parameter {name!r} must be at least {minimum}, got {value}")
    maximum = MAXIMUMS.get(name)
    if maximum is not None and value > maximum:
        raise ModelfileError(f"parameter {name!r} must be at most {maximum}, got {value}")
    return value


def validate_parameter(name: str, value: object) -> ParameterValue:
    """Check one already-typed value (from JSON or YAML) and return it in its canonical type.

    An int is accepted for a float (and becomes a float); a bool is not accepted for a number, nor a
    number for a bool; `stop` takes a string or a list of strings and always gives a tuple.
    The message of the ModelfileError is about the value only, so a caller can prefix its own path.
    """
    kind = parameter_type(name)
    if kind is ParameterType.STRINGS:
        return _stop_strings(value)
    if kind is ParameterType.DURATION:
        return _duration(value)
    if kind is ParameterType.BOOL and isinstance(value, bool):
        return value
    if isinstance(value, bool):
        pass  # bool is an int subclass, but true is not a number
    elif kind is ParameterType.INT and isinstance(value, int):
        return _checked_int(name, value)
    elif kind is ParameterType.INT and isinstance(value, float) and value.is_integer():
        # JSON has one number type, and clients that write every number as a float send 2048.0;
        # Ollama's Go takes a float64 for an int (a build review: /api/create refused it).
        return _checked_int(name, int(value))
    elif kind is ParameterType.FLOAT and isinstance(value, int | float):
        return _checked_float(name, float(value))
    hint = ""
    if kind is ParameterType.FLOAT and isinstance(value, str) and _EXPONENT_WITHOUT_DOT.fullmatch(value):
        written = re.sub("[eE]", ".0e", value, count=1)
        hint = f" (YAML reads an exponent without a dot as text: write {written})"
    raise ModelfileError(f"expected {kind.value}, got {describe_value(value)}{hint}")


# What YAML 1.1 (PyYAML) takes for a string though it looks like a number: 1e-10 (1.0e-10 is one).
_EXPONENT_WITHOUT_DOT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


# Go's time.ParseDuration grammar, a bare number of seconds, or "forever" (keep_alive's spellings).
_NUMBER_TEXT = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # 5, 5., 5.5, .5: Go's
# A bare number as the runtime reads it (runtime/keepalive.py): seconds.
_DURATION_TEXT = re.compile(
    rf"[-+]?(?:{_NUMBER_TEXT}(?:ns|us|µs|μs|ms|s|m|h))+|-?[0-9]+(?:\.[0-9]+)?|forever"
)


def _duration(value: object) -> str:
    """A duration kept as text (the runtime reads it); a number means seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        # Positional, never "1e-05": the grammar above, the runtime and Ollama read no exponents.
        return format(Decimal(repr(value)), "f")
    if isinstance(value, str) and _DURATION_TEXT.fullmatch(value):
        return value
    raise ModelfileError(f"expected {ParameterType.DURATION.value}, got {describe_value(value)}")


def _stop_strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        strings = tuple(item for item in value if isinstance(item, str))
        if len(strings) == len(value):
            return strings
    raise ModelfileError(f"expected {ParameterType.STRINGS.value}, got {describe_value(value)}")


def validate_parameters(parameters: Mapping[str, object]) -> dict[str, ParameterValue]:
    """Check a whole mapping of typed values; deprecated names are dropped (see `deprecation_warning`).

    Every problem is reported in one ModelfileError, one `name: problem` per line.
    """
    valid: dict[str, ParameterValue] = {}
    problems: list[str] = []
    for name, value in parameters.items():
        if is_deprecated(name):
            continue
        try:
            valid[name] = validate_parameter(name, value)
        except ModelfileError as error:
            # An unknown name's message already names it; a bad value's does not.
            problems.append(error.message if name not in PARAMETER_TYPES else f"{name}: {error.message}")
    if problems:
        raise ModelfileError("invalid parameters:\n  " + "\n  ".join(problems))
    return valid


def describe_value(value: object) -> str:
    """How a message shows a value a user wrote: strings quoted, YAML spellings for the rest."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


class Parameters(Mapping[str, ParameterValue]):
    """An immutable, hashable mapping of parameter values, kept sorted by name.

    A frozen dataclass hashes its fields, so `Modelfile.parameters` cannot be a dict or a MappingProxy.
    Lists become tuples on the way in; nothing is validated here (see `validate_parameters`).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, object] | Iterable[tuple[str, object]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        frozen = {name: _frozen(value) for name, value in pairs}
        self._items: tuple[tuple[str, ParameterValue], ...] = tuple(sorted(frozen.items()))

    def __getitem__(self, name: str) -> ParameterValue:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self._items) == dict(other.items())

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Parameters({dict(self._items)!r})"


def _frozen(value: object) -> ParameterValue:
    if isinstance(value, list | tuple):
        return tuple(value)
    return value  # type: ignore[return-value]  # unvalidated on purpose; see the class docstring
