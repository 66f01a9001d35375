"""A generation stops when its client leaves: its slot is freed at the runner's next step, and its
lease released, instead of running to the end for nobody.

One task per request waits for the disconnect (`ClientGone`); while a route awaits a generation,
or a response streams one, that task's end cancels the request's own task, and the cancellation
is turned into the 499 the metrics count. Starlette's StreamingResponse does the same with an
anyio task group per response under uvicorn (ASGI spec 2.3), and the route before it had to poll;
under bursts of short streams, py-spy put that task group, its cancel scopes and its second task
at about 8% of the server's samples, taken from the cores llama.cpp decodes with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modelyard.server.http_errors import STATUS_CLIENT_GONE, HTTPError

T = TypeVar("T")


class ClientGone:
    """The disconnect of one request's client. Make it once the request's body has been read (the
    JSON routes' is, before they run: app.BodyLimit), since what it receives after that is only the
    disconnect."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self._watch: asyncio.Task[None] | None = None

    async def unless(self, work: Awaitable[T]) -> T:
        """Await `work`; if the client leaves first, `work` is cancelled and this raises the 499.
        Whatever `work` raises ends the watch: an error answer follows, not a stream."""
        try:
            with self.cancelling() as left:
                try:
                    return await work
                except asyncio.CancelledError:
                    if left():
                        raise HTTPError(STATUS_CLIENT_GONE, "the client closed the request") from None
                    raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop watching (the answer is complete)."""
        if self._watch is not None:
            self._watch.cancel()

    @contextlib.contextmanager
    def cancelling(self) -> Iterator[Callable[[], bool]]:
        """Within: the client's leaving cancels the current task. Yields whether it did; a
        cancellation this caused is taken back on the way out, so that the task goes on (to
        answer, or to end) like any other."""
        task = asyncio.current_task()
        assert task is not None
        if self._watch is None:
            self._watch = asyncio.ensure_future(_disconnect(self._receive))
        watch = self._watch
        state = {"inside": True, "cancelled": False}

        def cancel(_: asyncio.Future[None]) -> None:
            # Run by the loop, maybe after the block ended: then there is nothing to cancel.
            if state["inside"] and not watch.cancelled():
                state["cancelled"] = True
                task.cancel()

        watch.add_done_callback(cancel)
        try:
            yield lambda: state["cancelled"]
        finally:
            state["inside"] = False
            watch.remove_done_callback(cancel)
            if state["cancelled"]:
                task.uncancel()


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`, for an answer sent whole: if the client leaves first, `work` is cancelled and this
    raises the 499; the watch ends with it."""
    client = ClientGone(request)
    try:
        return await client.unless(work)
    finally:
        client.close()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # after the body, a server sends nothing else; a stray message is not the end


class WatchedStream(StreamingResponse):
    """A streamed answer (server-sent events, NDJSON) that stops when its client leaves: `chunks`
    is closed at once, so that its clean-up (the metrics' 499, the runner's request cancelled)
    runs then, not when the garbage collector finds it."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        client: ClientGone,
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self._client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with self._client.cancelling() as left:
                try:
                    await self.stream_response(send)
                except asyncio.CancelledError:
                    if not left():
                        raise
        finally:
            self._client.close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
