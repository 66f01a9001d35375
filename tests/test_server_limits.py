"""The server under pressure and behind a key, as real processes with Gemma 3 270M: the queue bound
(503 + Retry-After), clients that go away mid-stream (their slot is freed, counted as 499), the API
key, and CORS."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from server_process import GEMMA, ServeProcess, build_gemma_home, start_server

pytestmark = pytest.mark.gemma

MODEL = f"{GEMMA}:latest"
KEY = "test-key-0123456789"
NO_END = {"1": -100, "106": -100}  # Gemma's <eos> and <end_of_turn>, as OpenAI's logit_bias
LONG = {"model": GEMMA, "prompt": "Write a long story about a dragon.", "options": {"num_predict": 2000}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Path:
    return build_gemma_home(tmp_path_factory.mktemp("limits") / "home", gemma_gguf)


@pytest.fixture(scope="module")
def busy(home: Path) -> Iterator[ServeProcess]:
    """One slot and room for one more request: the third concurrent request is refused."""
    process = start_server(home, env={"MODELYARD_NUM_PARALLEL": "1", "MODELYARD_MAX_QUEUE": "1"})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def keyed(home: Path) -> Iterator[ServeProcess]:
    process = start_server(
        home, api_key=KEY, env={"MODELYARD_ORIGINS": "http://app.example,vscode-webview://*"}
    )
    yield process
    process.stop()


def model_status(http: httpx.Client) -> dict[str, int]:
    for m in http.get("/api/ps").json()["models"]:
        if m["name"] == MODEL:
            return {"slots": m["slots"], "busy": m["slots_busy"], "queued": m["queued"]}
    return {"slots": 0, "busy": 0, "queued": 0}


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether the process runs (a zombie does not: it waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def metric(http: httpx.Client, line_start: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in http.get("/metrics").text.splitlines()
        if line.startswith(line_start)
    )


def test_the_queue_bound_gives_503_with_retry_after(busy: ServeProcess) -> None:
    with busy.client() as http, busy.client() as first:
        http.post("/api/generate", json={"model": GEMMA})  # loaded
        with first.stream("POST", "/api/generate", json=LONG) as streaming:
            assert streaming.status_code == 200
            lines = streaming.iter_lines()
            next(lines)
            queued_result: dict[str, object] = {}

            def second() -> None:  # waits in the runner's queue until the first one ends
                with busy.client() as c, c.stream("POST", "/api/generate", json=LONG) as response:
                    queued_result["status"] = response.status_code
                    queued_result["line"] = next(response.iter_lines())

            thread = threading.Thread(target=second)
            thread.start()
            wait_for(lambda: model_status(http)["queued"] == 1, "the second request to queue")
            assert model_status(http)["busy"] == 1

            refused = http.post("/api/generate", json={**LONG, "stream": False})
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert "busy" in refused.json()["error"]

            refused = http.post(
                "/v1/chat/completions", json={"model": GEMMA, "messages": [{"role": "user", "content": "Hi"}]}
            )
            assert refused.status_code == 503 and "retry-after" in refused.headers
            assert refused.json()["error"]["type"] == "server_busy"

            with ollama.Client(host=busy.url) as c, pytest.raises(ollama.ResponseError) as caught:
                c.generate(GEMMA, "Hi")
            assert caught.value.status_code == 503
        # The first client has gone: the second gets the slot, streams, and goes away too.
        thread.join(60)
        assert queued_result["status"] == 200 and queued_result["line"]
        wait_for(lambda: model_status(http) == {"slots": 1, "busy": 0, "queued": 0}, "the slot to be freed")
        assert (
            metric(
                http, 'modelyard_requests_total{endpoint="/api/generate",model="gemma3:latest",status="503"}'
            )
            >= 1
        )


def test_a_client_that_disconnects_mid_stream_frees_its_slot(busy: ServeProcess) -> None:
    with busy.client() as http:
        before = metric(
            http, 'modelyard_requests_total{endpoint="/api/chat",model="gemma3:latest",status="499"}'
        )
        generated = 'modelyard_generated_tokens_total{model="gemma3:latest"}'
        tokens_before = metric(http, generated)
        body = {
            "model": GEMMA,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "options": {"num_predict": 2000},
        }
        with busy.client() as c, c.stream("POST", "/api/chat", json=body) as streaming:
            lines = streaming.iter_lines()
            next(lines)
            next(lines)
            assert model_status(http)["busy"] == 1
        wait_for(lambda: model_status(http)["busy"] == 0, "the slot to be freed")
        # The tokens it was sent count, as its time to first token did (a metrics review: none did).
        wait_for(lambda: metric(http, generated) >= tokens_before + 2, "its tokens to be counted")
        wait_for(
            lambda: (
                metric(
                    http, 'modelyard_requests_total{endpoint="/api/chat",model="gemma3:latest",status="499"}'
                )
                == before + 1
            ),
            "the 499 to be counted",
        )

        with openai.OpenAI(base_url=f"{busy.url}/v1", api_key="unused", max_retries=0) as oai:
            stream = oai.chat.completions.create(
                model=GEMMA,
                messages=[{"role": "user", "content": "Tell me a long story."}],
                max_tokens=2000,
                stream=True,
            )
            chunks = iter(stream)
            next(chunks)
            next(chunks)
            stream.close()
            wait_for(lambda: model_status(http)["busy"] == 0, "the slot to be freed (OpenAI stream)")
            # One slot only: an answer now proves that the runner really let the old request go.
            started = time.monotonic()
            answer = oai.chat.completions.create(
                model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert answer.choices[0].finish_reason in ("length", "stop")
            assert time.monotonic() - started < 20


def test_unloading_a_busy_model_answers_at_once_and_it_goes_when_its_request_ends(busy: ServeProcess) -> None:
    """A scheduler audit: keep_alive 0 without a prompt (what `modelyard stop` sends) answered only
    once the model's requests ended (never, for a stream without end). As Ollama: at once; the
    model goes when its requests end, and none joins it meanwhile."""

    def listed(http: httpx.Client) -> list[str]:
        return [m["name"] for m in http.get("/api/ps").json()["models"]]

    with busy.client() as http, openai.OpenAI(base_url=f"{busy.url}/v1", api_key="x", max_retries=0) as oai:
        stream = oai.completions.create(
            model=GEMMA, prompt="Once upon a time", max_tokens=400, logit_bias=NO_END, stream=True
        )
        chunks = iter(stream)
        next(chunks)
        started = time.monotonic()
        answer = http.post("/api/generate", json={"model": GEMMA, "keep_alive": 0}, timeout=60)
        assert answer.status_code == 200 and answer.json()["done_reason"] == "unload", answer.text
        assert time.monotonic() - started < 5
        assert MODEL in listed(http), "still serving its stream"
        rest = [chunk.choices[0].finish_reason for chunk in chunks]
        assert len(rest) > 100 and rest[-1] == "length", "the stream went on to its end"
        wait_for(lambda: MODEL not in listed(http), "the model to go once its request ended")


def test_a_client_that_leaves_before_its_first_token_leaves_the_queue(busy: ServeProcess) -> None:
    """Queued behind a busy slot, a stream has sent nothing yet (the first event is awaited before
    the status line): its client's leaving still takes it out of the queue, as a 499."""
    gone = 'modelyard_requests_total{endpoint="/v1/completions",model="gemma3:latest",status="499"}'
    with busy.client() as http, busy.client() as first:
        before = metric(http, gone)
        with first.stream("POST", "/api/generate", json=LONG) as streaming:
            lines = streaming.iter_lines()  # kept: an iterator dropped closes the response
            next(lines)
            body = json.dumps({"model": GEMMA, "prompt": "Hi", "max_tokens": 8, "stream": True}).encode()
            host, port = busy.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                wait_for(lambda: model_status(http)["queued"] == 1, "the second request to queue")
            wait_for(lambda: model_status(http)["queued"] == 0, "the queue to let it go")
            assert model_status(http)["busy"] == 1, "the first stream goes on"
            wait_for(lambda: metric(http, gone) == before + 1, "the 499 to be counted")


