"""`modelyard serve` as a real process with Gemma 3 270M, driven by the official `ollama` and `openai`
clients unchanged, by plain HTTP for what clients never send, and by the `run`/`ps`/`stop` CLI.

One server for the module (tests that unload the model leave the next request to reload it)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import ollama
import openai
import pydantic
import pytest
from prometheus_client.parser import text_string_to_metric_families
from registry_server import Registry, free_port
from server_process import GEMMA, ServeProcess, build_gemma_home, start_server

pytestmark = pytest.mark.gemma

MODEL = f"{GEMMA}:latest"
GREEDY = {"temperature": 0, "num_predict": 8}
JSON_PROMPT = 'What is 2+2? Reply as JSON with a key "answer".'
COLOUR_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Path:
    return build_gemma_home(tmp_path_factory.mktemp("e2e") / "home", gemma_gguf)


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServeProcess]:
    process = start_server(home)
    yield process
    process.stop()


@pytest.fixture
def client(server: ServeProcess) -> Iterator[ollama.Client]:
    c = ollama.Client(host=server.url, timeout=120)
    yield c
    c.close()


@pytest.fixture
def oai(server: ServeProcess) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


@pytest.fixture
def http(server: ServeProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def loaded(http: httpx.Client) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in http.get("/api/ps").json()["models"]}


# --- the ollama client ------------------------------------------------------------------------------


def test_ollama_list_and_show(client: ollama.Client, http: httpx.Client) -> None:
    models = {m.model: m for m in client.list().models}
    gemma = models[MODEL]
    assert gemma.details is not None
    assert (gemma.details.family, gemma.details.quantization_level, gemma.details.format) == (
        "gemma3",
        "Q4_K_M",
        "gguf",
    )
    assert gemma.size is not None and gemma.size > 250_000_000
    assert gemma.digest is not None and len(gemma.digest) == 64

    shown = client.show(GEMMA)
    assert shown.template is not None and "<start_of_turn>" in shown.template
    assert shown.parameters is not None and "stop" in shown.parameters and "<end_of_turn>" in shown.parameters
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.license is not None and "Gemma" in shown.license
    assert shown.modelfile is not None and "FROM" in shown.modelfile
    assert shown.modelfile.endswith("\n") and not shown.modelfile.endswith("\n\n"), "a line end, as Ollama's"
    # As Ollama: long arrays (the vocabulary) as [], the chat template only as `template`.
    assert shown.modelinfo["tokenizer.ggml.tokens"] == [] and "tokenizer.chat_template" not in shown.modelinfo
    assert "general.name" not in shown.modelinfo  # as Ollama leaves it out
    assert 260_000_000 < shown.modelinfo["general.parameter_count"] < 280_000_000  # Gemma 3 "270M"
    # The tensors, verbose or not, as Ollama's ShowHandler fills them for a GGUF.
    plain = {t["name"]: t for t in http.post("/api/show", json={"model": GEMMA}).json()["tensors"]}
    assert len(plain) == 236 and plain["token_embd.weight"]["shape"] == [640, 262144]

    verbose = http.post("/api/show", json={"model": GEMMA, "verbose": True}).json()
    tokens = verbose["model_info"]["tokenizer.ggml.tokens"]
    assert len(tokens) == 262144 and "<start_of_turn>" in tokens
    assert len(verbose["model_info"]["tokenizer.ggml.scores"]) == 262144
    assert verbose["model_info"]["general.parameter_count"] == shown.modelinfo["general.parameter_count"]
    tensors = {t["name"]: t for t in verbose["tensors"]}
    assert tensors["token_embd.weight"]["shape"] == [640, 262144] and tensors["token_embd.weight"]["type"]


def test_ollama_generate_reports_durations_in_nanoseconds(client: ollama.Client) -> None:
    started = time.monotonic()
    result = client.generate(GEMMA, "Name a colour.", options=GREEDY)
    wall_ns = (time.monotonic() - started) * 1e9
    assert result.response and result.done and result.done_reason == "length"
    assert result.eval_count == 8 and result.prompt_eval_count and result.prompt_eval_count > 5
    assert result.total_duration is not None and result.eval_duration is not None
    assert 0 < result.eval_duration < result.total_duration <= wall_ns
    assert result.load_duration is not None and result.prompt_eval_duration
    assert result.created_at is not None and result.created_at.endswith("Z")
    assert result.model == GEMMA, "the name as the request gave it, as Ollama echoes it"

    parts = list(client.generate(GEMMA, "Name a colour.", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.response for p in parts) == result.response, "greedy: streamed = whole"
    assert {p.model for p in parts} == {GEMMA}


def test_ollama_generate_context_goes_on_from_an_answer(client: ollama.Client) -> None:
    """Ollama's deprecated `context`: the tokens of the prompt and the answer come back, and sent
    with the next prompt they put that exchange before it."""
    first = client.generate(GEMMA, "Name a colour.", options=GREEDY)
    assert first.context and first.prompt_eval_count
    assert len(first.context) >= first.prompt_eval_count - 1 + 4, "the templated prompt, then the answer"

    second = client.generate(GEMMA, "Why that one?", context=first.context, options=GREEDY)
    # the context's tokens, then the templated prompt (the image's MESSAGE layers left out)
    assert second.prompt_eval_count and second.prompt_eval_count >= len(first.context) + 8
    assert second.context and second.context[: len(first.context) - 2] == first.context[:-2]

    streamed = list(
        client.generate(GEMMA, "Why that one?", context=first.context, options=GREEDY, stream=True)
    )
    assert streamed[-1].context == second.context and all(p.context is None for p in streamed[:-1])
    assert client.generate(GEMMA, "The sky is", raw=True, options=GREEDY).context is None
    for bad in ([-1], [10**9]):
        with pytest.raises(ollama.ResponseError) as caught:
            client.generate(GEMMA, "Hi", context=bad, options=GREEDY)
        assert caught.value.status_code == 400 and "not in the vocabulary" in str(caught.value)


def test_ollama_chat_streaming_and_not(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Write one word about the sea."}]
    whole = client.chat(GEMMA, messages=messages, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done_reason == "length" and whole.eval_count == 8

    parts = list(client.chat(GEMMA, messages=messages, options=GREEDY, stream=True))
    assert len(parts) > 2 and parts[-1].done and not parts[0].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_ollama_chat_with_a_system_message_and_history(client: ollama.Client) -> None:
    messages = [
        {"role": "system", "content": "You answer with one word."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And of Spain?"},
    ]
    result = client.chat(GEMMA, messages=messages, options={"temperature": 0, "num_predict": 16})
    assert result.message.content and result.prompt_eval_count and result.prompt_eval_count > 20


def test_ollama_format_json_and_schema_parse(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": JSON_PROMPT}]
    free = client.chat(GEMMA, messages=messages, format="json", options={"temperature": 0, "num_predict": 96})
    assert free.done_reason == "stop"
    assert isinstance(json.loads(free.message.content or ""), dict)

    constrained = client.generate(
        GEMMA, "Pick a colour, as JSON.", format=COLOUR_SCHEMA, options={"temperature": 0, "num_predict": 64}
    )
    assert json.loads(constrained.response)["colour"] in ("red", "green", "blue")


def test_ollama_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    result = client.embed(GEMMA, input=["the sea", "the sky"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 640
    assert result.embeddings[0] != result.embeddings[1]
    norm = sum(v * v for v in result.embeddings[0]) ** 0.5
    assert abs(norm - 1) < 1e-3, "embeddings are normalised, as Ollama's"
    assert result.prompt_eval_count and result.prompt_eval_count >= 4

    # The legacy endpoint returns the vector as the model made it, as Ollama's does: the same
    # direction as /api/embed's, not normalised.
    legacy = list(client.embeddings(GEMMA, prompt="the sea").embedding)
    assert len(legacy) == 640
    legacy_norm = sum(v * v for v in legacy) ** 0.5
    assert abs(legacy_norm - 1) > 0.01
    cosine = sum(a * b for a, b in zip(legacy, result.embeddings[0], strict=True)) / legacy_norm
    assert cosine > 0.999
    # As Ollama: an empty string is no input, which loads the model (an embedding model's preload);
    # dimensions count only when 0 < dimensions < the model's.
    client.generate(GEMMA, "", keep_alive=0)
    assert client.embed(GEMMA, input="").embeddings == []
    assert MODEL in {m.model for m in client.ps().models}
    assert client.embeddings(GEMMA, prompt="", keep_alive=0).embedding == []
    assert MODEL not in {m.model for m in client.ps().models}
    assert len(client.embed(GEMMA, input="the sea", dimensions=-3).embeddings[0]) == 640
    assert len(client.embed(GEMMA, input="the sea", dimensions=64).embeddings[0]) == 64
    # More numbers than an answer holds (8 Mi: 13,107 inputs of Gemma's 640): a 400 that says how
    # many fit, before any is made (a 16 MiB body of one-letter inputs asked for billions).
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(GEMMA, input=["a"] * 13_108)
    assert refused.value.status_code == 400 and "(13,107 inputs)" in refused.value.error


def test_ollama_ps_shows_the_loaded_model(client: ollama.Client) -> None:
    client.generate(GEMMA, "Hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    gemma = running[MODEL]
    assert gemma.size and gemma.size > 250_000_000 and gemma.size_vram == 0
    assert gemma.context_length == 4096, "the Modelfile's num_ctx"
    assert gemma.expires_at is not None and gemma.expires_at > datetime.now(UTC)
    assert gemma.details is not None and gemma.details.family == "gemma3"
    # A name copied anew while loaded: its details are read again, not left empty.
    client.copy(GEMMA, "ps-copy")
    client.generate("ps-copy", "", keep_alive="1m")
    client.copy(GEMMA, "ps-copy")
    copied = {m.model: m for m in client.ps().models}["ps-copy:latest"]
    assert copied.details is not None and copied.details.family == "gemma3"
    client.generate("ps-copy", "", keep_alive=0)
    client.delete("ps-copy")


def test_a_keep_alive_past_gos_range_is_forever_and_ps_still_answers(client: ollama.Client) -> None:
    # Found by schemathesis: 1e19 s made /api/ps fail to print the expiry year.
    client.generate(GEMMA, "", keep_alive=1e19)
    gemma = {m.model: m for m in client.ps().models}[MODEL]
    assert gemma.expires_at is not None and gemma.expires_at.year == 9999, "forever, as Ollama shows it"
    client.generate(GEMMA, "", keep_alive="5m")
    gemma = {m.model: m for m in client.ps().models}[MODEL]
    assert gemma.expires_at is not None and gemma.expires_at.year < 9999


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client, http: httpx.Client) -> None:
    loaded_ = client.generate(GEMMA, "")
    assert loaded_.done and loaded_.done_reason == "load" and loaded_.response == ""
    assert loaded_.model == GEMMA
    assert MODEL in loaded(http)

    unloaded = client.generate(GEMMA, "", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert MODEL not in loaded(http)
    assert [m.model for m in client.ps().models] == []

    chat_load = client.chat(GEMMA, messages=[], keep_alive="10m")
    assert chat_load.done_reason == "load" and MODEL in loaded(http)
    # One JSON object, streaming or not, as Ollama's c.JSON answers a load.
    streamed = http.post("/api/generate", json={"model": GEMMA, "stream": True})
    assert streamed.headers["content-type"] == "application/json"
    assert streamed.json()["done_reason"] == "load"


def test_a_tag_spelt_in_another_case_is_the_stored_model(
    client: ollama.Client, oai: openai.OpenAI, http: httpx.Client
) -> None:
    """Names match as Ollama's do, whatever the tag's case; the model loaded is the stored name, so
    that stopping it by that name stops it."""
    shouting = f"{GEMMA}:LATEST"
    client.generate(shouting, "Hi", options=GREEDY)
    assert [m.model for m in client.ps().models] == [MODEL]
    assert oai.models.retrieve(shouting).id == MODEL
    assert client.generate(GEMMA, "", keep_alive=0).done_reason == "unload"
    assert MODEL not in loaded(http)


def test_a_preload_loads_with_its_options(client: ollama.Client) -> None:
    """The recipe "keep X loaded with a context of N": the preload's num_ctx applies, so the
    requests that follow with it find the model loaded (no reload) and its keep_alive holds."""
    preload = client.generate(GEMMA, "", keep_alive=-1, options={"num_ctx": 2048})
    assert preload.done_reason == "load"
    gemma = {m.model: m for m in client.ps().models}[MODEL]
    assert gemma.context_length == 2048 and gemma.expires_at is not None and gemma.expires_at.year == 9999
    answer = client.chat(
        GEMMA, messages=[{"role": "user", "content": "Hi"}], options={**GREEDY, "num_ctx": 2048}
    )
    assert (answer.load_duration or 0) < 50_000_000, "no reload"
    gemma = {m.model: m for m in client.ps().models}[MODEL]
    assert gemma.expires_at is not None and gemma.expires_at.year == 9999, "the preload's keep_alive"
    with pytest.raises(ollama.ResponseError) as bad:
        client.generate(GEMMA, "", options={"num_ctx": "big"})
    assert bad.value.status_code == 400
    client.generate(GEMMA, "", keep_alive=0)


def test_images_on_a_text_model_are_a_clear_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(GEMMA, "What is in this picture?", images=[b"\x89PNG not really"])
    assert caught.value.status_code == 400 and "text model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(GEMMA, messages=[{"role": "user", "content": "and this?", "images": [b"GIF89a"]}])
    assert caught.value.status_code == 400 and "cannot take images" in caught.value.error


def test_think_is_ignored_gracefully(client: ollama.Client) -> None:
    for think in (True, "high"):
        result = client.chat(GEMMA, messages=[{"role": "user", "content": "Hi"}], think=think, options=GREEDY)
        assert result.message.content and not result.message.thinking
    # Any other text is Ollama's 400, which clients read to fall back to think=True (an API review).
    for endpoint, body in (
        ("chat", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("generate", {"prompt": "Hi"}),
        ("generate", {}),  # a load alone too, as Ollama refuses the body (a docs review)
        ("chat", {"messages": []}),
    ):
        with pytest.raises(ollama.ResponseError, match='invalid think value: "hgih"') as caught:
            getattr(client, endpoint)(GEMMA, think="hgih", **body)
        assert caught.value.status_code == 400


def test_think_and_the_date_reach_the_template(client: ollama.Client, oai: openai.OpenAI) -> None:
    """A template that reads .Think (qwen3, deepseek-r1) renders what the request asked for, and one
    that prints today's date (currentDate: mistral-small) renders at all."""
    template = (
        "{{ currentDate }} {{ range .Messages }}{{ .Content }}{{ end }}"
        "{{ if .IsThinkSet }} think={{ .Think }} level={{ .ThinkLevel }}{{ end }}"
    )
    client.create("thinking-template", from_=GEMMA, template=template)
    hi = [{"role": "user", "content": "Hi"}]
    one = {"num_predict": 1, "temperature": 0}

    def prompt_tokens(**think: Any) -> int:
        answer = client.chat("thinking-template", messages=hi, options=one, **think)
        assert answer.prompt_eval_count is not None
        return answer.prompt_eval_count

    unset, off, on, level = (
        prompt_tokens(),
        prompt_tokens(think=False),
        prompt_tokens(think=True),
        prompt_tokens(think="high"),
    )
    assert unset < off <= on <= level, (unset, off, on, level)
    # OpenAI's reasoning_effort is the think level, as Ollama's OpenAI API takes it.
    effort = oai.chat.completions.create(
        model="thinking-template",
        messages=hi,
        max_tokens=1,
        reasoning_effort="high",  # type: ignore[arg-type]
    )
    assert effort.usage is not None and effort.usage.prompt_tokens == level
    # "none" turns thinking off, as in Ollama's OpenAI API; a value it does not know is refused.
    none = oai.chat.completions.create(
        model="thinking-template", messages=hi, max_tokens=1, reasoning_effort="none"
    )
    assert none.usage is not None and none.usage.prompt_tokens == off
    # OpenAI's newer levels are the nearest the templates know: xhigh and max are high, minimal low.
    for newer, think in (("xhigh", "high"), ("max", "high"), ("minimal", "low")):
        answer = oai.chat.completions.create(
            model="thinking-template",
            messages=hi,
            max_tokens=1,
            reasoning_effort=newer,  # type: ignore[arg-type]
        )
        assert answer.usage is not None and answer.usage.prompt_tokens == prompt_tokens(think=think), newer
    with pytest.raises(openai.BadRequestError, match="invalid reasoning_effort 'bogus'") as bogus:
        oai.chat.completions.create(
            model="thinking-template",
            messages=hi,
            max_tokens=1,
            reasoning_effort="bogus",  # type: ignore[arg-type]
        )
    assert bogus.value.param == "reasoning_effort"
    client.delete("thinking-template")


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate("no-such-model", "Hi")
    assert caught.value.status_code == 404 and "not found" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("no-such-model")
    assert caught.value.status_code == 404


