"""JSON schemas reshaped for llama-cpp-python's grammar converter (modelyard/runtime/json_schemas.py),
and the converter taking the shapes pydantic gives."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.runtime import llama
from modelyard.runtime.json_schemas import (
    Bound,
    bounded,
    check_grammar,
    gbnf_literal,
    hoisted_definitions,
    integer_bounds,
    integer_range_rule,
    number_bounds,
    number_range_rule,
    root_resolved,
)
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.server.tool_calls import forced_call_schema

NODE = {"type": "object", "properties": {"v": {"type": "integer"}}}
DANGLING = {"$ref": "#/$defs/Gone", "$defs": {}}
REMOTE = {"$ref": "https://example.com/s.json"}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        pytest.param({"type": "string"}, {"type": "string"}, id="no-ref"),
        pytest.param(
            {"$ref": "#/$defs/Node", "$defs": {"Node": NODE}},
            {**NODE, "$defs": {"Node": NODE}},
            id="root-ref-keeps-definitions",
        ),
        pytest.param(
            {"$ref": "#/definitions/A", "definitions": {"A": {"$ref": "#/definitions/B"}, "B": NODE}},
            {**NODE, "definitions": {"A": {"$ref": "#/definitions/B"}, "B": NODE}},
            id="ref-to-ref",
        ),
        pytest.param(DANGLING, DANGLING, id="dangling"),
        pytest.param(REMOTE, REMOTE, id="remote"),
        pytest.param(
            {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}},
            {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}},
            id="loop",
        ),
        pytest.param(["not", "an", "object"], ["not", "an", "object"], id="not-an-object"),
    ],
)  # fmt: skip
def test_root_resolved(schema: object, expected: object) -> None:
    assert root_resolved(schema) == expected


def test_hoisted_definitions_move_and_rename_with_their_references() -> None:
    schema = {
        "type": "object",
        "properties": {"addr": {"$ref": "#/$defs/Addr"}, "old": {"$ref": "#/definitions/Old"}},
        "$defs": {"Addr": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Addr"}}}},
        "definitions": {"Old": {"type": "string"}},
    }
    body, moved = hoisted_definitions(schema, "person.")
    assert body == {
        "type": "object",
        "properties": {"addr": {"$ref": "#/$defs/person.Addr"}, "old": {"$ref": "#/$defs/person.Old"}},
    }
    assert moved == {
        "person.Addr": {"type": "object", "properties": {"next": {"$ref": "#/$defs/person.Addr"}}},
        "person.Old": {"type": "string"},
    }
    assert "$defs" in schema and schema["properties"]["addr"] == {"$ref": "#/$defs/Addr"}, "input untouched"


class Addr(pydantic.BaseModel):
    city: str


class Person(pydantic.BaseModel):
    name: str
    addr: Addr


class Company(pydantic.BaseModel):
    addr: Addr  # the same definition name as Person's, in another tool


class Node(pydantic.BaseModel):
    v: int
    children: list[Node] = []


class Tree_Node(pydantic.BaseModel):  # a name a grammar rule cannot hold as it is
    label: str
    kids: list[Tree_Node] = []


def tool(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": model.__name__, "parameters": model.model_json_schema()}}


@pytest.fixture(scope="module")
def tiny_model(tiny_gguf: Path) -> Iterator[llama.Model]:
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    yield model
    model.close()


def compiles(model: llama.Model, schema: object) -> bool:
    """llama.cpp itself parses the grammar (what a request would meet), not only the converter."""
    sampler = llama.Sampler(model, SamplingOptions(), seed=1, grammar=llama.json_schema_grammar(schema))
    sampler.close()
    return True


def test_the_converter_takes_pydantic_schemas_with_definitions(tiny_model: llama.Model) -> None:
    # The ollama client's format=Node.model_json_schema(): a root $ref (was: "invalid JSON schema"),
    # and a recursive definition whose name a grammar rule cannot hold.
    assert compiles(tiny_model, Node.model_json_schema())
    assert compiles(tiny_model, Tree_Node.model_json_schema())
    # A forced call to tools whose parameters have nested or recursive models (was: "$defs not in …",
    # then "the grammar could not be compiled" for a recursive one).
    tools = [tool(Person), tool(Company), tool(Node), tool(Tree_Node)]
    forced = forced_call_schema(tools, "required")
    assert forced is not None
    assert set(forced["$defs"]) == {"tool0-Addr", "tool1-Addr", "tool2-Node", "tool3-Tree-Node"}
    assert compiles(tiny_model, forced)
    one = forced_call_schema([tool(Node)], {"type": "function", "function": {"name": "Node"}})
    assert one is not None and compiles(tiny_model, one)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        # llama.cpp's grammar parser unrolls repetitions: 10^8 aborted the runner with std::bad_alloc,
        # and every request of that model with it (a serving review).
        pytest.param(
            {"type": "string", "minLength": 100_000_000},
            "minLength 100,000,000 is more than",
            id="min-length",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "array", "items": {}, "minItems": 10**9}}},
            "minItems 1,000,000,000",
            id="nested-min-items",
        ),
        pytest.param(
            {"type": "string", "pattern": "^a{1000000}$"},
            "its pattern repeats something 1,000,000",
            id="pattern",
        ),
        pytest.param({"type": "string", "pattern": "^a{2,200000}$"}, "200,000 times", id="pattern-range"),
        # An escaped backslash, repeated: not an escaped brace (a diff review: 10^7 went through).
        pytest.param(
            {"type": "string", "pattern": "^\\\\{10000000}$"}, "10,000,000 times", id="escaped-backslash"
        ),
        pytest.param(
            {"type": "object", "properties": {"enum": {"type": "string", "minLength": 200_000}}},
            "minLength 200,000",
            id="a-property-named-like-a-data-keyword",
        ),
    ],
)
def test_schemas_asking_for_too_many_repetitions_are_refused(schema: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="invalid JSON schema: ") as caught:
        llama.json_schema_grammar(schema)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"type": "string", "maxLength": 100_000}, id="at-the-bound"),
        pytest.param({"type": "string", "pattern": "^[a-z]{3}\\{99999999\\}$"}, id="escaped-braces-are-text"),
        pytest.param({"enum": ["{9999999}"]}, id="braces-in-a-literal"),
        # A maximum past the bound is lowered to it; data keywords are not schemas; the converter
        # reads no property counts (a diff review: each of these was refused).
        pytest.param({"type": "string", "maxLength": 10**6}, id="max-length-lowered"),
        pytest.param(
            {"type": "object", "default": {"maxItems": 10**6, "minLength": 10**9}}, id="data-not-schema"
        ),
        pytest.param({"type": "object", "maxProperties": 10**6}, id="max-properties"),
    ],
)
def test_schemas_within_the_bound_convert(schema: dict[str, object]) -> None:
    assert llama.json_schema_grammar(schema)


def test_a_maximum_past_the_bound_is_lowered_in_a_copy() -> None:
    schema = {"type": "array", "items": {"type": "string", "maxLength": 10**7}, "maxItems": 10**6}
    assert bounded(schema) == {
        "type": "array",
        "items": {"type": "string", "maxLength": 100_000},
        "maxItems": 100_000,
    }
    assert schema["maxItems"] == 10**6, "the input is left as it was"


def test_grammar_repetitions_outside_literals_and_classes_are_counted() -> None:
    check_grammar('root ::= "{1000000}" [{}0-9]{2,5} x{3}')  # texts and small counts
    with pytest.raises(ValueError, match="its grammar repeats something 100,001 times"):
        check_grammar("root ::= [a-z]{0,100001}")
    with pytest.raises(ValueError, match="more than the 4,194,304 taken"):
        check_grammar("root ::= " + '"a"' * 1_500_000)


# --- integer ranges (llama-cpp-python's converter left minimum and maximum out) -------------------


@pytest.mark.parametrize(
    ("schema", "bounds"),
    [
        ({"minimum": 10, "maximum": 20}, (10, 20)),
        ({"minimum": 10.5, "maximum": 20.5}, (11, 20)),
        ({"exclusiveMinimum": 10, "exclusiveMaximum": 20}, (11, 19)),
        ({"exclusiveMinimum": 10.5, "exclusiveMaximum": 19.5}, (11, 19)),
        (
            {"minimum": 10, "exclusiveMinimum": True, "maximum": 20, "exclusiveMaximum": True},
            (11, 19),
        ),  # draft 4
        ({"minimum": 10, "exclusiveMinimum": 12}, (13, None)),  # both: the stricter
        ({"maximum": -1}, (None, -1)),
        ({"minimum": -(10**20), "maximum": 10**20}, (-(10**20), 10**20)),
        ({"minimum": 1e17}, (10**17, None)),  # a nanosecond timestamp: past the converter's 16 digits
        ({"minimum": 0}, (0, None)),
    ],
)
def test_integer_bounds(schema: dict[str, object], bounds: tuple[int | None, int | None]) -> None:
    assert integer_bounds({"type": "integer", **schema}) == bounds


def test_integer_bounds_that_leave_no_integer_are_refused() -> None:
    with pytest.raises(ValueError, match="no integer is between its bounds"):
        integer_bounds({"type": "integer", "minimum": 10.2, "maximum": 10.8})


def as_regex(expression: str) -> re.Pattern[str]:
    """integer_range_rule's GBNF (literals, classes, groups, alternatives, counts) as a regex."""
    out = re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), expression)
    return re.compile(out.replace(" ", ""))


