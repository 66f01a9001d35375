"""OpenAI's Responses API, `POST /v1/responses`, stateless as Ollama serves it (docs.ollama.com,
OpenAI compatibility): the conversation comes whole in `input` each time; nothing is stored, so
`previous_response_id` and `conversation` are refused with what to send instead.

A request becomes a chat (`chat_messages`, pure): `instructions` the system message, `input` a
text or a list of items (messages, the assistant's earlier `function_call`s and their
`function_call_output`s). The answer is a `response` object whose `output` holds a message or the
model's function calls; streamed, the same as the typed server-sent events OpenAI's clients read
(`ResponseEvents`, pure: created, in_progress, an output item's added / deltas / done, completed).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modelyard.builder.prompt import ChatMessage, PromptRequest, ToolCall
from modelyard.errors import InferenceRequestError
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.runner import Token
from modelyard.server.bodies import GoJSONRoute, Items
from modelyard.server.chunks import compact_json
from modelyard.server.disconnect import ClientGone, WatchedStream, unless_gone
from modelyard.server.http_errors import STATUS_CLIENT_GONE, HTTPError
from modelyard.server.inference import Finished, with_tool_calls
from modelyard.server.logprobs import MAX_TOP_LOGPROBS, runner_top_logprobs, token_logprobs
from modelyard.server.openai_api import (
    REASONING_EFFORTS,
    collected,
    first_call_only,
    named_tool_results,
    parsed_tools,
)
from modelyard.server.state import ServerState
from modelyard.server.tool_calls import call_arguments, forced_call_schema, parser_for

ENDPOINT: Final = "/v1/responses"
SSE: Final = "text/event-stream"

# Content parts of an input message that carry text; the others (images, files, audio) a text
# model cannot read.
_TEXT_PARTS: Final = ("input_text", "output_text", "text")
_ROLES: Final = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
# What `include` asks for the answer's log-probabilities with; its other entries (encrypted
# reasoning, a search's results) name what this server has none of, and are ignored.
LOGPROBS_INCLUDE: Final = "message.output_text.logprobs"
# A custom tool (free text in, as Codex's apply_patch) is shown to the model as a function of one
# string, `input`, as Ollama does; its calls go back out as custom_tool_call items.
CUSTOM_TOOL_PARAMETERS: Final = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
}


class ResponsesBody(BaseModel):
    # Unknown fields ignored, wrong JSON types a 400, as the other routes.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1)
    input: str | Items[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = False
    tools: Items[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Calls of built-in (hosted) tools, which this server refuses: nothing to cap, said back as
    # OpenAI says it (a client review found it neither applied nor echoed).
    max_tool_calls: int | None = Field(default=None, ge=1)
    text: dict[str, Any] | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", …}}
    reasoning: dict[str, Any] | None = None  # {"effort": …}
    metadata: dict[str, Any] | None = None
    include: Items[str] | None = None  # of what may be included, "message.output_text.logprobs"
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None

    def check_stateless(self) -> None:
        if self.previous_response_id or self.conversation:
            field = "previous_response_id" if self.previous_response_id else "conversation"
            message = (
                f"{field} is not supported: this server stores no responses; send the whole "
                "conversation in input (the earlier output items included)"
            )
            raise HTTPError(400, message, param=field)

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """`tools` in the chat API's shape ({"type": "function", "function": {…}}), which templates
        and the tool-call parser read: function tools as they are, custom tools as functions of
        one string (CUSTOM_TOOL_PARAMETERS), a grammar for their input told in the description
        (not enforced). Hosted tools (web search, files…) are not served here: a 400."""
        if self.tools is None:
            return None
        converted = []
        named: set[str] = set()
        for i, tool in enumerate(self.tools):
            kind = tool.get("type")
            if kind not in ("function", "custom") or not isinstance(tool.get("name"), str):
                message = f"tools[{i}]: only function and custom tools, with a name, are supported"
                raise HTTPError(400, message, param=f"tools[{i}]")
            if tool["name"] in named:  # a call names its tool: two of one name cannot be told apart
                raise HTTPError(
                    400, f"tools[{i}]: another tool is named {tool['name']!r}", param=f"tools[{i}]"
                )
            named.add(tool["name"])
            if kind == "custom":
                function = {"name": tool["name"], "parameters": CUSTOM_TOOL_PARAMETERS}
                description = _custom_description(tool)
            else:
                function = {"name": tool["name"], "parameters": tool.get("parameters") or {}}
                description = str(tool.get("description") or "")
            if description:
                function["description"] = description
            converted.append({"type": "function", "function": function})
        return converted

    def custom_tools(self) -> frozenset[str]:
        """The names of the custom tools: their calls are custom_tool_call items."""
        return frozenset(t["name"] for t in self.tools or [] if t.get("type") == "custom")

    def chat_tool_choice(self) -> str | dict[str, Any] | None:
        """`tool_choice` as the chat API spells it: a named function is {"type": "function",
        "name": …} here, {"type": "function", "function": {"name": …}} there; allowed tools are
        {"type": "allowed_tools", "mode", "tools"} here, their mode and tools nested there."""
        choice = self.tool_choice
        if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and "name" in choice:
            name, kind = choice["name"], choice["type"]
            if not isinstance(name, str):
                raise HTTPError(400, "tool_choice.name must be a string", param="tool_choice")
            kinds = {t.get("name"): t.get("type") for t in self.tools or []}
            if name in kinds and kinds[name] != kind:
                message = f"tool_choice names the {kinds[name]} tool {name!r} as a {kind} one"
                raise HTTPError(400, message, param="tool_choice")
            return {"type": "function", "function": {"name": choice["name"]}}
        if (
            isinstance(choice, dict)
            and choice.get("type") == "allowed_tools"
            and "allowed_tools" not in choice
        ):
            nested = {key: choice[key] for key in ("mode", "tools") if key in choice}
            return {"type": "allowed_tools", "allowed_tools": nested}
        return choice

    def format(self) -> str | dict[str, Any] | None:
        wanted = (self.text or {}).get("format") or {}
        if not isinstance(wanted, dict):
            raise HTTPError(400, "text.format must be an object with a type", param="text.format")
        kind = wanted.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return "json"
        if kind == "json_schema":
            schema = wanted.get("schema")
            if not isinstance(schema, dict):
                raise HTTPError(400, "text.format.schema must be a JSON schema object", param="text.format")
            return schema
        raise HTTPError(
            400, f"text.format.type {kind!r} is not one of text, json_object, json_schema", param="text"
        )

    def think(self) -> bool | str | None:
        effort = (self.reasoning or {}).get("effort")
        if effort is None:
            return None
        if not isinstance(effort, str) or effort not in REASONING_EFFORTS:
            known = ", ".join(REASONING_EFFORTS)
            raise HTTPError(
                400, f"invalid reasoning.effort {effort!r}: must be one of {known}", param="reasoning"
            )
        return REASONING_EFFORTS[effort]

    def logprobs_top(self) -> int | None:
        """Candidates per token for the answer's log-probabilities, or None: none asked for. Only
        the `include` entry asks for them: as OpenAI's API, `top_logprobs` alone says how many
        candidates, and the answer's `logprobs` stay [] (a user's report on OpenAI's forum:
        top_logprobs=5 and no include gave logprobs=[])."""
        if LOGPROBS_INCLUDE in (self.include or []):
            return self.top_logprobs or 0
        return None

    def options(self) -> dict[str, Any]:
        mapped = {"num_predict": self.max_output_tokens, "temperature": self.temperature, "top_p": self.top_p}
        return {name: value for name, value in mapped.items() if value is not None}

    def echoed(self, used: SamplingOptions) -> dict[str, Any]:
        """The request's settings as a response object repeats them; `used`: what it samples with
        (the request's, else the image's PARAMETERs, else the defaults), whose temperature and
        top_p the response says (a conformance review: it said 1.0 and sampled at the image's)."""
        text_format = (self.text or {}).get("format") or {"type": "text"}
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "temperature": used.temperature,
            "top_p": used.top_p,
            "tools": self.tools or [],
            "tool_choice": self.tool_choice if self.tool_choice is not None else "auto",
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "max_tool_calls": self.max_tool_calls,
            "text": {"format": text_format},
            "reasoning": {"effort": (self.reasoning or {}).get("effort"), "summary": None},
            "metadata": self.metadata or {},
            "top_logprobs": self.top_logprobs,
            "truncation": "disabled",
            "store": False,
            "previous_response_id": None,
        }


