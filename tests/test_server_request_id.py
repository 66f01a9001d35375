"""Request ids (modelyard/server/request_id.py): which ids a client may choose, and the header on
every kind of response, checked on a small app (the live server's are in test_server_limits.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from modelyard.server import request_id
from modelyard.server.request_id import RequestId, request_id_for


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"abc-123", True),
        (b"req_0f3a", True),
        (b"7b1c2d4e-3f00-4a8e-9e5b-2c6d8f1a0b3c", True),
        (b"trace/span:1+a=", True),
        (b"x" * 128, True),
        (b"x" * 129, False),  # written into logs: bounded
        (b"", False),
        (b"two words", False),
        (b"line\nbreak", False),  # no forged log lines
        (b"caf\xc3\xa9", False),
        (None, False),
    ],
)
def test_a_client_id_is_kept_only_when_it_is_a_plain_token(given: bytes | None, kept: bool) -> None:
    chosen = request_id_for(given)
    if kept:
        assert given is not None and chosen == given.decode()
    else:
        assert chosen.startswith("req_") and len(chosen) == 36


def test_every_response_carries_an_id_and_the_handler_sees_it() -> None:
    async def plain(_: Request) -> JSONResponse:
        return JSONResponse({"id": request_id.current.get()}, headers={"x-request-id": "spoofed"})

    async def streamed(_: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            yield b"one\n"
            yield b"two\n"

        return StreamingResponse(lines())

    app = RequestId(Starlette(routes=[Route("/plain", plain), Route("/streamed", streamed)]))
    with TestClient(app) as client:
        answer = client.get("/plain")
        # One id, the one the route saw: a route's own header is replaced.
        assert answer.headers.get_list("x-request-id") == [answer.json()["id"]]
        assert answer.json()["id"].startswith("req_")
        assert client.get("/plain").json()["id"] != answer.json()["id"], "a new id per request"

        echoed = client.get("/plain", headers={"x-request-id": "client-7"})
        assert echoed.headers["x-request-id"] == "client-7" and echoed.json()["id"] == "client-7"

        stream = client.get("/streamed")
        assert stream.text == "one\ntwo\n" and stream.headers["x-request-id"].startswith("req_")
        assert client.get("/nowhere").headers["x-request-id"].startswith("req_")
