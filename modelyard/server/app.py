"""The FastAPI application: Ollama's API, OpenAI's API, and ours (/health, /api/status, /metrics).

Security defaults: the server binds loopback unless told otherwise (cli.py); with
$MODELYARD_API_KEY every route but `/` and `/health` wants `Authorization: Bearer <key>`; CORS
answers only the origins $MODELYARD_ORIGINS lists; a browser request from an origin neither listed
nor this machine's pages nor a desktop app's is a 403; request bodies are capped (blob uploads
excepted: they stream into the store, verified).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import itertools
import json
import re
import socket
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard import __version__
from modelyard.registry.endpoint import is_loopback, strip_port
from modelyard.server import request_id
from modelyard.server.http_errors import KNOWN_ERRORS, HTTPError, retry_headers
from modelyard.server.inference import served_model
from modelyard.server.metrics import CONTENT_TYPE
from modelyard.server.request_count import CountRequests, endpoint_label
from modelyard.server.request_id import RequestId
from modelyard.server.state import ServerState
from modelyard.spec.sources import redact

# Millions of tokens of text, past any context; and a bound on what parsing one body may cost (a
# body of tiny JSON objects takes some 60 times its size in memory once parsed).
MAX_BODY_BYTES = 16 * 1024 * 1024
OPEN_PATHS = frozenset({"/", "/health"})


def create_app(state: ServerState, bind_host: str | None = None) -> FastAPI:
    """The app; `bind_host` is the address it listens on: on loopback, requests must name this
    machine in their Host header (HostGuard)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start()
        state.templates.start()
        stop = asyncio.Event()
        reconciling = None
        if state.daemon is not None:
            from modelyard.spec.sources import open_source

            source = (
                open_source(state.spec_source, state.settings.cache_dir, poll_interval=state.spec_poll)
                if state.spec_source
                else None
            )
            reconciling = asyncio.create_task(state.daemon.run(source, stop))
        try:
            yield
        finally:
            stop.set()
            if reconciling is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reconciling, timeout=10)
            try:
                await state.scheduler.close()
            finally:
                state.templates.close()

    app = FastAPI(
        title="modelyard",
        version=__version__,
        lifespan=lifespan,
        description="Ollama and OpenAI compatible API over modelyard's runners.",
    )
    app.state.modelyard = state

    from modelyard.server import ollama_api, openai_api, responses_api

    routers = [ollama_api.router(state), openai_api.router(state), responses_api.router(state)]
    for api_router in routers:
        app.include_router(api_router)
    _own_routes(app, state)
    # The API's fixed paths (an included router's routes are not in app.routes): the labels of
    # requests no route took, kept to a bounded set. Read from the routes, not from the OpenAPI
    # schema, whose generation would add 0.1 s to every start.
    fixed_paths = frozenset(
        path
        for route in [*app.routes, *(r for api_router in routers for r in api_router.routes)]
        if "{" not in (path := str(getattr(route, "path", ""))) and path
    )
    _error_handlers(app, state, fixed_paths)
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    if state.settings.api_key:
        app.add_middleware(ApiKey, key=state.settings.api_key)
    app.add_middleware(OriginGuard, allowed=state.settings.cors_origins)
    if bind_host is not None and is_loopback(bind_host):
        app.add_middleware(HostGuard)
    app.add_middleware(ConfiguredCORS, configured=state.settings.cors_origins)
    # Outside the refusing middlewares, so that their 401, 403 and 413 are counted too.
    app.add_middleware(CountRequests, count=state.count, model=served_model.get, routes=fixed_paths)
    app.add_middleware(RequestId)  # outermost of ours: refusals (401, 403, 413) carry an id too
    return app


