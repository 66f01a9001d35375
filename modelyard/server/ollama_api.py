"""Ollama's HTTP API (reference/ollama.md §3), so that Ollama's clients work unchanged.

Streaming is the default (NDJSON, one object per line); `"stream": false` gives one JSON object
(for pull/push/create, the last progress message). An error before any output gets its status
code; an error mid-stream is an `{"error": …}` line, as Ollama sends it. Durations are nanoseconds.
Unknown request fields are ignored, as Ollama ignores them; a field of the wrong type is a 400.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from modelyard import __version__
from modelyard.builder import modelfile as mf
from modelyard.builder.gguf_info import GGUF_MAGIC
from modelyard.builder.params import validate_parameters
from modelyard.builder.prompt import ChatMessage, PromptRequest
from modelyard.errors import InvalidReferenceError, ModelfileError
from modelyard.progress import ProgressEvent
from modelyard.reference import parse_reference
from modelyard.registry import PushFormat, pull, push
from modelyard.runtime.servable import Servable
from modelyard.server.bodies import GoJSONRoute, Items
from modelyard.server.chunks import compact_json
from modelyard.server.disconnect import ClientGone, WatchedStream, unless_gone
from modelyard.server.http_errors import STATUS_CLIENT_GONE, HTTPError
from modelyard.server.inference import Finished, served_model, with_tool_calls
from modelyard.server.logprobs import MAX_TOP_LOGPROBS, runner_top_logprobs, token_logprobs
from modelyard.server.state import ServerState
from modelyard.server.tool_calls import ollama_tool_calls, parser_for, requested_tool_calls
from modelyard.server.vectors import unit_vector
from modelyard.store.image import is_digest

# The Ollama version we answer /api/version with: the API level we follow (reference snapshot).
OLLAMA_API_VERSION = "0.12.0"

NDJSON = "application/x-ndjson"


class _Request(BaseModel):
    # Unknown fields are ignored, as Ollama ignores them; a value of the wrong JSON type is a 400
    # (strict: "stream": "yes" is not true), as Go's json.Unmarshal refuses it.
    model_config = ConfigDict(extra="ignore", strict=True)


class _ModelRequest(_Request):
    model: Annotated[str, Field(min_length=1)] = ""
    name: str | None = None  # older clients send `name`

    def model_name(self) -> str:
        name = self.model or self.name or ""
        if not name:
            raise HTTPError(400, "model is required")
        return name


class _GenerationBody(_ModelRequest):
    """What /api/generate and /api/chat both take."""

    format: Literal["", "json"] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    stream: bool | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def generation(self) -> dict[str, Any]:
        """Inference.generate's keyword arguments from the fields both endpoints share."""
        return {
            "format": self.format or None,
            "keep_alive": self.keep_alive,
            "truncate": self.truncate is not False,
            "shift": self.shift is not False,
            "top_logprobs": runner_top_logprobs(bool(self.logprobs), self.top_logprobs),
        }

    def logprobs_top(self) -> int | None:
        """How many candidates each token's log-probs list; None: no log-probs in the answer."""
        return (self.top_logprobs or 0) if self.logprobs else None


class GenerateBody(_GenerationBody):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool | None = None
    images: Items[str] | None = None
    context: Items[int] | None = None  # deprecated in Ollama: an earlier answer's `context`, sent back


