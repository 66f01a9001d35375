"""Tool calls in a model's output: found, parsed and taken out of the text, as Ollama does (pure).

A model given `tools` answers with a call as JSON: `{"name": …, "arguments": {…}}` (or
`"parameters"`, or OpenAI's `{"function": {…}}` wrapping), a list of such objects, or several in a
row, often after a marker its template writes before calls (`<tool_call>` for Qwen and Hermes,
`[TOOL_CALLS]` for Mistral, `<|python_tag|>` for Llama 3.1). While the output can still become a
call it is held back; the moment it cannot, it is released as text, so answers without calls
stream as before. At the end, held output that parses as calls to the given tools becomes calls;
anything else is text after all: nothing the model said is lost.

Bare JSON counts only at the start of the output; after a marker the template names, a call may
follow some text ("Let me check. <tool_call>{…}").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.builder.prompt import ModelPrompting, ToolCall, chat_template_text, takes_tools
from modelyard.errors import InferenceRequestError
from modelyard.runtime.json_schemas import hoisted_definitions
from modelyard.server.http_errors import HTTPError

# Markers templates write before a call, and what may close one.
MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function_call>", "<tools>")
CLOSERS = ("</tool_call>", "</function_call>", "</tools>", "<|eom_id|>", "<|eot_id|>")


def call_marker(template: str) -> str | None:
    """The marker the chat template writes before tool calls, if it uses one of the known ones."""
    return next((marker for marker in MARKERS if marker in template), None)


def tool_functions(tools: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The functions of Ollama's / OpenAI's tool definitions ({"type": "function", "function":
    {…}}, or the function itself), by name."""
    functions = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            functions[function["name"]] = function
    return functions


def tool_names(tools: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(tool_functions(tools))


def allowed_tools(choice: object) -> tuple[str, list[str]] | None:
    """OpenAI's tool_choice {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}: its mode
    ("auto" or "required") and the names of the tools it allows; None for any other choice. The
    request's tools all stay in the prompt (as OpenAI keeps them, for its prompt cache)."""
    if not (isinstance(choice, Mapping) and choice.get("type") == "allowed_tools"):
        return None
    allowed = choice.get("allowed_tools")
    if not isinstance(allowed, Mapping) or not isinstance(allowed.get("tools"), list):
        raise InferenceRequestError("tool_choice.allowed_tools needs a mode and a list of tools")
    mode = allowed.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise InferenceRequestError(f"tool_choice.allowed_tools.mode must be auto or required, not {mode!r}")
    return str(mode), list(tool_functions(allowed["tools"]))


def forced_call_schema(tools: Sequence[Mapping[str, Any]], choice: object) -> dict[str, Any] | None:
    """The JSON schema that makes the model call a tool, for OpenAI's tool_choice "required" (one
    of the tools), {"type": "function", "function": {"name": …}} (that one), or allowed_tools with
    mode "required" (one of those); None for "auto", "none" or no choice. Raises
    InferenceRequestError for a function the request does not offer."""
    if choice in (None, "auto", "none"):
        return None
    functions = tool_functions(tools)
    allowed = allowed_tools(choice)
    if allowed is not None:
        mode, wanted = allowed
        if mode == "auto":
            return None
    elif choice == "required":
        wanted = list(functions)
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        wanted = [str(choice["function"].get("name"))]
    else:
        raise InferenceRequestError(
            f"tool_choice must be auto, none, required, a function or allowed_tools, not {choice!r}"
        )
    if not wanted or any(name not in functions for name in wanted):
        raise InferenceRequestError(
            f"tool_choice names {', '.join(wanted) or 'no tool'}, which tools does not offer"
        )
    calls = []
    definitions: dict[str, Any] = {}  # the functions' own, at the root where references point
    for i, name in enumerate(wanted):
        arguments = functions[name].get("parameters") or {"type": "object"}
        own: dict[str, Any] = {}
        if isinstance(arguments, Mapping):  # else left to the grammar's converter, which says what is wrong
            # The converter names a grammar rule after a definition as it is (for a recursive one),
            # and a rule's name takes letters, digits and '-' only.
            arguments, own = hoisted_definitions(arguments, f"tool{i}-")
        definitions |= own
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": arguments},
                "required": ["name", "arguments"],
            }
        )
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return schema | {"$defs": definitions} if definitions else schema


def parser_for(
    name: str, prompting: ModelPrompting, tools: Sequence[Mapping[str, Any]] | None
) -> ToolCallParser | None:
    """The parser for a chat request's output: None without tools. Tools for a model whose
    template cannot show them to it are an error, as in Ollama ("… does not support tools")."""
    if not tools:
        return None
    if not takes_tools(prompting):
        raise InferenceRequestError(f"{name} does not support tools (its chat template has no tools)")
    return ToolCallParser(tool_names(tools), call_marker(chat_template_text(prompting)))