def _own_routes(app: FastAPI, state: ServerState) -> None:
    # HEAD beside GET, out of the schema: one route for both would give two operations one ID.
    @app.get("/health")
    @app.head("/health", include_in_schema=False)
    async def health() -> Response:
        # Under `serve --spec` the server is ready (for a Kubernetes readiness probe) once every
        # model of the spec answers requests, an earlier digest serving on while a new one is
        # pulled or swapped in counting; otherwise as soon as it answers. (A liveness probe wants
        # `GET /`, which answers while the process does.)
        if state.spec_source and state.daemon is not None:
            spec = state.daemon.status()
            body = {
                "status": "ok" if state.daemon.serving() else "unavailable",
                "version": __version__,
                "reconciled": bool(spec.get("ready")),
                "readyModels": spec.get("readyModels"),
                "wantedModels": spec.get("wantedModels"),
            }
            return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        models = {
            m["name"]: {
                "state": m["state"],
                "ready": m["state"] == "ready",
                "digest": m["digest"],
                "note": m["note"],
            }
            for m in state.running_models(state.scheduler.snapshot())  # no /proc figures needed
        }
        out: dict[str, Any] = {"version": __version__, "models": models}
        if state.daemon is not None and (state.spec_source or state.daemon.reconciler.engaged):
            out["spec"] = state.daemon.status()  # none applied nor followed: the loaded models are it
        return out

    @app.post("/api/apply")
    async def apply(body: ApplyBody) -> JSONResponse:
        if state.daemon is None:
            raise HTTPError(501, "this server has no reconciler")
        if state.spec_source and not body.dry_run:
            # The source as the status shows it: a git URL's token is never an answer's.
            source = redact(state.spec_source)
            raise HTTPError(409, f"this server follows --spec {source}: change the spec there")
        from modelyard.spec.schema import SpecDocument

        documents = [SpecDocument(d.path, d.text) for d in body.documents]
        result = await state.daemon.apply(documents, dry_run=body.dry_run)
        if not result["accepted"]:
            lines = "\n".join(f"  {issue['text']}" for issue in result["issues"])
            raise HTTPError(422, f"the spec is rejected whole; nothing changed:\n{lines}")
        return JSONResponse(result)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(await state.scheduler.live_status()), media_type=CONTENT_TYPE)


class SpecDocumentBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    path: str = "spec.yaml"
    text: str = Field(max_length=4 * 1024 * 1024)


class ApplyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    documents: list[SpecDocumentBody] = Field(min_length=1, max_length=1000)
    dry_run: bool = False


def _error_response(request: Request, error: HTTPError) -> JSONResponse:
    # The id again here: a 500 is answered outside every middleware of ours (Starlette's outermost).
    headers = {**retry_headers(error), "x-request-id": request_id.current.get()}
    return JSONResponse(_error_body(request.url.path, error), status_code=error.status, headers=headers)


def _error_body(path: str, error: HTTPError) -> dict[str, Any]:
    """An error in the shape of the API the path belongs to: OpenAI's object, or Ollama's string."""
    if path.startswith("/v1/"):
        return {
            "error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}
        }
    return {"error": error.message}


# What pydantic puts in an error's location after a field of several types: the type it tried
# (`str`, `list[str]`, `function-after[…]`), no field of ours.
_TYPE_TAG = re.compile(r"(str|int|float|bool|bytes|none|dict|list|tuple|set)(\[.*\])?|.*[-\[].*")