def test_create_from_fields_then_copy_and_delete(client: ollama.Client, http: httpx.Client) -> None:
    progress = list(
        client.create(
            "pirate-api",
            from_=GEMMA,
            system="You are a pirate.",
            parameters={"temperature": 0.2, "top_p": 1.0, "stop": ["<end_of_turn>", "Arr"]},
            stream=True,
        )
    )
    statuses = [p.status for p in progress]
    assert statuses[-1] == "success" and "writing manifest" in statuses
    shown = client.show("pirate-api")
    assert http.post("/api/show", json={"model": "pirate-api"}).json()["system"] == "You are a pirate."
    assert shown.modelfile is not None and "You are a pirate." in shown.modelfile
    assert shown.parameters is not None and "0.2" in shown.parameters and '"Arr"' in shown.parameters
    assert re.search(r"^top_p +1$", shown.parameters, re.M), "as Go prints a float64"
    assert shown.template == client.show(GEMMA).template, "inherited from FROM"

    assert client.copy("pirate-api", "pirate-copy:v2").status == "success"
    names = {m.model for m in client.list().models}
    assert {"pirate-api:latest", "pirate-copy:v2"} <= names
    answer = client.generate("pirate-copy:v2", "Hello", options=GREEDY)
    assert answer.response

    assert client.delete("pirate-api").status == "success"
    assert client.delete("pirate-copy:v2").status == "success"
    assert not {"pirate-api:latest", "pirate-copy:v2"} & {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("pirate-api")
    assert caught.value.status_code == 404


def test_create_from_an_uploaded_gguf(client: ollama.Client, gemma_gguf: Path, http: httpx.Client) -> None:
    digest = client.create_blob(gemma_gguf)  # already in the store: the body is read and dropped
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    template = client.show(GEMMA).template
    result = client.create(
        "uploaded",
        files={"gemma-3-270m-q4_k_m.gguf": digest},
        template=template,
        parameters={"stop": ["<end_of_turn>"], "num_ctx": 1024},
        license="Gemma Terms of Use",
    )
    assert result.status == "success"
    shown = client.show("uploaded")
    assert shown.details is not None and shown.details.family == "gemma3"
    assert shown.license == "Gemma Terms of Use"
    assert client.generate("uploaded", "Hi", options=GREEDY, keep_alive=0).response
    client.delete("uploaded")

    # Checked as a Modelfile is: a template that does not parse, a file that is no digest.
    for fields, message in [
        ({"files": {"m.gguf": digest}, "template": "{{ .Prompt "}, "TEMPLATE does not parse"),
        ({"files": {"m.gguf": GEMMA}}, "is not a blob digest"),
    ]:
        with pytest.raises(ollama.ResponseError, match=message) as caught:
            client.create("refused", **fields)  # type: ignore[arg-type]
        assert caught.value.status_code == 400
    # `from` wins over `files`, as in Ollama.
    other = client.create("from-wins", from_=GEMMA, files={"m.gguf": digest}, system="from wins")
    assert other.status == "success"
    assert http.post("/api/show", json={"model": "from-wins"}).json()["system"] == "from wins"
    client.delete("from-wins")

    # Empty text is "not given", as in Ollama's create.go: the base's template stays (a build
    # review: it was replaced with nothing). `requires` is kept, and /api/show gives it back.
    body = {
        "model": "kept",
        "from": GEMMA,
        "template": "",
        "system": "",
        "requires": "0.9.0",
        "stream": False,
    }
    assert http.post("/api/create", json=body).status_code == 200
    shown = http.post("/api/show", json={"model": "kept"}).json()
    assert shown["template"] == template and shown["requires"] == "0.9.0"
    assert "requires" not in http.post("/api/show", json={"model": GEMMA}).json(), (
        "omitted when unset, as Ollama"
    )
    client.delete("kept")


def test_upload_a_new_blob_and_a_wrong_digest(http: httpx.Client, tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.head(f"/api/blobs/{digest}").status_code == 404
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    wrong = "sha256:" + "0" * 64
    answer = http.post(f"/api/blobs/{wrong}", content=data)
    assert answer.status_code == 400 and "error" in answer.json()
    assert http.head(f"/api/blobs/{wrong}").status_code == 404
    assert http.head("/api/blobs/sha256:nothex").status_code == 400
    # Ollama's blob paths take sha256-<hex> too.
    assert http.head(f"/api/blobs/{digest.replace(':', '-')}").status_code == 200
    # Not a GGUF: the error names the upload, not where the server keeps it.
    answer = http.post("/api/create", json={"model": "noise", "files": {"m.gguf": digest}, "stream": False})
    assert answer.status_code == 400, answer.text
    assert "/blobs/" not in answer.json()["error"] and digest in answer.json()["error"], answer.text


def test_create_never_reads_the_servers_files(http: httpx.Client, home: Path) -> None:
    weights = next((home / "store" / "blobs" / "sha256").iterdir())
    for body in (
        {"model": "sneaky", "from": str(weights)},
        {"model": "sneaky", "from": "./store"},
        {"model": "sneaky", "from": "~/model.gguf"},
        {"model": "sneaky", "modelfile": f"FROM {weights}\n"},
        {"model": "sneaky", "from": GEMMA, "adapters": {"a.gguf": "/etc/passwd"}},
    ):
        answer = http.post("/api/create", json=body)
        assert answer.status_code == 400, body
        assert "POST /api/blobs" in answer.json()["error"]
    # A bare name that happens to be a folder in the server's home is still only a name.
    answer = http.post("/api/create", json={"model": "sneaky", "from": "store", "stream": False})
    assert answer.status_code == 400 and "no such file or image" in answer.json()["error"]


needs_registry = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="docker-registry not installed"
)


@needs_registry
def test_push_and_pull_through_a_registry(client: ollama.Client, registry: Registry) -> None:
    remote = f"{registry.host}/e2e/gemma3:v1"
    client.copy(GEMMA, remote)
    pushed = list(client.push(remote, insecure=True, stream=True))
    statuses = [p.status for p in pushed]
    assert statuses[-1] == "success"
    uploads = [p for p in pushed if p.status and p.status.startswith("pushing ") and p.digest]
    assert uploads and any(p.total and p.total > 250_000_000 for p in uploads)
    assert "pushing manifest" in statuses
    # Again: the registry holds every layer, which Ollama reports as pushed, all bytes done.
    again = [p for p in client.push(remote, insecure=True, stream=True) if p.digest]
    assert again and all(p.status.startswith("pushing ") for p in again), again
    assert all(p.completed == p.total for p in {p.digest: p for p in again}.values()), again

    client.delete(remote)
    assert remote not in {m.model for m in client.list().models}
    pulled = list(client.pull(remote, insecure=True, stream=True))
    statuses = [p.status for p in pulled]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "writing manifest" in statuses
    assert remote in {m.model for m in client.list().models}
    final = client.pull(remote, insecure=True)  # stream false: the last message
    assert final.status == "success"

    with pytest.raises(ollama.ResponseError) as caught:
        client.pull(f"{registry.host}/e2e/absent:v1", insecure=True)
    assert caught.value.status_code == 404
    for transfer in (client.pull, client.push):  # the caller's mistake: 400, not a registry's 502
        with pytest.raises(ollama.ResponseError) as caught:
            transfer("e2e/nowhere:v1")
        assert caught.value.status_code == 400 and "names no registry" in caught.value.error
    client.delete(remote)


# --- the openai client ------------------------------------------------------------------------------


def test_openai_chat_streaming_and_not(oai: openai.OpenAI, http: httpx.Client) -> None:
    messages: list[dict[str, str]] = [{"role": "user", "content": "Write one word about the sea."}]
    whole = oai.chat.completions.create(
        model=GEMMA,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 8
    assert whole.model == MODEL and whole.object == "chat.completion"

    chunks = list(
        oai.chat.completions.create(
            model=GEMMA,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8

    # On the wire, OpenAI's documented form: a usage field in every chunk, null but in the last;
    # the choice's last chunk has an empty delta beside its finish_reason.
    body = {"model": GEMMA, "messages": messages, "max_tokens": 4, "stream": True}
    with http.stream(
        "POST", "/v1/chat/completions", json=body | {"stream_options": {"include_usage": True}}
    ) as sse:
        raw = [json.loads(line[6:]) for line in sse.iter_lines() if line.startswith("data: {")]
    assert all("usage" in c and c["usage"] is None for c in raw[:-1]) and raw[-1]["usage"]
    [last] = [c for c in raw if c["choices"] and c["choices"][0]["finish_reason"]]
    assert last["choices"][0]["delta"] == {}


def test_openai_requests_that_cannot_be_honoured_are_400s_naming_the_field(
    oai: openai.OpenAI, http: httpx.Client
) -> None:
    """Never a 200 that quietly drops part of the request."""
    hi = {"role": "user", "content": "Hi"}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0]", "is not a role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "required in a user message"),
        (
            {"messages": [hi, {"role": "tool", "content": None}]},
            "messages[1].content",
            "required in a tool message",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "x"}}]}]},
            "messages[0].content",
            "'file' parts are not supported",
        ),
        ({"messages": [hi], "tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {"messages": [hi], "response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "needs response_format.json_schema",
        ),
        ({"messages": [hi], "temperature": 7}, "temperature", "less than or equal to 2"),
        ({"messages": [hi], "logit_bias": {"x": 1}}, "logit_bias", "is not a token id"),
        ({"messages": [hi], "n": 65}, "n", "less than or equal to 64"),
        ({"messages": [hi], "top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        (
            {"messages": [hi], "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "support tools",
        ),
        (
            {"messages": [hi], "stream_options": {"include_usage": True}},
            "stream_options",
            "when stream is true",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
            "text only",
        ),
    ]
    for extra, param, message in cases:
        answer = http.post("/v1/chat/completions", json={"model": GEMMA, "max_tokens": 2} | extra)
        error = answer.json()["error"]
        assert (answer.status_code, error["param"]) == (400, param) and message in error["message"], error
    for value, message in [("", "cannot be an empty string"), ([], "empty list"), ([1, 2], "token ids")]:
        with pytest.raises(openai.BadRequestError, match=message):
            oai.embeddings.create(model=GEMMA, input=value)  # type: ignore[arg-type]


def test_openai_seeds_any_integer_repeats_and_a_legacy_function_role_is_a_tool_result(
    oai: openai.OpenAI,
) -> None:
    def sampled(seed: int) -> str:
        answer = oai.completions.create(
            model=GEMMA, prompt="Once upon a time", max_tokens=6, temperature=1, seed=seed
        )
        return answer.choices[0].text

    for seed in (-5, 2**40):
        assert sampled(seed) == sampled(seed), seed
    as_function = oai.chat.completions.create(
        model=GEMMA,
        messages=[
            {"role": "user", "content": "What is the weather?"},
            {"role": "function", "name": "weather", "content": "sunny"},  # type: ignore[list-item]
        ],
        max_tokens=2,
        temperature=0,
    )
    as_tool = oai.chat.completions.create(
        model=GEMMA,
        messages=[
            {"role": "user", "content": "What is the weather?"},
            {"role": "tool", "tool_call_id": "", "content": "sunny"},
        ],
        max_tokens=2,
        temperature=0,
    )
    assert as_function.usage is not None and as_tool.usage is not None
    assert as_function.usage.prompt_tokens == as_tool.usage.prompt_tokens
    schema_free = oai.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": JSON_PROMPT}],
        response_format={"type": "json_schema", "json_schema": {"name": "anything"}},  # no schema: any JSON
        max_tokens=48,
        temperature=0,
    )
    json.loads(schema_free.choices[0].message.content or "")


def value_now(http: httpx.Client, name: str, **labels: str) -> float:
    """A sample's value summed over the series with these labels, from /metrics now."""
    return sum(
        s.value
        for f in text_string_to_metric_families(http.get("/metrics").text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def model_counter(http: httpx.Client, sample: str) -> float:
    """A counter's value for the test model, from /metrics."""
    return value_now(http, sample, model=MODEL)


def test_a_chats_next_turn_reuses_the_cache(oai: openai.OpenAI, http: httpx.Client) -> None:
    """The second turn sends the first again; its tokens come from the slot's cache, which the
    usage and the metrics report."""

    def cached_total() -> float:
        return model_counter(http, "modelyard_prompt_cached_tokens_total")

    messages: list[dict[str, str]] = [{"role": "user", "content": "Name a bird that cannot fly."}]
    first = oai.chat.completions.create(model=GEMMA, messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    before = cached_total()
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "Where does it live?"},
    ]
    second = oai.chat.completions.create(model=GEMMA, messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert first.usage.prompt_tokens <= details.cached_tokens < second.usage.prompt_tokens
    assert cached_total() - before == details.cached_tokens


def test_openai_stop_sequence(oai: openai.OpenAI) -> None:
    messages: list[dict[str, str]] = [{"role": "user", "content": "Count from 1 to 10."}]
    free = oai.chat.completions.create(model=GEMMA, messages=messages, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    text = free.choices[0].message.content or ""
    stop = text[len(text) // 2 :][:2]  # greedy: the same text again, cut where this first appears
    assert stop.strip(), text
    cut = oai.chat.completions.create(
        model=GEMMA,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        stop=[stop],
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_openai_completions(oai: openai.OpenAI) -> None:
    result = oai.completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert result.choices[0].text and result.object == "text_completion"
    assert result.usage is not None and result.usage.completion_tokens <= 6
    streamed = list(
        oai.completions.create(
            model=GEMMA, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == result.choices[0].text


def same_up_to_a_near_tie(alone: Any, other: Any) -> None:
    """Two greedy completions' logprobs for one prompt, one run alone and one beside other requests:
    the same tokens, unless llama.cpp's batch rounding flipped a near tie (the two tokens within
    BATCH_ROUNDING of each other alone), after which the texts may go apart."""
    for k, (mine, theirs) in enumerate(zip(alone.tokens, other.tokens, strict=False)):
        if mine != theirs:
            top = alone.top_logprobs[k]
            assert theirs in top and top[mine] - top[theirs] < BATCH_ROUNDING, (k, mine, theirs, top)
            return
    assert alone.tokens == other.tokens


def test_openai_completions_of_several_prompts(oai: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "Two plus two is", "The sea is"]
    greedy: dict[str, Any] = dict(model=GEMMA, max_tokens=5, temperature=0, logprobs=2)
    alone = [oai.completions.create(prompt=p, **greedy).choices[0] for p in prompts]
    together = oai.completions.create(prompt=prompts, **greedy)
    assert [c.index for c in together.choices] == [0, 1, 2]
    for choice, single in zip(together.choices, alone, strict=True):
        same_up_to_a_near_tie(single.logprobs, choice.logprobs)
    assert together.usage is not None
    assert together.usage.completion_tokens == sum(len(a.logprobs.tokens) for a in alone)  # type: ignore[union-attr]
    # A stream interleaves the choices' chunks, each with its index.
    streamed: dict[int, SimpleNamespace] = {}
    for chunk in oai.completions.create(prompt=prompts, stream=True, **greedy):
        for part in chunk.choices:
            seen = streamed.setdefault(part.index, SimpleNamespace(text="", tokens=[], top_logprobs=[]))
            seen.text += part.text
            if part.logprobs is not None:
                seen.tokens += part.logprobs.tokens or []
                seen.top_logprobs += part.logprobs.top_logprobs or []
    assert sorted(streamed) == [0, 1, 2]
    for i, single in enumerate(alone):
        same_up_to_a_near_tie(single.logprobs, streamed[i])
        assert streamed[i].text == "".join(streamed[i].tokens)
    echoed = oai.completions.create(prompt=prompts, echo=True, **{**greedy, "logprobs": None})
    assert all(c.text.startswith(p) for c, p in zip(echoed.choices, prompts, strict=True))
    for bad, message in (
        (dict(prompt=prompts * 22), "at most 64 choices"),
        (dict(prompt=prompts, n=22), "at most 64 choices"),
        (dict(prompt=[]), "empty"),
        (dict(prompt=prompts, suffix="x"), "does not support insert"),  # each fails: the first says why
    ):
        with pytest.raises(openai.BadRequestError, match=message):
            oai.completions.create(model=GEMMA, max_tokens=2, **bad)  # type: ignore[call-overload]


def test_openai_n_choices_streamed_and_not(oai: openai.OpenAI) -> None:
    """n choices of one prompt run side by side, and differ; a stream of the same request gives
    the same choices, its chunks interleaved, each with its index; usage counts the prompt once
    and every completion.

    Both requests find the prompt cached (a first request puts it there): a prompt evaluated whole
    and one whose last token is evaluated alone reach their first logits through other kernels,
    which on a CPU with repacked weights move logits by up to about one unit (test_runner's
    test_greedy_output_is_the_same_alone_and_batched), enough to change a sampled token."""
    messages: list[dict[str, str]] = [{"role": "user", "content": "Write a line about the sea."}]
    sampling: dict[str, Any] = dict(model=GEMMA, messages=messages, max_tokens=10, temperature=1.2, seed=40)
    oai.chat.completions.create(**{**sampling, "max_tokens": 1})  # the prompt, cached
    several = oai.chat.completions.create(n=3, **sampling)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert len({c.message.content for c in several.choices}) > 1

    texts: dict[int, str] = {}
    roles: dict[int, str | None] = {}
    finish: dict[int, str] = {}
    chunks = list(
        oai.chat.completions.create(n=3, stream=True, stream_options={"include_usage": True}, **sampling)
    )
    for chunk in chunks:
        for part in chunk.choices:
            roles.setdefault(part.index, part.delta.role)
            texts[part.index] = texts.get(part.index, "") + (part.delta.content or "")
            if part.finish_reason:
                assert part.index not in finish
                finish[part.index] = part.finish_reason
    assert texts == {c.index: c.message.content for c in several.choices}
    assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}
    assert finish == {c.index: c.finish_reason for c in several.choices}
    assert several.usage is not None
    alone = oai.chat.completions.create(**sampling)
    assert alone.usage is not None and several.usage.prompt_tokens == alone.usage.prompt_tokens
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == several.usage.completion_tokens
    )


@pytest.fixture(scope="module")
def one_slot(home: Path) -> Iterator[ServeProcess]:
    """A server whose model has one slot: every sequence decodes alone, through the same kernels."""
    process = start_server(home, env={"MODELYARD_NUM_PARALLEL": "1"})
    yield process
    process.stop()


def test_openai_choice_j_is_the_answer_seeded_seed_plus_j(one_slot: ServeProcess) -> None:
    """With a seed, choice j samples as a request of its own with seed + j would: each choice is
    reproducible alone. Shown with one slot, where the n choices take turns: side by side, a batch
    of several rows takes other CPU kernels than one row does, whose rounding can change a sampled
    token (test_openai_n_choices_streamed_and_not says more); the prompt is cached first, so that
    every request evaluates only its last token."""
    with openai.OpenAI(base_url=f"{one_slot.url}/v1", api_key="unused", max_retries=0, timeout=120) as oai:
        messages: list[dict[str, str]] = [{"role": "user", "content": "Write a line about the sea."}]
        sampling: dict[str, Any] = dict(model=GEMMA, messages=messages, max_tokens=10, temperature=1.2)
        oai.chat.completions.create(**sampling, seed=1)  # the prompt, cached
        several = oai.chat.completions.create(n=3, seed=40, **sampling)
        alone = [oai.chat.completions.create(**sampling, seed=40 + j) for j in range(3)]
        assert [c.message.content for c in several.choices] == [a.choices[0].message.content for a in alone]
        assert len({c.message.content for c in several.choices}) > 1
        assert several.usage is not None and all(a.usage is not None for a in alone)
        assert several.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)  # type: ignore[union-attr]

        oai.completions.create(model=GEMMA, prompt="The sea is", max_tokens=1, seed=1)
        sea: dict[str, Any] = dict(model=GEMMA, prompt="The sea is", max_tokens=6)
        completions = oai.completions.create(**sea, n=2, seed=5)
        singles = [oai.completions.create(**sea, seed=seed) for seed in (5, 6)]
        assert [c.text for c in completions.choices] == [s.choices[0].text for s in singles]


def test_openai_refuses_a_prompt_longer_than_the_context_where_ollama_cuts_it(
    oai: openai.OpenAI, client: ollama.Client
) -> None:
    """OpenAI's routes answer 400 context_length_exceeded (as OpenAI, llama.cpp's server and vLLM
    do), so that a client trims and retries; Ollama's cut the prompt to fit, as Ollama does."""
    text = "Summarize this: " + "the quick brown fox jumps over the lazy dog " * 600  # ~5,400 tokens
    attempts: list[Callable[[], object]] = [
        lambda: oai.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": text}], max_tokens=2
        ),
        lambda: oai.completions.create(model=GEMMA, prompt=text, max_tokens=2),
        lambda: oai.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": text}], max_tokens=2, stream=True
        ),
    ]
    for attempt in attempts:
        with pytest.raises(openai.BadRequestError) as refused:
            for _ in attempt():  # type: ignore[attr-defined]  # a stream is read to its error
                pass
        assert refused.value.code == "context_length_exceeded", refused.value
        assert "the context holds 4096" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model=GEMMA, input=["short", text * 2])
    assert refused.value.code == "context_length_exceeded", refused.value

    cut = client.chat(model=GEMMA, messages=[{"role": "user", "content": text}], options={"num_predict": 2})
    assert cut.done and 0 < (cut.prompt_eval_count or 0) < 4096


def test_n_choices_of_a_long_prompt_evaluate_it_once(oai: openai.OpenAI, http: httpx.Client) -> None:
    """The first choice evaluates the prompt; the others copy its cells (runtime/prompt_cache.py:
    share_from_busy), which the metrics count."""

    def shared_total() -> float:
        return model_counter(http, "modelyard_prompt_shared_tokens_total")

    rules = " ".join(f"Rule {i}: answer in one short line." for i in range(12))
    system = f"Session {time.time_ns()}. {rules}"  # no slot holds this prompt yet
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
    before = shared_total()
    # Two tokens: the choices decode in batches of other sizes than the first's alone, whose CPU
    # kernels round otherwise, and a near tie later on may go either way (a CI run: "Paris." then
    # "ArgumentParser" or "iatrics"); a context copied wrong differs from the first token.
    answer = oai.chat.completions.create(model=GEMMA, messages=messages, n=3, max_tokens=2, temperature=0)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.prompt_tokens > 40
    assert shared_total() - before == 2 * (answer.usage.prompt_tokens - 1)
    assert len({c.message.content for c in answer.choices}) == 1  # greedy: the same answer thrice


def test_openai_logit_bias_bans_and_forces_tokens(oai: openai.OpenAI, gemma_gguf: Path) -> None:
    """`logit_bias` takes the model's own token ids: -100 on the greedy answer's first token makes
    another come first; +100 on one token makes the answer that token again and again. A key that
    is no id, a bias out of range and an id outside the vocabulary are 400s that say so."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gemma_gguf), vocab_only=True, verbose=False)

    def token_id(text: str) -> int:
        [token] = vocab.tokenize(text.encode(), add_bos=False, special=False)
        return int(token)

    greedy: dict[str, Any] = dict(model=GEMMA, prompt="The capital of France is", max_tokens=4, temperature=0)
    plain = oai.completions.create(**greedy, logprobs=1).choices[0].logprobs
    assert plain is not None and plain.tokens
    first = token_id(plain.tokens[0])
    banned = oai.completions.create(**greedy, logprobs=1, logit_bias={str(first): -100}).choices[0].logprobs
    assert banned is not None and banned.tokens and banned.tokens[0] != plain.tokens[0]
    forced = token_id(" blue")
    chosen = oai.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=3,
        temperature=0.8,
        logit_bias={str(forced): 100},
    )
    assert chosen.choices[0].message.content == " blue" * 3
    for bias, message in (
        ({"a": 1}, "is not a token id"),
        ({str(first): 101}, "out of range"),
        ({"999999999": 1}, "not in the vocabulary"),
    ):
        with pytest.raises(openai.BadRequestError, match=message):
            oai.completions.create(**greedy, logit_bias=bias)


def test_openai_completions_echo(oai: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    plain = oai.completions.create(model=GEMMA, prompt=prompt, max_tokens=6, temperature=0)
    echoed = oai.completions.create(model=GEMMA, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    streamed = list(
        oai.completions.create(
            model=GEMMA, prompt=prompt, max_tokens=6, temperature=0, echo=True, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == prompt + plain.choices[0].text
    only = oai.completions.create(model=GEMMA, prompt=prompt, max_tokens=0, echo=True)
    assert only.choices[0].text == prompt and only.usage is not None and only.usage.completion_tokens == 0


BATCH_ROUNDING = 0.25  # log-prob


def test_openai_completions_score_a_continuation_as_lm_eval_does(
    oai: openai.OpenAI, gemma_gguf: Path
) -> None:
    """lm-evaluation-harness's loglikelihood: token ids, echo, logprobs 1, max_tokens 1; the
    continuation's log-probs are read from the echoed prompt. They must be those the model gave
    its own greedy tokens, and greedy each (test_runner checks the scores against llama.cpp's)."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gemma_gguf), vocab_only=True, verbose=False)
    context = "The capital of France is"
    ids = vocab.tokenize(context.encode(), add_bos=True, special=True)
    by_ids = oai.completions.create(model=GEMMA, prompt=ids, max_tokens=6, temperature=0, logprobs=1)
    by_text = oai.completions.create(model=GEMMA, prompt=context, max_tokens=6, temperature=0, logprobs=1)
    assert by_ids.choices[0].text == by_text.choices[0].text  # the same tokens: no second BOS
    generated = by_ids.choices[0].logprobs
    assert generated is not None and generated.tokens and generated.token_logprobs
    continuation = vocab.tokenize(by_ids.choices[0].text.encode(), add_bos=False, special=False)
    assert [vocab.detokenize([t]).decode() for t in continuation] == generated.tokens

    whole = ids + continuation
    scored = oai.completions.create(
        model=GEMMA, prompt=[whole], max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1234
    )
    choice = scored.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs and logprobs.top_logprobs and logprobs.tokens
    assert len(logprobs.tokens) == len(whole) + 1  # the prompt's tokens, then the one generated
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    # The generation read each token's logits one at a time, the scoring in batches: llama.cpp's
    # kernels round differently by batch size (test_runner measures that drift: about 1 in logits
    # on this model), so equal up to it, and the model's own greedy choices the best up to it too.
    asked = logprobs.token_logprobs[len(ids) : -1]
    assert asked == pytest.approx(generated.token_logprobs, abs=BATCH_ROUNDING)
    for lp, top in zip(asked, logprobs.top_logprobs[len(ids) : -1], strict=True):
        assert top is not None and len(top) == 1 and lp is not None
        assert max(top.values()) - lp < BATCH_ROUNDING
    assert choice.text.startswith("<bos>" + context + by_ids.choices[0].text)  # ids: as the model read them
    assert scored.usage is not None and scored.usage.prompt_tokens == len(whole)
    offsets = logprobs.text_offset or []
    assert [
        choice.text[o : o + len(t)] for o, t in zip(offsets, logprobs.tokens, strict=True)
    ] == logprobs.tokens

    # The same through a text prompt, streamed: the prompt's chunk comes first with its scores.
    chunks = list(
        oai.completions.create(
            model=GEMMA, prompt=context, max_tokens=2, temperature=0, logprobs=1, echo=True, stream=True
        )
    )
    head = chunks[0].choices[0]
    assert head.text == context and head.logprobs is not None and head.logprobs.token_logprobs
    # Scored in a batch of 6 tokens here, of 12 above: llama.cpp's rounding differs between them.
    assert head.logprobs.token_logprobs[1:] == pytest.approx(
        logprobs.token_logprobs[1 : len(ids)], abs=BATCH_ROUNDING
    )
    with pytest.raises(openai.BadRequestError, match="not in the vocabulary"):
        oai.completions.create(model=GEMMA, prompt=[[2, 10**7]], max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="empty list of token ids"):
        oai.completions.create(model=GEMMA, prompt=[[]], max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="cannot be combined with suffix"):
        oai.completions.create(model=GEMMA, prompt=context, suffix="x", echo=True, logprobs=1, max_tokens=1)


def test_openai_completions_echo_offsets_point_at_each_token(oai: openai.OpenAI) -> None:
    """Control tokens written in a text prompt are shown as written, so that every token's
    text_offset points at it in the text, streamed or not."""
    prompt = "<start_of_turn>user\nHi<end_of_turn>\n"
    whole = oai.completions.create(
        model=GEMMA, prompt=prompt, max_tokens=4, temperature=0, logprobs=1, echo=True
    )
    text, logprobs = whole.choices[0].text, whole.choices[0].logprobs
    assert text.startswith(prompt) and logprobs is not None and logprobs.tokens and logprobs.text_offset
    assert logprobs.tokens[:3] == ["", "<start_of_turn>", "user"]  # the BOS the tokenizer added is not in it
    for offset, token in zip(logprobs.text_offset, logprobs.tokens, strict=True):
        if offset < len(text):  # an end of generation comes after the text
            assert text[offset : offset + len(token)] == token, (offset, token)
    chunks = oai.completions.create(
        model=GEMMA, prompt=prompt, max_tokens=4, temperature=0, logprobs=1, echo=True, stream=True
    )
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [o for part in streamed for o in part.text_offset or ()] == logprobs.text_offset
    assert [t for part in streamed for t in part.tokens or ()] == logprobs.tokens


def test_openai_embeddings(oai: openai.OpenAI) -> None:
    # The client asks for base64 by default and decodes it.
    result = oai.embeddings.create(model=GEMMA, input=["the sea", "the sky"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 640
    floats = oai.embeddings.create(model=GEMMA, input="the sea", encoding_format="float")
    assert (
        max(abs(a - b) for a, b in zip(floats.data[0].embedding, result.data[0].embedding, strict=True))
        < 1e-6
    )
    shorter = oai.embeddings.create(model=GEMMA, input="the sea", dimensions=64)
    assert len(shorter.data[0].embedding) == 64
    with pytest.raises(openai.BadRequestError) as wider:  # as OpenAI: no more than the model makes
        oai.embeddings.create(model=GEMMA, input="the sea", dimensions=4096)
    assert wider.value.param == "dimensions" and "vectors of 640" in wider.value.message
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length") as ids:
        oai.embeddings.create(model=GEMMA, input=[[1820, 9581]])  # LangChain's default sends tiktoken's
    assert ids.value.param == "input"
    assert result.usage.prompt_tokens > 0


def test_openai_models(oai: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in oai.models.list()]
    assert oai.models.retrieve(GEMMA).id == MODEL
    assert oai.models.retrieve(MODEL).owned_by == "modelyard"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError) as unnamable:  # no image can have this name
        oai.models.retrieve("BAD!!")
    assert unnamable.value.code == "model_not_found"


def test_openai_response_format_parses(oai: openai.OpenAI) -> None:
    free = oai.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": JSON_PROMPT}],
        response_format={"type": "json_object"},
        max_tokens=96,
        temperature=0,
    )
    assert isinstance(json.loads(free.choices[0].message.content or ""), dict)
    constrained = oai.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Pick a colour, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": COLOUR_SCHEMA}},
        max_tokens=64,
        temperature=0,
    )
    assert json.loads(constrained.choices[0].message.content or "")["colour"] in ("red", "green", "blue")


def test_openai_errors_have_openais_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404 and "not found" in missing.value.message
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], temperature=7)
    assert "temperature" in bad.value.message
    with pytest.raises(openai.BadRequestError) as images:
        oai.chat.completions.create(
            model=GEMMA,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
                }
            ],
        )
    assert "text only" in images.value.message


