"""The CLI's small API client: a server that answers too slowly, breaks off, or is not Ollama's API is
a clear error, not a traceback."""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.cli_serving import ApiClient, ApiError, ApiTimeout, chat_line


def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port, for as long as the fixture lasts."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def slow_server() -> Iterator[str]:
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(2)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    yield from serving(Slow)


def test_a_server_slower_than_the_timeout_is_an_api_timeout(slow_server: str) -> None:
    client = ApiClient(slow_server, None, timeout=0.3)
    try:
        with pytest.raises(ApiTimeout, match="did not answer within"):
            client.post("/api/generate", {"model": "m", "keep_alive": 0})
        with pytest.raises(ApiTimeout):
            list(client.stream("/api/chat", {"model": "m"}))
    finally:
        client.close()


@pytest.fixture
def rude_server() -> Iterator[str]:
    """Closes every connection mid-answer (`/cut`), or answers something that is not Ollama's API."""

    class Rude(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path == "/cut":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"model": ')  # then the connection closes
                return
            if self.path.startswith("/api/tags"):  # a registry's or a web server's 404
                body = b"404 page not found\n"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            body = b"<html>a proxy's page</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    yield from serving(Rude)


def test_a_connection_that_breaks_or_an_answer_that_is_not_the_api_is_an_api_error(rude_server: str) -> None:
    client = ApiClient(rude_server, None, timeout=5)
    try:
        with pytest.raises(ApiError, match=r"broke off .*is the server still running"):
            client.get("/cut")
        with pytest.raises(ApiError, match="broke off"):
            list(client.stream("/cut", {"model": "m"}))
        with pytest.raises(ApiError, match=r"not Ollama's API: .<html>"):
            client.get("/api/ps")
        with pytest.raises(ApiError, match="not Ollama's API"):
            list(client.stream("/api/chat", {"model": "m"}))
        with pytest.raises(ApiError, match=r"answered GET /api/tags with HTTP 404 \('404 page not found'\)"):
            client.get("/api/tags")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("line", "kind", "text", "name", "value"),
    [
        ("Why is the sky blue?", "say", "Why is the sky blue?", "", None),
        ("   ", "nothing", "", "", None),
        ("/bye", "quit", "", "", None),
        ("/exit", "quit", "", "", None),
        ("/clear", "clear", "", "", None),
        ("/?", "help", "", "", None),
        ("/help", "help", "", "", None),
        ("/set system You are terse.", "system", "You are terse.", "", None),
        ("/set parameter temperature 0.2", "parameter", "", "temperature", 0.2),
        ("/set parameter num_ctx 4096", "parameter", "", "num_ctx", 4096),
        ("/set parameter temperature hot", "error", "invalid value 'hot'", "", None),
        ("/set parameter temprature 0.2", "error", "temperature", "", None),  # did you mean
        ("/set parameter num_ctx 0", "error", "num_ctx", "", None),  # out of range: refused here
        ("/set parameter stop a b", "parameter", "", "stop", ["a", "b"]),  # several stops
        ("/set verbose", "verbose", "", "", True),
        ("/set quiet", "verbose", "", "", False),
        ("/set loud", "error", "/set parameter NAME VALUE", "", None),
        ("/foo", "error", "unknown command '/foo'", "", None),  # never sent to the model
        ('"""', "open", "", "", None),
        ('"""first line', "open", "first line", "", None),
        ('"""all on one line"""', "say", "all on one line", "", None),
    ],
)
def test_chat_lines_are_read_as_ollama_run_reads_them(
    line: str, kind: str, text: str, name: str, value: object
) -> None:
    asked = chat_line(line)
    assert asked.kind == kind
    assert text in asked.text if kind == "error" else asked.text == text
    assert (asked.name, asked.value) == (name, value)


class ChatServer:
    """A stand-in for the server in the interactive chat: it answers each message, but refuses
    those `refuse` numbers (from 1) with a 400."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.sent: list[list[dict[str, str]]] = []
        self.refuse = refuse

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        return {}

    def stream(self, path: str, body: dict[str, object]) -> Iterator[dict[str, object]]:
        self.sent.append(list(body["messages"]))  # type: ignore[call-overload]
        if len(self.sent) in self.refuse:
            raise ApiError(400, "option 'top_p' is out of range")
        yield {"message": {"content": "fine"}, "done": True}


class ChatTerminal:
    """What the chat writes: its errors kept, the rest dropped."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.stdout = io.StringIO()

    def out(self, text: str = "", end: str = "\n") -> None:
        pass

    def err(self, text: str) -> None:
        self.errors.append(text)