RANGES = [
    (10, 20), (0, 0), (0, 9), (0, 10), (1, 99), (7, 7), (100, 1234), (95, 105), (-5, 5), (-1, 0),
    (-1234, -100), (-20, -10), (19, 9001), (0, None), (5, None), (10, None), (999, None), (None, -3),
    (None, 0), (None, 42), (None, None), (-7, None), (10**17, None), (None, -(10**17)),
    (10**17, 2 * 10**17), (-(10**18), 10**18), (123456789012345678, 123456789012399999),
]  # fmt: skip


@pytest.mark.parametrize(("low", "high"), RANGES)
def test_integer_range_rule_takes_exactly_the_integers_in_range(low: int | None, high: int | None) -> None:
    pattern = as_regex(integer_range_rule(low, high))
    around = [*range(-1500, 1500), *range(8990, 9010)]
    rng = random.Random(7)
    around += [rng.randrange(-(10**16) + 1, 10**16) for _ in range(300)]
    for bound in (low, high):  # about the bounds, however long they are
        if bound is not None:
            around += [bound + d for d in range(-300, 300)] + [
                rng.randrange(-3 * abs(bound), 3 * abs(bound) + 1) for _ in range(300)
            ]
    for n in around:
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert bool(pattern.fullmatch(str(n))) == inside, (low, high, n)
    longest = max([16, *(len(str(abs(b))) for b in (low, high) if b is not None)])
    for text in ["007", "-0", "00", "-01", "+5", "1.0", "", "1" + "0" * longest, "-1" + "0" * longest]:
        assert not pattern.fullmatch(text), (low, high, text)  # as JSON writes them, and no longer