def test_the_api_key_guards_every_route_but_root_and_health(keyed: ServeProcess) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as anonymous:
        assert anonymous.get("/").status_code == 200
        assert anonymous.get("/health").status_code == 200
        for method, path in (
            ("GET", "/api/tags"),
            ("GET", "/api/ps"),
            ("GET", "/metrics"),
            ("POST", "/api/generate"),
            ("GET", "/api/version"),
        ):
            answer = anonymous.request(method, path)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"] == "Bearer"
            assert "MODELYARD_API_KEY" in answer.json()["error"]
        wrong = anonymous.get("/api/tags", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and KEY not in wrong.text
        openai_shape = anonymous.get("/v1/models")
        refused = openai_shape.json()["error"]
        # OpenAI's own answer to a wrong key (continuedev/continue#9358 shows it).
        assert openai_shape.status_code == 401
        assert (refused["type"], refused["code"]) == ("invalid_request_error", "invalid_api_key")
        assert anonymous.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        # Refusals carry a request id too, the client's own when it sent one.
        assert anonymous.get("/api/tags").headers["x-request-id"].startswith("req_")
        mine = anonymous.get("/api/ps", headers={"x-request-id": "mine-1"})
        assert mine.headers["x-request-id"] == "mine-1"

    with ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert MODEL in [m.model for m in c.list().models]
    with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0) as oai:
        listed = oai.models.list()
        assert MODEL in [m.id for m in listed]
        assert listed._request_id and listed._request_id.startswith("req_"), "the client shows it"
    with (
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0) as oai,
        pytest.raises(openai.AuthenticationError),
    ):
        oai.models.list()