# --- what clients never send ----------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_wrong_types_are_400(http: httpx.Client, server: ServeProcess) -> None:
    ok = http.post(
        "/api/generate",
        json={"model": GEMMA, "prompt": "Hi", "stream": False, "options": GREEDY, "future_field": {"x": 1}},
    )
    assert ok.status_code == 200 and ok.json()["done"] is True
    # An option this server does not know (a newer Ollama's, or a typo) is skipped, as Ollama does,
    # and logged once with what it may have meant; the options it knows still apply.
    for _ in range(2):
        ok = http.post(
            "/api/generate",
            json={
                "model": GEMMA,
                "prompt": "Hi",
                "stream": False,
                "options": {**GREEDY, "num_predict": 3, "future_option": 1, "temprature": 0.5},
            },
        )
        assert ok.status_code == 200 and ok.json()["eval_count"] <= 3, ok.text
    log = server.log()
    assert log.count("ignored unknown option 'future_option' in a request's options") == 1, log[-2000:]
    assert "ignored unknown option 'temprature' (did you mean 'temperature'?)" in log
    ok = http.post(
        "/v1/chat/completions",
        json={
            "model": GEMMA,
            "messages": [{"role": "user", "content": "Hi", "x": 1}],
            "max_tokens": 2,
            "y": 2,
        },
    )
    assert ok.status_code == 200

    for path, body in (
        ("/api/generate", {"model": GEMMA, "prompt": 5}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "stream": "yes"}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "options": ["temperature", 0]}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "options": {"temperature": "hot"}}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "keep_alive": True}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "keep_alive": "3600"}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "format": "yaml"}),
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "raw": True, "system": "dropped"}),  # as Ollama
        ("/api/generate", {"model": GEMMA, "prompt": "Hi", "raw": True, "context": [1, 2]}),
        ("/api/chat", {"model": GEMMA, "messages": "Hi"}),
        ("/api/chat", {"model": GEMMA, "messages": [{"content": "no role"}]}),
        ("/api/embed", {"model": GEMMA, "input": 3}),
        ("/api/show", {"model": ["gemma3"]}),
        ("/api/copy", {"source": GEMMA}),
        ("/api/generate", {"prompt": "no model"}),
        ("/api/generate", {"model": "Bad Name!", "prompt": "Hi"}),
    ):
        answer = http.post(path, json=body)
        assert answer.status_code == 400, (path, body, answer.text)
        assert isinstance(answer.json()["error"], str), answer.text

    for body in (
        {"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": "8"},
        {"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "stream": 1},
        {"model": GEMMA, "messages": []},
        {"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "n": 65},
        {"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "xml"}},
    ):
        answer = http.post("/v1/chat/completions", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_malformed_json_and_huge_bodies_are_4xx(http: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    for path in ("/api/generate", "/api/chat", "/api/create", "/v1/chat/completions", "/v1/embeddings"):
        for raw in (
            b"{not json",
            b'{"model": "gemma3", "prompt": "unterminated',
            b"",
            b"[1, 2]",
            b"\xff\xfe",
        ):
            answer = http.post(path, content=raw, headers=json_type)
            assert answer.status_code == 400, (path, raw, answer.text)
    assert "error" in http.post("/api/chat", content=b"{not json", headers=json_type).json()

    limit = 16 * 1024 * 1024
    declared = http.post("/api/generate", content=b" " * (limit + 1), headers=json_type)
    assert declared.status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: refused as the bytes arrive
        yield b'{"model": "gemma3", "prompt": "'
        for _ in range(17):
            yield b"a" * (1024 * 1024)

    streamed = http.post("/api/generate", content=chunked(), headers=json_type)
    assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]

    # Small in bytes, costly to parse and validate: refused before either, in each API's shape.
    many = json.dumps({"model": GEMMA, "messages": [{}] * 100_000}).encode()
    ollama_refusal = http.post("/api/chat", content=many, headers=json_type)
    assert ollama_refusal.status_code == 413, ollama_refusal.text
    assert "100,004 JSON objects, arrays and object members" in ollama_refusal.json()["error"]
    openai_refusal = http.post("/v1/chat/completions", content=many, headers=json_type)
    assert openai_refusal.status_code == 413
    assert "at most 65,536" in openai_refusal.json()["error"]["message"]
    # Elements are not in that budget, but a list's validation stops at its first bad one.
    zeros = json.dumps({"model": GEMMA, "messages": [0] * 2_000_000}).encode()
    refused = http.post("/api/chat", content=zeros, headers=json_type)
    assert refused.status_code == 400 and "more fields" not in refused.json()["error"], (
        "one error, not millions"
    )
    # A UTF-8 body that starts with a byte order mark (some Windows clients write one) is read.
    marked = b"\xef\xbb\xbf" + json.dumps({"model": GEMMA, "messages": [{"x": 1}]}).encode()
    answer = http.post("/api/chat", content=marked, headers=json_type)
    assert answer.status_code == 400 and "messages[0].role" in answer.json()["error"], answer.text
    # UTF-8 only (Go's decoder): json.loads would take UTF-16, whose bytes the count misreads.
    wide = json.dumps({"model": "\u2200", "messages": [{}] * 100_000}, ensure_ascii=False)
    for encoding, said in [("utf-16-le", "not valid JSON"), ("utf-32", "not UTF-8")]:
        answer = http.post("/api/chat", content=wide.encode(encoding), headers=json_type)
        assert answer.status_code == 400 and said in answer.json()["error"], (encoding, answer.text)
    assert http.get("/health").status_code == 200, "the server survived all of it"


def test_health_status_version_and_root(http: httpx.Client, client: ollama.Client) -> None:
    client.generate(GEMMA, "", keep_alive="5m")
    assert http.get("/").text == "Ollama is running"
    assert http.head("/").status_code == 200
    assert http.head("/api/tags").status_code == 200
    assert http.get("/health").json()["status"] == "ok"
    assert "version" in http.get("/api/version").json()
    status = http.get("/api/status").json()
    assert status["models"][MODEL]["ready"] is True and status["models"][MODEL]["state"] == "ready"


def test_metrics(http: httpx.Client, client: ollama.Client) -> None:
    client.generate(GEMMA, "Name a colour.", options=GREEDY)
    list(client.chat(GEMMA, messages=[{"role": "user", "content": "Hi"}], options=GREEDY, stream=True))
    with pytest.raises(ollama.ResponseError):
        client.generate("no-such-model", "Hi")
    answer = http.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(name: str, **labels: str) -> float:
        return sum(
            v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items())
        )

    assert value("modelyard_requests_total", model=MODEL, endpoint="/api/generate", status="200") >= 1
    assert value("modelyard_requests_total", model=MODEL, endpoint="/api/chat", status="200") >= 1
    assert value("modelyard_requests_total", endpoint="/api/generate", status="404") >= 1
    assert value("modelyard_prompt_tokens_total", model=MODEL) > 10
    assert value("modelyard_generated_tokens_total", model=MODEL) >= 16
    # Greedy Gemma repeats itself: prompt lookup guessed some tokens right (runtime/drafting.py).
    drafted = value("modelyard_draft_tokens_total", model=MODEL)
    assert drafted >= value("modelyard_draft_accepted_tokens_total", model=MODEL) > 0
    assert value("modelyard_time_to_first_token_seconds_count", model=MODEL) >= 2
    assert value("modelyard_time_per_output_token_seconds_count", model=MODEL) >= 14
    assert value("modelyard_model_load_seconds_count", model=MODEL) >= 1
    assert value("modelyard_models_loaded") >= 1
    assert (MODEL,) in {(labels["model"],) for labels, _ in samples["modelyard_queue_depth"]}

    def loads_counted() -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(http.get("/metrics").text)
            for sample in family.samples
            if sample.name == "modelyard_requests_total"
            and sample.labels == {"model": MODEL, "endpoint": "/api/generate", "status": "200"}
        )

    before = loads_counted()
    client.generate(GEMMA, "")  # a load only, as preloads and `modelyard stop` send
    assert loads_counted() == before + 1

    # One load, one observation, however many requests waited for it (a metrics review: one a
    # request); a management route's success is counted too (it was not).
    client.generate(GEMMA, "", keep_alive=0)  # unloaded
    loads = value_now(http, "modelyard_model_load_seconds_count", model=MODEL)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.generate(GEMMA, "Hi", options={**GREEDY, "num_predict": 2}), range(4)))
    assert value_now(http, "modelyard_model_load_seconds_count", model=MODEL) == loads + 1
    tags = value_now(http, "modelyard_requests_total", endpoint="/api/tags", status="200")
    client.list()
    assert value_now(http, "modelyard_requests_total", endpoint="/api/tags", status="200") == tags + 1
    assert value("modelyard_slots", model=MODEL) >= 1
    assert value("modelyard_model_memory_bytes", model=MODEL) > 250_000_000
    assert value("modelyard_runner_rss_bytes", model=MODEL) > 0
    assert value("modelyard_system_memory_available_bytes") > 0