def test_schemas_with_integer_ranges_compile(tiny_model: llama.Model) -> None:
    for schema in [
        {"type": "integer", "minimum": 10, "maximum": 20},
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "exclusiveMinimum": -5}},
            "required": ["n"],
        },
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000}},
        {"$defs": {"age": {"type": "integer", "minimum": 0, "maximum": 150}}, "$ref": "#/$defs/age"},
        {"type": "object", "properties": {"t": {"type": "integer", "minimum": 1e17}}},
    ]:
        assert compiles(tiny_model, schema)
    # An optional field of a strict schema keeps its range (the converter's union dropped it).
    optional = llama.json_schema_grammar({"type": ["integer", "null"], "minimum": 10, "maximum": 20})
    assert '"1" [0-9] | "2" "0"' in optional and "null" in optional, optional


def bound(text: str, exclusive: bool = False) -> Bound:
    return Bound(Decimal(text), exclusive)


@pytest.mark.parametrize(
    ("schema", "bounds"),
    [
        ({"minimum": 0, "maximum": 1}, (bound("0"), bound("1"))),
        ({"minimum": 0.1}, (bound("0.1"), None)),  # 0.1 as written, not the float's binary fraction
        ({"exclusiveMinimum": 0, "exclusiveMaximum": 1.5}, (bound("0", True), bound("1.5", True))),
        ({"minimum": 2, "exclusiveMinimum": True}, (bound("2", True), None)),  # draft 4
        ({"maximum": 2, "exclusiveMaximum": True}, (None, bound("2", True))),
        ({"minimum": 1, "exclusiveMinimum": 1}, (bound("1", True), None)),  # the stricter at one value
        ({"minimum": 3, "exclusiveMinimum": 1}, (bound("3"), None)),  # the greater
        ({"maximum": -1, "exclusiveMaximum": 5}, (None, bound("-1"))),
        ({"minimum": 1e-7}, (bound("1e-7"), None)),
        ({"maximum": 1e300}, (None, bound("1e300"))),
        ({"minimum": 5, "maximum": 5}, (bound("5"), bound("5"))),
    ],
)
def test_number_bounds(schema: dict[str, object], bounds: tuple[Bound | None, Bound | None]) -> None:
    assert number_bounds({"type": "number", **schema}) == bounds