class MessageBody(_Request):
    role: str
    content: str | None = ""
    images: Items[str] | None = None
    tool_calls: Items[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None


class ChatBody(_GenerationBody):
    messages: Items[MessageBody] | None = None
    tools: Items[dict[str, Any]] | None = None


class EmbedBody(_ModelRequest):
    input: str | Items[str] = ""
    truncate: bool | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    dimensions: int | None = None


class EmbeddingsBody(_ModelRequest):
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class CreateBody(_ModelRequest):
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: Items[MessageBody] | None = None
    license: str | Items[str] | None = None
    quantize: str | None = None
    modelfile: str | None = None  # the older API sent the Modelfile's text
    requires: str | None = None
    stream: bool | None = None


class PullBody(_ModelRequest):
    insecure: bool | None = None
    stream: bool | None = None


class ShowBody(_ModelRequest):
    verbose: bool | None = None


class CopyBody(_Request):
    source: Annotated[str, Field(min_length=1)]
    destination: Annotated[str, Field(min_length=1)]


def timestamp(moment: datetime | None = None) -> str:
    if moment is None:  # every streamed line: isoformat writes the same text in a fraction of the time
        return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def router(state: ServerState) -> APIRouter:
    api = APIRouter(route_class=GoJSONRoute)
    inference = state.inference

    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")  # the text Ollama's clients look for

    @api.get("/api/version")
    @api.head("/api/version", include_in_schema=False)
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_API_VERSION, "modelyard": __version__}

    @api.post("/api/generate")
    async def generate(body: GenerateBody, http: Request) -> Response:
        name = body.model_name()
        _check_think(body.think)  # as Ollama reads the body: a load alone is refused too
        if not body.prompt and not body.images and body.suffix is None:
            reason = await inference.load_only(name, body.keep_alive, body.options)
            state.count("/api/generate", served_model.get(), 200)  # `modelyard stop` and preloads count too
            # One JSON object, streaming or not, as Ollama answers a load or an unload.
            return JSONResponse(_final_line(name, reason, {"response": ""}))
        if body.raw and (body.system or body.template or body.context):
            # Ollama's answer: a raw prompt goes to the model as it is, so these would be dropped.
            raise HTTPError(400, "raw mode does not support template, system, or context")
        servable = await inference.servable(name)
        request = PromptRequest.generate(
            body.prompt or "",
            system=body.system or "",
            suffix=body.suffix or "",
            template=body.template or "",
            raw=bool(body.raw),
            images=_decode_images(body.images),
            context=body.context or (),
            think=body.think,
            now=datetime.now().astimezone(),  # templates that print today's date (currentDate)
        )
        # Ollama answers a templated generate with its `context` (the prompt's and the answer's
        # tokens), which a client may send back to go on from there; a raw one gets none.
        stream = inference.generate(
            servable, request, body.options, **body.generation(), with_context=not body.raw
        )

        def response(text: str, finished: Finished | None) -> dict[str, Any]:
            if finished is None or finished.context is None:
                return {"response": text}
            return {"response": text, "context": list(finished.context)}

        return await _generation_response(
            http, state, "/api/generate", name, servable, stream, body.stream, response, body.logprobs_top()
        )

    @api.post("/api/chat")
    async def chat(body: ChatBody, http: Request) -> Response:
        name = body.model_name()
        _check_think(body.think)
        if not body.messages:
            reason = await inference.load_only(name, body.keep_alive, body.options)
            state.count("/api/chat", served_model.get(), 200)
            return JSONResponse(_final_line(name, reason, {"message": {"role": "assistant", "content": ""}}))
        servable = await inference.servable(name)
        request = PromptRequest.chat(
            [_message(i, m) for i, m in enumerate(body.messages)],
            tools=body.tools,
            think=body.think,
            now=datetime.now().astimezone(),  # templates that print today's date (strftime_now)
        )
        parser = parser_for(servable.name, servable.prompting, body.tools)
        stream = inference.generate(servable, request, body.options, **body.generation())
        if parser is not None:
            stream = with_tool_calls(stream, parser)

        def message(text: str, finished: Finished | None = None) -> dict[str, Any]:
            calls = finished.tool_calls if finished is not None else ()
            ids = [f"call_{uuid.uuid4().hex[:8]}" for _ in calls]
            extra = {"tool_calls": ollama_tool_calls(calls, ids)} if calls else {}
            return {"message": {"role": "assistant", "content": text, **extra}}

        return await _generation_response(
            http, state, "/api/chat", name, servable, stream, body.stream, message, body.logprobs_top()
        )

    @api.post("/api/embed")
    async def embed(body: EmbedBody, http: Request) -> dict[str, Any]:
        name = body.model_name()
        servable = await inference.servable(name)
        # As Ollama: an empty string is no input (not the embedding of nothing).
        inputs = ([body.input] if body.input else []) if isinstance(body.input, str) else list(body.input)
        if not inputs:  # loads the model, as Ollama does: how a client preloads an embedding model
            await inference.load_only(name, body.keep_alive, body.options)
            state.count("/api/embed", servable.name, 200)
            return {"model": name, "embeddings": []}
        truncate = body.truncate is not False
        result, load_ns, total_ns = await unless_gone(
            http,
            inference.embed(servable, inputs, body.options, keep_alive=body.keep_alive, truncate=truncate),
        )
        embeddings = [unit_vector(e, body.dimensions) for e in result["embeddings"]]
        state.count("/api/embed", servable.name, 200)
        return {
            "model": name,
            "embeddings": embeddings,
            "total_duration": total_ns,
            "load_duration": load_ns,
            "prompt_eval_count": result["prompt_eval_count"],
        }

    @api.post("/api/embeddings")
    async def embeddings(body: EmbeddingsBody, http: Request) -> dict[str, Any]:
        servable = await inference.servable(body.model_name())
        if not body.prompt:
            await inference.load_only(body.model_name(), body.keep_alive, body.options)
            state.count("/api/embeddings", servable.name, 200)
            return {"embedding": []}
        result, _, _ = await unless_gone(
            http, inference.embed(servable, [body.prompt], body.options, keep_alive=body.keep_alive)
        )
        state.count("/api/embeddings", servable.name, 200)
        return {"embedding": result["embeddings"][0]}  # as the model made it: Ollama's is not normalised

    @api.get("/api/tags")
    @api.head("/api/tags", include_in_schema=False)
    async def tags() -> dict[str, Any]:
        return {"models": await asyncio.to_thread(state.list_models)}

    @api.post("/api/show")
    async def show(body: ShowBody) -> dict[str, Any]:
        servable = await inference.servable(body.model_name())
        return await asyncio.to_thread(state.show_model, servable, bool(body.verbose))

    @api.post("/api/copy")
    async def copy(body: CopyBody) -> Response:
        source, target = parse_reference(body.source), parse_reference(body.destination)
        record = await asyncio.to_thread(state.store.resolve, source)
        await asyncio.to_thread(state.store.tag, target, record.digest)
        inference.forget(body.destination)
        return Response(status_code=200)

    @api.delete("/api/delete")
    async def delete(body: _ModelRequest) -> Response:
        ref = parse_reference(body.model_name())
        if users := await asyncio.to_thread(state.spec_models_using, ref):
            # As `docker rmi` of an image a container runs: its spec model failed every request
            # until the next reconcile pulled it again, Ready all the while (a spec review).
            raise HTTPError(
                409,
                f"{ref.short()} is the image of the spec's {', '.join(users)}: take "
                f"{'it' if len(users) == 1 else 'them'} out of the spec first",
            )
        # Removed first: an unknown name, or a digest the name no longer points at, is a 404
        # that unloads nothing. The runner then goes (its weights file stays open until it does).
        await asyncio.to_thread(state.store.remove, [ref])
        tag = ref.without_digest()
        inference.forget(str(tag))
        # Answered once it is gone or after a moment, as a stop is: its streams end on their own
        # time (a serving review: the answer waited for them, for ever with num_predict -1).
        await inference.unload(tag.short())
        return Response(status_code=200)

    @api.get("/api/ps")
    async def ps() -> dict[str, Any]:
        await state.read_loaded_details()
        # modelyard's own beside Ollama's list: the server machine's memory, which `modelyard ps`
        # shows (a metrics review: it read the /proc/meminfo of the machine the CLI ran on).
        models = state.running_models(await state.scheduler.live_status())
        return {"models": models, "system": state.system_memory()}

    @api.api_route("/api/blobs/{digest}", methods=["HEAD"])
    async def head_blob(digest: str) -> Response:
        digest = _blob_digest(digest)
        return Response(status_code=200 if state.store.blobs.exists(digest) else 404)

    @api.post("/api/blobs/{digest}")
    async def upload_blob(digest: str, request: Request) -> Response:
        digest = _blob_digest(digest)
        if state.store.blobs.exists(digest):
            # Ollama's clients send the whole file anyway: read it to the end (and drop it), so
            # that the connection stays usable and the client sees its 200, not a reset.
            async for _ in request.stream():
                pass
            return Response(status_code=200)
        await state.receive_blob(digest, request.stream())
        return Response(status_code=201)

    @api.post("/api/create")
    async def create(body: CreateBody, http: Request) -> Response:
        target = parse_reference(body.model_name())

        def is_gguf(digest: str) -> bool:
            return state.store.blobs.head(digest, len(GGUF_MAGIC)) == GGUF_MAGIC

        # Parsing checks its template (up to 256 KiB of a stranger's Jinja: a second or two of
        # parsing and compiling): not on the loop every request runs on.
        modelfile = await asyncio.to_thread(_modelfile_from, body, is_gguf)
        events = state.build(modelfile, target, body.quantize)
        inference.forget(body.model_name())
        return await _progress_response(http, events, body.stream, state.error_for)

    @api.post("/api/pull")
    async def pull_model(body: PullBody, http: Request) -> Response:
        ref = parse_reference(body.model_name())
        options = state.registry_options(insecure=bool(body.insecure))
        events = state.in_thread(lambda sink: pull(state.store, ref, options, sink))
        inference.forget(body.model_name())
        return await _progress_response(http, events, body.stream, state.error_for)

    @api.post("/api/push")
    async def push_model(body: PullBody, http: Request) -> Response:
        ref = parse_reference(body.model_name())
        options = state.registry_options(insecure=bool(body.insecure))
        events = state.in_thread(
            lambda sink: push(
                state.store, ref, options, format=PushFormat.BOTH, progress=lambda e: sink(as_ollama_push(e))
            )
        )
        return await _progress_response(http, events, body.stream, state.error_for)

    return api


