"""The generation requests the server is still reading, per model: what it tells a runner, with
each prompt it sends, of the requests coming after it (`more_coming`, runtime/gathering.py).

A burst of requests reaches the server over milliseconds and leaves it for the runner one after
another. A request counts from the moment the ASGI app sees it until its prompt is sent to a
runner, or it ends otherwise (an error, a load without a prompt, its client gone). Until its name
is resolved it could be for any model, and counts for all of them. Everything here runs on the
event loop's thread: plain counters, no locks.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterator

from starlette.types import ASGIApp, Receive, Scope, Send

GENERATION_PATHS = frozenset({"/api/generate", "/api/chat", "/v1/completions", "/v1/chat/completions"})


class _Arrival:
    __slots__ = ("coming", "model")

    def __init__(self) -> None:
        self.model: str | None = None  # None until the request's name is resolved
        self.coming = True


class Arrivals:
    def __init__(self) -> None:
        self._unresolved = 0
        self._by_model: Counter[str] = Counter()
        self._current: contextvars.ContextVar[_Arrival | None] = contextvars.ContextVar(
            "arrival", default=None
        )

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around the handling of one generation request."""
        arrival = _Arrival()
        self._unresolved += 1
        token = self._current.set(arrival)
        try:
            yield
        finally:
            self._current.reset(token)
            self._leave(arrival)

    def resolved(self, model: str) -> None:
        """The current request is for `model`."""
        arrival = self._current.get()
        if arrival is not None and arrival.coming and arrival.model is None:
            self._unresolved -= 1
            self._by_model[model] += 1
            arrival.model = model

    def sent(self, model: str) -> int:
        """The current request's prompt goes to `model`'s runner now; the requests still coming that
        may be for it."""
        self.left()
        return self.coming(model)

    def left(self) -> None:
        """The current request will send no prompt (it only loads or unloads its model)."""
        arrival = self._current.get()
        if arrival is not None:
            self._leave(arrival)

    def coming(self, model: str) -> int:
        return self._unresolved + self._by_model[model]

    def _leave(self, arrival: _Arrival) -> None:
        if not arrival.coming:
            return
        arrival.coming = False
        if arrival.model is None:
            self._unresolved -= 1
        else:
            self._by_model[arrival.model] -= 1
            if not self._by_model[arrival.model]:
                del self._by_model[arrival.model]


class CountArrivals:
    """ASGI middleware: counts each generation request in `arrivals` while it is handled."""

    def __init__(self, app: ASGIApp, arrivals: Arrivals) -> None:
        self.app = app
        self.arrivals = arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        with self.arrivals.arriving():
            await self.app(scope, receive, send)