@pytest.mark.parametrize("command", [["ps"], ["status"], ["stop", "gemma3"]])
def test_the_cli_without_the_key_says_so_without_a_traceback(
    keyed: ServeProcess, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from modelyard.cli import main

    monkeypatch.setenv("MODELYARD_HOST", keyed.host)
    monkeypatch.setenv("MODELYARD_HOME", str(keyed.home))
    monkeypatch.delenv("MODELYARD_API_KEY", raising=False)
    out, err = io.StringIO(), io.StringIO()
    assert main(command, stdout=out, stderr=err) == 1
    assert err.getvalue().startswith("Error: missing or wrong API key") and KEY not in err.getvalue()
    monkeypatch.setenv("MODELYARD_API_KEY", KEY)  # the CLI sends the key it is given
    assert main(["ps"], stdout=io.StringIO(), stderr=io.StringIO()) == 0


def test_cors_is_off_unless_configured(keyed: ServeProcess, busy: ServeProcess) -> None:
    """As the serving issue asks, not as Ollama (which answers this machine's pages and desktop
    apps by default): listing them in MODELYARD_ORIGINS does that."""
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    with httpx.Client(timeout=30) as c:
        allowed = c.options(f"{keyed.url}/api/chat", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = c.options(f"{keyed.url}/api/chat", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        webview = {**preflight, "Origin": "vscode-webview://8f2c4a1b"}  # a pattern, as Ollama's users list it
        assert c.options(f"{keyed.url}/api/chat", headers=webview).headers["access-control-allow-origin"] == (
            "vscode-webview://8f2c4a1b"
        )
        off = c.get(f"{busy.url}/api/tags", headers={"Origin": "http://app.example"})
        assert "access-control-allow-origin" not in off.headers, "other sites only when configured"
        # Not even this machine's pages and desktop apps without configuration (their requests
        # pass the origin guard, as in Ollama, but the browser lets them read nothing).
        for local in ("http://localhost:3000", "http://127.0.0.1:8080", "app://obsidian.md"):
            page = c.options(f"{busy.url}/api/chat", headers={**preflight, "Origin": local})
            assert page.status_code == 400 and "access-control-allow-origin" not in page.headers
            tags = c.get(f"{busy.url}/api/tags", headers={"Origin": local})
            assert tags.status_code == 200 and "access-control-allow-origin" not in tags.headers


def test_a_client_that_leaves_a_non_streaming_request_frees_its_slot(busy: ServeProcess) -> None:
    """No stream to break: the server notices the closed connection and cancels the generation."""
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        # Greedy: sampled at the default temperature, the answer could end within the 3 s (it did).
        "options": {"num_predict": 2000, "temperature": 0},
        "stream": False,
    }
    openai_body = {
        "model": GEMMA,
        "messages": body["messages"],
        "max_tokens": 2000,
        "temperature": 0,
        "n": 1,
    }
    with busy.client() as http:
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=busy.url, timeout=3) as impatient:
            impatient.post("/api/chat", json=body)  # gives up after 3 s and closes the connection
        wait_for(lambda: model_status(http)["busy"] == 0, "the slot to be freed", timeout_s=10)
        # OpenAI's non-streaming answer gathers its choices in a task group: leaving cancels it too.
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=busy.url, timeout=3) as impatient:
            impatient.post("/v1/chat/completions", json=openai_body)
        wait_for(lambda: model_status(http)["busy"] == 0, "the slot to be freed (OpenAI)", timeout_s=10)
        started = time.monotonic()
        answer = http.post(
            "/api/generate",
            json={"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}},
        )
        assert answer.status_code == 200 and time.monotonic() - started < 20


def test_a_client_that_leaves_an_embeddings_request_stops_its_work(busy: ServeProcess) -> None:
    """A review: an abandoned request of many inputs ran to its end (a client's retries queued
    behind it: 257 s). The runner drops the batches not yet computed once the client has left."""
    # About two minutes of work on the test VM: a machine ten times faster still outlasts the 3 s.
    inputs = [f"Document {i}: the keeper lit the lamp at dusk and watched ship {i}." for i in range(2000)]
    small = ["one more"]
    with busy.client() as http:
        for path, body, answer in [
            ("/api/embed", {"model": GEMMA, "input": inputs}, {"model": GEMMA, "input": small}),
            ("/v1/embeddings", {"model": GEMMA, "input": inputs}, {"model": GEMMA, "input": small}),
        ]:
            with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=busy.url, timeout=3) as impatient:
                impatient.post(path, json=body)  # left after 3 s
            started = time.monotonic()
            assert http.post(path, json=answer).status_code == 200
            assert time.monotonic() - started < 15, f"{path}: waited for the abandoned request"


