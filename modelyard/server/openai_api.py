"""OpenAI's API (chat completions, completions, embeddings, models), so that the official `openai`
client works unchanged. Streams are server-sent events ending with `data: [DONE]`; errors have
OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from modelyard.builder.prompt import ChatMessage, PromptRequest, ToolCall
from modelyard.runtime.servable import Servable
from modelyard.server.http_errors import STATUS_CLIENT_GONE, HTTPError
from modelyard.server.inference import Finished, unless_client_leaves
from modelyard.server.state import ServerState

SSE = "text/event-stream"


class _Body(BaseModel):
    # Unknown fields ignored; wrong JSON types are a 400 (strict: no "yes" for true, no "5" for 5).
    model_config = ConfigDict(extra="ignore", strict=True)


class ChatMessageBody(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingBody(_Body):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1)

    def options(self) -> dict[str, Any]:
        if self.n not in (None, 1):
            raise HTTPError(400, "n > 1 is not supported; send n requests")
        mapped = {
            "num_predict": self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }
        return {k: v for k, v in mapped.items() if v is not None}


class ChatCompletionBody(_SamplingBody):
    messages: list[ChatMessageBody] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None


class CompletionBody(_SamplingBody):
    prompt: str | list[str] = ""
    suffix: str | None = None


class EmbeddingBody(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


def router(state: ServerState) -> APIRouter:
    api = APIRouter(prefix="/v1")
    inference = state.inference

    @api.post("/chat/completions")
    async def chat_completions(body: ChatCompletionBody, http: Request) -> Response:
        servable = await inference.servable(body.model)
        request = PromptRequest.chat([_message(m) for m in body.messages], tools=body.tools)
        stream = inference.generate(servable, request, body.options(), format=_format(body.response_format))
        return await _answer(
            http,
            state,
            "/v1/chat/completions",
            servable,
            stream,
            body,
            completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            object_name="chat.completion",
            chunk_object="chat.completion.chunk",
            chunk=lambda text, first: {"delta": ({"role": "assistant"} if first else {}) | {"content": text}},
            choice=lambda text, finished: {
                "message": {"role": "assistant", "content": text},
                "finish_reason": _finish_reason(finished),
                "logprobs": None,
            },
        )

    @api.post("/completions")
    async def completions(body: CompletionBody, http: Request) -> Response:
        servable = await inference.servable(body.model)
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise HTTPError(400, "prompt: send one prompt per request")
            prompt = body.prompt[0]
        else:
            prompt = body.prompt
        # OpenAI's completions are raw continuations of the prompt: no chat template.
        request = PromptRequest.generate(prompt, suffix=body.suffix or "", raw=not body.suffix)
        stream = inference.generate(servable, request, body.options())
        return await _answer(
            http,
            state,
            "/v1/completions",
            servable,
            stream,
            body,
            completion_id=f"cmpl-{uuid.uuid4().hex[:24]}",
            object_name="text_completion",
            chunk_object="text_completion",
            chunk=lambda text, first: {"text": text, "logprobs": None},
            choice=lambda text, finished: {
                "text": text,
                "logprobs": None,
                "finish_reason": _finish_reason(finished),
            },
        )

    @api.post("/embeddings")
    async def embeddings(body: EmbeddingBody) -> dict[str, Any]:
        servable = await inference.servable(body.model)
        inputs = _embedding_inputs(body.input)
        result, _, _ = await inference.embed(servable, inputs, None)
        data = []
        for i, vector in enumerate(result["embeddings"]):
            if body.dimensions and body.dimensions < len(vector):
                head = vector[: body.dimensions]
                norm = sum(v * v for v in head) ** 0.5 or 1.0
                vector = [v / norm for v in head]
            encoded: list[float] | str = vector
            if body.encoding_format == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "embedding": encoded, "index": i})
        state.count("/v1/embeddings", servable.name, 200)
        tokens = result["prompt_eval_count"]
        return {
            "object": "list",
            "data": data,
            "model": servable.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @api.get("/models")
    async def models() -> dict[str, Any]:
        listed = await _list(state)
        return {"object": "list", "data": listed}

    @api.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        for entry in await _list(state):
            if entry["id"] == model_id or entry["id"] == inference.reference(model_id).short():
                return entry
        raise HTTPError(404, f"The model '{model_id}' does not exist", kind="invalid_request_error")

    return api


async def _list(state: ServerState) -> list[dict[str, Any]]:
    import asyncio
    from datetime import datetime

    models = await asyncio.to_thread(state.list_models)
    out = []
    for m in models:
        try:
            created = int(datetime.strptime(m["modified_at"], "%Y-%m-%dT%H:%M:%SZ").timestamp())
        except ValueError:
            created = 0
        out.append({"id": m["name"], "object": "model", "created": created, "owned_by": "modelyard"})
    return out


async def _collect(stream: AsyncGenerator[Any, None]) -> tuple[str, Finished]:
    parts: list[str] = []
    try:
        async for event in stream:
            if isinstance(event, Finished):
                return "".join(parts), event
            parts.append(event.text)
    finally:
        await stream.aclose()  # cancels the runner's request if it is still going
    raise AssertionError("a generation always ends with Finished")


async def _answer(
    http: Request,
    state: ServerState,
    endpoint: str,
    servable: Servable,
    stream: AsyncGenerator[Any, None],
    body: _SamplingBody,
    *,
    completion_id: str,
    object_name: str,
    chunk_object: str,
    chunk: Callable[[str, bool], dict[str, Any]],
    choice: Callable[[str, Finished], dict[str, Any]],
) -> Response:
    """A completion, streamed as server-sent events of `chunk`s (`text`, whether it is the first)
    or answered whole with one `choice`; both endpoints differ only in those two shapes."""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _sse(
            http, state, endpoint, servable, stream, completion_id, chunk_object, chunk, include_usage
        )
    text, finished = await unless_client_leaves(http, _collect(stream))
    state.count(endpoint, servable.name, 200)
    return JSONResponse(
        {
            "id": completion_id,
            "object": object_name,
            "created": int(time.time()),
            "model": servable.name,
            "system_fingerprint": _fingerprint(servable),
            "choices": [{"index": 0, **choice(text, finished)}],
            "usage": _usage(finished),
        }
    )


async def _sse(
    http: Request,
    state: ServerState,
    endpoint: str,
    servable: Servable,
    stream: AsyncGenerator[Any, None],
    completion_id: str,
    object_name: str,
    choice: Any,
    include_usage: bool,
) -> Response:
    created = int(time.time())
    first_event = await unless_client_leaves(http, anext(stream))  # errors before output keep their status

    def chunk(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    def frame(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": object_name,
            "created": created,
            "model": servable.name,
            "system_fingerprint": _fingerprint(servable),
            "choices": choices,
            **extra,
        }

    async def events() -> AsyncIterator[bytes]:
        event = first_event
        first = True
        status = STATUS_CLIENT_GONE  # unless the stream ends: the client went away
        try:
            while True:
                if isinstance(event, Finished):
                    final = choice("", first) | {"index": 0, "finish_reason": _finish_reason(event)}
                    yield chunk(frame([final]))
                    if include_usage:
                        yield chunk(frame([], usage=_usage(event)))
                    yield b"data: [DONE]\n\n"
                    status = 200
                    return
                yield chunk(frame([choice(event.text, first) | {"index": 0, "finish_reason": None}]))
                first = False
                event = await anext(stream)
        except Exception as exc:
            error = state.error_for(exc)
            status = error.status
            yield chunk(
                {"error": {"message": error.message, "type": error.kind, "param": None, "code": None}}
            )
        finally:
            state.count(endpoint, servable.name, status)
            await stream.aclose()  # cancels the runner's request if it is still going

    return StreamingResponse(events(), media_type=SSE, headers={"Cache-Control": "no-cache"})


def _message(body: ChatMessageBody) -> ChatMessage:
    content = body.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") in ("image_url", "input_image", "input_audio"):
                raise HTTPError(400, "this model takes text only: image and audio parts are not supported")
        content = "".join(texts)
    calls = []
    for i, call in enumerate(body.tool_calls or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise HTTPError(400, f"tool_calls[{i}].function.arguments is not JSON") from None
        calls.append(ToolCall(str(function.get("name", "")), parsed, str(call.get("id", "")), i))
    return ChatMessage(
        role=body.role,
        content=content or "",
        tool_calls=tuple(calls),
        tool_name=body.name or "",
        tool_call_id=body.tool_call_id or "",
    )


def _format(response_format: ResponseFormat | None) -> str | dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json"
    schema = (response_format.json_schema or {}).get("schema")
    if not isinstance(schema, dict):
        raise HTTPError(400, "response_format.json_schema.schema must be a JSON schema object")
    return schema


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, str) for v in value):
        return list(value)
    raise HTTPError(400, "input must be a string or a list of strings (token arrays are not supported)")


def _finish_reason(finished: Finished) -> str:
    return "length" if finished.done_reason == "length" else "stop"


def _usage(finished: Finished) -> dict[str, int]:
    done = finished.done
    return {
        "prompt_tokens": done.prompt_eval_count,
        "completion_tokens": done.eval_count,
        "total_tokens": done.prompt_eval_count + done.eval_count,
    }


def _fingerprint(servable: Servable) -> str:
    return "fp_" + servable.digest.removeprefix("sha256:")[:12]