# Fields a validation error names: a body of thousands of bad messages gets a message of a line,
# not megabytes.
TOLD_FIELDS = 8


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """A request that did not validate, told as the client wrote it: the message, and the field
    at fault first (OpenAI's `param`) written as `messages[0].content`, without pydantic's own
    location parts (`body`, the type of a union it tried) (pure)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        [broken] = [e for e in errors if e.get("type") == "json_invalid"]
        detail = (broken.get("ctx") or {}).get("error", "")
        return f"invalid request: the body is not valid JSON{': ' + detail if detail else ''}", None
    by_field: dict[str, list[str]] = {}
    for error in errors:
        path = ""
        for part in error.get("loc", ()):
            if isinstance(part, int):
                path += f"[{part}]"
            elif part != "body" and not _TYPE_TAG.fullmatch(str(part)):
                path += f".{part}" if path else str(part)
        problems = by_field.setdefault(path or "body", [])
        if error.get("msg") not in problems:
            problems.append(str(error.get("msg")))
    told = [
        f"{path}: {' or '.join(problems)}"
        for path, problems in itertools.islice(by_field.items(), TOLD_FIELDS)
    ]
    if len(by_field) > TOLD_FIELDS:
        told.append(f"and {len(by_field) - TOLD_FIELDS} more fields")
    message = "; ".join(told)
    first = next(iter(by_field), "body")
    return f"invalid request: {message}", None if first == "body" else first


def _kind_for(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")


def _error_handlers(app: FastAPI, state: ServerState, fixed_paths: frozenset[str]) -> None:
    def _endpoint(request: Request) -> str:
        """The route's path template (`/api/blobs/{digest}`), not the path: a bounded label set."""
        return endpoint_label(request.scope, fixed_paths)

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown routes (404), wrong methods (405) and the like, in each API's error shape.
        error = HTTPError(exc.status_code, str(exc.detail), kind=_kind_for(exc.status_code))
        response = _error_response(request, error)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        state.count(_endpoint(request), served_model.get(), 400)
        return _error_response(request, HTTPError(400, message, param=param))

    async def known_error(request: Request, exc: Exception) -> JSONResponse:
        error = state.error_for(exc)
        state.count(_endpoint(request), served_model.get(), error.status)
        return _error_response(request, error)

    # Known errors are answered where they are raised (the connection stays open for the next
    # request); the handler for Exception runs in Starlette's outermost middleware, which answers
    # 500 and then re-raises, so a bug keeps its traceback in the log.
    for known in KNOWN_ERRORS:
        app.add_exception_handler(known, known_error)
    app.add_exception_handler(Exception, known_error)


class ApiKey:
    """Bearer-key check on every route but the open ones. The key is compared in constant time
    and never logged."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key):
            await self.app(scope, receive, send)
            return
        openai = scope["path"].startswith("/v1/")
        message = (
            "missing or wrong API key: send Authorization: Bearer <key> (the CLI sends $MODELYARD_API_KEY: "
            "set it to the server's)"
        )
        body = (
            # OpenAI's type and code for a key it refuses, which clients may look for.
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
            if openai
            else {"error": message}
        )
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class HostGuard:
    """On a server that listens on loopback, refuse (403) a request whose Host header names another
    machine: a web page can rebind its own domain's DNS to 127.0.0.1 and read the answers as its
    own origin's, the Origin guard none the wiser (DNS rebinding; Ollama's fix for CVE-2024-28224
    checks the same). Local clients name this machine, and so do containers and port forwards."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.own_names = {socket.gethostname().lower(), socket.getfqdn().lower()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = dict(scope["headers"]).get(b"host") if scope["type"] == "http" else None
        if host is None or host_allowed(host.decode("latin-1"), self.own_names):
            await self.app(scope, receive, send)
            return
        message = (
            f"host {host.decode('latin-1')!r} is not allowed: this server listens on loopback; "
            "connect to localhost or 127.0.0.1"
        )
        body = _error_body(scope["path"], HTTPError(403, message, kind="permission_error"))
        await JSONResponse(body, status_code=403)(scope, receive, send)


# Names no public DNS gives out, so no web site can rebind: mDNS (.local), Docker Desktop's
# host.docker.internal and the like (.internal, reserved by ICANN for private use), .localhost.
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def host_allowed(host: str, own_names: set[str] | frozenset[str] = frozenset()) -> bool:
    """A Host header that names this machine or its network, with or without a port, as Ollama's
    allowedHostsMiddleware reads one (pure): none at all, localhost, one of `own_names`, a name
    under LOCAL_SUFFIXES, or an address that is loopback, private (a LAN's, a container
    network's) or unspecified (0.0.0.0). A public domain name is what a rebinding page sends."""
    name = strip_port(host).lower()
    if name in ("", "localhost") or name in own_names or name.endswith(LOCAL_SUFFIXES):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


# Origins of desktop apps and editors, never of a web site, which Ollama allows by default too:
# Electron (Obsidian…), local files, Tauri, VS Code's webviews.
APP_ORIGINS = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")


