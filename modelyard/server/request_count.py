"""Every request counted once in `modelyard_requests_total`, by model, endpoint and status.

The generation endpoints count their own requests, because a stream's status is known only at its
end (499: its client left; 500: its runner crashed after the 200 went out), and so do the error
handlers. Every other answer is counted here when its status goes out: the management routes'
(show, copy, delete, tags, ps, pull…) and the refusals of the middlewares inside this one (401,
403, 413), which a metrics review found counted nowhere.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# One flag per request, shared by reference with the tasks the request starts (a streaming
# response's body runs in one of its own).
_counted: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("request_counted", default=None)


def mark_counted() -> None:
    """Note that this request has been counted (ServerState.count)."""
    flag = _counted.get()
    if flag is not None:
        flag[0] = True


def endpoint_label(scope: Scope, routes: Collection[str]) -> str:
    """The route's path template, or the path when it is one of the app's fixed paths (a request
    refused before routing), else "": a bounded set of labels whatever paths clients send (pure)."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", ""))
    path = str(scope.get("path", ""))
    return path if path in routes else ""


class CountRequests:
    def __init__(
        self,
        app: ASGIApp,
        count: Callable[[str, str, int], None],
        model: Callable[[], str],
        routes: Collection[str],
    ) -> None:
        self.app = app
        self._count = count  # (endpoint, model, status)
        self._model = model
        self._routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        flag = [False]
        _counted.set(flag)
        status: list[int] = []

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            # Not yet answered: the error handler outside this middleware answers and counts it (a
            # diff review: counted here too, twice). Answered: nothing will count it but this.
            if status:
                self._count_once(flag, scope, status[0])
            raise
        if status:
            self._count_once(flag, scope, status[0])

    def _count_once(self, flag: list[bool], scope: Scope, status: int) -> None:
        if not flag[0]:
            self._count(endpoint_label(scope, self._routes), self._model(), status)