@pytest.mark.parametrize(
    "schema",
    [
        {"minimum": 2, "maximum": 1},
        {"minimum": 1, "exclusiveMaximum": 1},
        {"exclusiveMinimum": 0.5, "maximum": 0.5},
    ],
)
def test_number_bounds_that_leave_no_number_are_refused(schema: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="no number is between its bounds"):
        number_bounds({"type": "number", **schema})


def decimals_about(*values: Decimal) -> list[str]:
    """Decimals as JSON writes them without an exponent, about `values`: each, and a step of each
    of 1 to 5 decimals above and below it, with trailing zeros or not, and the far ends."""
    out = {"0", "0.0", "1", "-1", "0.5", "-0.5", "12.25", "-12.25", "9" * 16, "-" + "9" * 16}
    for value in values:
        own = len(f"{abs(value):f}".partition(".")[2])  # the bound's own decimals, and one more
        for places in [*range(6), own, own + 1]:
            step = Decimal(1).scaleb(-places)
            for near in (value - step, value, value + step):
                out.add(f"{near:f}")
                out.add(f"{near:.{max(places, 1) + 1}f}")  # a trailing zero or more
    return sorted(out)


NUMBER_RANGES = [
    ("0", False, "1", False), ("0", True, "1", True), ("0.5", True, None, False),
    (None, False, "-0.5", True), ("-2.25", False, "3.5", True), ("-1", False, "0", False),
    ("-1", False, "0", True), ("0", False, "0", False), ("0.125", False, "0.375", False),
    ("0.125", True, "0.126", True), ("1.5", False, "1.5", False), ("-0.001", False, "0.001", False),
    ("10", False, "100.75", False), ("-100.75", True, "-10", False), (None, False, None, False),
    ("3", False, None, False), (None, False, "0", True), ("-0.3", True, None, False),
    ("99.99", False, "100.01", False), ("1e-20", False, None, False), (None, False, "-1e-20", False),
    ("0", True, "1e-20", True), ("1e-20", False, "2e-20", False), ("-2e-20", True, "-1e-20", True),
    ("0.12345678901234566", False, "0.12345678901234568", False), ("1e20", False, "1.5e20", True),
]  # fmt: skip


@pytest.mark.parametrize(("low", "low_exclusive", "high", "high_exclusive"), NUMBER_RANGES)
def test_number_range_rule_takes_exactly_the_decimals_in_range(
    low: str | None, low_exclusive: bool, high: str | None, high_exclusive: bool
) -> None:
    lower = None if low is None else bound(low, low_exclusive)
    upper = None if high is None else bound(high, high_exclusive)
    pattern = as_regex(number_range_rule(lower, upper))
    for text in decimals_about(*(b.value for b in (lower, upper) if b is not None)):
        if text.startswith("-") and Decimal(text) == 0:
            continue  # zero written with a minus: never taken (below)
        expected = writable(text, lower, upper) and inside(Decimal(text), lower, upper)
        assert bool(pattern.fullmatch(text)) == expected, (low, high, text)
    for text in ["-0", "-0.0", "01", "1.", ".5", "+1", "1e2", "1E-3", "", "--1", "1" + "0" * 17]:
        assert not pattern.fullmatch(text), (low, high, text)  # as JSON writes them, and no longer


