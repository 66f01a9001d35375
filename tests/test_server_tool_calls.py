"""Tool calls found in a model's output (server/tool_calls.py): table-driven over whole outputs,
each fed in every split into pieces of 1, 2, 3 and 7 characters, as tokens arrive."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.builder.prompt import ModelPrompting, ToolCall
from modelyard.errors import InferenceRequestError
from modelyard.server.http_errors import HTTPError
from modelyard.server.tool_calls import (
    ToolCallParser,
    call_marker,
    forced_call_schema,
    ollama_tool_calls,
    openai_tool_calls,
    parser_for,
    requested_tool_calls,
    tool_names,
)

NAMES = frozenset({"get_weather", "add"})
WEATHER = ToolCall("get_weather", {"city": "Paris"})
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def run(output: str, marker: str | None, size: int) -> tuple[str, str, list[ToolCall]]:
    """(text sent while streaming, text sent at the end, calls)."""
    parser = ToolCallParser(NAMES, marker)
    streamed = "".join(parser.feed(output[i : i + size]) for i in range(0, len(output), size))
    rest, calls = parser.finish()
    return streamed, rest, calls


CASES = [
    pytest.param("Hello there.", None, "Hello there.", [], id="plain-text"),
    pytest.param(
        '{"name": "get_weather", "arguments": {"city": "Paris"}}', None, "", [WEATHER], id="bare-call"
    ),
    pytest.param(
        ' \n{"name": "get_weather", "parameters": {"city": "Paris"}}', None, "", [WEATHER], id="parameters"
    ),
    pytest.param(
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 1}}]',
        None,
        "",
        [WEATHER, ToolCall("add", {"a": 1}, index=1)],
        id="list-of-calls",
    ),
    pytest.param(
        '{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
        None,
        "",
        [WEATHER],
        id="openai-shape-string-arguments",
    ),
    pytest.param(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "<tool_call>",
        "",
        [WEATHER],
        id="marker-and-closer",
    ),
    pytest.param(
        'Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        "<tool_call>",
        "Let me look. ",
        [WEATHER],
        id="text-then-marker",
    ),
    pytest.param(
        '{"name": "unknown_tool", "arguments": {}}', None, '{"name": "unknown_tool", "arguments": {}}', [],
        id="unknown-tool-stays-text",
    ),
    pytest.param('{"answer": 42}', None, '{"answer": 42}', [], id="json-that-is-no-call"),
    pytest.param('{"name": "add", "arguments": {"a": 1}', None, '{"name": "add", "arguments": {"a": 1}', [],
                 id="unfinished-json-stays-text"),
    pytest.param("a < b and <tool", "<tool_call>", "a < b and <tool", [], id="marker-prefix-released-at-end"),
    pytest.param('Text {"name": "add", "arguments": {}}', None, 'Text {"name": "add", "arguments": {}}', [],
                 id="json-after-text-without-marker-is-text"),
    pytest.param('<tool_call>{"name": "add", "arguments": {"q": "a <tools> b </tool_call> c"}}</tool_call>',
                 "<tool_call>", "", [ToolCall("add", {"q": "a <tools> b </tool_call> c"})],
                 id="markers-inside-arguments-are-kept"),
    # A client review: a whole call came back as text because the model wrote on after it.
    pytest.param(f"<tool_call>{PARIS}</tool_call> I will check.", "<tool_call>", "I will check.", [WEATHER],
                 id="words-after-a-call-are-text"),
    pytest.param(f'<tool_call>{PARIS}</tool_call>\n<tool_call>{{"name": "add", "argu', "<tool_call>",
                 '<tool_call>{"name": "add", "argu', [WEATHER], id="a-second-call-cut-short-is-text"),
    pytest.param(f'{PARIS}, {{"name": "add", "arguments": {{}}}} {{"answer": 42}} and more', None,
                 '{"answer": 42} and more', [WEATHER, ToolCall("add", {}, index=1)],
                 id="json-that-is-no-call-after-calls-is-text"),
    pytest.param(f'{PARIS} {{"name": "unknown_tool", "arguments": {{}}}}', None,
                 f'{PARIS} {{"name": "unknown_tool", "arguments": {{}}}}', [],
                 id="an-unknown-tool-among-calls-makes-all-text"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("output", "marker"),
    [
        ("[1] First point, then more.", None),
        ("[Source](http://x) says so.", None),
        ("{x} is a set.", None),
        ("[1] First point, then more.", "<tool_call>"),
    ],
)
def test_text_that_opens_with_a_bracket_but_cannot_be_a_call_streams_at_once(
    output: str, marker: str | None
) -> None:
    parser = ToolCallParser(NAMES, marker)
    sent = "".join(parser.feed(output[i : i + 3]) for i in range(0, len(output), 3))
    rest, calls = parser.finish()
    assert calls == [] and sent + rest == output
    assert len(sent) >= len(output) - len("<tool_call>")  # not held to the end


def test_json_nested_past_the_recursion_limit_is_text() -> None:
    """A review: a model looping on `[` raised RecursionError out of the parser (a 500)."""
    output = "<tool_call>" + "[" * 100_000
    parser = ToolCallParser(NAMES, "<tool_call>")
    assert parser.feed(output) == ""
    assert parser.finish() == (output, [])


@pytest.mark.parametrize(("output", "marker", "text", "calls"), CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_tool_calls_in_output(
    output: str, marker: str | None, text: str, calls: list[ToolCall], size: int
) -> None:
    streamed, rest, found = run(output, marker, size)
    assert streamed + rest == text
    assert found == calls


def test_plain_text_is_not_held_back() -> None:
    parser = ToolCallParser(NAMES, None)
    assert parser.feed("Hel") == "Hel" and parser.feed("lo {") == "lo {"
    marked = ToolCallParser(NAMES, "<tool_call>")
    assert marked.feed("Sure <to") == "Sure " and marked.feed("night") == "<tonight"


@pytest.mark.parametrize(
    ("template", "marker"),
    [
        ("{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}{{ end }}{{ end }}", "<tool_call>"),
        ("[AVAILABLE_TOOLS] {{ json .Tools }}[/AVAILABLE_TOOLS][TOOL_CALLS] [", "[TOOL_CALLS]"),
        ("{{ .Prompt }}", None),
    ],
)
def test_call_marker(template: str, marker: str | None) -> None:
    assert call_marker(template) == marker


def test_tool_names_of_both_apis_shapes() -> None:
    tools = [{"type": "function", "function": {"name": "a"}}, {"name": "b"}, {"type": "function"}]
    assert tool_names(tools) == {"a", "b"}


def test_tools_for_a_model_whose_template_has_none_are_refused() -> None:
    tools = [{"type": "function", "function": {"name": "a"}}]
    with pytest.raises(InferenceRequestError, match="m does not support tools"):
        parser_for("m", ModelPrompting(template="{{ .Prompt }} tools are nice"), tools)
    assert parser_for("m", ModelPrompting(template="{{ .Prompt }}"), None) is None
    parser = parser_for("m", ModelPrompting(template="{{ .Tools }}<tool_call>{{ .Prompt }}"), tools)
    assert parser is not None and parser.marker == "<tool_call>" and parser.names == {"a"}


def test_the_two_apis_shapes_of_calls() -> None:
    calls = [WEATHER, ToolCall("add", {"a": 1}, index=1)]
    assert ollama_tool_calls(calls, ["call_0", "call_1"])[1] == {
        "id": "call_1",
        "function": {"index": 1, "name": "add", "arguments": {"a": 1}},
    }
    assert openai_tool_calls(calls, ["c0", "c1"])[0] == {
        "index": 0,
        "id": "c0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
ADD_TOOL = {"type": "function", "function": {"name": "add"}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        pytest.param(None, None, id="no-choice"),
        pytest.param("auto", None, id="auto"),
        pytest.param("none", None, id="none"),
        pytest.param(
            {"type": "function", "function": {"name": "add"}},
            {"type": "object", "properties": {"name": {"const": "add"}, "arguments": {"type": "object"}},
             "required": ["name", "arguments"]},
            id="named",
        ),
        pytest.param(
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [ADD_TOOL]}},
            {"type": "object", "properties": {"name": {"const": "add"}, "arguments": {"type": "object"}},
             "required": ["name", "arguments"]},
            id="allowed-tools-required",
        ),
        pytest.param(
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [ADD_TOOL]}},
            None,
            id="allowed-tools-auto",
        ),
    ],
)  # fmt: skip
def test_forced_call_schema(choice: object, expected: object) -> None:
    assert forced_call_schema([WEATHER_TOOL, ADD_TOOL], choice) == expected


def test_forced_call_schema_required_is_any_tool_and_unknown_names_are_refused() -> None:
    schema = forced_call_schema([WEATHER_TOOL, ADD_TOOL], "required")
    assert schema is not None and [s["properties"]["name"]["const"] for s in schema["anyOf"]] == [
        "get_weather",
        "add",
    ]
    with pytest.raises(InferenceRequestError, match="which tools does not offer"):
        forced_call_schema([WEATHER_TOOL], {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(InferenceRequestError, match="tool_choice must be"):
        forced_call_schema([WEATHER_TOOL], "always")


def test_allowed_tools_are_checked() -> None:
    with pytest.raises(InferenceRequestError, match="mode must be auto or required"):
        forced_call_schema([ADD_TOOL], {"type": "allowed_tools", "allowed_tools": {"mode": "x", "tools": []}})
    with pytest.raises(InferenceRequestError, match="needs a mode and a list of tools"):
        forced_call_schema([ADD_TOOL], {"type": "allowed_tools"})
    with pytest.raises(InferenceRequestError, match="which tools does not offer"):
        choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [WEATHER_TOOL]}}
        forced_call_schema([ADD_TOOL], choice)


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    import asyncio
    from collections.abc import AsyncGenerator

    from modelyard.runtime.protocol import Done
    from modelyard.runtime.runner import Token
    from modelyard.server.inference import Finished
    from modelyard.server.openai_api import first_call_only

    calls = (ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_time", {"zone": "CET"}, index=1))
    closed = []

    async def generation(tool_calls: tuple[ToolCall, ...]) -> AsyncGenerator[Any, None]:
        try:
            yield Token("")
            yield Finished(Done("stop", 3, 1, 5, 1), 0, 2, 0, tool_calls=tool_calls)
        finally:
            closed.append(True)

    async def events(tool_calls: tuple[ToolCall, ...]) -> list[Any]:
        return [event async for event in first_call_only(generation(tool_calls))]

    token, finished = asyncio.run(events(calls))
    assert token == Token("") and finished.tool_calls == calls[:1]
    assert asyncio.run(events(calls[:1]))[-1].tool_calls == calls[:1]
    assert asyncio.run(events(()))[-1].tool_calls == ()
    assert closed == [True, True, True], "the generation is closed however it ends"


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        pytest.param(None, (), id="none"),
        pytest.param(
            [{"function": {"name": "f", "arguments": {"a": 1}}}],
            (ToolCall("f", {"a": 1}, "", 0),),
            id="ollama-object",
        ),
        pytest.param(
            [{"id": "c1", "function": {"name": "f", "arguments": '{"a": 1}'}}, {"function": {"name": "g"}}],
            (ToolCall("f", {"a": 1}, "c1", 0), ToolCall("g", {}, "", 1)),
            id="openai-json-text-and-no-arguments",
        ),
        pytest.param(
            [{"function": {"name": "f", "arguments": "[1]"}}], "arguments must be a JSON object", id="list"
        ),
        pytest.param([{"function": {"name": "f", "arguments": "{"}}], "arguments is not JSON", id="broken"),
        pytest.param([{"function": {"name": 5}}], "name must be a string", id="name-a-number"),
        pytest.param([{"function": ["f"]}], "function must be an object", id="function-a-list"),
    ],
)
def test_requested_tool_calls(calls: list[dict[str, Any]] | None, expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(HTTPError) as refused:
            requested_tool_calls(calls, "messages[3].")
        assert refused.value.status == 400 and expected in refused.value.message
        assert refused.value.message.startswith("messages[3].tool_calls[0].function")
    else:
        assert requested_tool_calls(calls, "messages[3].") == expected
