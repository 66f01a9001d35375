"""Responses on small apps, without models: request ids (modelyard/server/request_id.py) on every
kind of response, and the error line that ends a progress stream (the live server's checks are in
test_server_limits.py and test_server_e2e.py)."""

from __future__ import annotations

import datetime
import errno
import json
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
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


def test_a_progress_stream_that_fails_ends_with_an_error_line_whatever_the_error() -> None:
    """pull/push/create: a disk that fills mid-pull (or any error after the first line) is a line
    of its own, not a stream that just stops (which reads as the network's fault)."""
    from modelyard.progress import ProgressEvent
    from modelyard.server.http_errors import HTTPError, classify
    from modelyard.server.ollama_api import _progress_response

    def error_for(exc: BaseException) -> HTTPError:
        return classify(exc) or HTTPError(500, "internal error")

    async def pulling() -> AsyncIterator[ProgressEvent]:
        yield ProgressEvent("pulling manifest")
        yield ProgressEvent("pulling 1a2b3c4d5e6f", "sha256:1a2b", 100, 50)
        raise OSError(errno.ENOSPC, "No space left on device")

    async def broken() -> AsyncIterator[ProgressEvent]:
        yield ProgressEvent("pulling manifest")
        raise RuntimeError("a bug")

    async def route(request: Request) -> Response:
        events = pulling() if request.url.path == "/disk" else broken()
        return await _progress_response(request, events, True, error_for)  # type: ignore[arg-type]

    app = Starlette(routes=[Route("/disk", route), Route("/bug", route)])
    with TestClient(app) as client:
        lines = [json.loads(line) for line in client.get("/disk").text.splitlines()]
        assert [line.get("status") for line in lines[:2]] == ["pulling manifest", "pulling 1a2b3c4d5e6f"]
        assert "no space is left on the disk" in lines[-1]["error"]
        assert json.loads(client.get("/bug").text.splitlines()[-1]) == {"error": "internal error"}


@pytest.mark.parametrize(
    ("origin", "listed", "allowed"),
    [
        pytest.param("http://localhost:3000", (), True, id="this-machine"),
        pytest.param("https://[::1]:8443", (), True, id="this-machine-ipv6"),
        pytest.param("http://127.0.0.1.evil.example", (), False, id="loopback-lookalike"),
        pytest.param("https://evil.example", (), False, id="a-web-site"),
        pytest.param("vscode-webview://8f2c4a1b", ("vscode-webview://*",), True, id="scheme-pattern"),
        pytest.param("http://evil.example", ("vscode-webview://*",), False, id="pattern-is-no-other-scheme"),
        pytest.param("http://app.example", ("http://app.example/",), True, id="trailing-slash-listed"),
        pytest.param("http://APP.example", ("http://app.example",), True, id="case"),
        pytest.param("http://app.example.evil", ("http://app.example",), False, id="exact-is-whole"),
        pytest.param("http://a.b.example:5173", ("http://*.example:*",), True, id="host-and-port-patterns"),
        pytest.param("http://evil.example", ("*",), True, id="star-is-any"),
        pytest.param("http://x.example", ("http://a.example(",), False, id="regex-characters-are-literal"),
    ],
)
def test_origin_allowed(origin: str, listed: tuple[str, ...], allowed: bool) -> None:
    from modelyard.server.app import origin_allowed

    assert origin_allowed(origin, listed) is allowed


