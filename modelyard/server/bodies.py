"""Request bodies decoded as Go's encoding/json decodes them (Ollama's): a lone surrogate escape
("\\ud800", which Python's json keeps as a lone surrogate that no UTF-8 can carry on, to a runner or
a template worker) becomes U+FFFD. Routes of `GoJSONRoute` see their bodies so (FastAPI's
documented way to change the request a route sees: a custom APIRoute and Request).

A body is UTF-8, as Go's decoder takes it, and may hold at most MAX_BODY_STRUCTURE objects, arrays
and object members; a list's validation stops at its first bad element (`Items`). Parsing a body
and validating it against a route's model are single calls into C and Rust that hold the GIL, so
the event loop waits for them whatever thread makes them, and their cost is in the count of
values, not in bytes: 7 MiB of `{}` as chat messages held the loop for 30 s (parse, 2.5 M
validation errors, their message), 10 MiB of option keys for 2 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final, TypeVar

import numpy as np
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import Field

from modelyard.builder.prompt import without_lone_surrogates

# A surrogate's escape, lone or in a pair: only a body with one needs the walk (a C-speed search).
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_UTF8_BOM: Final = b"\xef\xbb\xbf"


# Objects, arrays and object members a body may hold. A chat of 20,000 plain messages fits (each
# one object with two or three members; with more fields, fewer: 10,000 with empty `images` and
# `tool_calls` too), past what a 128k-token context holds once a template wraps each message. At
# the budget a body holds the loop 0.1 s at most on a 2-core VM (benchmarks/RESULTS.md, "Request
# bodies"). Array elements are not counted: a list of numbers or strings (a `context`, token ids,
# embedding inputs) parses at some 30 ns an element.
MAX_BODY_STRUCTURE: Final = 65_536

T = TypeVar("T")
# A list of a request's body, whose validation stops at its first bad element. Elements are not in
# the budget above (a `context` may hold a million token ids), and an error each is what costs: a
# body of two million zeros as chat messages held the loop 19 s for its 400.
Items = Annotated[list[T], Field(fail_fast=True)]


def json_structure(body: bytes) -> int:
    """How many objects, arrays and object members the JSON text `body` holds: its `{`, `[` and `:`
    outside strings, counted without parsing it (pure). Exact for valid JSON; for invalid JSON a
    count the parser will refuse anyway. Linear, in C and numpy: ~0.1 s for 14 MiB."""
    # Escapes first: an escaped quote does not end a string, and `\\` pairs, taken left to right as
    # JSON does, cannot be structural. Then a character is outside strings where the count of
    # quotes before it is even (uint8 wraps, keeping the parity).
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = np.frombuffer(unescaped, dtype=np.uint8)
    outside = (np.cumsum(text == ord('"'), dtype=np.uint8) & 1) == 0
    # Compared one by one: np.isin sorts, ten times slower here.
    structural = (text == ord("{")) | (text == ord("[")) | (text == ord(":"))
    return int(np.count_nonzero(structural & outside))


def check_structure(body: bytes) -> None:
    """Refuse (413) a body of more objects, arrays and members than MAX_BODY_STRUCTURE."""
    # Counted in the whole text first (~20 ms for 15 MiB): only a body with more brackets and
    # colons than the budget, strings included, needs them told apart from its strings'.
    if len(body) <= MAX_BODY_STRUCTURE or sum(map(body.count, (b"{", b"[", b":"))) <= MAX_BODY_STRUCTURE:
        return
    count = json_structure(body)
    if count > MAX_BODY_STRUCTURE:
        raise HTTPException(
            413,
            f"request body has {count:,} JSON objects, arrays and object members; "
            f"at most {MAX_BODY_STRUCTURE:,} are accepted (send fewer messages or tools, "
            "or split the request)",
        )


class _GoJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if body.startswith(_UTF8_BOM):  # what some Windows clients write first: still UTF-8
                body = body[len(_UTF8_BOM) :]
            try:
                # UTF-8 only, as Go's decoder: json.loads would also take UTF-16 and UTF-32, whose
                # bytes the count of structure above would misread.
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise HTTPException(400, f"the body is not UTF-8 (at byte {exc.start})") from None
            check_structure(body)
            value = json.loads(text)
            if _SURROGATE_ESCAPE.search(body):
                value = go_strings(value)
            self._json = value
        return self._json


class GoJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decoded_as_go_does(request: Request) -> Response:
            return await handler(_GoJSONRequest(request.scope, request.receive))

        return decoded_as_go_does


def go_strings(value: Any) -> Any:
    """`value` (decoded JSON) with every lone surrogate in its strings, keys too, as U+FFFD: in
    place, without recursion (JSON nests a thousand deep)."""
    if isinstance(value, str):
        return without_lone_surrogates(value)
    stack = [value]
    while stack:
        container = stack.pop()
        if isinstance(container, list):
            for i, item in enumerate(container):
                if isinstance(item, str):
                    container[i] = without_lone_surrogates(item)
                elif isinstance(item, list | dict):
                    stack.append(item)
        elif isinstance(container, dict):
            for key, item in list(container.items()):
                if isinstance(item, str):
                    item = without_lone_surrogates(item)
                elif isinstance(item, list | dict):
                    stack.append(item)
                fixed = without_lone_surrogates(key)
                if fixed != key:
                    del container[key]
                container[fixed] = item
    return value
