"""JSON schemas reshaped for llama-cpp-python's schema-to-grammar converter (pure).

The converter resolves `$ref`s (`#/…`) against the root of the schema it is given, and does not
follow one at the root itself. Two shapes that clients send every day fall foul of that:
- pydantic's schema of a self-referencing model is a root `{"$ref": "#/$defs/Node", "$defs": …}`
  (the ollama client's `format=Node.model_json_schema()`);
- a tool's parameters with nested models carry their own `$defs`, which a forced tool call puts
  below the root (instructor's and LangChain's structured output through tools).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from typing import Any, Final, NamedTuple, TypeGuard

DEFINITION_KEYS = ("$defs", "definitions")
# What a grammar rule's name cannot hold: the converter names a rule after a definition.
_RULE_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


# The most repetitions a schema may ask for (minLength, maxItems, a pattern's {n}…). llama.cpp's
# grammar parser unrolls `x{m,n}` into rules, and the converter unrolls some itself: 10^8 threw
# std::bad_alloc inside the runner, which aborted with every request of that model (a serving
# review). 100,000 characters or items is more than a context holds.
MAX_REPETITIONS = 100_000
# The most text a converted grammar may be: whatever unrolls past the checks below (a diff review:
# a pattern's escaped backslash repeated 10^7 times made 20 MB of it and 1.3 GB in the server).
MAX_GRAMMAR_CHARS = 4 * 1024 * 1024
# The counts the converter reads. A minimum past the bound cannot be met in any context: refused.
# A maximum past it is lowered to it, which changes nothing a context could hold.
_LEAST_KEYWORDS = ("minLength", "minItems")
_MOST_KEYWORDS = ("maxLength", "maxItems")
# Keywords whose values are JSON data, not schemas: never read as schemas.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})
# Keywords whose values map names (a property's, a definition's) to schemas.
_NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# A repetition: `{5}`, `{2,}`, `{0,9}`, in a pattern or in GBNF; not a brace after an odd number of
# backslashes (an escaped one, text), but after an even number (an escaped backslash, repeated).
_REPETITION = re.compile(r"(?<!\\)(?:\\\\)*\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
# GBNF's literals and character classes, whose braces are text, not repetitions.
_GBNF_TEXT = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')


def bounded(schema: object) -> object:
    """`schema` with its repetitions in bounds (pure): maxLength/maxItems over MAX_REPETITIONS
    lowered to it (a copy; the input is not changed); ValueError for a minimum or a pattern's
    repetition over it. Values of data keywords (const, enum, default…) are not schemas: left."""
    if isinstance(schema, list):
        return [bounded(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            out[key] = value
            continue
        if _is_number(value) and key in _LEAST_KEYWORDS and value > MAX_REPETITIONS:
            raise ValueError(f"{key} {value:,} is more than the {MAX_REPETITIONS:,} a schema may ask for")
        if _is_number(value) and key in _MOST_KEYWORDS and value > MAX_REPETITIONS:
            out[key] = MAX_REPETITIONS
            continue
        if key == "pattern" and isinstance(value, str):
            _check_counts(value, "its pattern")
        if key in _NAMED_SCHEMAS and isinstance(value, Mapping):  # names of the user's, not keywords
            out[key] = {name: bounded(sub) for name, sub in value.items()}
        else:
            out[key] = bounded(value)
    return out


def check_grammar(grammar: str) -> None:
    """ValueError when the grammar is past MAX_GRAMMAR_CHARS, or repeats anything more than
    MAX_REPETITIONS times (pure)."""
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise ValueError(
            f"its grammar would be {len(grammar):,} characters, more than the {MAX_GRAMMAR_CHARS:,} taken"
        )
    _check_counts(_GBNF_TEXT.sub("", grammar), "its grammar")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_counts(text: str, where: str) -> None:
    for match in _REPETITION.finditer(text):
        count = max(int(part) for part in match.groups() if part)
        if count > MAX_REPETITIONS:
            raise ValueError(
                f"{where} repeats something {count:,} times, more than the {MAX_REPETITIONS:,} a "
                "schema may ask for"
            )


def root_resolved(schema: object) -> object:
    """`schema` with a `$ref` at its root replaced by what it points to; its definitions stay at
    the root, for the references inside. Anything else is returned as it is."""
    seen: set[str] = set()
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        target = _pointed(schema, ref)
        if target is None or ref in seen:
            return schema  # not a local reference, or a loop: the converter says what is wrong
        seen.add(ref)
        definitions = {key: schema[key] for key in DEFINITION_KEYS if key in schema}
        schema = {**target, **definitions}
    return schema


def for_the_converter(schema: object) -> object:
    """`schema` as the converter takes it: its definitions under rule-safe names (references
    rewritten), and a `$ref` at its root resolved."""
    if isinstance(schema, Mapping) and any(isinstance(schema.get(k), Mapping) for k in DEFINITION_KEYS):
        body, moved = hoisted_definitions(schema, "")
        schema = {**body, "$defs": moved}
    return root_resolved(schema)


def hoisted_definitions(schema: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A schema to be placed below the root of another: (itself without its definitions, those
    definitions under names that start with `prefix` and hold only letters, digits and '-', for
    the root's `$defs`), its references to them rewritten to match. Other references are left as
    they are."""
    body = copy.deepcopy(dict(schema))
    moved: dict[str, Any] = {}
    renamed: dict[str, str] = {}
    for key in DEFINITION_KEYS:
        definitions = body.pop(key, None)
        if isinstance(definitions, Mapping):
            for name, definition in definitions.items():
                new_name = f"{prefix}{_RULE_UNSAFE.sub('-', str(name))}"
                while new_name in moved:  # two names that differ only where they were unsafe
                    new_name += "-"
                moved[new_name] = definition
                renamed[f"#/{key}/{name}"] = f"#/$defs/{new_name}"
    _rewrite_refs(body, renamed)
    _rewrite_refs(moved, renamed)
    return body, moved