def chat_messages(input_: str | Sequence[dict[str, Any]], instructions: str | None) -> list[ChatMessage]:
    """The chat a Responses request asks about (pure): `instructions` first, as the system message;
    then `input`, a text (the user's) or its items in order. A `function_call` joins the assistant
    message before it, as one turn of the model's; a `function_call_output` is the tool's result,
    named after its call."""
    messages = [ChatMessage("system", instructions)] if instructions else []
    if isinstance(input_, str):
        return [*messages, ChatMessage("user", input_)]
    for i, item in enumerate(input_):
        where = f"input[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if not isinstance(kind, str | None):
            raise HTTPError(400, f"{where}.type must be a string", param=where)
        if kind == "message":
            role = item.get("role")
            role = _ROLES.get(role) if isinstance(role, str) else None
            if role is None:
                known = ", ".join(_ROLES)
                raise HTTPError(400, f"{where}.role: {item.get('role')!r} is not one of {known}", param=where)
            messages.append(ChatMessage(role, _text_of(item.get("content"), f"{where}.content")))
        elif kind in ("function_call", "custom_tool_call"):
            if kind == "function_call":
                arguments = call_arguments(item.get("arguments"), f"{where}.arguments")
            elif isinstance(item.get("input"), str):
                arguments = {"input": item["input"]}  # as the model was shown the tool
            else:
                raise HTTPError(400, f"{where}.input must be a string", param=where)
            previous = messages[-1] if messages and messages[-1].role == "assistant" else None
            index = len(previous.tool_calls) if previous is not None else 0
            call = ToolCall(str(item.get("name") or ""), arguments, str(item.get("call_id") or ""), index)
            if previous is None:
                messages.append(ChatMessage("assistant", "", tool_calls=(call,)))
            else:
                messages[-1] = ChatMessage(
                    "assistant", previous.content, tool_calls=(*previous.tool_calls, call)
                )
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = _text_of(item.get("output"), f"{where}.output")
            messages.append(ChatMessage("tool", output, tool_call_id=str(item.get("call_id") or "")))
        elif kind == "reasoning":
            continue  # the model's earlier reasoning, which these templates do not take back
        else:
            raise HTTPError(
                400, f"{where}.type: {kind!r} is not an input item this server takes", param=where
            )
    return named_tool_results(messages)