def writable(text: str, *bounds: Bound | None) -> bool:
    """Within the numbers a bounded number's grammar writes: as the converter's, 16 digits before
    the point and 16 after, or as many as a bound has before it, and one more after it."""
    whole, _, fraction = text.lstrip("-").partition(".")
    shown = [f"{b.value.copy_abs():f}".partition(".") for b in bounds if b is not None]
    most_whole = max([16, *(len(w) for w, _, _ in shown)])
    most_fraction = min(64, max([16, *(len(f.rstrip("0")) + 1 for _, _, f in shown)]))
    return len(whole) <= most_whole and len(fraction) <= most_fraction


def inside(value: Decimal, low: Bound | None, high: Bound | None) -> bool:
    above = low is None or value > low.value or (value == low.value and not low.exclusive)
    below = high is None or value < high.value or (value == high.value and not high.exclusive)
    return above and below


places = st.integers(0, 4)
decimals = st.builds(lambda n, p: Decimal(n).scaleb(-p), st.integers(-(10**6), 10**6), places)


@settings(max_examples=300, deadline=None)
@given(
    low=st.none() | st.tuples(decimals, st.booleans()),
    high=st.none() | st.tuples(decimals, st.booleans()),
    values=st.lists(decimals, min_size=1, max_size=20),
    zeros=st.integers(0, 3),
)
def test_number_range_rule_takes_what_is_in_range_and_nothing_else(
    low: tuple[Decimal, bool] | None,
    high: tuple[Decimal, bool] | None,
    values: list[Decimal],
    zeros: int,
) -> None:
    lower, upper = (None if b is None else Bound(*b) for b in (low, high))
    try:
        rule = number_range_rule(lower, upper)
    except ValueError:  # refused only when no decimal fits
        assert lower is not None and upper is not None
        at_one_value = lower.value == upper.value and (lower.exclusive or upper.exclusive)
        assert lower.value > upper.value or at_one_value
        return
    pattern = as_regex(rule)
    for value in [*values, *(b.value for b in (lower, upper) if b is not None)]:
        text = f"{value:f}" + ("." if zeros and "." not in f"{value:f}" else "") + "0" * zeros
        if value == 0:
            text = text.lstrip("-")
        assert bool(pattern.fullmatch(text)) == inside(value, lower, upper), (lower, upper, text)


def test_schemas_with_number_ranges_compile(tiny_model: llama.Model) -> None:
    for schema in [
        {"type": "number", "minimum": 0, "maximum": 1},
        {"type": "object", "properties": {"t": {"type": "number", "exclusiveMinimum": -273.15}}},
        {"type": ["number", "null"], "minimum": 0.5, "exclusiveMaximum": 5},
        {"type": "array", "items": {"type": "number", "maximum": 1e300}},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e-20},  # 21 decimals
        {"type": "number", "minimum": 0, "maximum": 1.7976931348623157e308},  # a double's greatest
        {"type": "number", "maximum": 10**399, "minimum": float("-inf")},  # -inf: no bound
        {"type": "number", "minimum": 7.078940535216633e-203, "maximum": 1.59375},  # the property test's
    ]:
        assert compiles(tiny_model, schema)
    # llama.cpp refused a rule of that bound's 203 decimals: it is rounded up, inside the range, to 63.
    tiny = as_regex(number_range_rule(bound("7.078940535216633e-203"), bound("1.59375")))
    assert tiny.fullmatch("0." + "0" * 62 + "1") and tiny.fullmatch("1.59375")
    assert not tiny.fullmatch("0." + "0" * 63 + "1") and not tiny.fullmatch("0") and not tiny.fullmatch("1.6")
    with pytest.raises(ValueError, match="no number of up to 64 decimals is between its bounds"):
        number_range_rule(bound("1e-100"), bound("2e-100"))
    grammar = llama.json_schema_grammar({"type": "number", "minimum": 0, "maximum": 1})
    assert 'root ::= ("0" ("." [0-9]{1,16})? | "1" ("." "0"{1,16})?) space' in grammar, grammar
    with pytest.raises(ValueError, match="no number is between its bounds"):
        llama.json_schema_grammar({"type": "number", "minimum": 1, "exclusiveMaximum": 1})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "number", "minimum": 1e300},
        {"type": "number", "exclusiveMaximum": -1e300},
        {"type": "number", "minimum": 1.5e300, "maximum": 1.7976931348623157e308},
        {"type": "integer", "minimum": 123456789 * 10**290 + 1},
        {"type": "integer", "minimum": -(10**300) + 7, "maximum": 10**300 - 7},
    ],
)
def test_long_bounds_make_grammars_of_their_length(schema: dict[str, Any]) -> None:
    """A review: a bound's digits were written once per digit (371 KB for `minimum: 1e300`;
    twelve such fields passed the 4 MB limit)."""
    assert len(llama.json_schema_grammar(schema)) < 40_000