def test_ctrl_c_at_the_prompt_clears_the_line_and_keeps_the_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a walkthrough: Ctrl-C at >>> ended the chat (exit 0, the conversation lost);
    `ollama run` clears the line and says how to leave."""
    from modelyard.cli_serving import _interactive

    typed: Iterator[str | type[BaseException]] = iter(["first", KeyboardInterrupt, "second", "/bye"])

    def line(prompt: str = "") -> str:
        item = next(typed)
        if isinstance(item, type):
            raise item()
        return item

    monkeypatch.setattr("builtins.input", line)
    client, ctx = ChatServer(), ChatTerminal()
    assert _interactive(client, ctx, "m", {}, {}, False) == 0  # type: ignore[arg-type]
    assert "Use Ctrl-D or /bye to exit." in ctx.errors
    assert client.sent[1][-1] == {"role": "user", "content": "second"} and len(client.sent[1]) == 3


def test_the_chat_goes_on_after_the_server_refuses_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found: a refused message (a 400) ended the chat and lost the conversation."""
    from modelyard.cli_serving import _interactive

    lines = iter(["first", "second", "/bye"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    client, ctx = ChatServer(refuse=(1,)), ChatTerminal()
    assert _interactive(client, ctx, "m", {}, {}, False) == 0  # type: ignore[arg-type]
    assert any("out of range" in e for e in ctx.errors)
    assert client.sent[1] == [{"role": "user", "content": "second"}], "the refused message is not kept"


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """An Ollama stand-in that answers `GET /` and every chat with one final line, and keeps the
    bodies it was sent."""
    import json

    bodies: list[dict[str, object]] = []

    class Recording(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"Ollama is running")

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            line = {"message": {"role": "assistant", "content": "ok"}, "done": True}
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            self.wfile.write(json.dumps(line).encode() + b"\n")

        def log_message(self, *args: object) -> None:
            pass

    for url in serving(Recording):
        yield url, bodies


class PipedStdin(io.TextIOWrapper):
    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("piped", "words", "sent"),
    [
        # As `ollama run`: stdin goes before the prompt's words (a CLI review: it was dropped).
        pytest.param(b"notes: 1 2 3\n", ["summarize", "this"], "notes: 1 2 3\n summarize this", id="both"),
        pytest.param(b"just stdin", [], "just stdin", id="stdin-only"),
        # Bytes that are not UTF-8 go as U+FFFD, as Ollama sends them (httpx raised on them).
        pytest.param(b"caf\xe9", ["ok"], "caf\ufffd ok", id="stdin-not-utf8"),
        pytest.param(b"", ["caf\udce9"], "caf\ufffd", id="argv-not-utf8"),  # nothing piped: words alone
    ],
)
def test_run_sends_stdin_before_the_prompt_words(
    recording_server: tuple[str, list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
    piped: bytes,
    words: list[str],
    sent: str,
) -> None:
    from modelyard.cli import main

    url, bodies = recording_server
    monkeypatch.setenv("MODELYARD_HOST", url.removeprefix("http://"))
    monkeypatch.setattr("sys.stdin", PipedStdin(io.BytesIO(piped), encoding="utf-8"))
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "m", *words], stdout=out, stderr=err) == 0, err.getvalue()
    [body] = bodies
    assert body["messages"] == [{"role": "user", "content": sent}]
    assert out.getvalue().strip() == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Checked before a server starts, naming the flag (a CLI review: tracebacks for nan and
        # 1e999, the server's error without the flag for foo).
        pytest.param(
            ["run", "m", "--keep-alive", "nan", "hi"], "--keep-alive: invalid duration 'nan'", id="nan"
        ),
        pytest.param(["run", "m", "--keep-alive", "1e999", "hi"], "invalid duration '1e999'", id="huge"),
        pytest.param(["run", "m", "--keep-alive", "foo", "hi"], "invalid duration 'foo'", id="word"),
        pytest.param(["prune", "--grace", "-5"], "invalid duration '-5'", id="negative-grace"),
        pytest.param(["run"], "the following arguments are required: NAME\n", id="prompt-optional"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import main

    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("300", 300.0),
        ("-1", -1.0),
        ("1e3", 1000.0),  # number spellings float() takes stay seconds (a diff review)
        (".5", 0.5),
        ("5m", "5m"),
        ("inf", "inf"),
        ("forever", "forever"),
    ],
)
def test_keep_alive_flag_as_the_api_takes_it(value: str, sent: object) -> None:
    from modelyard.cli_serving import _keep_alive

    assert _keep_alive(value) == sent