def _text_of(content: object, where: str) -> str:
    """A message's or a tool output's text: a string, or text parts (joined as Ollama joins them)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise HTTPError(400, f"{where} must be a string or a list of content parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            message = f"{where}[{j}]: {kind!r} parts are not supported (this model takes text only)"
            raise HTTPError(400, message, param=where)
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def usage(finished: Finished) -> dict[str, Any]:
    done = finished.done
    return {
        "input_tokens": done.prompt_eval_count,
        # Every token evaluated is kept in the slot for the next request to reuse: written.
        "input_tokens_details": {
            "cached_tokens": done.prompt_cached,
            "cache_write_tokens": done.prompt_eval_count - done.prompt_cached,
        },
        "output_tokens": done.eval_count,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": done.prompt_eval_count + done.eval_count,
    }


class ResponseEvents:
    """The server-sent events of one streamed response, from its generation's events (pure: ids
    and the time are given). The text becomes a message item as it comes; calls found at the end
    become function_call items, after the message if the model also wrote text."""

    def __init__(
        self,
        response_id: str,
        model: str,
        created_at: int,
        echoed: dict[str, Any],
        top: int | None = None,
        custom_tools: frozenset[str] = frozenset(),
    ) -> None:
        self.response_id, self.model, self.created_at, self.echoed = response_id, model, created_at, echoed
        self.top = top  # candidates per token with the text's log-probabilities; None: none
        self.custom_tools = custom_tools
        self.sequence = 0
        self.text: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.message_id = f"msg_{response_id.removeprefix('resp_')}"
        self.output: list[dict[str, Any]] = []

    def response(self, status: str, finished: Finished | None = None) -> dict[str, Any]:
        return response_object(
            self.response_id, self.model, self.created_at, self.echoed, self.output, status, finished
        )

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def start(self) -> list[dict[str, Any]]:
        return [
            self.event("response.created", response=self.response("in_progress")),
            self.event("response.in_progress", response=self.response("in_progress")),
        ]

    def token(self, text: str, entries: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """The events of some text; `entries`: its tokens' log-prob entries from the runner."""
        if not text:
            return []
        logprobs = token_logprobs(entries, self.top) if self.top is not None else []
        self.logprobs += logprobs
        events = []
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        if not self.text:
            item = {"id": self.message_id, "type": "message", "status": "in_progress", "role": "assistant"}
            events.append(
                self.event("response.output_item.added", output_index=0, item=item | {"content": []})
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self.event("response.content_part.added", **where, part=part))
        self.text.append(text)
        events.append(self.event("response.output_text.delta", **where, delta=text, logprobs=logprobs))
        return events

    def finish(self, finished: Finished, call_ids: Sequence[str]) -> list[dict[str, Any]]:
        events = []
        if self.text:
            text = "".join(self.text)
            where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs}
            item = message_item(self.message_id, text, _status(finished), self.logprobs)
            events.append(self.event("response.output_text.done", **where, text=text, logprobs=self.logprobs))
            events.append(self.event("response.content_part.done", **where, part=part))
            events.append(self.event("response.output_item.done", output_index=0, item=item))
            self.output.append(item)
        for call, call_id in zip(finished.tool_calls, call_ids, strict=True):
            index = len(self.output)
            custom = call.name in self.custom_tools
            item = custom_tool_call_item(call, call_id) if custom else function_call_item(call, call_id)
            field, kind = (
                ("input", "custom_tool_call_input") if custom else ("arguments", "function_call_arguments")
            )
            # Added empty, as OpenAI's are: a client builds the arguments (or input) from the deltas.
            added = item | {"status": "in_progress", field: ""}
            events.append(self.event("response.output_item.added", output_index=index, item=added))
            where = {"item_id": item["id"], "output_index": index}
            events.append(self.event(f"response.{kind}.delta", **where, delta=item[field]))
            events.append(self.event(f"response.{kind}.done", **where, **{field: item[field]}))
            events.append(self.event("response.output_item.done", output_index=index, item=item))
            self.output.append(item)
        status = _status(finished)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self.event(kind, response=self.response(status, finished)))
        return events

    def failed(self, code: str, message: str, param: str | None = None) -> list[dict[str, Any]]:
        """The events of a response that failed under way (its runner died, the server stops):
        OpenAI's `error`, then `response.failed`, whose response says why (a client review: the
        stream ended at the `error`, and a client that waits for the response's end waited on)."""
        failed = self.response("failed") | {"error": {"code": code, "message": message}}
        return [
            self.event("error", code=code, message=message, param=param),
            self.event("response.failed", response=failed),
        ]


