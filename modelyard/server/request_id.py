"""A request id on every response (`x-request-id`), as OpenAI's API sends one: the openai client
shows it (`response._request_id`), and the server's log names it for errors, so that a user's
report and the log meet. A client's own id is kept when it is a plain token; any other gets a
fresh one (an id is written into logs: no control characters, bounded length)."""

from __future__ import annotations

import contextvars
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")

current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def request_id_for(given: bytes | None) -> str:
    """The client's id when it is a plain token of at most 128 characters, else a new one."""
    if given is not None and _CLIENT_ID.fullmatch(given):
        return given.decode("ascii")
    return "req_" + uuid.uuid4().hex


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for key, value in scope["headers"] if key == HEADER), None)
        request_id = request_id_for(given)
        current.set(request_id)  # this task's context: the error handlers outside read it too
        header = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