def test_generations_cut_by_a_shutdown_end_with_an_error_that_says_so(home: Path) -> None:
    """SIGTERM: the requests in flight get the graceful period, then each ends with an error of
    its own (an NDJSON error line, an OpenAI error event, a 503), never a silently short answer."""
    # A short grace: the streams are cut a second in, long before the model could end one itself.
    server = start_server(home, env={"MODELYARD_NUM_PARALLEL": "3", "MODELYARD_SHUTDOWN_GRACE": "2"})
    outcome: dict[str, tuple[str, int]] = {}  # by client: (how it ended, tokens received)
    received: dict[str, int] = {"ollama": 0, "openai": 0}

    def ollama_stream() -> None:
        try:
            # Raw and greedy: a base model's plain continuation of the text, which loops on past 400
            # tokens. Sampled, one ended by itself after 32 (a CI run: "finished").
            greedy = {**LONG, "options": {**LONG["options"], "temperature": 0}}
            for _ in ollama.Client(host=server.url).generate(**greedy, raw=True, stream=True):
                received["ollama"] += 1
            outcome["ollama"] = ("finished", received["ollama"])
        except ollama.ResponseError as exc:
            outcome["ollama"] = (str(exc.error), received["ollama"])

    def openai_stream() -> None:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0) as oai:
            try:
                for _ in oai.completions.create(
                    model=GEMMA,
                    prompt=LONG["prompt"],
                    max_tokens=2000,
                    stream=True,
                    logit_bias=NO_END,
                ):
                    received["openai"] += 1
                outcome["openai"] = ("finished", received["openai"])
            except openai.APIError as exc:
                outcome["openai"] = (exc.message, received["openai"])

    def not_streamed() -> None:
        # OpenAI's completions, for its logit_bias: with the end-of-sequence tokens banned, no answer
        # can end by itself before the cut (an Ollama request once did, within 3 s).
        body = {"model": GEMMA, "prompt": LONG["prompt"], "max_tokens": 2000, "logit_bias": NO_END}
        with server.client(timeout=60) as http:
            answer = http.post("/v1/completions", json=body)
        error = answer.json().get("error") or {}
        outcome["not streamed"] = (f"{answer.status_code} {error.get('message')}", 0)

    def waiting_for_its_model() -> None:
        # Other load options: it waits for the three answers above to drain before its load, and
        # would start generating just before the cut. It is answered when the others are cut.
        body = {"model": GEMMA, "prompt": "Hi", "stream": False, "options": {"num_ctx": 2048}}
        with server.client(timeout=60) as http:
            answer = http.post("/api/generate", json=body)
        outcome["waiting"] = (f"{answer.status_code} {answer.json().get('error')}", 0)

    threads = [threading.Thread(target=f) for f in (ollama_stream, openai_stream, not_streamed)]
    waiting = threading.Thread(target=waiting_for_its_model)
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: min(received.values()) > 0, "both streams to start")
        with server.client() as http:
            wait_for(lambda: model_status(http)["busy"] == 3, "the three answers to take the slots")
            waiting.start()
            threads.append(waiting)
            wait_for(lambda: model_status(http)["queued"] == 1, "the fourth request to wait for its model")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        ended = time.monotonic() - signalled
        assert server.process.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    finally:
        server.stop()
    cut = "the server is shutting down: this answer was cut short"
    assert outcome["ollama"][0] == cut and outcome["ollama"][1] > 0, outcome
    assert outcome["openai"][0] == cut and outcome["openai"][1] > 0, outcome
    assert outcome["not streamed"][0] == f"503 {cut}", outcome
    not_ready = "the server is shutting down: this request's model was not ready in time"
    assert outcome["waiting"][0] == f"503 {not_ready}", outcome
    assert 0.8 < ended < 4, f"the graceful period ran, then the cut came before uvicorn's ({ended:.1f} s)"


