"""What the server tells a runner of the requests still coming behind a prompt (server/arrivals.py):
requests being read count for every model until their name is resolved, then for theirs, until
their prompt is sent or they end; and only generation requests count."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.server.arrivals import Arrivals, CountArrivals


class Request:
    """One request's handling in its own task (its own context, as under uvicorn), moved on step by
    step by the test: resolve its model name, then send its prompt, leave without a prompt, or fail."""

    def __init__(self, arrivals: Arrivals, model: str) -> None:
        self.arrivals = arrivals
        self.model = model
        self.told: int | None = None  # what `sent` returned
        self._steps: asyncio.Queue[str] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.arrivals.arriving():
            while (step := await self._steps.get()) != "end":
                if step == "resolve":
                    self.arrivals.resolved(self.model)
                elif step == "send":
                    self.told = self.arrivals.sent(self.model)
                elif step == "leave":
                    self.arrivals.left()
                elif step == "fail":
                    raise RuntimeError("a bad request")

    async def do(self, *steps: str) -> None:
        for step in steps:
            self._steps.put_nowait(step)
        await asyncio.sleep(0.01)  # the task runs them


SCENARIOS = [
    pytest.param(
        [("a", "m"), ("b", "m"), ("c", "m")],
        [("a", "resolve", "send"), ("b", "resolve", "send"), ("c", "resolve", "send")],
        {"a": 2, "b": 1, "c": 0},
        id="a-burst-counts-down",
    ),
    pytest.param(
        [("a", "m"), ("b", "other")],
        [("b", "resolve"), ("a", "resolve", "send"), ("b", "send")],
        {"a": 0, "b": 0},
        id="a-request-for-another-model-stops-counting-once-resolved",
    ),
    pytest.param(
        [("a", "m"), ("b", "other")],
        [("a", "resolve", "send"), ("b", "resolve", "send")],
        {"a": 1, "b": 0},
        id="unresolved-counts-for-every-model",
    ),
    pytest.param(
        [("a", "m"), ("b", "m")],
        [("b", "resolve", "fail"), ("a", "resolve", "send")],
        {"a": 0},
        id="a-failed-request-stops-counting",
    ),
    pytest.param(
        [("a", "m"), ("b", "m")],
        [("b", "resolve", "leave"), ("a", "resolve", "send")],
        {"a": 0},
        id="a-load-without-prompt-stops-counting",
    ),
    pytest.param(
        [("a", "m"), ("b", "m")],
        [("a", "resolve", "send", "send")],
        {"a": 1},
        id="sending-twice-counts-once",
    ),
]


@pytest.mark.parametrize(("requests", "steps", "told"), SCENARIOS)
def test_more_coming(
    requests: list[tuple[str, str]], steps: list[tuple[str, ...]], told: dict[str, int]
) -> None:
    async def main() -> dict[str, int | None]:
        arrivals = Arrivals()
        handled = {name: Request(arrivals, model) for name, model in requests}
        await asyncio.sleep(0.01)  # every request has arrived
        for name, *what in steps:
            await handled[name].do(*what)
        for request in handled.values():
            await request.do("end")
            await asyncio.gather(request.task, return_exceptions=True)
        assert arrivals.coming("m") == arrivals.coming("other") == 0  # nothing left counted
        return {name: handled[name].told for name in told}

    assert asyncio.run(main()) == told


@pytest.mark.parametrize(
    ("method", "path", "counted"),
    [
        ("POST", "/api/generate", True),
        ("POST", "/api/chat", True),
        ("POST", "/v1/completions", True),
        ("POST", "/v1/chat/completions", True),
        ("POST", "/api/embed", False),
        ("GET", "/api/tags", False),
        ("POST", "/api/pull", False),
    ],
)
def test_only_generation_requests_count(method: str, path: str, counted: bool) -> None:
    arrivals = Arrivals()
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(arrivals.coming("m"))

    async def main() -> None:
        scope = {"type": "http", "method": method, "path": path, "headers": []}
        await CountArrivals(app, arrivals)(scope, None, None)  # type: ignore[arg-type]

    asyncio.run(main())
    assert seen == [1 if counted else 0]
    assert arrivals.coming("m") == 0
