"""Request bodies decoded as Go's encoding/json decodes them (Ollama's): a lone surrogate escape
("\\ud800", which Python's json keeps as a lone surrogate that no UTF-8 can carry on, to a runner or
a template worker) becomes U+FFFD. Routes of `GoJSONRoute` see their bodies so (FastAPI's
documented way to change the request a route sees: a custom APIRoute and Request).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import Request, Response
from fastapi.routing import APIRoute

from modelyard.builder.prompt import without_lone_surrogates

# A surrogate's escape, lone or in a pair: only a body with one needs the walk (a C-speed search).
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _GoJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = json.loads(body)
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