def _pointed(root: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    if not ref.startswith("#/"):
        return None
    node: object = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")  # JSON pointer escapes
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None


def _rewrite_refs(node: object, renamed: Mapping[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in renamed:
            node["$ref"] = renamed[ref]
        for value in node.values():
            _rewrite_refs(value, renamed)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value, renamed)


# --- integer ranges ---------------------------------------------------------------------------
# llama-cpp-python's converter leaves `minimum` and `maximum` out ("TODO"), so `{"type": "integer",
# "minimum": 10, "maximum": 20}` came back as 3705 (a conformance review); llama.cpp's own (C++)
# converter, which Ollama's schemas go through, writes them into the grammar. So do these.

# An unbounded side reaches as far as the converter's own integers do ("[1-9] [0-9]{0,15}": 16
# digits), or as far as the other side's bound, if that is longer.
MAX_INTEGER_DIGITS = 16
_RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def integer_bounds(schema: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The least and greatest integer an integer schema allows (None: no bound on that side), from
    minimum / maximum / exclusiveMinimum / exclusiveMaximum, numbers or (draft 4) the booleans
    that make minimum and maximum exclusive (pure). ValueError when no integer is allowed."""
    low_bounds, high_bounds = _read_bounds(schema, "integer")
    lows = [math.floor(b.value) + 1 if b.exclusive else math.ceil(b.value) for b in low_bounds]
    highs = [math.ceil(b.value) - 1 if b.exclusive else math.floor(b.value) for b in high_bounds]
    low, high = (max(lows) if lows else None), (min(highs) if highs else None)
    if low is not None and high is not None and low > high:
        raise ValueError(f"no integer is between its bounds ({_shown(schema)})")
    return low, high


# A bound's digits before the point, at most: a double's greatest has 309; past this many, the
# range rules' recursion (a level a digit) would reach Python's limit (a review: 10**1000).
MAX_BOUND_DIGITS = 400


class Bound(NamedTuple):
    value: Decimal
    exclusive: bool


def _read_bounds(schema: Mapping[str, Any], kind: str) -> tuple[list[Bound], list[Bound]]:
    """A schema's lower and upper bounds as written (a float as its shortest form: 0.1, not the
    binary fraction), exclusive from exclusiveMinimum / exclusiveMaximum, numbers or (draft 4)
    booleans (pure). An infinite bound (Python's JSON reads 1e400 so) bounds nothing on its own
    side, and leaves no `kind` on the other. ValueError for a NaN or a bound past MAX_BOUND_DIGITS."""
    lows: list[Bound] = []
    highs: list[Bound] = []
    exclusive_min, exclusive_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    for keyword, exclusive, side in [
        ("minimum", exclusive_min is True, lows),
        ("exclusiveMinimum", True, lows),
        ("maximum", exclusive_max is True, highs),
        ("exclusiveMaximum", True, highs),
    ]:
        value = schema.get(keyword)
        if not _is_number(value):
            continue
        if isinstance(value, float) and math.isnan(value):
            raise ValueError(f"a bound of NaN allows no {kind} ({_shown(schema)})")
        if isinstance(value, float) and math.isinf(value):
            if (value > 0) == (side is lows):  # a minimum of +inf, a maximum of -inf
                raise ValueError(f"no {kind} is between its bounds ({_shown(schema)})")
            continue
        written = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
        if written.copy_abs().adjusted() >= MAX_BOUND_DIGITS:
            raise ValueError(f"{keyword} has more than the {MAX_BOUND_DIGITS} digits a bound may have")
        side.append(Bound(written, exclusive))
    return lows, highs


def bounded_kind(schema: object) -> str | None:
    """ "integer" or "number" for a schema of that type with a range, and nothing the converter
    would read first (a `$ref`, a union, a constant or an enum); None for any other."""
    if (
        isinstance(schema, Mapping)
        and schema.get("type") in ("integer", "number")
        and any(_is_number(schema.get(k)) for k in _RANGE_KEYWORDS)
        and not any(k in schema for k in ("$ref", "oneOf", "anyOf", "allOf", "const", "enum"))
    ):
        return str(schema["type"])
    return None


def each_type(schema: object) -> list[dict[str, Any]] | None:
    """`{"type": ["string", "null"], "enum": […]}` (a strict schema's optional field) as one schema
    per type, each with the rest of it, as llama.cpp's own converter reads a list of types: the
    converter here makes a union of bare `{"type": t}`, which lost the enum, the range, the
    pattern (an optional enum answered any string). None for any other schema (a `$ref` or a
    union comes first, as in both converters)."""
    if not isinstance(schema, Mapping) or not isinstance(schema.get("type"), list):
        return None
    if any(k in schema for k in ("$ref", "oneOf", "anyOf")):
        return None
    if not schema["type"]:
        raise ValueError("an empty list of types allows no value")
    if len(schema) == 1:
        return None
    # "null" named among the types is allowed whatever else the schema says: OpenAI's strict mode
    # makes a field optional so ({"type": ["string", "null"], "enum": ["F", "C"]}, its own docs).
    return [{"type": "null"} if t == "null" else {**schema, "type": t} for t in schema["type"]]


_LITERAL_ESCAPES: Final = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}
_LITERAL_ESCAPE = re.compile(r'[\r\n"\\]')


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal (pure). Its backslashes are escaped too, as llama.cpp's
    converter escapes them: the converter here left them, and an enum value holding a quote
    (JSON `"\\""`) made a grammar llama.cpp could not parse (a property test)."""
    return '"' + _LITERAL_ESCAPE.sub(lambda m: _LITERAL_ESCAPES[m.group(0)], text) + '"'


def items_as_read(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """An array schema as the converter reads it rightly (pure): without `items` of `{}` or `true`
    (pydantic's `list[Any]`: any items, which the converter takes only so: it took `{}` for none
    given, and failed), or `false` after `prefixItems` (a tuple: exactly those, which the converter
    makes of `prefixItems` alone; a review: it became an empty array)."""
    items = schema.get("items")
    any_items = (isinstance(items, Mapping) and not items) or items is True
    if any_items or (items is False and "prefixItems" in schema):
        return {key: value for key, value in schema.items() if key != "items"}
    return schema


def integer_range_rule(low: int | None, high: int | None) -> str:
    """A GBNF expression for exactly the integers from `low` to `high` as JSON writes them (no
    leading zeros, no "-0"), either bound None for none (pure)."""
    digits = max([MAX_INTEGER_DIGITS, *(len(str(abs(b))) for b in (low, high) if b is not None)])
    farthest = 10**digits - 1
    low = -farthest if low is None else low
    high = farthest if high is None else high
    alternatives = []
    if high >= 0:  # the part at or above zero
        alternatives += _unsigned_range(max(low, 0), high)
    if low < 0:  # the part below zero: "-" and its magnitude
        alternatives += [f'"-" {a}' for a in _unsigned_range(max(-high, 1), -low)]
    return " | ".join(alternatives)


def _unsigned_range(low: int, high: int) -> list[str]:
    """Alternatives for the integers low..high (0 <= low <= high), each of one count of digits;
    the counts between those of `low` and `high` in one alternative."""
    shortest, longest = len(str(low)), len(str(high))
    if shortest == longest:
        return _same_length(str(low), str(high))
    out = _same_length(str(low), "9" * shortest)
    if longest - shortest > 1:  # every number of the lengths between: a first digit, then any
        out.append(_join("[1-9]", _any_digits(shortest, longest - 2)))
    return out + _same_length("1" + "0" * (longest - 1), str(high))


def _same_length(low: str, high: str) -> list[str]:
    """Alternatives for the digit strings from `low` to `high`, both of one length (low <= high)."""
    if not low:
        return [""]
    rest = len(low) - 1
    if low[1:] == "0" * rest and high[1:] == "9" * rest:  # whole blocks: a class, then any digits
        if (low[0], high[0]) == ("0", "9"):
            return [_any_digits(rest + 1)]
        return [_join(_digit_class(low[0], high[0]), _any_digits(rest))]
    # A first digit's tails in one group after it, not the digit before each: a 300-digit bound
    # would otherwise write its digits once per digit (a review: 371 KB for one `minimum: 1e300`).
    if low[0] == high[0]:
        return [_then(f'"{low[0]}"', _same_length(low[1:], high[1:]))]
    out = [_then(f'"{low[0]}"', _same_length(low[1:], "9" * rest))]
    if int(high[0]) - int(low[0]) > 1:
        out.append(_join(_digit_class(str(int(low[0]) + 1), str(int(high[0]) - 1)), _any_digits(rest)))
    out.append(_then(f'"{high[0]}"', _same_length("0" * rest, high[1:])))
    return out


def _then(first: str, alternatives: list[str]) -> str:
    """`first`, then one of `alternatives`."""
    return _join(first, alternatives[0] if len(alternatives) == 1 else f"({' | '.join(alternatives)})")


def _digit_class(low: str, high: str) -> str:
    return f'"{low}"' if low == high else f"[{low}-{high}]"


def _any_digits(least: int, most: int | None = None) -> str:
    """`least` to `most` (default: exactly `least`) digits."""
    most = least if most is None else most
    if most == 0:
        return ""
    if least == most:
        return "[0-9]" if least == 1 else f"[0-9]{{{least}}}"
    return f"[0-9]{{{least},{most}}}"


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _shown(schema: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {schema[k]}" for k in _RANGE_KEYWORDS if k in schema)


# --- number ranges ----------------------------------------------------------------------------
# Neither converter writes a number's range into the grammar (llama.cpp's C++ one does integers
# only), so `{"type": "number", "minimum": 0, "maximum": 1}` (pydantic's `Field(ge=0, le=1)`, a
# confidence or a score) answered 10589. A bounded number is written here as JSON writes a decimal
# without an exponent, and the grammar takes exactly the values in range.

# As the converter's numbers: up to 16 digits after the point, or one more than a bound has, so
# that a value fits between any two bounds (0 < x < 1e-20 takes 0.000000000000000000005), up to
# MAX_FRACTION_DIGITS: llama.cpp's grammar parser refused a range rule of some 180 ("exceeds sane
# defaults": a minimum of 7e-203, found by the property test).
FRACTION_DIGITS = 16
MAX_FRACTION_DIGITS = 64
# Exact arithmetic for rounding a bound to MAX_FRACTION_DIGITS (MAX_BOUND_DIGITS before the point).
_EXACT = Context(prec=MAX_BOUND_DIGITS + MAX_FRACTION_DIGITS + 8)


def number_bounds(schema: Mapping[str, Any]) -> tuple[Bound | None, Bound | None]:
    """The lower and upper bound of a number schema (None: none on that side), the stricter where
    two keywords bound one side, as _read_bounds reads them (pure). ValueError when no number is
    allowed."""
    lows, highs = _read_bounds(schema, "number")
    # The greater lower bound, the lesser upper one; at one value, the exclusive one.
    low = max(lows, key=lambda b: (b.value, b.exclusive)) if lows else None
    high = min(highs, key=lambda b: (b.value, not b.exclusive)) if highs else None
    if _nothing_between(low, high):
        raise ValueError(f"no number is between its bounds ({_shown(schema)})")
    return low, high


def _nothing_between(low: Bound | None, high: Bound | None) -> bool:
    if low is None or high is None:
        return False
    return low.value > high.value or (low.value == high.value and (low.exclusive or high.exclusive))


def number_range_rule(low: Bound | None, high: Bound | None) -> str:
    """A GBNF expression for exactly the decimals from `low` to `high` (finite; None: unbounded)
    that JSON writes without an exponent (pure): up to FRACTION_DIGITS digits after the point, or
    one more than a bound has, at most MAX_FRACTION_DIGITS (a bound with more is the nearest
    decimal with that many inside the range); before it, up to 16 digits or a bound's count.
    ValueError when the bounds leave nothing between them."""
    if _nothing_between(low, high):
        raise ValueError("no number is between its bounds")
    low = None if low is None else _fitted(low, ROUND_CEILING)
    high = None if high is None else _fitted(high, ROUND_FLOOR)
    if _nothing_between(low, high):
        raise ValueError(f"no number of up to {MAX_FRACTION_DIGITS} decimals is between its bounds")
    bounds = [b for b in (low, high) if b is not None]
    places = max([FRACTION_DIGITS, *(len(_split(b.value.copy_abs())[1]) + 1 for b in bounds)])
    places = min(places, MAX_FRACTION_DIGITS)
    digits = max([MAX_INTEGER_DIGITS, *(len(str(_split(b.value.copy_abs())[0])) for b in bounds)])
    zero = Decimal(0)
    alternatives = []
    if high is None or high.value > 0 or (high.value == 0 and not high.exclusive):  # 0 and above
        at_least = low if low is not None and low.value >= 0 else Bound(zero, False)
        alternatives += _magnitudes(at_least, high, digits, places)
    if low is None or low.value < 0:  # below zero: "-" and a magnitude, never "-0"
        least = Bound(zero, True)  # above zero, unless the high bound is below it
        if high is not None and high.value < 0:
            least = Bound(high.value.copy_negate(), high.exclusive)
        most = None if low is None else Bound(low.value.copy_negate(), low.exclusive)
        alternatives += [_join('"-"', magnitude) for magnitude in _magnitudes(least, most, digits, places)]
    return " | ".join(alternatives)


def _fitted(bound: Bound, rounding: str) -> Bound:
    """`bound` itself if it has at most MAX_FRACTION_DIGITS - 1 decimals (a value then fits beside
    it), else the nearest decimal with that many inside the range, inclusive: rounded up for a
    lower bound (ROUND_CEILING), down for an upper (ROUND_FLOOR)."""
    step = Decimal(1).scaleb(-(MAX_FRACTION_DIGITS - 1))
    fitted = bound.value.quantize(step, rounding=rounding, context=_EXACT)
    return bound if fitted == bound.value else Bound(fitted, False)


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal's integer part and its digits after the point, without trailing zeros."""
    whole, _, fraction = f"{value:f}".partition(".")
    return int(whole), fraction.rstrip("0")


def _magnitudes(low: Bound, high: Bound | None, digits: int, places: int) -> list[str]:
    """Alternatives for the non-negative decimals from `low` (>= 0) to `high` (None: any with up to
    `digits` digits before the point), with up to `places` after it."""
    low_whole, low_fraction = _split(low.value)
    any_fraction = f'("." {_any_digits(1, places)})?'
    if high is not None:
        (high_whole, high_fraction), high_exclusive = _split(high.value), high.exclusive
        if low_whole == high_whole:
            only = _fraction(low_fraction, low.exclusive, high_fraction, high_exclusive, places)
            return [] if only is None else [_join(f'"{low_whole}"', only)]
    out = []
    above = _fraction(low_fraction, low.exclusive, None, False, places)
    if above is not None:
        out.append(_join(f'"{low_whole}"', above))
    greatest_whole = 10**digits - 1 if high is None else high_whole - 1  # with any fraction
    if greatest_whole > low_whole:
        out.append(_join(_group(_unsigned_range(low_whole + 1, greatest_whole)), any_fraction))
    if high is not None:
        below = _fraction("", False, high_fraction, high_exclusive, places)
        if below is not None:
            out.append(_join(f'"{high_whole}"', below))
    return out


def _fraction(
    low: str, low_exclusive: bool, high: str | None, high_exclusive: bool, places: int
) -> str | None:
    """What may follow an integer part: none, or "." and up to `places` digits, whose value 0.d lies
    between 0.low and 0.high (None: below 1). "" for none only; None when nothing may."""
    none_fits, digits = _fraction_digits(low, low_exclusive, high, high_exclusive, places)
    if digits is None:
        return "" if none_fits else None
    dotted = _join('"."', _group([digits]))
    return f"({dotted})?" if none_fits else dotted


def _fraction_digits(
    low: str, low_exclusive: bool, high: str | None, high_exclusive: bool, room: int
) -> tuple[bool, str | None]:
    """Whether no digits fit (the value 0), and an expression for the 1 to `room` digits d that fit
    0.low <= 0.d <= 0.high (< where exclusive; `high` None: below 1), or None if none do. `low` and
    `high` hold no trailing zeros, so a non-empty one is above 0."""
    empty_fits = low == "" and not low_exclusive and (high is None or high != "" or not high_exclusive)
    if room == 0:
        return empty_fits, None
    if low == "" and not low_exclusive and high is None:  # any digits
        return empty_fits, _any_digits(1, room)
    if low == "" and not low_exclusive and high == "" and not high_exclusive:  # zeros: the value 0
        return empty_fits, '"0"' if room == 1 else f'"0"{{1,{room}}}'
    first_low = int(low[0]) if low else 0
    first_high = 10 if high is None else int(high[0]) if high else 0  # 10: every digit is below it
    alternatives = []
    if first_high - first_low >= 2:  # a first digit strictly between: any digits after it
        alternatives.append(
            _join(_digit_class(str(first_low + 1), str(min(first_high - 1, 9))), _any_digits(0, room - 1))
        )
    rest_low = (low[1:], low_exclusive)
    rest_high = (None if high is None else high[1:], high_exclusive)
    if first_low == first_high:  # the first digit of both: both bound the rest
        entries = [(first_low, rest_low, rest_high)]
    else:  # the low's first digit: only the low bounds the rest; the high's: only the high
        entries = [(first_low, rest_low, (None, False)), (first_high, ("", False), rest_high)]
    for digit, after_low, after_high in entries:
        if digit > 9:  # the "10" of no upper bound
            continue
        rest_fits, rest = _fraction_digits(*after_low, *after_high, room - 1)
        if rest is not None:
            alternatives.append(_join(f'"{digit}"', f"({rest})?" if rest_fits else _group([rest])))
        elif rest_fits:
            alternatives.append(f'"{digit}"')
    return empty_fits, " | ".join(alternatives) or None


def _group(alternatives: list[str]) -> str:
    expression = " | ".join(alternatives)
    return f"({expression})" if len(alternatives) > 1 or " " in expression else expression