# --- the CLI against the server ---------------------------------------------------------------------

SHORT = "gemma3-short"  # greedy and 16 tokens at most: `run` has no num_predict flag, as `ollama run`


@pytest.fixture(scope="module")
def short_model(server: ServeProcess) -> str:
    c = ollama.Client(host=server.url, timeout=120)
    try:
        c.create(SHORT, from_=GEMMA, parameters={"num_predict": 16, "temperature": 0})
    finally:
        c.close()
    return SHORT


def cli(
    server: ServeProcess | None, home: Path, *args: str, host: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELYARD_HOME": str(home)}
    env.pop("MODELYARD_API_KEY", None)
    env["MODELYARD_HOST"] = host or (server.host if server else f"127.0.0.1:{free_port()}")
    return subprocess.run(
        [sys.executable, "-m", "modelyard.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_run_ps_and_stop_against_the_server(
    server: ServeProcess, home: Path, http: httpx.Client, short_model: str
) -> None:
    done = cli(server, home, "run", short_model, "Name", "--verbose", "a", "colour.")  # flags anywhere
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "tokens/s" in done.stderr

    piped = cli(server, home, "run", short_model, stdin="Name a fruit.")
    assert piped.returncode == 0 and piped.stdout.strip(), piped.stderr

    # Nothing on stdin: load the model and say nothing, as `ollama run` does. A number is seconds.
    cli(server, home, "stop", short_model)
    nothing = cli(server, home, "run", short_model, "--keep-alive", "300", stdin="\n")
    assert nothing.returncode == 0 and nothing.stdout == "", nothing.stderr
    assert f"{short_model}:latest" in loaded(http)
    # 0 is a keep_alive too (it was dropped as false): unload at once.
    assert cli(server, home, "run", short_model, "--keep-alive", "0", stdin="\n").returncode == 0
    assert f"{short_model}:latest" not in loaded(http)
    cli(server, home, "run", short_model, "--keep-alive", "300", stdin="\n")

    ps = cli(server, home, "ps")
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "ID", "SIZE", "PROCESSOR"]
    assert any(row.startswith(f"{short_model}:latest") and "100% CPU" in row for row in rows)
    # The server's memory, from /api/ps, not the CLI's machine's (a metrics review).
    assert "on the server's machine" in ps.stdout
    assert http.get("/api/ps").json()["system"]["available"] > 0

    stopped = cli(server, home, "stop", short_model)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert f"{short_model}:latest" not in loaded(http)
    again = cli(server, home, "stop", short_model)
    assert again.returncode == 1 and "is not loaded" in again.stderr

    missing = cli(server, home, "run", "no-such-model", "Hi")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_delete_answers_while_the_model_still_streams(client: ollama.Client, server: ServeProcess) -> None:
    """As Ollama's: the answer does not wait for the streams (a serving review: it waited for them,
    for ever with num_predict -1); the name is gone at once, its runner once they end."""
    client.create("deleted-mid-stream", from_=GEMMA, parameters={"num_ctx": 1024})  # a runner of its own
    body = {
        "model": "deleted-mid-stream",
        "prompt": "Tell me a long story.",
        "options": {"num_predict": 2000},
    }
    with (
        server.client() as streaming_client,
        streaming_client.stream("POST", "/api/generate", json=body) as streaming,
    ):
        lines = streaming.iter_lines()
        next(lines)
        started = time.monotonic()
        assert client.delete("deleted-mid-stream").status == "success"
        assert time.monotonic() - started < 5
        with pytest.raises(ollama.ResponseError) as caught:
            client.generate("deleted-mid-stream", "Hi")
        assert caught.value.status_code == 404
        next(lines)  # the stream goes on


def test_cli_rm_of_a_loaded_model_unloads_it_from_the_server(
    client: ollama.Client, server: ServeProcess, home: Path, http: httpx.Client
) -> None:
    """As `ollama rm`: removed from the store, it does not stay loaded (holding memory) behind 404s."""
    client.copy(GEMMA, "to-remove")
    client.generate("to-remove", "", keep_alive="5m")  # loaded (it shares Gemma's runner)
    assert "to-remove:latest" in loaded(http)
    removed = cli(server, home, "rm", "to-remove")
    assert removed.returncode == 0 and "unloaded 'to-remove:latest'" in removed.stdout, removed.stderr
    assert "to-remove:latest" not in loaded(http)


def test_cli_run_interactive_chat_until_bye(server: ServeProcess, home: Path, short_model: str) -> None:
    import pty
    import select

    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_HOST": server.host}
    env.pop("MODELYARD_API_KEY", None)
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", "run", short_model],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    seen = b""

    def read_until(marker: bytes, timeout_s: float = 60) -> bytes:
        nonlocal seen
        start = len(seen)
        deadline = time.monotonic() + timeout_s
        while marker not in seen[start:]:
            ready, _, _ = select.select([primary], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"no {marker!r} in {seen!r}")
            seen += os.read(primary, 4096)
        return seen[start:]

    try:
        assert b"/bye" in read_until(b">>> ")
        os.write(primary, b"Name a colour.\n")
        first = read_until(b">>> ")
        os.write(primary, b"/clear\n")
        assert b"Cleared" in read_until(b">>> ")
        os.write(primary, b"And a fruit?\n")
        second = read_until(b">>> ")
        assert len(first.strip()) > len(b"Name a colour. >>>") and second.strip()
        os.write(primary, b"/?\n")  # commands are never sent to the model
        assert b"/set parameter" in read_until(b">>> ")
        os.write(primary, b"/foo\n")
        assert b"unknown command '/foo'" in read_until(b">>> ")
        os.write(primary, b'"""Two\nlines."""\n')  # a message of several lines
        assert b"... " in read_until(b">>> ")
        os.write(primary, b"/bye\n")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)