def test_embeddings_cut_by_a_shutdown_end_with_an_error_that_says_so(home: Path) -> None:
    """A review: an embeddings request still running at the end of the graceful period got a
    plain-text 500 (the task cancelled under it); now the 503 the other answers get."""
    server = start_server(home, env={"MODELYARD_SHUTDOWN_GRACE": "2"})
    inputs = [f"Document {i}: the keeper lit the lamp at dusk and watched ship {i}." for i in range(2000)]
    answers: dict[str, httpx.Response] = {}

    def embed(path: str, body: dict[str, object]) -> None:
        with server.client(timeout=60) as http:
            answers[path] = http.post(path, json=body)

    threads = [
        threading.Thread(target=embed, args=("/api/embed", {"model": GEMMA, "input": inputs})),
        threading.Thread(target=embed, args=("/v1/embeddings", {"model": GEMMA, "input": inputs})),
    ]
    try:
        with server.client() as http:  # loaded first: the requests are computing at the cut
            assert http.post("/api/embed", json={"model": GEMMA, "input": "warm"}).status_code == 200
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert server.process.wait(15) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    cut = "the server is shutting down: this answer was cut short"
    ollama_answer, openai_answer = answers["/api/embed"], answers["/v1/embeddings"]
    assert ollama_answer.status_code == 503 and ollama_answer.json()["error"] == cut, ollama_answer.text
    assert openai_answer.status_code == 503 and openai_answer.json()["error"]["message"] == cut, (
        openai_answer.text
    )