@pytest.mark.parametrize("kind", ["number", "integer"])
@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"minimum": float("inf")}, "no {kind} is between its bounds"),
        ({"maximum": float("-inf")}, "no {kind} is between its bounds"),
        ({"exclusiveMaximum": float("nan")}, "a bound of NaN allows no {kind}"),
        ({"minimum": 10**400 + 7}, "minimum has more than the 400 digits a bound may have"),
        ({"exclusiveMaximum": -(10**401)}, "exclusiveMaximum has more than the 400 digits"),
    ],
)
def test_bounds_that_are_not_finite_or_too_long(kind: str, schema: dict[str, object], message: str) -> None:
    """Python's JSON reads 1e400 as inf (and NaN from NaN): an infinite bound on its own side
    bounds nothing (below); on the other, nothing fits. A bound of a thousand digits (Python's
    JSON reads integers whole) reached the recursion limit (a review)."""
    with pytest.raises(ValueError, match=message.format(kind=kind)):
        llama.json_schema_grammar({"type": kind, **schema})


def test_an_infinite_bound_on_its_own_side_bounds_nothing() -> None:
    """A review: an integer's was a 400 ("cannot convert float infinity to integer")."""
    assert integer_bounds({"type": "integer", "maximum": float("inf"), "minimum": -5}) == (-5, None)
    assert integer_bounds({"type": "integer", "exclusiveMinimum": float("-inf")}) == (None, None)
    assert number_bounds({"type": "number", "maximum": float("inf")}) == (None, None)
    assert llama.json_schema_grammar({"type": ["integer", "null"], "maximum": float("inf")})


@pytest.mark.parametrize(
    ("schema", "kept", "lost"),
    [
        pytest.param(
            {"type": ["string", "null"], "enum": ["red", "green", None]},
            '"\\"red\\"" | "\\"green\\"" | "null"',
            "char",  # any string: the enum lost
            id="optional-enum",
        ),
        pytest.param(
            {"type": ["string", "null"], "maxLength": 3},
            "(char (char (char)?)?)?",
            "char*",
            id="optional-length",
        ),
        pytest.param({"type": ["string", "null"], "pattern": "^ab$"}, '"ab"', "char", id="optional-pattern"),
        pytest.param({"type": ["string", "null"], "const": "x"}, '"\\"x\\""', "char", id="optional-const"),
    ],
)
def test_a_list_of_types_keeps_the_rest_of_its_schema(
    schema: dict[str, object], kept: str, lost: str, tiny_model: llama.Model
) -> None:
    """As llama.cpp's converter reads `type: [t, "null"]` (an optional field in OpenAI's strict
    mode): each type with the rest of the schema; the union of bare types lost it all."""
    grammar = llama.json_schema_grammar({"type": "object", "properties": {"c": schema}, "required": ["c"]})
    assert kept in grammar and lost not in grammar, grammar
    assert compiles(tiny_model, schema)
    grammar = llama.json_schema_grammar({"type": "integer", "minimum": 10, "maximum": 20})
    assert '"1" [0-9] | "2" "0"' in grammar, grammar
    with pytest.raises(ValueError, match="no integer is between its bounds"):
        llama.json_schema_grammar({"type": "integer", "minimum": 3, "maximum": 2})


