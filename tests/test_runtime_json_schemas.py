"""JSON schemas reshaped for llama-cpp-python's grammar converter (modelyard/runtime/json_schemas.py),
and the converter taking the shapes pydantic gives."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from modelyard.runtime import llama
from modelyard.runtime.json_schemas import hoisted_definitions, root_resolved
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


def tool(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": model.__name__, "parameters": model.model_json_schema()}}


def test_the_converter_takes_pydantic_schemas_with_definitions() -> None:
    # The ollama client's format=Node.model_json_schema(): a root $ref (was: "invalid JSON schema").
    assert "root ::=" in llama.json_schema_grammar(Node.model_json_schema())
    # A forced call to tools whose parameters have nested models (was: "$defs not in …").
    forced = forced_call_schema([tool(Person), tool(Company), tool(Node)], "required")
    assert forced is not None and set(forced["$defs"]) == {"Person.Addr", "Company.Addr", "Node.Node"}
    assert "root ::=" in llama.json_schema_grammar(forced)
    one = forced_call_schema([tool(Person)], {"type": "function", "function": {"name": "Person"}})
    assert one is not None and "root ::=" in llama.json_schema_grammar(one)
