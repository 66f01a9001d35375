"""OpenAI's API (chat completions, completions, embeddings, models), so that the official `openai`
client works unchanged. Streams are server-sent events ending with `data: [DONE]`; errors have
OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).

A prompt longer than the model's context is refused (400, code context_length_exceeded), as
OpenAI, llama.cpp's server and vLLM do, where Ollama's routes cut it to fit: clients of this API
(LangChain's trimming, agent loops) act on that error, and a cut prompt would be answered with
confidence from the part left.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modelyard.builder.prompt import ChatMessage, PromptRequest
from modelyard.errors import InferenceRequestError, InvalidReferenceError
from modelyard.runtime.runner import Token
from modelyard.runtime.servable import Servable
from modelyard.server.bodies import GoJSONRoute, Items
from modelyard.server.chunks import compact_json
from modelyard.server.disconnect import ClientGone, WatchedStream, unless_gone
from modelyard.server.http_errors import MODEL_NOT_FOUND, STATUS_CLIENT_GONE, HTTPError
from modelyard.server.inference import Finished, with_tool_calls
from modelyard.server.logprobs import (
    MAX_TOP_LOGPROBS,
    completion_logprobs,
    runner_top_logprobs,
    token_logprobs,
)
from modelyard.server.state import ServerState
from modelyard.server.tool_calls import (
    allowed_tools,
    forced_call_schema,
    openai_tool_calls,
    parser_for,
    requested_tool_calls,
    tool_functions,
)
from modelyard.server.vectors import unit_vector

SSE = "text/event-stream"
# The choices of one request (prompts × n) run side by side in the model's slots, the rest queued;
# past this many, send several requests.
MAX_CHOICES = 64
LLAMA_RANDOM_SEED = 0xFFFFFFFF
# OpenAI's reasoning_effort values, as the thinking levels templates know (Ollama's: high, medium,
# low; "none": no thinking). Ollama's OpenAI API refuses the others; OpenAI's newer ones are taken
# as the nearest level, so that a client set up for them still works.
REASONING_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}


class _Body(BaseModel):
    # Unknown fields ignored; wrong JSON types are a 400 (strict: no "yes" for true, no "5" for 5).
    model_config = ConfigDict(extra="ignore", strict=True)


class ChatMessageBody(_Body):
    role: str
    content: str | Items[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: Items[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None  # the deprecated form of one tool call


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingBody(_Body):
    model: str = Field(min_length=1)
    stream: bool | None = False  # OpenAI's schema allows null: not streamed
    stream_options: StreamOptions | None = None
    stop: str | Items[str] | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)  # choices per prompt
    # Token id (a string: JSON keys are) → a bias from -100 to 100 added to its logit. The ids are
    # the model's own (its tokenizer's), not OpenAI's: -100 bans a token, 100 all but forces it.
    logit_bias: dict[str, float] | None = None

    def token_biases(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token, bias) pairs; a key that is no token id, or a bias out of
        OpenAI's range, is a 400 that names it."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise HTTPError(400, f"logit_bias: {key!r} is not a token id", param="logit_bias") from None
            if not -100 <= bias <= 100:
                message = f"logit_bias[{key!r}]: {bias} is out of range (must be -100 to 100)"
                raise HTTPError(400, message, param="logit_bias")
            pairs.append((token, float(bias)))
        return tuple(pairs)

    def choices(self, prompts: int = 1) -> int:
        """How many choices the answer has: `n` for each prompt."""
        total = prompts * (self.n or 1)
        if total > MAX_CHOICES:
            message = f"at most {MAX_CHOICES} choices per request (prompts × n), got {total}"
            raise HTTPError(400, message, param="n")
        return total

    def options(self, choice: int = 0) -> dict[str, Any]:
        """The runner options of the `choice`-th choice of a prompt. With a seed, choice j samples
        with seed + j: each choice is reproducible, and the n choices differ."""
        seed = self.seed
        if seed is not None:
            # Any integer is a seed in OpenAI's API, each giving the same answer again. llama.cpp's
            # are 32 bits, with 0xFFFFFFFF (and, for us, any negative) meaning "a random seed": wrap
            # below that, so that every seed, negative or past 32 bits, is one that repeats.
            seed = (seed + choice) % LLAMA_RANDOM_SEED
        mapped = {
            "num_predict": self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": seed,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }
        return {k: v for k, v in mapped.items() if v is not None}


class ChatCompletionBody(_SamplingBody):
    messages: Items[ChatMessageBody] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: Items[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # false: one call at most in an answer
    # OpenAI's deprecated function calling, which its API still honours: one call, answered in
    # message.function_call with finish_reason "function_call".
    functions: Items[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def think(self) -> bool | str | None:
        """OpenAI's reasoning_effort as Ollama's own OpenAI API reads it: a level of thinking,
        "none" for none."""
        effort = self.reasoning_effort
        if effort is None:
            return None
        if effort not in REASONING_EFFORTS:
            raise HTTPError(
                400,
                f"invalid reasoning_effort {effort!r}: must be one of {', '.join(REASONING_EFFORTS)}",
                param="reasoning_effort",
            )
        return REASONING_EFFORTS[effort]

    def logprobs_top(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            # As OpenAI answers.
            raise HTTPError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def legacy_functions(self) -> bool:
        return self.functions is not None

    def tool_request(self) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
        """The tools and tool_choice asked for: `functions` and `function_call` as tools (a
        function each) and a tool_choice; either form, not both."""
        if self.functions is None:
            if self.function_call is not None:
                raise HTTPError(400, "function_call needs functions", param="function_call")
            return self.tools, self.tool_choice
        if self.tools is not None or self.tool_choice is not None:
            raise HTTPError(400, "send tools or functions (deprecated), not both", param="functions")
        tools = [{"type": "function", "function": function} for function in self.functions]
        call = self.function_call
        if call is None or call in ("auto", "none"):
            return tools, call
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            if not any(function.get("name") == call["name"] for function in self.functions):
                message = f"function_call names {call['name']!r}, which functions does not offer"
                raise HTTPError(400, message, param="function_call")
            return tools, {"type": "function", "function": {"name": call["name"]}}
        message = 'function_call must be "auto", "none" or {"name": …}'
        raise HTTPError(400, f"{message}, not {call!r}", param="function_call")


def parsed_tools(tools: list[dict[str, Any]] | None, choice: object) -> list[dict[str, Any]] | None:
    """The tools whose calls are taken out of the answer (chat and Responses alike): none for
    tool_choice "none" (the model still sees them, as OpenAI's models do, but its answer stays
    text); with allowed_tools, those it allows."""
    if choice == "none":
        return None
    try:
        allowed = allowed_tools(choice)
    except InferenceRequestError as exc:  # a mode it does not know: the tool_choice's fault
        raise HTTPError(400, str(exc), param="tool_choice") from None
    if allowed is None or tools is None:
        return tools
    offered = tool_functions(tools)
    unknown = [name for name in allowed[1] if name not in offered]
    if unknown or not allowed[1]:
        missing = ", ".join(unknown) or "no tool"
        message = f"tool_choice.allowed_tools names {missing}, which tools does not offer"
        raise HTTPError(400, message, param="tool_choice")
    names = set(allowed[1])
    return [tool for tool in tools if names & set(tool_functions([tool]))]


class CompletionBody(_SamplingBody):
    # A text, several, or the same as token ids (as lm-evaluation-harness sends them).
    prompt: str | Items[str] | Items[int] | Items[Items[int]] = ""
    suffix: str | None = None
    # The prompt, then its completion, in the one text; with logprobs, the prompt's tokens come
    # first in them, each scored after the tokens before it (the first with null).
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)  # legacy: how many candidates, null for none

    def logprobs_top(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """One prompt per choice: a text, or token ids used as they are."""
        prompt = self.prompt
        prompts: list[str | list[int]]
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]  # type: ignore[arg-type]  # one prompt of token ids
        else:
            prompts = list(prompt)  # type: ignore[arg-type]
        if not prompts:
            raise HTTPError(400, "prompt: an empty list; send at least one prompt", param="prompt")
        self.choices(len(prompts))
        for i, one in enumerate(prompts):
            if isinstance(one, list) and not one:
                raise HTTPError(400, f"prompt[{i}]: an empty list of token ids", param="prompt")
            if isinstance(one, list) and self.suffix:
                raise HTTPError(400, "suffix needs the prompt as text, not token ids", param="suffix")
        if self.suffix and self.echo and self.logprobs is not None:
            # The scored tokens would be the fill-in-the-middle template's, not the prompt's.
            message = "echo with logprobs scores a prompt: it cannot be combined with suffix"
            raise HTTPError(400, message, param="echo")
        return prompts


class EmbeddingBody(_Body):
    model: str = Field(min_length=1)
    input: str | Items[str] | Items[int] | Items[Items[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


def router(state: ServerState) -> APIRouter:
    api = APIRouter(prefix="/v1", route_class=GoJSONRoute)
    inference = state.inference

    @api.post("/chat/completions")
    async def chat_completions(body: ChatCompletionBody, http: Request) -> Response:
        servable = await inference.servable(body.model)
        tools, tool_choice = body.tool_request()
        legacy = body.legacy_functions
        if tool_choice not in (None, "auto", "none") and not tools:
            raise HTTPError(400, "tool_choice needs tools: send the tools it may call", param="tool_choice")
        messages = named_tool_results([_message(i, m) for i, m in enumerate(body.messages)])
        now = datetime.now().astimezone()  # templates that print today's date (strftime_now)
        request = PromptRequest.chat(messages, tools=tools, think=body.think(), now=now)
        try:
            parser = parser_for(servable.name, servable.prompting, parsed_tools(tools, tool_choice))
        except InferenceRequestError as exc:  # a model that cannot take tools
            raise HTTPError(400, str(exc), param="functions" if legacy else "tools") from None
        top = body.logprobs_top()
        format_ = _format(body.response_format)
        forced = forced_call_schema(tools or [], tool_choice) if parser is not None else None
        biases = body.token_biases()
        if forced is not None:
            # tool_choice "required" or a named function: a grammar makes the answer that call. A
            # response_format is for an answer in text, which this one is not (frameworks send both).
            format_ = forced

        def generate(choice: int) -> AsyncGenerator[Any, None]:
            stream = inference.generate(
                servable,
                request,
                body.options(choice),
                format=format_,
                truncate=False,  # OpenAI's API refuses a prompt too long (context_length_exceeded)
                top_logprobs=runner_top_logprobs(top is not None, top),
                logit_bias=biases,
            )
            # A parser for each choice: the text a parser holds back is one choice's.
            own = parser_for(servable.name, servable.prompting, parsed_tools(tools, tool_choice))
            if own is None:
                return stream
            with_calls = with_tool_calls(stream, own)
            one_call = body.parallel_tool_calls is False or legacy
            return first_call_only(with_calls) if one_call else with_calls

        def calls(finished: Finished) -> dict[str, Any]:
            """The calls as the message (or a chunk's delta) says them."""
            ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in finished.tool_calls]
            said = openai_tool_calls(finished.tool_calls, ids)
            return {"function_call": said[0]["function"]} if legacy else {"tool_calls": said}

        def message(text: str, finished: Finished) -> dict[str, Any]:
            if finished.tool_calls:  # OpenAI's content is null beside calls, unless there was text
                return {"role": "assistant", "content": text or None} | calls(finished)
            return {"role": "assistant", "content": text}

        def finish_reason(finished: Finished) -> str:
            reason = _finish_reason(finished)
            return "function_call" if legacy and reason == "tool_calls" else reason

        def logprobs(entries: Sequence[dict[str, Any]], _offset: int) -> dict[str, Any] | None:
            return None if top is None else {"content": token_logprobs(entries, top)}

        return await _answer(
            http,
            state,
            "/v1/chat/completions",
            servable,
            [generate(choice) for choice in range(body.choices())],
            body,
            completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            object_name="chat.completion",
            chunk_object="chat.completion.chunk",
            # The last chunk of a choice (text None) carries its finish_reason and no content.
            chunk=lambda text, first: {"delta": _delta(text, first)},
            choice=lambda text, finished: {
                "message": message(text, finished),
                "finish_reason": finish_reason(finished),
            },
            logprobs=logprobs,
            calls_chunk=lambda finished, first: (
                {"delta": ({"role": "assistant"} if first else {}) | calls(finished)}
                if finished.tool_calls
                else None
            ),
            finish_reason=finish_reason,
        )

    @api.post("/completions")
    async def completions(body: CompletionBody, http: Request) -> Response:
        servable = await inference.servable(body.model)
        prompts = body.prompts()
        top = body.logprobs_top()
        biases = body.token_biases()

        def generate(prompt: str | list[int], choice: int) -> AsyncGenerator[Any, None]:
            options = body.options(choice)
            top_logprobs = runner_top_logprobs(top is not None, top)
            if isinstance(prompt, list):
                request = PromptRequest.generate("", raw=True)
                return inference.generate(
                    servable,
                    request,
                    options,
                    truncate=False,
                    top_logprobs=top_logprobs,
                    tokens=prompt,
                    echo=body.echo,
                    logit_bias=biases,
                )
            # OpenAI's completions are raw continuations of the prompt: no chat template.
            request = PromptRequest.generate(
                prompt, suffix=body.suffix or "", raw=not body.suffix, now=datetime.now().astimezone()
            )
            stream = inference.generate(
                servable,
                request,
                options,
                truncate=False,
                top_logprobs=top_logprobs,
                echo=body.echo,
                logit_bias=biases,
            )
            if body.echo:
                return _echoing_as_sent(stream, prompt)
            return stream if top is None else _offsets_after(stream, prompt)

        def logprobs(entries: Sequence[dict[str, Any]], offset: int) -> dict[str, Any] | None:
            return None if top is None else completion_logprobs(entries, top, offset)

        # OpenAI's order: prompt by prompt, each prompt's n choices together.
        per_prompt = body.n or 1
        streams = [generate(prompt, choice) for prompt in prompts for choice in range(per_prompt)]
        return await _answer(
            http,
            state,
            "/v1/completions",
            servable,
            streams,
            body,
            completion_id=f"cmpl-{uuid.uuid4().hex[:24]}",
            object_name="text_completion",
            chunk_object="text_completion",
            chunk=lambda text, _first: {"text": text or ""},
            choice=lambda text, finished: {"text": text, "finish_reason": _finish_reason(finished)},
            logprobs=logprobs,
        )

    @api.post("/embeddings")
    async def embeddings(body: EmbeddingBody, http: Request) -> dict[str, Any]:
        servable = await inference.servable(body.model)
        inputs = _embedding_inputs(body.input)
        result, _, _ = await unless_gone(http, inference.embed(servable, inputs, None, truncate=False))
        width = len(result["embeddings"][0])
        if body.dimensions is not None and body.dimensions > width:
            # OpenAI refuses more dimensions than the model has (Ollama's API returns them all).
            message = f"dimensions {body.dimensions}: {servable.name} makes vectors of {width}"
            raise HTTPError(400, message, param="dimensions")
        data = []
        for i, pooled in enumerate(result["embeddings"]):
            vector = unit_vector(pooled, body.dimensions)
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
        try:
            short = inference.reference(model_id).short()
        except (InvalidReferenceError, InferenceRequestError):
            short = None  # no image can have this name: not found, as OpenAI answers any unknown id
        entries = await _list(state)
        for entry in entries:
            if entry["id"] in (model_id, short):
                return entry
        # As a request names a model: a tag that differs only by case, where one does.
        wanted = {model_id.casefold(), (short or model_id).casefold()}
        alike = [entry for entry in entries if entry["id"].casefold() in wanted]
        if len(alike) == 1:
            return alike[0]
        raise HTTPError(
            404, f"The model '{model_id}' does not exist", kind="invalid_request_error", code=MODEL_NOT_FOUND
        )

    return api


