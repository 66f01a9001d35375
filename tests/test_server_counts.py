"""`modelyard_requests_total` counts every request once, whatever answers it: a route, an error
handler, or a middleware that refuses it (a metrics review: management routes' successes and the
refusals went uncounted). The app is the server's own, in process; no model is loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
from modelyard.server.app import create_app
from modelyard.server.request_count import endpoint_label
from modelyard.server.state import ServerState
from modelyard.settings import Settings
from modelyard.store import Store


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path)
    state = ServerState(settings, Store(tmp_path / "store"), Scheduler(SchedulerSettings(ram_budget=2**30)))
    with TestClient(create_app(state, bind_host="127.0.0.1"), base_url="http://127.0.0.1") as test_client:
        yield test_client


def counts(client: TestClient) -> dict[tuple[str, str], float]:
    """(endpoint, status) → requests counted."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "modelyard_requests_total":
                key = (sample.labels["endpoint"], sample.labels["status"])
                found[key] = found.get(key, 0) + sample.value
    return found


def test_every_request_is_counted_once(client: TestClient) -> None:
    assert client.get("/api/tags").status_code == 200
    assert client.post("/api/show", json={"model": "absent"}).status_code == 404
    assert client.post("/api/show", json={"model": 5}).status_code == 400  # a validation error
    assert client.post("/api/copy", json={"source": "absent", "destination": "b"}).status_code == 404
    assert client.post("/api/chat", content=b"x" * (17 << 20)).status_code == 413  # refused before routing
    assert client.get("/api/tags", headers={"Host": "evil.example"}).status_code == 403
    for n in range(20):
        assert client.get(f"/no/such/path/{n}").status_code == 404
    got = counts(client)
    assert got[("/api/tags", "200")] == 1
    assert got[("/api/show", "404")] == 1, "the error handler's count, not a second one"
    assert got[("/api/show", "400")] == 1
    assert got[("/api/copy", "404")] == 1
    assert got[("/api/chat", "413")] == 1
    assert got[("/api/tags", "403")] == 1
    assert got[("", "404")] == 20, "paths no route has share one label"
    assert counts(client)[("/metrics", "200")] >= 1


def test_an_unexpected_error_is_counted_once(tmp_path: Path) -> None:
    """Answered 500 by the error handler outside the counting middleware (a diff review: both
    counted it)."""
    settings = Settings(home=tmp_path)
    state = ServerState(settings, Store(tmp_path / "store"), Scheduler(SchedulerSettings(ram_budget=2**30)))
    app = create_app(state, bind_host="127.0.0.1")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        assert counts(client)[("/boom", "500")] == 1


@pytest.mark.parametrize(
    ("scope", "endpoint"),
    [
        pytest.param({"path": "/api/chat"}, "/api/chat", id="a-fixed-path-before-routing"),
        pytest.param({"path": "/api/blobs/sha256:1"}, "", id="a-path-no-fixed-route-has"),
        pytest.param(
            {"path": "/x", "route": type("R", (), {"path": "/api/blobs/{digest}"})()},
            "/api/blobs/{digest}",
            id="routed",
        ),
    ],
)
def test_endpoint_label(scope: dict[str, object], endpoint: str) -> None:
    assert endpoint_label(scope, {"/api/chat", "/api/tags"}) == endpoint


def test_a_name_with_two_runners_has_one_sample_each_gauge() -> None:
    """A name's old runner finishing its streams beside its new one: both are the name's, summed
    (a diff review: one series twice in a scrape, which Prometheus refuses)."""
    from modelyard.runtime.scheduler import ModelStatus
    from modelyard.server.metrics import Metrics

    def row(digest: str, size: int, state: str) -> ModelStatus:
        return ModelStatus(
            name="m",
            digest=digest,
            state=state,
            size=size,
            size_vram=0,
            processor="100% CPU",
            context_length=256,
            slots=2,
            slots_busy=1,
            queued=0,
            expires_at=None,
            pinned=False,
            runner_pid=1,
            runner_rss=size,
            weights_resident=None,
            kv_bytes=0,
            load_seconds=0.1,
            last_error="",
        )

    text = Metrics(dict).render([row("sha256:old", 100, "ready"), row("sha256:new", 50, "ready")]).decode()
    samples = {
        (sample.name, sample.labels.get("model")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("modelyard_model_memory", "modelyard_slots", "modelyard_runner_rss"))
    }
    assert samples[("modelyard_model_memory_bytes", "m")] == 150
    assert samples[("modelyard_slots", "m")] == 4 and samples[("modelyard_slots_busy", "m")] == 2
    assert samples[("modelyard_runner_rss_bytes", "m")] == 150
    assert text.count('modelyard_model_memory_bytes{model="m"}') == 1