def test_a_second_ctrl_c_ends_the_streams_in_words_and_the_server_quietly(home: Path) -> None:
    """Ctrl-C twice: uvicorn stops waiting for the requests and skipped the app's shutdown, whose
    pending task was cancelled at exit (three tracebacks), the stream cut without a word. Now the
    stream ends with its error line, the runners are stopped and the log holds no traceback."""
    server = start_server(home, env={"MODELYARD_SHUTDOWN_GRACE": "30"})
    last: list[str] = []
    try:
        body = {**LONG, "raw": True, "options": {**LONG["options"], "temperature": 0}}  # greedy: loops on
        with server.client() as http, http.stream("POST", "/api/generate", json=body) as streaming:
            lines = streaming.iter_lines()
            last.append(next(lines))
            children = [
                int(pid)
                for task in (Path("/proc") / str(server.process.pid) / "task").glob("*/children")
                for pid in task.read_text().split()
            ]
            server.process.send_signal(signal.SIGINT)
            time.sleep(0.5)  # the first: the graceful period begins, the stream goes on
            server.process.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            last.extend(lines)
        assert server.process.wait(15) == 130
        ended = time.monotonic() - signalled
    finally:
        server.stop()
    assert json.loads(last[-1]) == {"error": "the server is shutting down: this answer was cut short"}
    assert ended < 10, f"a forced exit took {ended:.1f} s"
    assert children and not [pid for pid in children if running(pid)], "every child stopped before the exit"
    log = server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log, log[-3000:]


def test_a_client_that_stops_reading_has_its_endless_generation_cancelled(
    busy: ServeProcess, tiny_gguf: Path
) -> None:
    """Found by a soak test: a client that kept its connection open and read nothing made the
    server hold every token the runner made (0.9 MB/s on the tiny model, for ever at num_predict
    -1) and kept its slot. Past 16,384 unread tokens and 10 s without a read the generation is
    cancelled and its slot freed; the client, should it read again, gets what was made and then an
    error line (seen by hand: reading 5 MB through the 4 KB window this test opens takes minutes)."""
    import hashlib

    with busy.client() as http:
        data = tiny_gguf.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        http.post(f"/api/blobs/{digest}", content=data)
        made = http.post("/api/create", json={"model": "tiny", "files": {"t.gguf": digest}, "stream": False})
        assert made.status_code == 200, made.text

        def tiny_busy() -> int:
            rows = [m for m in http.get("/api/ps").json()["models"] if m["name"] == "tiny:latest"]
            return rows[0]["slots_busy"] if rows else -1

        gone = 'modelyard_requests_total{endpoint="/api/generate",model="tiny:latest",status="499"}'
        with socket.create_connection(("127.0.0.1", busy.port)) as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = json.dumps({"model": "tiny", "prompt": "go", "options": {"num_predict": -1}}).encode()
            head = f"POST /api/generate HTTP/1.1\r\nHost: {busy.host}\r\nContent-Type: application/json\r\n"
            stalled.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_for(lambda: tiny_busy() == 1, "the endless generation to start")
            # 16,384 tokens and 10 s: on a loaded 2-core machine the tiny model made them in over
            # 120 s (a CI run beside three other jobs timed out).
            wait_for(lambda: tiny_busy() == 0, "the unread generation to be cancelled", timeout_s=400)
            # Its one slot serves the next request while the stalled client still holds on.
            quick = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 3}}
            assert http.post("/api/generate", json=quick, timeout=30).json()["done"]
            assert metric(http, gone) == 0, "still open: not counted yet"
        wait_for(lambda: metric(http, gone) == 1, "the stalled request counted as 499 once closed")
        http.request("DELETE", "/api/delete", json={"model": "tiny"})


def test_a_model_that_does_not_fit_is_asked_for_once_by_the_openai_client(home: Path) -> None:
    """A client review: the openai client retries any 5xx twice unless told not to, and asked three
    times for a model that cannot fit the memory budget. A 507 says `x-should-retry: false`."""
    server = start_server(home, env={"MODELYARD_RAM_BUDGET": "50MB"})
    try:
        with (
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="x") as oai,  # its default retries
            pytest.raises(openai.InternalServerError, match="budget") as refused,
        ):
            oai.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Hi"}])
        assert refused.value.status_code == 507
        assert refused.value.response.headers["x-should-retry"] == "false"
        with server.client() as http:
            asked = (
                'modelyard_requests_total{endpoint="/v1/chat/completions",model="gemma3:latest",status="507"}'
            )
            assert metric(http, asked) == 1
    finally:
        server.stop()
