"""Request bodies decoded as Go's encoding/json decodes them: lone surrogates become U+FFFD."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.server.bodies import go_strings


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