def test_cli_run_starts_a_server_in_process_when_none_answers(home: Path, short_model: str) -> None:
    done = cli(None, home, "run", short_model, "Name a colour.")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    nobody = cli(None, home, "ps")
    assert nobody.returncode == 1 and "no server answers" in nobody.stderr


def test_json_bodies_without_a_json_content_type_are_read_as_curl_sends_them(http: httpx.Client) -> None:
    """`curl URL -d '{…}'` (every example in Ollama's docs) says application/x-www-form-urlencoded."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = json.dumps({"model": GEMMA, "prompt": "Hi", "stream": False, "options": GREEDY}).encode()
    for headers in (form, {}, {"content-type": "text/plain"}):
        answer = http.post("/api/generate", content=body, headers=headers)
        assert answer.status_code == 200 and answer.json()["done"] is True, answer.text
    chat = {"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answer = http.post("/v1/chat/completions", content=json.dumps(chat).encode(), headers=form)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["role"] == "assistant"


def test_openai_developer_role_is_the_system_prompt_and_stream_null_is_not_streamed(
    http: httpx.Client,
) -> None:
    def prompt_tokens(messages: list[dict[str, str]], **extra: object) -> int:
        body = {"model": GEMMA, "messages": messages, "max_tokens": 1, **extra}
        answer = http.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["usage"]["prompt_tokens"])

    user = {"role": "user", "content": "Hi"}
    rule = "Answer in French, in one short sentence."
    alone = prompt_tokens([user], stream=None)
    as_developer = prompt_tokens([{"role": "developer", "content": rule}, user])
    assert as_developer != alone  # it replaces the image's SYSTEM, as a system message does
    assert as_developer == prompt_tokens([{"role": "system", "content": rule}, user])


def test_logprobs_through_both_clients(client: ollama.Client, oai: openai.OpenAI) -> None:
    """Greedy decoding: each chosen token is its own best candidate, and the tokens spell the text."""
    chat = client.chat(
        GEMMA, messages=[{"role": "user", "content": "Hi"}], options={**GREEDY, "num_predict": 6},
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    assert chat.logprobs is not None and len(chat.logprobs) == chat.eval_count
    assert "".join(lp.token for lp in chat.logprobs).startswith(chat.message.content)
    for lp in chat.logprobs:
        assert lp.logprob <= 0 and lp.top_logprobs is not None and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].token == lp.token
    plain = client.generate(GEMMA, "Hi", options={**GREEDY, "num_predict": 3})
    assert plain.logprobs is None

    answer = oai.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.top_logprobs[0].token == c.token and len(c.top_logprobs) == 2 for c in content)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        oai.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, top_logprobs=2
        )

    streamed = oai.completions.create(
        model=GEMMA, prompt="The sky is", max_tokens=5, temperature=0, logprobs=1, stream=True
    )
    tokens: list[str] = []
    offsets: list[int] = []
    text = ""
    for part in streamed:
        choice = part.choices[0]
        if choice.logprobs is not None:
            tokens += choice.logprobs.tokens or []
            offsets += choice.logprobs.text_offset or []
        text += choice.text
    assert len(tokens) == 5 and "".join(tokens) == text
    # Counted from the prompt's start, which the answer follows, as OpenAI and llama-cpp-python do.
    assert offsets == [len("The sky is") + len("".join(tokens[:i])) for i in range(len(tokens))]
    whole = oai.completions.create(model=GEMMA, prompt="The sky is", max_tokens=5, temperature=0, logprobs=1)
    listed = whole.choices[0].logprobs
    assert (
        listed is not None
        and listed.tokens
        and listed.text_offset
        == [len("The sky is") + len("".join(listed.tokens[:i])) for i in range(len(listed.tokens))]
    )


TOOL_TEMPLATE = (
    "{{ if .Tools }}You may call these tools: {{ json .Tools }}. Write a call as "
    '<tool_call>{"name": …, "arguments": {…}}</tool_call>\n{{ end }}'
    "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: "
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# The 270M base model does not call tools by itself: a schema makes it write the call.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


class City(pydantic.BaseModel):
    name: str


class Trip(pydantic.BaseModel):
    traveller: str
    destination: City  # a nested model: the tool's parameters carry $defs


def test_a_forced_call_to_a_tool_with_nested_models(client: ollama.Client, oai: openai.OpenAI) -> None:
    """instructor's and LangChain's structured output through a forced tool call (was a 400)."""
    client.create(model="toolish-nested", from_=GEMMA, template=TOOL_TEMPLATE)
    made = oai.chat.completions.create(
        model="toolish-nested",
        messages=[{"role": "user", "content": "Bob flies to Paris."}],
        tools=[openai.pydantic_function_tool(Trip)],
        tool_choice={"type": "function", "function": {"name": "Trip"}},
        max_tokens=60,
        temperature=0,
    ).choices[0]
    assert made.finish_reason == "tool_calls", made
    [call] = made.message.tool_calls or []
    Trip.model_validate_json(call.function.arguments)  # the arguments fit the nested schema
    client.delete("toolish-nested")


def test_a_tool_result_named_only_by_its_call_id_gets_the_function_name(
    client: ollama.Client, oai: openai.OpenAI
) -> None:
    """OpenAI's clients send a tool result with tool_call_id alone; templates print .ToolName."""
    template = TOOL_TEMPLATE.replace(
        "{{ .Role }}:", "{{ .Role }}{{ if .ToolName }} ({{ .ToolName }}){{ end }}:"
    )
    client.create(model="toolish-named", from_=GEMMA, template=template)
    called = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    question = {"role": "user", "content": "Weather in Paris?"}

    def prompt_tokens(result: dict[str, Any]) -> int:
        answer = oai.chat.completions.create(
            model="toolish-named",
            messages=[question, called, result],  # type: ignore[list-item]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            max_tokens=1,
        )
        assert answer.usage is not None
        return answer.usage.prompt_tokens

    by_id = prompt_tokens({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
    named = prompt_tokens(
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny"}
    )
    unknown = prompt_tokens({"role": "tool", "tool_call_id": "call_9", "content": "sunny"})
    assert by_id == named > unknown, (by_id, named, unknown)
    client.delete("toolish-named")


def peak_rss_kib(server: ServeProcess) -> int:
    """The server process's peak resident memory so far (VmHWM), KiB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def health_waits_during(http: httpx.Client, work: Callable[[], object]) -> list[float]:
    """Run `work` in a thread, asking /health meanwhile: how long each answer took (the event
    loop's availability), every one a 200."""
    import threading

    worker = threading.Thread(target=work)
    worker.start()
    waits = []
    while worker.is_alive():
        asked = time.monotonic()
        assert http.get("/health").status_code == 200
        waits.append(time.monotonic() - asked)
        time.sleep(0.01)  # not so many that the server's own thread starves the work's
    worker.join()
    return waits


def test_a_slow_template_is_rendered_off_the_event_loop_and_a_runaway_one_is_stopped(
    client: ollama.Client, http: httpx.Client
) -> None:
    """An image's template renders on the event loop, which every request shares, for 0.1 s at
    most (render_limits.ON_LOOP_TIMEOUT_S): a slower one renders again in a thread, under the full
    2 s budget, while the server answers others; one that runs longer than that is a 400."""

    # About 0.7 s to render in the server on a 2-core VM: past the 0.1 s on the loop, within the 2 s
    # in a thread, with room for a slower machine.
    client.create(model="slowish", from_=GEMMA, template="{{ range 250000 }}{{ end }}{{ .Prompt }}")
    client.create(model="runaway", from_=GEMMA, template="{{ range 10000000000 }}{{ end }}{{ .Prompt }}")
    try:
        client.generate("slowish", "", keep_alive="1m")  # loaded: what follows times only the render
        answers: list[object] = []
        waits = health_waits_during(
            http, lambda: answers.append(client.generate("slowish", "Hi", options=GREEDY))
        )
        assert answers and answers[0].done  # type: ignore[attr-defined]
        assert len(waits) > 1 and max(waits) < 0.4, f"the loop was held: {max(waits):.2f} s"
        started = time.monotonic()
        with pytest.raises(ollama.ResponseError) as runaway:
            client.generate("runaway", "Hi", options=GREEDY)
        assert runaway.value.status_code == 400 and "longer than 2 s" in runaway.value.error
        assert time.monotonic() - started < 5
    finally:
        client.generate("slowish", "", keep_alive=0)
        client.delete("slowish")
        client.delete("runaway")


def test_a_template_that_would_take_the_server_down_fails_alone(
    server: ServeProcess, client: ollama.Client, http: httpx.Client
) -> None:
    """A request's own template (Ollama's `template`) that holds a hundred values of 8 Mi
    characters at once (3.2 GB, each within the engines' limits), and one whose single |wordwrap
    call runs for seconds: rendered in a worker process, the first fails on the worker's memory
    limit (or its time) and the second is killed at its time, while the server's memory stays where
    it was and it answers others throughout."""

    many_values = (
        '{% set x = "\U0001f600" * 1000000 %}{% set y = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}'
        + "".join(f"{{% set a{i} = y ~ {i} %}}" for i in range(100))
        + "{{ a1|length }}"
    )
    long_call = '{% set x = "x" * 1000000 %}{% set y = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}{{ y|wordwrap(1) }}'
    client.generate(GEMMA, "", keep_alive="1m")  # loaded: what follows times only the render
    peak_before = peak_rss_kib(server)
    with pytest.raises(ollama.ResponseError) as memory:
        client.generate(GEMMA, "Hi", template=many_values, options=GREEDY)
    assert memory.value.status_code == 400, memory.value.error
    # The worker's memory limit, or on a busy machine its time (2 s) before it reaches 1 GiB:
    # either way the gigabytes were never the server's.
    assert any(why in memory.value.error for why in ("too large", "memory", "longer than 2 s"))
    grown = peak_rss_kib(server) - peak_before
    assert grown < 100 * 1024, f"the server grew by {grown // 1024} MiB"

    failures: list[ollama.ResponseError] = []

    def long_render() -> None:
        try:
            client.generate(GEMMA, "Hi", template=long_call, options=GREEDY)
        except ollama.ResponseError as exc:
            failures.append(exc)

    started = time.monotonic()
    waits = health_waits_during(http, long_render)
    took = time.monotonic() - started
    assert failures and failures[0].status_code == 400 and "longer than 2 s" in failures[0].error
    assert took < 3.5, f"{took:.1f} s: the render was not stopped at its time"
    assert max(waits) < 0.4, f"the loop was held: {max(waits):.2f} s"
    assert client.generate(GEMMA, "Hi", options={**GREEDY, "num_predict": 2}).done


def test_a_template_cannot_make_a_short_request_into_megabytes(client: ollama.Client) -> None:
    """A request's 50-byte template that wrote 16 Mi characters cost the server 30 s and 1.7 GB
    (tokenizing them, returning them as `context`). A prompt's template may write 8 characters
    per character of its input, and 16 per token of the context (runtime/prompting.py)."""
    started = time.monotonic()
    with pytest.raises(ollama.ResponseError) as amplified:
        client.generate(GEMMA, "Hi", template='{{ "\U0001f600" * 1000000 }}{{ messages[-1].content }}')
    assert amplified.value.status_code == 400 and "renders more than" in amplified.value.error
    assert time.monotonic() - started < 2
    fits = client.generate(GEMMA, "Hi", template='{{ "-" * 100 }}{{ messages[-1].content }}', options=GREEDY)
    assert fits.done


def test_creating_a_model_checks_its_template_without_running_it(
    server: ServeProcess, client: ollama.Client
) -> None:
    """Jinja ran filters on a template's constants while compiling it, in the server, at
    /api/create: 50 bytes of template made it build a gigabyte there. Now checking a template
    parses it, and the render refuses what the filter would build."""
    folding = '{{ ("x" * 100)|list|tojson(indent=2000000) }}{{ messages[-1].content }}'
    large = '{{ "x"|center(4000000)|list|batch(1)|list|length }}{{ messages[-1].content }}'
    peak_before = peak_rss_kib(server)
    client.create("folding", from_=GEMMA, template=folding)
    client.create("large", from_=GEMMA, template=large)
    try:
        grown = peak_rss_kib(server) - peak_before
        assert grown < 100 * 1024, f"the server grew by {grown // 1024} MiB"
        with pytest.raises(ollama.ResponseError) as refused:
            client.generate("folding", "Hi", options=GREEDY)
        assert refused.value.status_code == 400 and "too large" in refused.value.error
    finally:
        client.delete("folding")
        client.delete("large")


@pytest.mark.parametrize(
    ("function", "said"),
    [
        # JSON takes ~990 levels; past Python's recursion
        pytest.param(
            {"name": "f", "arguments": '{"a":' * 990 + "1" + "}" * 990}, "nested too deeply", id="deep"
        ),
        pytest.param({"name": "f", "arguments": "[1, 2]"}, "must be a JSON object, not list", id="a-list"),
        pytest.param({"name": "f", "arguments": "5"}, "must be a JSON object, not int", id="a-number"),
        pytest.param("f", "function must be an object", id="function-a-string"),
    ],
)
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_tool_calls_in_the_history_that_are_not_calls_are_a_400(
    http: httpx.Client, path: str, function: object, said: str
) -> None:
    call = {"id": "c1", "type": "function", "function": function}
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    answer = http.post(path, json={"model": GEMMA, "stream": False, "messages": history})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert said in (error if isinstance(error, str) else error["message"]), answer.text
    assert "messages[1].tool_calls[0].function" in answer.text


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param('"raw": true, "prompt": "a \\ud800 b"', id="raw-prompt"),
        pytest.param('"prompt": "a \\ud800 b"', id="templated-prompt"),
        pytest.param('"prompt": "hi", "options": {"stop": ["\\udc00"]}', id="stop"),
        pytest.param('"prompt": "hi", "format": {"type": "string", "description": "\\ud800"}', id="format"),
        pytest.param('"prompt": "a \\ud83d\\ude00 b"', id="a-pair-is-no-surrogate"),
    ],
)
def test_a_lone_surrogate_in_a_request_is_taken_as_go_decodes_it(http: httpx.Client, fields: str) -> None:
    """JSON's "\\ud800" is a lone surrogate in Python, which no UTF-8 carries to the runner (it was
    a 500); Go's decoder, Ollama's, makes it U+FFFD, and so does ours (server/bodies.py)."""
    body = f'{{"model": "{GEMMA}", "stream": false, {fields}}}'
    options = '"options": {"num_predict": 1}' if '"options"' not in fields else ""
    if options:
        body = body[:-1] + ", " + options + "}"
    answer = http.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True


def test_a_template_that_reads_the_suffix_gives_the_insert_capability(client: ollama.Client) -> None:
    """Ollama's "insert" (fill in the middle), which editors check before sending a suffix; a
    template that only mentions the word "tools" in its text does not take tools."""
    fim = "{{ if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{ else }}{{ .Prompt }}{{ end }}"
    client.create(model="fimish", from_=GEMMA, template=fim, system="You use no tools.")
    try:
        assert client.show("fimish").capabilities == ["completion", "insert"]
        listed = {m.model: m for m in client.list().models}
        assert GEMMA + ":latest" in listed and "fimish:latest" in listed
        filled = client.generate("fimish", "def add(a, b):", suffix="    return c", options=GREEDY)
        assert filled.done
    finally:
        client.delete("fimish")
    assert client.show(GEMMA).capabilities == ["completion"]


def test_tool_calls_reach_both_clients_as_calls(
    client: ollama.Client, oai: openai.OpenAI, http: httpx.Client
) -> None:
    client.create(model="toolish", from_=GEMMA, template=TOOL_TEMPLATE)
    assert "tools" in (client.show("toolish").capabilities or [])
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced: dict[str, Any] = {
        "messages": question,
        "tools": [WEATHER_TOOL],
        "format": CALL_SCHEMA,
        "options": {"temperature": 0, "num_predict": 60},
    }

    chat = client.chat("toolish", **forced)
    assert chat.message.content == "" and chat.message.tool_calls is not None
    [call] = chat.message.tool_calls
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    streamed = [
        c.message.tool_calls for c in client.chat("toolish", **forced, stream=True) if c.message.tool_calls
    ]
    assert [[c.function.name for c in calls] for calls in streamed] == [["get_weather"]]
    # Each call has an id (Ollama's `call_` and 8 characters), for the tool result to name it.
    raw = http.post("/api/chat", json={"model": "toolish", "stream": False, **forced}).json()
    assert re.fullmatch(r"call_[0-9a-z]{8}", raw["message"]["tool_calls"][0]["id"]), raw

    openai_forced: dict[str, Any] = {
        "model": "toolish",
        "messages": question,
        "tools": [WEATHER_TOOL],
        "max_tokens": 60,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}},
    }
    choice = oai.chat.completions.create(**openai_forced).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [openai_call] = choice.message.tool_calls or []
    assert openai_call.id.startswith("call_") and openai_call.function.name == "get_weather"
    assert json.loads(openai_call.function.arguments) == {"city": "Paris"}
    parts = [p for p in oai.chat.completions.create(**openai_forced, stream=True) if p.choices]
    deltas = [
        (d.function.name, json.loads(d.function.arguments or ""))
        for part in parts
        for d in part.choices[0].delta.tool_calls or []
        if d.function
    ]
    assert deltas == [("get_weather", {"city": "Paris"})]
    assert parts[0].choices[0].delta.role == "assistant" and parts[0].choices[0].delta.tool_calls
    assert parts[-1].choices[0].finish_reason == "tool_calls"
    # tool_choice required, or a named function: a grammar makes the model write the call.
    plain: dict[str, Any] = {k: v for k, v in openai_forced.items() if k != "response_format"}
    allowed = {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    for choice in (
        "required",
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "allowed_tools", "allowed_tools": allowed},
    ):
        forced_call = oai.chat.completions.create(**plain, tool_choice=choice).choices[0]  # type: ignore[arg-type]
        assert forced_call.finish_reason == "tool_calls", forced_call
        [made] = forced_call.message.tool_calls or []
        assert made.function.name == "get_weather" and "city" in json.loads(made.function.arguments)
    # With a response_format too (frameworks send both): the answer is the call all the same.
    formatted = oai.chat.completions.create(
        **plain, tool_choice="required", response_format={"type": "json_object"}
    )
    assert formatted.choices[0].finish_reason == "tool_calls", formatted
    # n choices, each its own call (each choice's output is parsed on its own)
    several = oai.chat.completions.create(
        **{**plain, "temperature": 1.0}, tool_choice="required", n=3, seed=3
    )
    for forced_call in several.choices:
        assert forced_call.finish_reason == "tool_calls", forced_call
        [made] = forced_call.message.tool_calls or []
        assert made.function.name == "get_weather" and "city" in json.loads(made.function.arguments)
    with pytest.raises(openai.BadRequestError, match="which tools does not offer"):
        oai.chat.completions.create(**plain, tool_choice={"type": "function", "function": {"name": "nope"}})
    # OpenAI's deprecated functions and function_call, which its API still honours (a client
    # review: they were ignored): one call, in message.function_call, finish_reason function_call.
    legacy: dict[str, Any] = {k: v for k, v in plain.items() if k != "tools"} | {
        "functions": [WEATHER_TOOL["function"]],
        "function_call": {"name": "get_weather"},
    }
    old = oai.chat.completions.create(**legacy).choices[0]
    assert old.finish_reason == "function_call" and old.message.tool_calls is None, old
    assert old.message.function_call is not None and old.message.function_call.name == "get_weather"
    assert "city" in json.loads(old.message.function_call.arguments)
    streamed_old = [p for p in oai.chat.completions.create(**legacy, stream=True) if p.choices]
    said = [p.choices[0].delta.function_call for p in streamed_old if p.choices[0].delta.function_call]
    assert [call.name for call in said] == ["get_weather"]
    assert streamed_old[-1].choices[0].finish_reason == "function_call"
    with pytest.raises(openai.BadRequestError, match="not both"):
        oai.chat.completions.create(**legacy, tools=[WEATHER_TOOL])
    with pytest.raises(openai.BadRequestError, match="function_call must be"):
        oai.chat.completions.create(**legacy | {"function_call": "required"})
    with pytest.raises(openai.BadRequestError, match="which functions does not offer"):
        oai.chat.completions.create(**legacy | {"function_call": {"name": "nope"}})
    unparsed = oai.chat.completions.create(**openai_forced, tool_choice="none").choices[0]
    assert unparsed.finish_reason == "stop" and not unparsed.message.tool_calls
    assert json.loads(unparsed.message.content or "") == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }

    # Without a call in the output, the answer is text as before; tools for a model that cannot see
    # them are refused, as Ollama refuses them.
    text = client.chat("toolish", messages=question, tools=[WEATHER_TOOL], options=GREEDY)
    assert text.message.tool_calls is None and text.message.content
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(GEMMA, messages=question, tools=[WEATHER_TOOL])
    assert refused.value.status_code == 400 and "does not support tools" in refused.value.error
    client.delete("toolish")