async def _list(state: ServerState) -> list[dict[str, Any]]:
    models = await asyncio.to_thread(state.list_models)
    out = []
    for m in models:
        out.append(
            {
                "id": m["name"],
                "object": "model",
                "created": created(m["modified_at"]),
                "owned_by": "modelyard",
            }
        )
    return out


def created(modified_at: str) -> int:
    """OpenAI's `created` (Unix seconds) from a store time ("…Z": UTC, whatever the local zone)."""
    try:
        return int(datetime.fromisoformat(modified_at).timestamp())
    except ValueError:
        return 0


async def _collect_all(
    streams: Sequence[AsyncGenerator[Any, None]],
) -> list[tuple[str, LogprobParts, Finished]]:
    """Every choice whole, generated side by side in the model's slots; one failure cancels the
    others and is the answer's error."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(collected(stream)) for stream in streams]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _interleaved(streams: Sequence[AsyncGenerator[Any, None]]) -> AsyncGenerator[tuple[int, Any], None]:
    """The events of several generations as they come, each with its stream's index. A failure
    of one is raised here; closing this closes them all (which cancels their runner requests)."""
    if len(streams) == 1:  # the common case, without tasks in between
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await streams[0].aclose()
        return
    # Bounded, so that a slow client holds the generations back rather than this buffering them.
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue(maxsize=4 * len(streams))

    end = object()  # a stream's last item

    async def pump(index: int, stream: AsyncGenerator[Any, None]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event, None))
            await queue.put((index, end, None))
        except Exception as exc:
            await queue.put((index, None, exc))
        finally:
            await stream.aclose()

    pumps = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        ended = 0
        while ended < len(streams):
            index, event, error = await queue.get()
            if error is not None:
                raise error
            if event is end:
                ended += 1
            else:
                yield index, event
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _each_event(
    stream: AsyncGenerator[Any, None], change: Callable[[Any], Any]
) -> AsyncGenerator[Any, None]:
    """`stream` with `change` applied to each of its events; closed however it ends."""
    try:
        async for event in stream:
            yield change(event)
    finally:
        await stream.aclose()  # the generation's own clean-up: cancel, release the lease


def _echoing_as_sent(stream: AsyncGenerator[Any, None], prompt: str) -> AsyncGenerator[Any, None]:
    """`stream` with the echoed prompt's text as the client sent it (the runner's is its tokens'
    rendering, which may differ: a BOS shown, spaces the tokenizer normalises)."""

    def as_sent(event: Any) -> Any:
        echoed = isinstance(event, Token) and event.prompt
        return dataclasses.replace(event, text=prompt) if echoed else event

    return _each_event(stream, as_sent)


def first_call_only(stream: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    """`stream` with one tool call at most (OpenAI's parallel_tool_calls false): the first the model
    made; the others dropped."""

    def first(event: Any) -> Any:
        if isinstance(event, Finished) and len(event.tool_calls) > 1:
            return dataclasses.replace(event, tool_calls=event.tool_calls[:1])
        return event

    return _each_event(stream, first)


def _offsets_after(stream: AsyncGenerator[Any, None], prompt: str) -> AsyncGenerator[Any, None]:
    """`stream` with its tokens' text offsets counted from the start of the prompt, which the answer
    follows: OpenAI's `text_offset` without echo (llama-cpp-python's server counts so too). A
    prompt sent as token ids has no text of the client's to count: its answer's offsets start at 0."""

    def shifted(event: Any) -> Any:
        if not (isinstance(event, Token) and event.logprobs):
            return event
        entries = tuple(
            {**entry, "offset": len(prompt) + int(entry["offset"])} if "offset" in entry else entry
            for entry in event.logprobs
        )
        return dataclasses.replace(event, logprobs=entries)

    return _each_event(stream, shifted)


# The log-prob entries of a generation's events, each with where its text is measured from: 0 for
# an echoed prompt's, the prompt's length for the answer's.
LogprobParts = list[tuple[int, Sequence[dict[str, Any]]]]


async def collected(stream: AsyncGenerator[Any, None]) -> tuple[str, LogprobParts, Finished]:
    """A generation whole: its text, its log-prob entries (LogprobParts), its Finished event."""
    parts: list[str] = []
    entries: LogprobParts = []
    answer_start = 0
    try:
        async for event in stream:
            if isinstance(event, Finished):
                return "".join(parts), entries, event
            parts.append(event.text)
            if event.logprobs:
                entries.append((0 if event.prompt else answer_start, event.logprobs))
            if event.prompt:
                answer_start = len(event.text)
    finally:
        await stream.aclose()  # cancels the runner's request if it is still going
    raise AssertionError("a generation always ends with Finished")


def _joined(logprobs: Logprobs, parts: LogprobParts) -> dict[str, Any] | None:
    """A whole choice's `logprobs`, from its events' as a stream sends them."""
    joined = logprobs([], 0)
    for offset, entries in parts:
        part = logprobs(entries, offset)
        if joined is None or part is None:
            return None
        joined = {key: joined[key] + part[key] for key in joined}  # both shapes are lists by key
    return joined


async def _answer(
    http: Request,
    state: ServerState,
    endpoint: str,
    servable: Servable,
    streams: Sequence[AsyncGenerator[Any, None]],
    body: _SamplingBody,
    *,
    completion_id: str,
    object_name: str,
    chunk_object: str,
    chunk: Callable[[str | None, bool], dict[str, Any]],
    choice: Callable[[str, Finished], dict[str, Any]],
    logprobs: Logprobs,
    calls_chunk: Callable[[Finished, bool], dict[str, Any] | None] = lambda _, __: None,
    finish_reason: Callable[[Finished], str] = lambda finished: _finish_reason(finished),
) -> Response:
    """A completion of one choice per stream (`index` in their order), streamed as server-sent
    events of `chunk`s (`text`, whether it is the choice's first) or answered whole with a `choice`
    each; both endpoints differ only in those shapes and in that of their `logprobs` (of some
    tokens, and the length of the text before them)."""
    if body.stream_options is not None and not body.stream:  # as OpenAI answers
        raise HTTPError(400, "stream_options is only allowed when stream is true", param="stream_options")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _sse(
            http,
            state,
            endpoint,
            servable,
            streams,
            completion_id,
            chunk_object,
            chunk,
            logprobs,
            calls_chunk,
            finish_reason,
            include_usage,
            body.n or 1,
        )
    results = await unless_gone(http, _collect_all(streams))
    state.count(endpoint, servable.name, 200)
    return JSONResponse(
        {
            "id": completion_id,
            "object": object_name,
            "created": int(time.time()),
            "model": servable.name,
            "system_fingerprint": _fingerprint(servable),
            "choices": [
                {"index": i, **choice(text, finished), "logprobs": _joined(logprobs, entries)}
                for i, (text, entries, finished) in enumerate(results)
            ],
            "usage": _usage([finished for _, _, finished in results], body.n or 1),
        }
    )


async def _sse(
    http: Request,
    state: ServerState,
    endpoint: str,
    servable: Servable,
    streams: Sequence[AsyncGenerator[Any, None]],
    completion_id: str,
    object_name: str,
    choice: Callable[[str | None, bool], dict[str, Any]],
    logprobs: Logprobs,
    calls_chunk: Callable[[Finished, bool], dict[str, Any] | None],
    finish_reason: Callable[[Finished], str],
    include_usage: bool,
    per_prompt: int,
) -> Response:
    created = int(time.time())
    events_of_all = _interleaved(streams)
    client = ClientGone(http)
    try:  # errors before output keep their status
        first_event = await client.unless(anext(events_of_all))
    except BaseException:
        await events_of_all.aclose()
        raise

    def chunk(payload: dict[str, Any]) -> bytes:
        return b"data: " + compact_json(payload).encode() + b"\n\n"

    model, fingerprint = servable.name, _fingerprint(servable)  # once, not per chunk

    # With include_usage, every chunk has a usage field, null but in the last (OpenAI's documented form).
    no_usage = {"usage": None} if include_usage else {}

    def frame(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": object_name,
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
            "choices": choices,
            **no_usage,
            **extra,
        }

    async def events() -> AsyncIterator[bytes]:
        index, event = first_event
        started: set[int] = set()  # the choices that sent a chunk (the first carries the role)
        answer_start: dict[int, int] = {}  # after an echoed prompt (legacy completions' text_offset)
        finished: dict[int, Finished] = {}
        status = STATUS_CLIENT_GONE  # unless the streams end: the client went away
        try:
            while True:
                if isinstance(event, Finished):
                    calls = calls_chunk(event, index not in started)  # tool calls, in a chunk of their own
                    if calls is not None:
                        yield chunk(
                            frame([calls | {"index": index, "logprobs": None, "finish_reason": None}])
                        )
                        started.add(index)
                    final = choice(None, index not in started) | {
                        "index": index,
                        "logprobs": None,
                        "finish_reason": finish_reason(event),
                    }
                    yield chunk(frame([final]))
                    finished[index] = event
                    if len(finished) == len(streams):
                        if include_usage:
                            in_order = [finished[i] for i in range(len(streams))]
                            yield chunk(frame([], usage=_usage(in_order, per_prompt)))
                        yield b"data: [DONE]\n\n"
                        status = 200
                        return
                else:
                    base = 0 if event.prompt else answer_start.get(index, 0)
                    part = choice(event.text, index not in started)
                    part["logprobs"] = logprobs(event.logprobs, base)  # a new dict: its keys in order
                    part["index"] = index
                    part["finish_reason"] = None
                    yield chunk(frame([part]))
                    if event.prompt:
                        answer_start[index] = len(event.text)
                    started.add(index)
                index, event = await anext(events_of_all)
        except Exception as exc:
            error = state.error_for(exc)
            status = error.status
            yield chunk(
                {
                    "error": {
                        "message": error.message,
                        "type": error.kind,
                        "param": error.param,
                        "code": error.code,
                    }
                }
            )
        finally:
            state.count(endpoint, servable.name, status)
            await events_of_all.aclose()  # cancels the runner's requests that are still going

    return WatchedStream(events(), client, media_type=SSE, headers={"Cache-Control": "no-cache"})


# The `logprobs` of a choice: of the given tokens, their text offsets counted from `offset` (see
# completion_logprobs); None when the request asked for none.
Logprobs = Callable[[Sequence[dict[str, Any]], int], dict[str, Any] | None]


# OpenAI's roles, as a template knows them: "developer" is its newer name for the system role (o
# series), "function" the older one for a tool's result.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_ROLES |= {"tool": "tool", "function": "tool"}


def _message(index: int, body: ChatMessageBody) -> ChatMessage:
    where = f"messages[{index}]"
    role = _ROLES.get(body.role)
    if role is None:
        known = ", ".join(_ROLES)
        raise HTTPError(400, f"{where}.role: {body.role!r} is not a role; use one of {known}", param=where)
    content = body.content
    if content is None and role != "assistant":
        # OpenAI's schema requires it but of an assistant's turn (which may hold tool calls only):
        # a turn without it was sent to the model as an empty one (an API review).
        raise HTTPError(400, f"{where}.content: required in a {body.role} message", param=f"{where}.content")
    if isinstance(content, list):
        texts = []  # joined as Ollama joins a message's parts: by a blank line
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind in ("image_url", "input_image", "input_audio"):
                message = "this model takes text only: image and audio parts are not supported"
                raise HTTPError(400, message, param=f"{where}.content")
            else:  # a file, or a part this server does not know: never dropped without a word
                message = (
                    f"{where}.content[{j}]: {kind!r} parts are not supported; send the text as text parts"
                )
                raise HTTPError(400, message, param=f"{where}.content")
        content = "\n\n".join(texts)
    if body.function_call is not None and body.tool_calls is None:
        calls = requested_tool_calls([{"function": body.function_call}], f"{where}.function_call.")
    else:
        calls = requested_tool_calls(body.tool_calls, f"{where}.")
    return ChatMessage(
        role=role,
        content=content or "",
        tool_calls=calls,
        tool_name=body.name or "",
        tool_call_id=body.tool_call_id or "",
    )


def named_tool_results(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Tool results that give only their call's id (as OpenAI's clients send them) take the
    function's name from that call, as Ollama's OpenAI API does: templates print it (`.ToolName`)."""
    names: dict[str, str] = {}
    named = []
    for message in messages:
        names |= {call.id: call.name for call in message.tool_calls if call.id}
        if message.role == "tool" and not message.tool_name and message.tool_call_id in names:
            message = dataclasses.replace(message, tool_name=names[message.tool_call_id])
        named.append(message)
    return named


def _delta(text: str | None, first: bool) -> dict[str, Any]:
    """A chat chunk's delta: the role in a choice's first; no content in its last (text None)."""
    return ({"role": "assistant"} if first else {}) | ({} if text is None else {"content": text})


def _format(response_format: ResponseFormat | None) -> str | dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json"
    if response_format.json_schema is None:  # as OpenAI: not taken as json_object (a client review)
        raise HTTPError(
            400,
            "response_format of type json_schema needs response_format.json_schema: "
            '{"name": …, "schema": {…}}; or use {"type": "json_object"} for any JSON',
            param="response_format.json_schema",
        )
    schema = response_format.json_schema.get("schema")
    if schema is None:  # optional in OpenAI's API: any JSON then
        return "json"
    if not isinstance(schema, dict):
        message = "response_format.json_schema.schema must be a JSON schema object"
        raise HTTPError(400, message, param="response_format")
    return schema


def _embedding_inputs(value: Any) -> list[str]:
    inputs = [value] if isinstance(value, str) else value
    if not inputs:
        raise HTTPError(400, "input is an empty list: send a string or a list of strings", param="input")
    if not all(isinstance(v, str) for v in inputs):
        raise HTTPError(
            400,
            "input as token ids is not supported: send the text (LangChain's OpenAIEmbeddings sends "
            "tiktoken's ids unless created with check_embedding_ctx_length=False)",
            param="input",
        )
    if not all(inputs):
        raise HTTPError(400, "input cannot be an empty string", param="input")
    return list(inputs)


def _finish_reason(finished: Finished) -> str:
    if finished.tool_calls:
        return "tool_calls"
    return "length" if finished.done_reason == "length" else "stop"


def _usage(choices: Sequence[Finished], per_prompt: int = 1) -> dict[str, Any]:
    """The tokens of all the choices of an answer, in choice order, `per_prompt` choices of each
    prompt: as OpenAI counts them, each prompt once, every choice's completion."""
    firsts = choices[::per_prompt]
    prompt = sum(finished.done.prompt_eval_count for finished in firsts)
    completion = sum(finished.done.eval_count for finished in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(finished.done.prompt_cached for finished in firsts)},
    }


def _fingerprint(servable: Servable) -> str:
    return "fp_" + servable.digest.removeprefix("sha256:")[:12]