def response_object(
    response_id: str,
    model: str,
    created_at: int,
    echoed: dict[str, Any],
    output: list[dict[str, Any]],
    status: str,
    finished: Finished | None,
) -> dict[str, Any]:
    """OpenAI's `response` object: its output so far, and the usage once it is finished."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": int(time.time()) if finished is not None else None,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage(finished) if finished is not None else None,
        **echoed,
    }


def message_item(
    item_id: str, text: str, status: str, logprobs: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": list(logprobs)}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def function_call_item(call: ToolCall, call_id: str) -> dict[str, Any]:
    return {
        "id": f"fc_{call_id.removeprefix('call_')}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": call.name,
        "arguments": json.dumps(dict(call.arguments), ensure_ascii=False),
    }


def custom_tool_call_item(call: ToolCall, call_id: str) -> dict[str, Any]:
    """A call of a custom tool: its `input` string (whatever else the model wrote, as JSON)."""
    given = call.arguments.get("input")
    text = given if isinstance(given, str) else json.dumps(dict(call.arguments), ensure_ascii=False)
    return {
        "id": f"ctc_{call_id.removeprefix('call_')}",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": call_id,
        "name": call.name,
        "input": text,
    }


def _custom_description(tool: Mapping[str, Any]) -> str:
    """A custom tool's description, with the grammar its input follows (which only OpenAI's
    models can be held to: here it is told)."""
    description = str(tool.get("description") or "")
    shape = tool.get("format")
    if isinstance(shape, Mapping) and shape.get("type") == "grammar" and shape.get("definition"):
        syntax = shape.get("syntax", "lark")
        description += f"\n\nIts input follows this {syntax} grammar:\n{shape['definition']}"
    return description.strip()


def _status(finished: Finished) -> Literal["completed", "incomplete"]:
    cut = finished.done_reason == "length" and not finished.tool_calls
    return "incomplete" if cut else "completed"


def router(state: ServerState) -> APIRouter:
    api = APIRouter(prefix="/v1", route_class=GoJSONRoute)
    inference = state.inference

    @api.post("/responses")
    async def responses(body: ResponsesBody, http: Request) -> Response:
        body.check_stateless()
        servable = await inference.servable(body.model)
        tools, choice = body.chat_tools(), body.chat_tool_choice()
        if choice not in (None, "auto", "none") and not tools:
            raise HTTPError(400, "tool_choice needs tools: send the tools it may call", param="tool_choice")
        messages = chat_messages(body.input, body.instructions)
        request = PromptRequest.chat(
            messages, tools=tools, think=body.think(), now=datetime.now().astimezone()
        )
        try:
            # Calls of the tools allowed_tools allows only, checked as the chat API checks them.
            parser = parser_for(servable.name, servable.prompting, parsed_tools(tools, choice))
        except InferenceRequestError as exc:  # a model that cannot take tools
            raise HTTPError(400, str(exc), param="tools") from None
        format_ = body.format()
        forced = forced_call_schema(tools or [], choice) if parser is not None else None
        if forced is not None:  # the answer is the call, not text: text.format does not apply
            format_ = forced
        top = body.logprobs_top()
        stream = inference.generate(
            servable,
            request,
            body.options(),
            format=format_,
            truncate=False,
            top_logprobs=runner_top_logprobs(top is not None, top),
        )
        if parser is not None:
            stream = with_tool_calls(stream, parser)
            if body.parallel_tool_calls is False:
                stream = first_call_only(stream)
        response_id = f"resp_{uuid.uuid4().hex[:24]}"
        used = inference.request_options(servable, body.options()).sampling
        events = ResponseEvents(
            response_id, servable.name, int(time.time()), body.echoed(used), top, body.custom_tools()
        )
        if body.stream:
            return await _streamed(http, state, servable.name, stream, events)
        text, parts, finished = await unless_gone(http, collected(stream))
        # The answer whole is what a stream's last event carries.
        events.token(text, [entry for _, entries in parts for entry in entries])
        *_, last = events.finish(finished, _call_ids(finished))
        state.count(ENDPOINT, servable.name, 200)
        return JSONResponse(last["response"])

    return api


def _call_ids(finished: Finished) -> list[str]:
    return [f"call_{uuid.uuid4().hex[:24]}" for _ in finished.tool_calls]


async def _streamed(
    http: Request, state: ServerState, model: str, stream: AsyncGenerator[Any, None], events: ResponseEvents
) -> Response:
    client = ClientGone(http)
    try:  # errors before the first token keep their status
        first = await client.unless(anext(stream))
    except BaseException:
        await stream.aclose()
        raise

    def sse(payload: dict[str, Any]) -> bytes:
        return f"event: {payload['type']}\ndata: {compact_json(payload)}\n\n".encode()

    async def chunks() -> AsyncIterator[bytes]:
        status = STATUS_CLIENT_GONE  # unless the generation ends: the client went away
        event = first
        try:
            for payload in events.start():
                yield sse(payload)
            while True:
                if isinstance(event, Finished):
                    for payload in events.finish(event, _call_ids(event)):
                        yield sse(payload)
                    status = 200
                    return
                if isinstance(event, Token):
                    for payload in events.token(event.text, event.logprobs or ()):
                        yield sse(payload)
                event = await anext(stream)
        except Exception as exc:
            error = state.error_for(exc)
            status = error.status
            for payload in events.failed(error.code or "server_error", error.message, error.param):
                yield sse(payload)
        finally:
            state.count(ENDPOINT, model, status)
            await stream.aclose()

    return WatchedStream(chunks(), client, media_type=SSE, headers={"Cache-Control": "no-cache"})