def test_a_web_page_from_another_origin_cannot_drive_the_server(
    http: httpx.Client, client: ollama.Client
) -> None:
    """A browser sends a text/plain POST cross-site without asking first; bodies are read as JSON
    whatever their type, so a foreign Origin must be refused (403, as Ollama) or any page the user
    visits could copy, push or delete their models. A page from this machine is served."""
    copy = json.dumps({"source": GEMMA, "destination": "stolen/copy:v1"}).encode()
    plain = {"content-type": "text/plain"}
    refused = http.post("/api/copy", content=copy, headers={**plain, "origin": "https://evil.example"})
    assert refused.status_code == 403 and "MODELYARD_ORIGINS" in refused.json()["error"]
    assert http.get("/api/tags", headers={"origin": "http://127.0.0.1.evil.example"}).status_code == 403
    assert "stolen/copy:v1" not in {m.model for m in client.list().models}
    local = http.post("/api/copy", content=copy, headers={**plain, "origin": "http://localhost:3000"})
    assert local.status_code == 200
    client.delete("stolen/copy:v1")
    # DNS rebinding: a page whose domain now resolves to 127.0.0.1 reads as its own origin, sending
    # no Origin header; the server on loopback answers only requests that name this machine.
    rebound = http.get("/api/tags", headers={"host": f"attacker.example:{http.base_url.port}"})
    assert rebound.status_code == 403 and "listens on loopback" in rebound.json()["error"]
    assert http.get("/api/tags", headers={"host": f"localhost:{http.base_url.port}"}).status_code == 200
    # A container on Docker Desktop reaches the host's loopback as host.docker.internal.
    docker = http.get("/api/tags", headers={"host": f"host.docker.internal:{http.base_url.port}"})
    assert docker.status_code == 200
    for app in ("app://obsidian.md", "vscode-webview://8f2c4a1b", "tauri://localhost"):  # as Ollama
        assert http.get("/api/tags", headers={"origin": app}).status_code == 200, app
    refused = http.get("/v1/models", headers={"origin": "https://evil.example"})  # in OpenAI's shape
    assert refused.status_code == 403 and "MODELYARD_ORIGINS" in refused.json()["error"]["message"]


