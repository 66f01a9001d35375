"""Request bodies decoded as Go's encoding/json decodes them: lone surrogates become U+FFFD; and the
count of objects, arrays and members that bounds what parsing one may cost."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st

from modelyard.server.bodies import MAX_BODY_STRUCTURE, check_structure, go_strings, json_structure


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param('"a\\ud800b"', "a\ufffdb", id="lone-high"),
        pytest.param('"a\\udc00b"', "a\ufffdb", id="lone-low"),
        pytest.param('"\\ud83d\\ude00"', "\U0001f600", id="a-pair-stays"),
        pytest.param('["x", ["\\ud800"], {"k": "\\udfff"}]', ["x", ["\ufffd"], {"k": "\ufffd"}], id="nested"),
        pytest.param('{"\\ud800": 1, "b": [null, true]}', {"\ufffd": 1, "b": [None, True]}, id="keys"),
        pytest.param("[1, 2]", [1, 2], id="nothing-to-do"),
    ],
)
def test_lone_surrogates_become_the_replacement_character(body: str, expected: Any) -> None:
    assert go_strings(json.loads(body)) == expected


def test_values_nested_past_recursion_are_walked() -> None:
    body = '{"a":' * 900 + '"\\ud800"' + "}" * 900
    value = go_strings(json.loads(body))
    for _ in range(900):
        value = value["a"]
    assert value == "\ufffd"


def _structure_of(value: Any) -> int:
    """Objects, arrays and object members in a decoded value: what json_structure counts."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += 1 + len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            count += 1
            stack.extend(item)
    return count


@pytest.mark.parametrize(
    ("body", "count"),
    [
        pytest.param(b'"{[:"', 0, id="a-string-of-brackets"),
        pytest.param(b"[1, 2, 3]", 1, id="elements-are-not-counted"),
        pytest.param(b'{"a": {}, "b": []}', 5, id="members-and-containers"),
        pytest.param(b'{"a\\\\": "\\\\", "b": [":"]}', 4, id="escaped-backslash-ends-no-string"),
        pytest.param(b'{"a": "\\"{[:"}', 2, id="escaped-quote-ends-no-string"),
        pytest.param(b'{"a": "\\\\\\"{"}', 2, id="a-run-of-backslashes-then-a-quote"),
        pytest.param(b'["\\u007b", "\\u0022", {}]', 2, id="unicode-escapes-are-characters"),
        pytest.param(b"", 0, id="empty"),
    ],
)
def test_json_structure_counts_outside_strings(body: bytes, count: int) -> None:
    assert json_structure(body) == count
    assert _structure_of(json.loads(body)) == count if body else True


_JSON_TEXT = st.text(alphabet=st.sampled_from('ab{}[]:,"\\\n\u00e9\u2028'), max_size=8)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=30,
)


@given(value=_JSON_VALUES, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_json_structure_is_exact_for_any_json(value: Any, ascii_only: bool, indent: int | None) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    assert json_structure(body) == _structure_of(value)


def test_a_body_over_the_structure_budget_is_refused_with_413() -> None:
    def messages(n: int) -> bytes:
        return json.dumps({"model": "m", "messages": [{}] * n}).encode()

    # The body itself is an object of two members, one an array: a budget of MAX - 4 messages.
    check_structure(messages(MAX_BODY_STRUCTURE - 4))
    with pytest.raises(HTTPException) as refused:
        check_structure(messages(MAX_BODY_STRUCTURE - 3))
    assert refused.value.status_code == 413
    assert f"{MAX_BODY_STRUCTURE + 1:,} JSON objects" in str(refused.value.detail)
    # Brackets in strings are text: a long prompt of code passes whatever it holds.
    check_structure(json.dumps({"prompt": "for (;;) { a[i] = {k: v}; }\n" * 200_000}).encode())