def test_no_command_prints_the_commands() -> None:
    from modelyard.cli import main

    err = io.StringIO()
    assert main([], stderr=err) == 1
    assert "COMMAND" in err.getvalue() and "serve" in err.getvalue() and "build" in err.getvalue()


def test_serve_refuses_a_port_in_use_and_https_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Said in one line, exit 1 (a CLI review: uvicorn's exit 3 after "Application startup
    complete" for a port in use; https:// served as plain HTTP)."""
    import socket

    from modelyard.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = io.StringIO()
        assert main(["serve", "--host", f"127.0.0.1:{port}"], stderr=err) == 1
        assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in err.getvalue()
    monkeypatch.setenv("MODELYARD_HOST", "https://127.0.0.1:8443")
    err = io.StringIO()
    assert main(["serve"], stderr=err) == 1
    assert "serve speaks plain HTTP" in err.getvalue()
    err = io.StringIO()
    assert main(["serve", "--host", "127.0.0.1:0"], stderr=err) == 1
    assert "--host='127.0.0.1:0': the port must be a number from 1 to 65535" in err.getvalue()


def test_a_server_that_does_not_answer_in_time_is_an_error_not_a_reason_to_start_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run` starts a server in its own process only when none is there (a CLI review: one slow to
    answer `GET /` made it load the model here instead)."""
    import socket

    from modelyard.cli import main
    from modelyard.cli_serving import InProcessServer

    monkeypatch.setattr("modelyard.cli_serving.ALIVE_TIMEOUT_S", 0.3)

    def no_second_server(*args: object) -> None:
        raise AssertionError("a server was started in process")

    monkeypatch.setattr(InProcessServer, "__enter__", no_second_server)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("MODELYARD_HOST", f"127.0.0.1:{silent.getsockname()[1]}")
        err = io.StringIO()
        assert main(["run", "m", "hi"], stderr=err) == 2  # as `ps`: a server that does not answer
    assert "Error: the server at http://127.0.0.1:" in err.getvalue()
    assert "did not answer within" in err.getvalue()


@pytest.mark.parametrize(
    ("status", "code"), [(400, 1), (401, 1), (404, 1), (499, 1), (500, 2), (503, 2), (0, 2)]
)
def test_a_server_that_failed_is_not_the_users_error(status: int, code: int) -> None:
    """`run` against a server whose store is damaged (its 500) exited 1, as for a typo; the store
    commands exit 2 for that. A refusal stays 1; a failure or no answer in time is 2."""
    from modelyard.cli_serving import ApiError, api_error_exit

    assert api_error_exit(ApiError(status, "x")) == code


@pytest.mark.parametrize(
    ("name", "short"),
    [("tiny", "tiny:latest"), ("tiny:v2", "tiny:v2"), ("llama3:8b:q4", "llama3:8b:q4"), ("a b", "a b")],
)
def test_stop_compares_names_no_reference_reads_as_themselves(name: str, short: str) -> None:
    """A diff review: a spec may serve `llama3:8b:q4`, which no image reference reads; `stop`
    raised on it after the model had stopped."""
    from modelyard.cli_serving import _short_name

    assert _short_name(name) == short


def test_serve_refuses_a_bad_git_spec_location_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GitOps review: a git location with `..` in its path was a start-up traceback and exit 3.
    $MODELYARD_SPEC stands for --spec (a URL with a token is then out of the process list)."""
    from modelyard.cli import main

    monkeypatch.delenv("MODELYARD_HOST", raising=False)
    bad = "git+https://alice:s3cret@h.io/ops.git#../etc"
    err = io.StringIO()
    assert main(["serve", "--host", "127.0.0.1:1", "--spec", bad], stderr=err) == 1
    assert "must stay inside the repository" in err.getvalue() and "s3cret" not in err.getvalue()
    monkeypatch.setenv("MODELYARD_SPEC", bad)
    err = io.StringIO()
    assert main(["serve", "--host", "127.0.0.1:1"], stderr=err) == 1
    assert "$MODELYARD_SPEC" in err.getvalue() and "must stay inside the repository" in err.getvalue()
    # A review: a bad IPv6 host was still a start-up traceback; a URL without its git+ showed its token.
    for spec, said in [
        ("git+http://u:s3cret@[::1/x.git#m", "not a valid URL"),
        ("git+https://u:pw#s3cret@h.io/x.git#m", "percent-encode it (%23, %3F)"),
        ("git+https://u:12?s3cret@h.io/x.git#m", "percent-encode it (%23, %3F)"),
        ("git+https://u:p/s3cret@h.io/x.git#m", "its port is not a number"),
        ("git+https://u:p/s3cret@h.io/x.git#../m", "its port is not a number"),  # before the path's check
        ("git+https://u:p s3cret@h.io/x.git#m", "its host part holds a blank"),
        ("git+https://u:99999/s3cret@h.io/x.git#m", "its port is out of range"),
        ("https://bot:s3cret@h.io/ops.git#models", "no such file or folder (a git source starts with git+)"),
    ]:
        monkeypatch.setenv("MODELYARD_SPEC", spec)
        err = io.StringIO()
        assert main(["serve", "--host", "127.0.0.1:1"], stderr=err) == 1
        assert said in err.getvalue() and "s3cret" not in err.getvalue(), err.getvalue()


@pytest.fixture
def silent_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """$MODELYARD_HOST at a socket that accepts connections and never answers."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MODELYARD_HOST", host)
        yield host


def test_stop_against_a_server_that_never_answers_is_an_error(
    silent_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A README review: the first GET /api/ps timed out and `stop` said the model was stopping, rc 0."""
    from modelyard.cli import main

    monkeypatch.setattr("modelyard.cli_serving.STOP_TIMEOUT_S", 0.5)
    err = io.StringIO()
    assert main(["stop", "tiny"], stderr=err) == 2
    assert "did not answer within" in err.getvalue() and "stopping" not in err.getvalue()


@pytest.mark.parametrize("dry_run", [False, True])
def test_apply_against_a_server_that_never_answers_ends(
    silent_host: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dry_run: bool
) -> None:
    """A README review: `apply`, --dry-run too, waited for ever."""
    from modelyard.cli import main

    monkeypatch.setattr("modelyard.cli_spec.APPLY_TIMEOUT_S", 0.5)
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: modelyard.dev/v1\nkind: ModelSet\nmodels: []\n")
    err = io.StringIO()
    started = time.monotonic()
    assert main(["apply", "-f", str(spec), *(["--dry-run"] if dry_run else [])], stderr=err) == 2
    assert time.monotonic() - started < 10
    assert "did not answer within" in err.getvalue()


def test_status_wait_ready_keeps_to_its_timeout_against_a_server_that_never_answers(silent_host: str) -> None:
    """A README review: --timeout 5s took 21 s, each ask waiting its full 10 s."""
    from modelyard.cli import main

    err = io.StringIO()
    started = time.monotonic()
    assert main(["status", "--wait-ready", "--timeout", "2s"], stderr=err) == 2
    assert time.monotonic() - started < 8, time.monotonic() - started  # 2 s, a second past it, the asks
    assert "did not answer within" in err.getvalue()


def test_rm_beside_a_server_that_never_answers_says_it_did_not_ask(
    silent_host: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_gguf: Path
) -> None:
    """A README review: a busy server was passed over silently, and rm removed an image its spec
    might serve. rm needs no server: it goes on, saying what it could not check."""
    import shutil

    from modelyard.cli import main

    monkeypatch.setattr("modelyard.cli.SERVER_CHECK_TIMEOUT_S", 0.5)
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    shutil.copyfile(tiny_gguf, tmp_path / "w.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./w.gguf\n")
    assert main(["build", "-t", "m", "-f", str(tmp_path / "Modelfile"), "--quiet"], stdout=io.StringIO()) == 0
    err = io.StringIO()
    assert main(["rm", "m"], stdout=io.StringIO(), stderr=err) == 0
    assert "did not answer within" in err.getvalue() and "not asked whether its spec serves" in err.getvalue()


def test_status_of_a_server_that_never_answers_exits_2(
    silent_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A README review: `ps` exited 2 for a server that did not answer, `status` and `run` 1."""
    from modelyard.cli import main

    monkeypatch.setattr("modelyard.cli_spec.STATUS_TIMEOUT_S", 0.5)
    err = io.StringIO()
    assert main(["status"], stderr=err) == 2 and "did not answer within" in err.getvalue()