def test_a_derived_model_and_a_copy_share_the_loaded_runner(
    client: ollama.Client, http: httpx.Client
) -> None:
    """Same weights, same load options: one runner serves the base, a model with a new SYSTEM and
    a copy (as Ollama shares it); each name answers with its own prompt, memory is counted once,
    and deleting one name leaves the runner to the others."""
    client.generate(GEMMA, "Hi", options=GREEDY)
    client.create("sharing-pirate", from_=GEMMA, system="You are a pirate.")
    client.copy(GEMMA, "sharing-copy")
    base = client.generate(GEMMA, "Hi", options=GREEDY)
    pirate = client.generate("sharing-pirate", "Hi", options=GREEDY)
    copy = client.generate("sharing-copy", "Hi", options=GREEDY)
    assert pirate.prompt_eval_count != base.prompt_eval_count  # its own SYSTEM reached the model
    assert copy.response == base.response
    rows = loaded(http)
    names = [f"{GEMMA}:latest", "sharing-pirate:latest", "sharing-copy:latest"]
    assert len({rows[n]["runner_pid"] for n in names}) == 1
    # Counted once, with the name that leads the runner: the base, unless its keep_alive ran out
    # between two requests on a slow machine and another name took the lead (a CI run).
    [leader] = [n for n in names if rows[n]["size"] > 0]
    assert all(
        rows[n]["size"] == 0 and f"shares the runner of {leader}" in rows[n]["note"]
        for n in names
        if n != leader
    )
    pid = rows[f"{GEMMA}:latest"]["runner_pid"]
    client.delete("sharing-pirate")
    client.delete("sharing-copy")
    rows = loaded(http)
    assert set(rows) & set(names) == {f"{GEMMA}:latest"} and rows[f"{GEMMA}:latest"]["runner_pid"] == pid