@dataclass
class ToolCallParser:
    names: frozenset[str]
    marker: str | None = None
    _held: str = ""
    _text_only: bool = False  # decided: no call can come any more
    _released: bool = False  # some text went out already: bare JSON is no call any more

    def feed(self, text: str) -> str:
        """Take more output; returns the part that is text for certain (to send now)."""
        if self._text_only:
            return text
        self._held += text
        return self._release()

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end of the output: the text still held back, and the calls."""
        held, self._held = self._held, ""
        if self._text_only or not held.strip():
            return held, []
        return _split_calls(held, self.names)

    def _release(self) -> str:
        held = self._held
        stripped = held.lstrip()
        if not stripped:
            return ""
        if stripped[0] in "{[" and not self._released and _may_open_a_call(stripped):
            return ""  # bare JSON at the start: maybe a call, known at the end
        if self.marker is None:
            self._text_only = True
            self._held = ""
            return held
        at = held.find(self.marker)
        if at >= 0:
            # Text, then the marker: the text goes now, the call stays held.
            self._held = held[at:]
            self._released = self._released or at > 0
            return held[:at]
        keep = _partial_suffix(held, self.marker)  # "<tool_" might become the marker
        self._held = held[len(held) - keep :] if keep else ""
        released = held[: len(held) - keep]
        self._released = self._released or bool(released)
        return released


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of `text` begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _may_open_a_call(text: str) -> bool:
    """Whether text that starts with { or [ can still become a call: `{"…`, `[{…`, `[ "…` — not
    `[1] First point` or `{x}`."""
    rest = text[1:].lstrip()
    if not rest:
        return True
    if text[0] == "{":
        return rest[0] == '"'
    return rest[0] in '{"' and (rest[0] != "{" or _may_open_a_call(rest))


def _split_calls(held: str, names: frozenset[str]) -> tuple[str, list[ToolCall]]:
    """The calls at the start of `held` and the text after them. What follows the last call that
    parses (words, a second call cut short) is text, as Ollama's parser sends it: a client review
    found a whole call lost as text because the model wrote on after it."""
    calls, end = _parse_calls(held)
    if not calls or (names and any(call.name not in names for call in calls)):
        return held, []
    rest = held[end:]
    return (rest if rest.strip() else ""), calls


_BETWEEN_CALLS = (*MARKERS, *CLOSERS)


def _parse_calls(body: str) -> tuple[list[ToolCall], int]:
    """The JSON values at the start of `body` that are calls, in a row, separated by whitespace,
    commas, semicolons, markers and closers (never taken out of the JSON itself: an argument may
    contain them); and where the rest begins: past the last call and the closers and separators
    right after it, at a marker that opens nothing that parses (len(body) once all is calls)."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    i = end = 0
    closing = False  # only separators and closers since the last call: `end` moves with them
    while i < len(body):
        token = (
            body[i]
            if body[i] in " \t\r\n,;"
            else next((t for t in _BETWEEN_CALLS if body.startswith(t, i)), None)
        )
        if token is not None:
            i += len(token)
            closing = closing and token not in MARKERS
            end = i if closing else end
            continue
        try:
            value, after = decoder.raw_decode(body, i)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: [[[[… a model looping
            return calls, end
        found = [
            _call(item, len(calls) + n)
            for n, item in enumerate(value if isinstance(value, list) else [value])
        ]
        if not found or None in found:
            return calls, end
        calls += [call for call in found if call is not None]
        i = end = after
        closing = True
    return calls, len(body)


def _call(item: object, index: int) -> ToolCall | None:
    if not isinstance(item, Mapping):
        return None
    function = item.get("function") if isinstance(item.get("function"), Mapping) else item
    assert isinstance(function, Mapping)
    name = function.get("name")
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):  # the model's text: not a call then
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, Mapping):
        return None
    return ToolCall(name, dict(arguments), index=index)


def requested_tool_calls(calls: Sequence[Mapping[str, Any]] | None, where: str) -> tuple[ToolCall, ...]:
    """The tool calls of a message in a request's history (Ollama's or OpenAI's shape: `function`
    with `name` and `arguments`, an object or, as OpenAI sends them, its JSON text). A call that
    is not so is a 400 naming it (`where` is the message's field, e.g. `messages[2].`), as Ollama
    answers "invalid tool call arguments": templates print the arguments as a map."""
    parsed = []
    for i, call in enumerate(calls or ()):
        field = f"{where}tool_calls[{i}].function"
        function = call.get("function") or {}
        if not isinstance(function, Mapping):
            raise HTTPError(400, f"{field} must be an object with a name and arguments", param=field)
        name = function.get("name") or ""
        if not isinstance(name, str):
            raise HTTPError(400, f"{field}.name must be a string", param=f"{field}.name")
        arguments = call_arguments(function.get("arguments"), f"{field}.arguments")
        parsed.append(ToolCall(name, arguments, str(call.get("id") or ""), i))
    return tuple(parsed)


def call_arguments(arguments: object, field: str) -> Mapping[str, Any]:
    """A call's arguments from a request: an object, or its JSON text (as OpenAI sends them); none
    is {}. Anything else is a 400 that names `field`."""
    if isinstance(arguments, str) and arguments:
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise HTTPError(400, f"{field} is not JSON", param=field) from None
        except RecursionError:
            raise HTTPError(400, f"{field} is nested too deeply", param=field) from None
    if not arguments:
        return {}
    if not isinstance(arguments, Mapping):
        raise HTTPError(400, f"{field} must be a JSON object, not {type(arguments).__name__}", param=field)
    return arguments


def ollama_tool_calls(calls: Sequence[ToolCall], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Ollama's message.tool_calls, with the given call ids (Ollama's `call_` and 8 characters:
    clients send a result back with its call's id)."""
    return [
        {"id": call_id, "function": {"index": c.index, "name": c.name, "arguments": dict(c.arguments)}}
        for c, call_id in zip(calls, ids, strict=True)
    ]


def openai_tool_calls(calls: Sequence[ToolCall], ids: Sequence[str]) -> list[dict[str, Any]]:
    """OpenAI's message.tool_calls (arguments as a JSON string), with the given call ids."""
    return [
        {
            "index": call.index,
            "id": call_id,
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": json.dumps(dict(call.arguments), ensure_ascii=False),
            },
        }
        for call, call_id in zip(calls, ids, strict=True)
    ]