class OriginGuard:
    """Refuse, with 403, a request a web page sends from an origin that is neither configured
    ($MODELYARD_ORIGINS) nor this machine nor a desktop app's, as Ollama does: a browser sends some
    cross-site requests without asking first (a POST with a text/plain body), and JsonBodies reads
    those as JSON, so without this any site the user visits could copy, push or delete their
    models. Clients that are not browsers send no Origin and are not affected."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = (*allowed, *APP_ORIGINS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"]) if scope["type"] == "http" else {}
        origin = headers.get(b"origin")
        if (
            origin is None
            or origin_allowed(origin.decode("latin-1"), self.allowed)
            or _same_origin(origin, headers.get(b"host"))
        ):
            await self.app(scope, receive, send)
            return
        message = f"origin {origin.decode('latin-1')!r} is not allowed; add it to MODELYARD_ORIGINS"
        body = _error_body(scope["path"], HTTPError(403, message, kind="permission_error"))
        response = JSONResponse(body, status_code=403)
        await response(scope, receive, send)


def _same_origin(origin: bytes, host: bytes | None) -> bool:
    """A page this server served itself (its /docs, opened at a LAN address): the browser's Origin
    names the Host it asked, as Ollama lets through (a diff review: every "Try it out" was a 403)."""
    try:
        netloc = urllib.parse.urlsplit(origin.decode("latin-1")).netloc
    except ValueError:
        return False
    return host is not None and netloc.casefold() == host.decode("latin-1").casefold()


class ConfiguredCORS(CORSMiddleware):
    """CORS for the origins configured ($MODELYARD_ORIGINS) only: off unless configured, as the
    serving issue asks. Ollama answers this machine's pages and desktop apps without configuration
    (envconfig.AllowedOrigins); listing them (`http://localhost:*,app://*`) does the same here."""

    def __init__(self, app: ASGIApp, configured: tuple[str, ...]) -> None:
        super().__init__(app, allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id"])
        self.configured = configured

    def is_allowed_origin(self, origin: str) -> bool:
        return any(origin_pattern(pattern).fullmatch(origin) for pattern in self.configured)


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """A listed origin or pattern (`*` for any, `vscode-webview://*`, `http://localhost:*`; case
    does not matter), or a page served from this machine (http/https on localhost, 127.0.0.0/8,
    ::1 or 0.0.0.0, any port)."""
    if any(origin_pattern(pattern).fullmatch(origin) for pattern in allowed):
        return True
    try:
        parts = urllib.parse.urlsplit(origin)
    except ValueError:
        return False
    hostname = parts.hostname or ""
    return parts.scheme in ("http", "https") and (is_loopback(hostname) or hostname == "0.0.0.0")


@functools.lru_cache(maxsize=256)
def origin_pattern(pattern: str) -> re.Pattern[str]:
    """An origin as listed in $MODELYARD_ORIGINS, as a regular expression: `*` stands for any
    characters, the rest for itself; a trailing slash is dropped, as browsers send none."""
    parts = (re.escape(part) for part in pattern.rstrip("/").split("*"))
    return re.compile(".*".join(parts), re.IGNORECASE)


class JsonBodies:
    """Read every API request body as JSON, whatever its Content-Type says, as Ollama's handlers do:
    `curl -d '{…}'` (every example in Ollama's docs) sends application/x-www-form-urlencoded, which
    FastAPI would not parse as JSON, answering 400. Blob uploads are bytes and keep theirs."""

    _JSON = (b"content-type", b"application/json")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _takes_json(scope):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type" or b"json" in v]
            if len(headers) < len(scope["headers"]) or not any(k == b"content-type" for k, _ in headers):
                scope = {**scope, "headers": [*headers, self._JSON]}
        await self.app(scope, receive, send)


def _takes_json(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] in ("POST", "PUT", "DELETE") and (
        (path.startswith("/api/") and not path.startswith("/api/blobs/")) or path.startswith("/v1/")
    )


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or as they stream in.

    The body is read here, before any route sees it (the JSON routes read it whole anyway), so that
    the refusal is a 413 whichever route it was meant for. Blob uploads are exempt: they stream to
    disk and are verified by digest."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/blobs/"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before it finished sending
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # after the body: the disconnect a streaming response waits for

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body larger than {self.limit} bytes"
        body = json.dumps(_error_body(scope["path"], HTTPError(413, message))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