def test_the_responses_api_through_the_openai_client(client: ollama.Client, oai: openai.OpenAI) -> None:
    """OpenAI's Responses API, stateless as Ollama serves it (it answered 404)."""
    cut = oai.responses.create(
        model=GEMMA, instructions="Be brief.", input="Hi", max_output_tokens=4, temperature=0
    )
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text and cut.usage is not None and cut.usage.output_tokens == 4
    chat = oai.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
    )
    assert cut.output_text == chat.choices[0].message.content, "the same prompt as the chat API's"
    assert cut.usage.input_tokens == chat.usage.prompt_tokens  # type: ignore[union-attr]
    details = cut.usage.input_tokens_details  # the SDK requires cache_write_tokens (a review)
    assert details.cached_tokens + details.cache_write_tokens == cut.usage.input_tokens
    scored = oai.responses.create(
        model=GEMMA,
        instructions="Be brief.",
        input="Hi",
        max_output_tokens=4,
        temperature=0,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )  # with the log-probabilities asked for (they were [])
    [part] = scored.output[0].content  # type: ignore[union-attr]
    assert part.text == cut.output_text and len(part.logprobs) == 4  # type: ignore[union-attr]
    assert all(len(p.top_logprobs) == 2 and p.logprob <= 0 for p in part.logprobs)  # type: ignore[union-attr]
    assert "".join(p.token for p in part.logprobs) == part.text  # type: ignore[union-attr]

    colour = {"format": {"type": "json_schema", "name": "colour", "schema": COLOUR_SCHEMA, "strict": True}}
    whole = oai.responses.create(model=GEMMA, input="Name a colour.", text=colour, temperature=0)  # type: ignore[arg-type]
    assert whole.status == "completed" and json.loads(whole.output_text)["colour"] in ("red", "green", "blue")
    with oai.responses.stream(model=GEMMA, input="Name a colour.", text=colour, temperature=0) as stream:  # type: ignore[arg-type]
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == whole.output_text
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    # Tools: a forced call comes back as a function_call item; its output goes back in the input.
    client.create(
        model="toolish-responses", from_=GEMMA, template=TOOL_TEMPLATE, parameters={"temperature": 0.3}
    )

    def answered_after(tools: list[Any], asked: list[Any], call: Any, output: dict[str, Any]) -> Any:
        """The answer to the conversation with the model's call and the tool's output after it."""
        answer = oai.responses.create(
            model="toolish-responses",
            input=[*asked, call.model_dump(), output],
            tools=tools,
            max_output_tokens=4,
            temperature=0,
        )
        assert answer.output and answer.usage is not None
        return answer

    try:
        # What it samples with is what it says: the image's temperature, not 1.0 (a review).
        said = oai.responses.create(model="toolish-responses", input="Hi", max_output_tokens=1)
        assert said.temperature == pytest.approx(0.3)
        tool = {"type": "function", **WEATHER_TOOL["function"]}
        asked = [{"role": "user", "content": "What is the weather in Paris?"}]
        called = oai.responses.create(
            model="toolish-responses",
            input=asked,
            tools=[tool],
            tool_choice="required",
            temperature=0,  # type: ignore[arg-type, list-item]
        )
        [call] = called.output
        assert (
            call.type == "function_call"
            and call.name == "get_weather"
            and "city" in json.loads(call.arguments)
        )
        answered = answered_after(
            [tool], asked, call, {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        )
        assert answered.usage.input_tokens > called.usage.input_tokens  # type: ignore[union-attr]
        # The Responses API's own form of allowed tools (was: 400, only the chat API's was read).
        allowed = {
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "get_weather"}],
        }
        forced = oai.responses.create(
            model="toolish-responses",
            input=asked,
            tools=[tool],
            tool_choice=allowed,
            temperature=0,  # type: ignore[arg-type, list-item]
        )
        assert [item.type for item in forced.output] == ["function_call"]
        unknown = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "nope"}]}
        with pytest.raises(openai.BadRequestError, match="names nope, which tools does not offer"):
            oai.responses.create(model="toolish-responses", input=asked, tools=[tool], tool_choice=unknown)  # type: ignore[arg-type, list-item]
        # A custom tool (Codex's apply_patch: free text in) is called with a string, and its call
        # and output go back as the conversation (they were a 400).
        patch = {"type": "custom", "name": "apply_patch", "description": "Write one short line to notes.txt."}
        wanted = [{"role": "user", "content": "Add the word hello to notes.txt."}]
        patched = oai.responses.create(
            model="toolish-responses",
            input=wanted,  # type: ignore[arg-type]
            tools=[patch],  # type: ignore[list-item]
            tool_choice={"type": "custom", "name": "apply_patch"},
            temperature=0,
            max_output_tokens=200,
        )
        [item] = patched.output
        assert item.type == "custom_tool_call" and isinstance(item.input, str), patched.output
        back = answered_after(
            [patch],
            wanted,
            item,
            {"type": "custom_tool_call_output", "call_id": item.call_id, "output": "ok"},
        )
        assert back.usage.input_tokens > patched.usage.input_tokens  # type: ignore[union-attr]
    finally:
        client.delete("toolish-responses")
    with pytest.raises(openai.BadRequestError, match="stores no responses"):
        oai.responses.create(model=GEMMA, input="Hi", previous_response_id="resp_1")


def test_a_model_in_steady_use_makes_room_for_another_through_the_server(
    tmp_path: Path, gemma_gguf: Path
) -> None:
    """Memory for one of two runners; four ollama clients keep the first streaming with no pause; a
    request for the second is answered once the first's requests in flight end, `ps` shows the
    first stopping meanwhile, and every client of the first is answered (before: 503 after 30 s)."""
    import threading

    home = build_gemma_home(tmp_path / "home", gemma_gguf)
    sizes: dict[str, int] = {}
    server = start_server(home, env={"MODELYARD_NUM_PARALLEL": "2"})
    try:
        client = ollama.Client(host=server.url)
        client.create(model="small-ctx", from_=GEMMA, parameters={"num_ctx": 1024})
        for name in (MODEL, "small-ctx:latest"):
            client.generate(model=name, prompt="")
            sizes.update({m.model: m.size for m in client.ps().models if m.size})
        client.close()
    finally:
        server.stop()
    budget = max(sizes.values()) + min(sizes.values()) // 2  # either, not both
    server = start_server(home, env={"MODELYARD_NUM_PARALLEL": "2", "MODELYARD_RAM_BUDGET": str(budget)})
    try:
        client = ollama.Client(host=server.url, timeout=120)
        client.generate(model=MODEL, prompt="")
        halt = threading.Event()
        answers: list[str] = []
        failures: list[str] = []

        def steady() -> None:
            while not halt.is_set():
                try:
                    stream = client.generate(model=MODEL, prompt="Hello", stream=True, options=GREEDY)
                    answers.append("".join(part.response for part in stream))
                except Exception as exc:  # any failure at all is what this test looks for
                    failures.append(repr(exc))

        clients = [threading.Thread(target=steady) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(2)
            states: list[str] = []

            def watch() -> None:  # /api/ps during the switch, every 50 ms for 2 s
                for _ in range(40):
                    states.extend(
                        m.get("state", "") for m in httpx.get(f"{server.url}/api/ps").json()["models"]
                    )
                    time.sleep(0.05)

            watching = threading.Thread(target=watch)
            watching.start()
            started = time.monotonic()
            other = client.generate(model="small-ctx", prompt="Hi", options=GREEDY)
            took = time.monotonic() - started
            watching.join()
            served_before = len(answers)
            time.sleep(2)
        finally:
            halt.set()
            for thread in clients:
                thread.join()
        client.close()
        assert other.response and took < 15, f"{took:.1f} s"
        assert "stopping" in states, states
        assert not failures, failures[:3]
        assert len(answers) > served_before, "the first model served again after the switch"
    finally:
        server.stop()