def test_arrays_of_anything_and_optional_fields_convert(tiny_model: llama.Model) -> None:
    """A review: `items: {}` (pydantic's list[Any]) was refused ("'prefixItems'"), and so was its
    optional form; OpenAI's optional field `type: [string, null]` with an enum without null must
    still allow null; an empty list of types says so, not llama.cpp's parser."""

    class Bag(pydantic.BaseModel):
        things: list[Any]

    for schema in [
        Bag.model_json_schema(),
        {"type": ["array", "null"], "items": {}},
        {"type": "array", "items": True},
    ]:
        assert compiles(tiny_model, schema)
    assert 'root ::= "[" space "]" space' in llama.json_schema_grammar({"type": "array", "items": False})
    # A tuple (2020-12): exactly its prefix items (a review: it became an empty array).
    pair = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False}
    assert 'root ::= "[" space integer "," space string "]" space' in llama.json_schema_grammar(pair)
    assert compiles(tiny_model, pair)
    optional = llama.json_schema_grammar({"type": ["string", "null"], "enum": ["F", "C"]})
    assert "root ::= alternative-0 | null" in optional and '"\\"F\\"" | "\\"C\\""' in optional, optional
    with pytest.raises(ValueError, match="an empty list of types allows no value"):
        llama.json_schema_grammar({"type": []})


# Schemas of the shapes the converter is taught (ranges, lists of types, items of anything),
# nested, to check that whatever it accepts llama.cpp compiles.
bounds = st.none() | st.integers(-(10**20), 10**20) | st.floats(-1e6, 1e6, allow_nan=False)
leaves = st.one_of(
    st.builds(
        lambda low, high, exclusive: {
            "type": "integer",
            **({"minimum": low} if low is not None else {}),
            **({"maximum": high} if high is not None else {}),
            **({"exclusiveMinimum": True} if exclusive else {}),
        },
        bounds,
        bounds,
        st.booleans(),
    ),
    st.builds(
        lambda low, high, exclusive: {
            "type": "number",
            **({"minimum": low} if low is not None else {}),
            **({"maximum": high} if high is not None else {}),
            **({"exclusiveMaximum": True} if exclusive else {}),
        },
        bounds,
        bounds,
        st.booleans(),
    ),
    st.builds(
        lambda values: {"type": "string", "enum": values},
        st.lists(st.text(max_size=4) | st.none(), min_size=1, max_size=3),
    ),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 5)),
    st.just({"type": "string", "pattern": "^[a-c]{1,3}$"}),
    st.sampled_from([{"type": "null"}, {"type": "boolean"}, {"type": "number"}, {}]),
)


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) and kind != "null" else schema


schemas = st.recursive(
    leaves | leaves.map(nullable),
    lambda inner: st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, inner | st.just({}) | st.just(True)),
        st.builds(
            lambda props: {"type": "object", "properties": props, "required": sorted(props)[:1]},
            st.dictionaries(st.sampled_from(["a", "b", "root", "space"]), inner, min_size=1, max_size=2),
        ),
        inner.map(nullable),
    ),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None)
@given(schema=schemas)
def test_a_schema_the_converter_takes_compiles_in_llama_cpp(
    schema: dict[str, Any], tiny_model: llama.Model
) -> None:
    try:
        llama.json_schema_grammar(schema)
    except ValueError:
        return  # refused with a message: a 400
    assert compiles(tiny_model, schema)


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("ab", '"ab"'),
        ('"', '"\\""'),
        ("a\\b", '"a\\\\b"'),
        ('"\\""', '"\\"\\\\\\"\\""'),  # JSON's "\"" for a quote: the enum value the property test found
        ("x\ny\r", '"x\\ny\\r"'),
    ],
)
def test_gbnf_literal(text: str, literal: str) -> None:
    assert gbnf_literal(text) == literal


def test_texts_with_quotes_and_backslashes_convert_and_compile(tiny_model: llama.Model) -> None:
    for schema in [
        {"type": "string", "enum": ['"', "a\\b"]},
        {"const": 'say "hi"'},
        {"type": "object", "properties": {"a\\b": {"type": "integer"}}, "required": ["a\\b"]},
    ]:
        assert compiles(tiny_model, schema), schema
