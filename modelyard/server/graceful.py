"""uvicorn's server, with generations that end in words at the end of a graceful shutdown.

On SIGTERM or Ctrl-C, uvicorn stops accepting, lets the requests in flight run for
`timeout_graceful_shutdown` seconds ($MODELYARD_SHUTDOWN_GRACE), then cancels them: a stream then
just stops, and a client reading NDJSON (the ollama client) may take the cut answer for a whole
one. A second before that deadline, every generation still running is ended with an error of its
own instead, which its stream sends as its last line (`{"error": "the server is shutting down: …"}`,
or OpenAI's error event) before it closes. A second Ctrl-C does that at once (_shutdown_forced).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn

logger = logging.getLogger("uvicorn.error")  # where uvicorn's own start-up lines go

_WORDS_BEFORE_THE_CUT_S = 1  # time left for the streams to send their error line and close


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stop_generations: Callable[[], object]) -> None:
        super().__init__(config)
        self._stop_generations = stop_generations

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            # uvicorn says where it listens only for sockets it bound itself (serve binds its own).
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                logger.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.config.timeout_graceful_shutdown
        timer = None
        if grace is not None and grace > _WORDS_BEFORE_THE_CUT_S:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(grace - _WORDS_BEFORE_THE_CUT_S, self._stop_generations)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()
        if self.force_exit:
            await self._shutdown_forced()

    async def _shutdown_forced(self) -> None:
        """A second Ctrl-C: uvicorn stops waiting for the requests and skips the app's shutdown.
        The app's lifespan task, left pending, was then cancelled at exit with three tracebacks, and
        its runners were left to notice their parent's death; the requests' tasks too. Now the
        generations end at once in words, the requests get a moment to send them, and the app shuts
        down (runners stopped) before the process exits."""
        self._stop_generations()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _WORDS_BEFORE_THE_CUT_S
        while self.server_state.tasks and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in self.server_state.tasks:
            task.cancel()
        done = getattr(self.lifespan, "shutdown_event", None)  # None: no lifespan (LifespanOff)
        if done is None or not done.is_set():  # uvicorn's, if the second Ctrl-C came during it
            await self.lifespan.shutdown()
