"""Schemathesis against our own OpenAPI schema, on a live `modelyard serve`: whatever a client sends
that the schema allows (and what it does not), the server never answers 5xx.

The store holds the tiny random-weight llama as `tiny`; half the generated requests name it, so
the fuzzer reaches the runner (with small token budgets, to stay quick) instead of stopping at 404.
Pull and push are left out: they reach for registries named by random strings; specs sent to
/api/apply are planned (dry run), never applied, for the same reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_process import ServeProcess, start_server

from modelyard.builder import modelfile as mf
from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.store import Store

TINY = "tiny"
NETWORK_OPERATIONS = ("/api/pull", "/api/push")
AIMED_OPERATIONS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/create",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)


def tiny_home(home: Path, tiny_gguf: Path) -> Path:
    store = Store(home / "store")
    store.init()
    modelfile = mf.Modelfile(from_=str(tiny_gguf), parameters={"num_ctx": 256, "num_predict": 8})
    Builder(store, home / "cache").build(modelfile, parse_reference(TINY), context=tiny_gguf.parent)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[ServeProcess]:
    home = tiny_home(tmp_path_factory.mktemp("schema") / "home", tiny_gguf)
    process = start_server(home, env={"MODELYARD_NUM_PARALLEL": "2"})
    yield process
    process.stop()


def _aimed(body: Any, path: str) -> Any:
    """Name the tiny model in half the bodies that name a model, and keep its answers short.

    /api/create aims its source at the tiny model, never its target: a create that replaced
    `tiny` could give it `num_predict -1` (generate until stopped), and every later request
    without its own budget would run for ever (found: one such request outlasted the client's
    60 s timeout)."""
    if not isinstance(body, dict):
        return body
    coin = hash(json.dumps(body, sort_keys=True, default=str)) % 2 == 0
    if path == "/api/create":
        if coin:
            body["from"] = TINY
        if body.get("model") == TINY:
            body["model"] = "created"
        return body
    if "model" in body and coin:
        body["model"] = TINY
    options = body.get("options")
    if isinstance(options, dict):
        for key in ("num_predict", "num_ctx", "num_batch", "num_keep"):
            if isinstance(options.get(key), int):
                options[key] = max(min(options[key], 16), -1 if key == "num_predict" else 1)
        budget = options.get("num_predict")
        if budget is None or (isinstance(budget, int) and budget < 0):  # a wrong type stays: a 400
            options["num_predict"] = 8
    elif "model" in body and ("prompt" in body or "messages" in body):
        body["options"] = {"num_predict": 8}
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int):
            body[key] = min(body[key], 8)
    if ("messages" in body or "prompt" in body) and body.get("model") == TINY:
        body.setdefault("max_tokens", 8)
    return body


@pytest.fixture(scope="module")
def api_schema(server: ServeProcess) -> schemathesis.BaseSchema:
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document).exclude(path=list(NETWORK_OPERATIONS))

    @schema.hook
    def map_body(context: schemathesis.HookContext, body: Any) -> Any:
        operation = context.operation
        if operation is not None and operation.path in AIMED_OPERATIONS:
            return _aimed(body, operation.path)
        if operation is not None and operation.path == "/api/apply" and isinstance(body, dict):
            body["dry_run"] = True  # validate and plan every spec; apply none (they would pull)
        return body  # never /api/delete or /api/copy onto the tiny model: it must stay

    return schema


def test_the_schema_lists_both_apis(server: ServeProcess) -> None:
    paths = httpx.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]
    for path in (
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/create",
        "/v1/chat/completions",
        "/v1/models",
    ):
        assert path in paths


@pytest.mark.timeout(240)
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    database=None,
)
@given(data=st.data())
def test_no_request_gets_a_server_error(
    data: st.DataObject, server: ServeProcess, api_schema: schemathesis.BaseSchema
) -> None:
    mode = data.draw(st.sampled_from(list(schemathesis.GenerationMode)))
    case = data.draw(api_schema.as_strategy(generation_mode=mode))
    with requests.Session() as session:
        response = case.call(base_url=server.url, session=session, timeout=60)
    assert response.status_code < 500, (
        f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text[:500]}\n"
        + server.log()[-3000:]
    )


def test_sampling_penalties_reach_the_runner(server: ServeProcess) -> None:
    """Found by the fuzzer: the runner died of a TypeError on any penalty."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for penalty in ({"presence_penalty": 0.5}, {"frequency_penalty": 0.5}):
            answer = http.post(
                "/v1/completions", json={"model": TINY, "prompt": "hi", "max_tokens": 4, **penalty}
            )
            assert answer.status_code == 200, answer.text
        answer = http.post(
            "/api/generate",
            json={"model": TINY, "prompt": "hi", "stream": False, "options": {"repeat_penalty": 1.2}},
        )
        assert answer.status_code == 200, answer.text


@pytest.mark.timeout(120)
def test_a_request_during_an_unload_is_served(tmp_path: Path, tiny_gguf: Path) -> None:
    """Found by the fuzzer: a request arriving while its model's runner was being stopped spun the
    scheduler without yielding, and the whole server stopped answering."""
    process = start_server(tiny_home(tmp_path / "home", tiny_gguf), env={"MODELYARD_NUM_PARALLEL": "2"})
    try:
        with httpx.Client(base_url=process.url, timeout=15) as http:
            for _ in range(3):
                assert http.post("/api/generate", json={"model": TINY}).json()["done_reason"] == "load"
                unloaded: list[int] = []

                def unload(into: list[int] = unloaded) -> None:
                    into.append(http.post("/api/generate", json={"model": TINY, "keep_alive": 0}).status_code)

                thread = threading.Thread(target=unload)
                thread.start()
                time.sleep(0.02)  # while the runner is being stopped
                with httpx.Client(base_url=process.url, timeout=15) as other:
                    answer = other.post(
                        "/api/generate", json={"model": TINY, "prompt": "hi", "stream": False}
                    )
                thread.join(20)
                assert answer.status_code == 200 and unloaded == [200]
    finally:
        process.stop(grace_s=2)