@pytest.mark.parametrize(
    ("errors", "message", "param"),
    [
        pytest.param(
            [
                {"loc": ("body", "messages", 0, "content", "str"), "msg": "Input should be a valid string"},
                {
                    "loc": ("body", "messages", 0, "content", "list[dict[str,any]]"),
                    "msg": "Input should be a valid list",
                },
            ],
            "invalid request: messages[0].content: Input should be a valid string or Input should be a "
            "valid list",
            "messages[0].content",
            id="union-branches-are-no-fields",
        ),
        pytest.param(
            [{"loc": ("body", "stop", "function-after[check(), list[str]]"), "msg": "bad"}],
            "invalid request: stop: bad",
            "stop",
            id="validator-tag",
        ),
        pytest.param(
            [
                {
                    "loc": ("body", 1),
                    "msg": "JSON decode error",
                    "type": "json_invalid",
                    "ctx": {"error": "Expecting value"},
                }
            ],
            "invalid request: the body is not valid JSON: Expecting value",
            None,
            id="not-json",
        ),
        pytest.param(
            [{"loc": ("body",), "msg": "Input should be a valid dictionary"}],
            "invalid request: body: Input should be a valid dictionary",
            None,
            id="the-body-itself",
        ),
        pytest.param(
            [
                {"loc": ("body", "model"), "msg": "String should have at least 1 character"},
                {"loc": ("body", "options", "tools"), "msg": "x"},  # a field named like a word
            ],
            "invalid request: model: String should have at least 1 character; options.tools: x",
            "model",
            id="two-fields-first-is-param",
        ),
        pytest.param(
            [{"loc": ("body", "messages", i, "role"), "msg": "Field required"} for i in range(20)],
            "invalid request: "
            + "; ".join(f"messages[{i}].role: Field required" for i in range(8))
            + "; and 12 more fields",
            "messages[0].role",
            id="thousands-of-bad-messages-told-in-a-line",
        ),
    ],
)
def test_validation_message(errors: list[dict[str, object]], message: str, param: str | None) -> None:
    from modelyard.server.app import validation_message

    assert validation_message(errors) == (message, param)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        pytest.param("127.0.0.1:11434", True, id="loopback-v4"),
        pytest.param("localhost:11434", True, id="localhost"),
        pytest.param("LOCALHOST", True, id="case"),
        pytest.param("app.localhost:3000", True, id="dot-localhost"),
        pytest.param("[::1]:11434", True, id="loopback-v6"),
        pytest.param("mybox:11434", True, id="this-machine"),
        pytest.param("attacker.example:11434", False, id="rebound-domain"),
        pytest.param("127.0.0.1.attacker.example", False, id="lookalike"),
        pytest.param("10.0.0.5:11434", True, id="a-private-address"),
        pytest.param("192.168.1.5", True, id="a-lan-address"),
        pytest.param("0.0.0.0:11434", True, id="unspecified"),
        pytest.param("[fd00::1]:11434", True, id="a-private-v6"),
        pytest.param("", True, id="none"),
        pytest.param("host.docker.internal:11434", True, id="docker-desktop"),
        pytest.param("mybox.local", True, id="mdns"),
        pytest.param("8.8.8.8:11434", False, id="a-public-address"),
        pytest.param("internal.attacker.example", False, id="a-suffix-only-at-the-end"),
        pytest.param("attacker.example.", False, id="trailing-dot"),
        pytest.param("[::1", False, id="an-unclosed-bracket"),  # was a 500
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    from modelyard.server.app import host_allowed

    assert host_allowed(host, {"mybox"}) is allowed


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        (b"http://192.168.1.20:8080", b"192.168.1.20:8080", True),  # its own /docs at a LAN address
        (b"http://Box.local:11434", b"box.local:11434", True),
        (b"http://192.168.1.20:8080", b"192.168.1.20:9090", False),
        (b"https://evil.example", b"192.168.1.20:8080", False),
        (b"http://192.168.1.20:8080", None, False),
        (b"http://[::1", b"[::1]:80", False),  # not an origin at all
    ],
)
def test_a_page_of_this_server_is_its_own_origin(origin: bytes, host: bytes | None, same: bool) -> None:
    """A diff review: served on 0.0.0.0 and opened at a LAN address, the server's own /docs page
    got 403 on every "Try it out" (Ollama lets an Origin naming the Host through)."""
    from modelyard.server.app import _same_origin

    assert _same_origin(origin, host) is same


@pytest.mark.parametrize(
    "moment",
    [
        datetime.datetime(2026, 1, 2, 3, 4, 5, 0, datetime.UTC),
        datetime.datetime(2026, 11, 28, 23, 59, 59, 999999, datetime.UTC),
    ],
)
def test_the_timestamp_of_now_is_written_as_that_of_a_given_moment(
    moment: datetime.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ollama's created_at (RFC 3339, microseconds, Z): now's takes isoformat, a streamed line's
    faster way, and must write what strftime writes for any other moment."""
    from modelyard.server import ollama_api

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Frozen:  # type: ignore[override]
            return cls.fromtimestamp(moment.timestamp(), tz)

    monkeypatch.setattr(ollama_api, "datetime", Frozen)
    assert ollama_api.timestamp() == ollama_api.timestamp(moment) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
