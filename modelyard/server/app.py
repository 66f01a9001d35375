"""The FastAPI application: Ollama's API, OpenAI's API, and ours (/health, /api/status, /metrics).

Security defaults: the server binds loopback unless told otherwise (cli.py); with
$MODELYARD_API_KEY every route but `/` and `/health` wants `Authorization: Bearer <key>`; CORS is
off unless $MODELYARD_ORIGINS lists origins; request bodies are capped (blob uploads excepted:
they stream into the store, verified).
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard import __version__
from modelyard.server.http_errors import HTTPError, retry_after_header
from modelyard.server.metrics import CONTENT_TYPE
from modelyard.server.state import ServerState

MAX_BODY_BYTES = 64 * 1024 * 1024  # chat histories with base64 images stay well below this
OPEN_PATHS = frozenset({"/", "/health"})


def create_app(state: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start()
        try:
            yield
        finally:
            await state.scheduler.close()

    app = FastAPI(
        title="modelyard",
        version=__version__,
        lifespan=lifespan,
        description="Ollama and OpenAI compatible API over modelyard's runners.",
    )
    app.state.modelyard = state

    from modelyard.server import ollama_api, openai_api

    app.include_router(ollama_api.router(state))
    app.include_router(openai_api.router(state))
    _own_routes(app, state)
    _error_handlers(app, state)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    if state.settings.api_key:
        app.add_middleware(ApiKey, key=state.settings.api_key)
    if state.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(state.settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


def _own_routes(app: FastAPI, state: ServerState) -> None:
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        models = {
            m["name"]: {
                "state": m["state"],
                "ready": m["state"] == "ready",
                "digest": m["digest"],
                "note": m["note"],
            }
            for m in state.running_models()
        }
        out: dict[str, Any] = {"version": __version__, "models": models}
        if state.status_extra is not None:
            out.update(state.status_extra())
        return out

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _error_response(request: Request, error: HTTPError) -> JSONResponse:
    headers = retry_after_header(error)
    if _is_openai(request):
        body: dict[str, Any] = {
            "error": {"message": error.message, "type": error.kind, "param": None, "code": None}
        }
    else:
        body = {"error": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)


def _error_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _error_response(request, HTTPError(400, f"invalid request: {problems}"))

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        error = state.error_for(exc)
        model = getattr(request.state, "model", "")
        state.count(request.url.path, model, error.status)
        return _error_response(request, error)


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
        message = "missing or wrong API key: send Authorization: Bearer <MODELYARD_API_KEY>"
        body = (
            {"error": {"message": message, "type": "authentication_error", "param": None, "code": None}}
            if openai
            else {"error": message}
        )
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or as they stream in.
    Blob uploads are exempt: they stream to disk and are verified by digest."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/blobs/"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body larger than {self.limit} bytes"
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
