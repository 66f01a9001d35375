"""Work the server runs in a thread for a request (pull, push, create): its progress reaches the
request, and it stops once nobody waits for it (the client went away), at its next progress event."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from modelyard.errors import WorkAbandoned
from modelyard.progress import ProgressEvent, ProgressSink
from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
from modelyard.server.state import ServerState
from modelyard.settings import Settings
from modelyard.store import Store


@pytest.fixture
def state(tmp_path: Path) -> ServerState:
    settings = Settings(home=tmp_path)
    return ServerState(settings, Store(tmp_path / "store"), Scheduler(SchedulerSettings(ram_budget=2**30)))


class Endless:
    """Work that reports progress until something stops it; notes what did."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.ended: list[BaseException] = []

    def __call__(self, sink: ProgressSink) -> None:
        try:
            while True:
                sink(ProgressEvent("downloading"))
                time.sleep(0.01)
        except BaseException as exc:
            self.ended.append(exc)
            raise
        finally:
            self.stopped.set()


def test_work_whose_events_nobody_reads_any_more_stops(state: ServerState) -> None:
    endless = Endless()

    async def main() -> list[str]:
        events = state.in_thread(endless)
        seen = [(await anext(events)).status, (await anext(events)).status]
        await events.aclose()
        return seen

    assert asyncio.run(main()) == ["downloading", "downloading"]
    assert endless.stopped.wait(5), "the work went on for nobody"
    assert isinstance(endless.ended[0], WorkAbandoned)


def test_work_read_to_its_end_gives_its_events_and_its_error(state: ServerState) -> None:
    def failing(sink: ProgressSink) -> None:
        sink(ProgressEvent("one"))
        raise ValueError("the registry said no")

    async def main() -> list[str]:
        return [event.status async for event in state.in_thread(failing)]

    with pytest.raises(ValueError, match="said no"):
        asyncio.run(main())


def test_a_pull_not_streamed_stops_when_its_client_leaves(state: ServerState) -> None:
    """stream: false, the client gone after a moment: a 499, and the work stops with it."""
    from starlette.requests import Request

    from modelyard.server.http_errors import HTTPError
    from modelyard.server.ollama_api import _progress_response

    endless = Endless()

    async def leaves_soon() -> dict[str, str]:
        await asyncio.sleep(0.2)
        return {"type": "http.disconnect"}

    async def main() -> None:
        request = Request({"type": "http", "method": "POST", "path": "/api/pull", "headers": []}, leaves_soon)
        with pytest.raises(HTTPError) as gone:
            await _progress_response(request, state.in_thread(endless), False, state.error_for)
        assert gone.value.status == 499

    asyncio.run(main())
    assert endless.stopped.wait(5), "the pull went on for nobody"


def test_apply_refused_under_a_git_spec_keeps_its_token_out_of_the_answer(state: ServerState) -> None:
    """Found in review: the 409 quoted --spec as given, a deploy token with it."""
    from starlette.testclient import TestClient

    from modelyard.server.app import create_app

    state.daemon = object()  # type: ignore[assignment]  # a reconciler is attached; apply never reaches it
    state.spec_source = "git+https://deploy:ghp_SECRETTOKEN@git.example/team/models.git"
    http = TestClient(create_app(state))  # not entered: no lifespan, which would start the reconciler
    refused = http.post("/api/apply", json={"documents": [{"path": "m.yaml", "text": "models: []"}]})
    assert refused.status_code == 409 and "git.example/team/models.git" in refused.json()["error"]
    assert "SECRETTOKEN" not in refused.text and "deploy" not in refused.text


@pytest.mark.timeout(30)  # without the fix it waited for ever
def test_an_upload_whose_store_write_fails_answers_with_that_error(state: ServerState, monkeypatch) -> None:
    """A blob upload whose writer fails at once (a full disk) ends with the writer's error, not a
    wait for ever on a full queue that nobody reads (a build review: the upload never answered)."""

    def failing_put_chunks(chunks, **_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state.store.blobs, "put_chunks", failing_put_chunks)

    async def body():
        for _ in range(100):  # more chunks than the queue between the request and the writer holds
            yield b"x" * 65536

    async def upload() -> None:
        await asyncio.wait_for(state.receive_blob("sha256:" + "0" * 64, body()), timeout=10)

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(upload())


def test_an_upload_that_fits_enters_the_store(state: ServerState) -> None:
    import hashlib

    chunks = [bytes([i]) * 65536 for i in range(40)]  # more than the queue holds: the writer keeps up
    digest = "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()

    async def body():
        for chunk in chunks:
            yield chunk

    asyncio.run(state.receive_blob(digest, body()))
    assert state.store.blobs.path(digest).read_bytes() == b"".join(chunks)