# --- generation responses -------------------------------------------------------------------------


async def _generation_response(
    http: Request,
    state: ServerState,
    endpoint: str,
    name: str,
    servable: Servable,
    stream: AsyncGenerator[Any, None],
    streaming: bool | None,
    chunk: Callable[[str, Finished | None], dict[str, Any]],
    logprobs_top: int | None = None,
) -> Response:
    """The answer of /api/generate or /api/chat: NDJSON lines of `chunk(text, None)`, then the final
    line with `chunk(text, finished)`, or that final line alone. `name`: the model as the request
    named it, which every line echoes (as Ollama's do), whatever image it resolved to."""

    def with_logprobs(content: dict[str, Any], entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if logprobs_top is None:
            return content
        return content | {"logprobs": token_logprobs(entries, logprobs_top)}

    # The first event is awaited before any byte is sent, so that a load failure, a bad option or
    # a template error still gets its own status code.
    client = ClientGone(http)
    first = await client.unless(anext(stream))
    if streaming is False:

        async def collect() -> tuple[str, list[dict[str, Any]], Finished]:
            parts: list[str] = []
            entries: list[dict[str, Any]] = []
            event = first
            while not isinstance(event, Finished):
                parts.append(event.text)
                entries += event.logprobs
                event = await anext(stream)
            return "".join(parts), entries, event

        try:
            text, entries, finished = await client.unless(collect())
        finally:
            client.close()
            await stream.aclose()  # cancels the runner's request if it is still going
        state.count(endpoint, servable.name, 200)
        content = with_logprobs(chunk(text, finished), entries)
        return JSONResponse(_final_line(name, finished.done_reason, content, finished))

    async def lines() -> AsyncIterator[bytes]:
        event = first
        status = STATUS_CLIENT_GONE  # unless the stream ends: the client went away
        try:
            while True:
                if isinstance(event, Finished):
                    yield _line(_final_line(name, event.done_reason, chunk("", event), event))
                    status = 200
                    return
                content = with_logprobs(chunk(event.text, None), event.logprobs)
                yield _line({"model": name, "created_at": timestamp(), **content, "done": False})
                event = await anext(stream)
        except Exception as exc:  # mid-stream: an error line, as Ollama sends it
            error = state.error_for(exc)
            status = error.status
            yield _line({"error": error.message})
        finally:
            state.count(endpoint, servable.name, status)
            await stream.aclose()  # cancels the runner's request if it is still going

    return WatchedStream(lines(), client, media_type=NDJSON)


def _final_line(
    name: str, reason: str, content: dict[str, Any], finished: Finished | None = None
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "model": name,
        "created_at": timestamp(),
        **content,
        "done": True,
        "done_reason": reason,
    }
    if finished is not None:
        done = finished.done
        line.update(
            total_duration=finished.total_duration,
            load_duration=finished.load_duration,
            prompt_eval_count=done.prompt_eval_count,
            prompt_eval_duration=done.prompt_eval_duration,
            eval_count=done.eval_count,
            eval_duration=done.eval_duration,
        )
        if done.truncated:
            line["truncated"] = done.truncated  # prompt tokens dropped to fit the context
        if done.context_shifts:
            line["context_shifts"] = done.context_shifts
        if finished.dropped_messages:
            line["dropped_messages"] = finished.dropped_messages
    return line


def _line(value: dict[str, Any]) -> bytes:
    return compact_json(value).encode() + b"\n"


async def _progress_response(
    http: Request,
    events: AsyncGenerator[ProgressEvent, None],
    streaming: bool | None,
    error_for: Callable[[BaseException], HTTPError],
) -> Response:
    """pull/push/create: progress lines; with stream false, the last one (or the error). Either
    way, the work stops if its client leaves (a 499 for the one not streamed). An error after the
    first line is a line of its own, whatever it is (`error_for` logs one it does not know): a
    stream that just stops reads as an answer cut short by the network."""
    first = await anext(events)  # errors before any progress (a bad name, a 404) keep their status
    if streaming is False:

        async def last_of(last: ProgressEvent) -> ProgressEvent:
            async for event in events:
                last = event
            return last

        try:
            last = await unless_gone(http, last_of(first))
        finally:
            await events.aclose()
        return JSONResponse(last.to_json())

    async def lines() -> AsyncIterator[bytes]:
        yield _line(first.to_json())
        try:
            async for event in events:
                yield _line(event.to_json())
        except Exception as exc:
            yield _line({"error": error_for(exc).message})
        finally:
            await events.aclose()  # at once, not when the collector gets to it: the work stops too

    return StreamingResponse(lines(), media_type=NDJSON)


def as_ollama_push(event: ProgressEvent) -> ProgressEvent:
    """A push's progress as Ollama reports it (server/upload.go): a layer the registry already
    holds, or mounted from another repository, is `pushing <digest>` with all its bytes done, not
    our CLI's `exists` / `mounted`; progress bars key on the status's first word (pure)."""
    verb, _, rest = event.status.partition(" ")
    if verb in ("exists", "mounted") and event.digest is not None:
        return dataclasses.replace(event, status=f"pushing {rest}")
    return event


# --- request helpers --------------------------------------------------------------------------------


def _message(index: int, body: MessageBody) -> ChatMessage:
    calls = requested_tool_calls(body.tool_calls, f"messages[{index}].")
    return ChatMessage(
        role=body.role,
        content=body.content or "",
        images=_decode_images(body.images),
        tool_calls=calls,
        thinking=body.thinking or "",
        tool_name=body.tool_name or "",
        tool_call_id=body.tool_call_id or "",
    )


def _decode_images(images: list[str] | None) -> tuple[bytes, ...]:
    decoded = []
    for i, image in enumerate(images or ()):
        try:
            decoded.append(base64.b64decode(image, validate=True))
        except ValueError:
            raise HTTPError(400, f"images[{i}] is not base64") from None
    return tuple(decoded)


THINK_LEVELS = ("high", "medium", "low", "max")


def _check_think(think: bool | str | None) -> None:
    """`think` as Ollama takes it: true, false or a level. Any other text is Ollama's 400, which
    clients read to fall back to `think: true` (an API review: it was taken in silence)."""
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise HTTPError(
            400,
            f"invalid think value: {json.dumps(think, ensure_ascii=False)} "
            '(must be "high", "medium", "low", "max", true, or false)',
        )


def _blob_digest(digest: str) -> str:
    """A blob route's digest: `sha256:<hex>`, or `sha256-<hex>` as Ollama's blob paths also take."""
    if digest.startswith("sha256-"):
        digest = "sha256:" + digest.removeprefix("sha256-")
    if not is_digest(digest):
        raise HTTPError(400, f"invalid digest {digest!r}: expected sha256:<64 hex>")
    return digest


def _modelfile_from(body: CreateBody, is_gguf: Callable[[str], bool]) -> mf.Modelfile:
    """Ollama's create request (structured, or the older Modelfile text) as a Modelfile whose
    FROM and ADAPTERs name only images and uploaded blobs. `is_gguf(digest)`: whether an uploaded
    blob begins as a GGUF file does."""
    if body.modelfile and not (body.from_ or body.files):
        try:
            parsed = mf.parse(body.modelfile, "modelfile")
        except ModelfileError as exc:
            raise HTTPError(400, str(exc)) from None
        return _served_sources_only(_uploads_named_bare(parsed))
    return _served_sources_only(_structured_modelfile(body, is_gguf))


def _uploads_named_bare(modelfile: mf.Modelfile) -> mf.Modelfile:
    """`FROM @sha256:…` and `ADAPTER @sha256:…` as their digests: how Ollama's older clients named
    a file they had uploaded, in the Modelfile text they sent (a build review: refused as an
    image name with an empty repository)."""

    def bare(value: str) -> str:
        return value[1:] if value.startswith("@") and is_digest(value[1:]) else value

    return dataclasses.replace(
        modelfile, from_=bare(modelfile.from_), adapters=tuple(bare(a) for a in modelfile.adapters)
    )


def _served_sources_only(modelfile: mf.Modelfile) -> mf.Modelfile:
    """An API client never makes the server read the server's own files: FROM and ADAPTER must be
    an image name or the digest of a blob uploaded with POST /api/blobs (as Ollama's clients do)."""
    for instruction, value in [("FROM", modelfile.from_)] + [("ADAPTER", a) for a in modelfile.adapters]:
        if is_digest(value):
            continue
        hint = "upload the file with POST /api/blobs/<digest> and name that digest instead"
        if value.startswith((".", "/", "~", "\\")) or value.lower().endswith((".gguf", ".safetensors")):
            raise HTTPError(400, f"{instruction} {value}: file paths are not read over the API; {hint}")
        if instruction == "ADAPTER":
            raise HTTPError(400, f"ADAPTER {value}: expected a blob digest; {hint}")
        try:
            parse_reference(value)
        except InvalidReferenceError as exc:
            raise HTTPError(400, f"FROM {value}: not an image name ({exc.reason})") from None
    return modelfile


def _structured_modelfile(body: CreateBody, is_gguf: Callable[[str], bool]) -> mf.Modelfile:
    for field, named in (("files", body.files), ("adapters", body.adapters)):
        for file, digest in (named or {}).items():
            if not is_digest(digest):
                hint = "upload the file with POST /api/blobs/<digest> and name that digest"
                raise HTTPError(400, f"{field}[{file!r}]: {digest!r} is not a blob digest; {hint}")
    source = body.from_
    if body.files and not source:  # as Ollama: `from` wins when both are given
        ggufs = [digest for name, digest in body.files.items() if name.lower().endswith(".gguf")]
        if not ggufs:
            # As Ollama: a file named otherwise (`FROM ./model` sends "model") is a GGUF when its
            # first bytes say so (a build review: only a .gguf name was taken).
            ggufs = [digest for digest in body.files.values() if is_gguf(digest)]
        if len(ggufs) != 1:
            raise HTTPError(
                400,
                f"files must hold exactly one GGUF file, found {len(ggufs)} (upload each file first "
                "with POST /api/blobs/<digest>)",
            )
        source = ggufs[0]
    if not source:
        raise HTTPError(400, "create needs `from` (a model) or `files` (an uploaded GGUF)")
    try:
        parameters = validate_parameters(body.parameters or {})
    except ModelfileError as exc:
        raise HTTPError(400, f"parameters: {exc.message}") from None
    licenses = [body.license] if isinstance(body.license, str) else list(body.license or [])
    for index, message in enumerate(body.messages or ()):
        # As a Modelfile's MESSAGE: an image whose messages a Modelfile cannot say could not be
        # built again from `show --modelfile` (a build review: any role was taken).
        if message.role not in mf.MESSAGE_ROLES:
            raise HTTPError(
                400,
                f"messages[{index}].role must be one of {', '.join(mf.MESSAGE_ROLES)}, got {message.role!r}",
            )
    try:
        # Empty text is "not given", as in Ollama's create.go: `"template": ""` keeps the base's
        # template (a build review: it replaced it with nothing, and the prompt went unsaid).
        return mf.Modelfile(
            from_=source,
            parameters=parameters,
            # Checked as a Modelfile's TEMPLATE is (Ollama's CLI sends a Modelfile in this form).
            template=mf.checked_template(body.template) if body.template else None,
            system=body.system or None,
            adapters=tuple((body.adapters or {}).values()),
            licenses=tuple(text for text in licenses if text),
            messages=tuple(mf.Message(m.role, m.content or "") for m in body.messages or ()),
            requires=mf.parse_requires(body.requires) if body.requires else None,
        )
    except ModelfileError as exc:  # its message, without the "Modelfile:" no one sent
        raise HTTPError(400, exc.message) from None
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


__all__ = ["router", "timestamp"]
