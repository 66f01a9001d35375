"""`modelyard serve --spec`, `apply`, `status` and `diff` end to end: a real server process, its
reconciler, a tiny image in its store, and the official ollama client asking for the spec's name."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from server_process import ServeProcess, start_server

from modelyard.builder import modelfile as mf
from modelyard.builder.build import Builder
from modelyard.cli import main
from modelyard.reference import parse_reference
from modelyard.store import Store

SPEC = """\
apiVersion: modelyard/v1
kind: ModelSet
metadata: {{name: test}}
spec:
  models:
{models}
"""
MODEL = """\
    - name: {name}
      image: tiny
      context: 256
      parallel: 1
      keepAlive: forever
      params: {{temperature: 0, num_predict: 4}}
"""


def spec_text(*names: str) -> str:
    return SPEC.format(models="".join(MODEL.format(name=n) for n in names))


def tiny_home(home: Path, tiny_gguf: Path) -> Path:
    store = Store(home / "store")
    store.init()
    Builder(store, home / "cache").build(
        mf.Modelfile(from_=str(tiny_gguf), parameters={}), parse_reference("tiny"), context=tiny_gguf.parent
    )
    return home


def status(server: ServeProcess) -> dict:
    return httpx.get(f"{server.url}/api/status", timeout=10).json()


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def cli(server: ServeProcess, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("MODELYARD_HOST", server.host)
    monkeypatch.setenv("MODELYARD_HOME", str(server.home))
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def spec_server(tmp_path: Path, tiny_gguf: Path) -> Iterator[tuple[ServeProcess, Path]]:
    home = tiny_home(tmp_path / "home", tiny_gguf)
    spec = tmp_path / "models.yaml"
    spec.write_text(spec_text("chat"))
    server = start_server(home, args=["--spec", str(spec)])  # returns once /health is 200: all Ready
    yield server, spec
    server.stop()


def test_serve_spec_serves_the_spec_names_and_follows_edits(
    spec_server: tuple[ServeProcess, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, spec = spec_server
    state = status(server)["spec"]
    assert state["ready"] and [m["name"] for m in state["models"]] == ["chat"]
    with ollama.Client(host=server.url) as client:
        answer = client.generate(model="chat", prompt="the cat")
    assert answer.model == "chat" and answer.eval_count == 4, "the spec's params are the defaults"
    with ollama.Client(host=server.url) as client:  # and show says so (it showed the image's)
        shown = client.show("chat").parameters or ""
    assert "num_predict                    4" in shown and "temperature                    0" in shown, shown
    with ollama.Client(host=server.url) as client:
        modelfile = client.show("chat").modelfile or ""
    assert "PARAMETER num_predict 4" in modelfile, "the Modelfile says the same (a regression hunt)"
    with ollama.Client(host=server.url) as client:
        [chat] = [m for m in client.ps().models if m.model == "chat"]
    assert chat.details is not None and chat.details.format == "gguf" and chat.details.family, chat
    # Listed under the name clients use (a spec review: only the store's images were).
    with ollama.Client(host=server.url) as client:
        [listed] = [m for m in client.list().models if m.model == "chat"]
    assert listed.details is not None and listed.details.format == "gguf" and listed.modified_at is not None
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert "chat" in [m["id"] for m in models]
    assert httpx.get(f"{server.url}/v1/models/chat").json()["id"] == "chat"
    # Its image is not deleted from under it (a spec review: every request failed until the next
    # round pulled it again, the model Ready all the while).
    refused = httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "TINY"})
    assert refused.status_code == 409, refused.text
    assert (
        refused.json()["error"]
        == "tiny:latest is the image of the spec's chat: take it out of the spec first"
    )
    with ollama.Client(host=server.url) as client:
        assert client.generate(model="chat", prompt="the cat").done

    spec.write_text(spec_text("chat", "chat2"))  # an edit: applied within 2 s
    started = time.monotonic()
    wait_for(lambda: [m["name"] for m in status(server)["spec"]["models"]] == ["chat", "chat2"], timeout=10)
    assert time.monotonic() - started < 2.0
    wait_for(lambda: status(server)["spec"]["ready"], timeout=60)

    # What the reconciler did is in the server's log, as uvicorn's lines are (a spec review: it
    # said nothing of why a model was down).
    logged = server.log().splitlines()
    assert [line for line in logged if line.startswith("INFO:") and "chat2: loaded" in line], logged
    code, out, err = cli(server, monkeypatch, "status")
    assert code == 0 and "chat2" in out and "True" in out
    code, _, err = cli(server, monkeypatch, "apply", "-f", str(spec))
    assert code == 1 and "follows --spec" in err, "apply cannot fight the watched source"

    # A spec name it cannot serve (its image is not there) answers 503 with why: never the store's
    # image of the same name, which the spec did not ask for.
    spec.write_text(spec_text("chat") + "    - name: tiny\n      image: never-built\n")
    wait_for(lambda: "tiny" in [m["name"] for m in status(server)["spec"]["models"]], timeout=10)
    answer = httpx.post(f"{server.url}/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert answer.status_code == 503 and "Retry-After" in answer.headers
    assert answer.json()["error"].startswith("tiny is not ready"), answer.json()

    # `stop` of a model the spec serves says it will load again (a spec review: it did, a second
    # later, and nothing said why).
    code, out, err = cli(server, monkeypatch, "stop", "chat")
    assert code == 0 and "stopped chat" in out and "note: the server's spec serves chat" in err, err

    # `modelyard rm` of its image is refused as DELETE is (a CLI review: removed, the model answered
    # 404 to every request while its status said Ready) ...
    code, out, err = cli(server, monkeypatch, "rm", "tiny")
    assert code == 1 and "serves chat from this image" in err and "--force" in err, err
    code, out, err = cli(server, monkeypatch, "rm", "--dry-run", "tiny")  # says so, refuses nothing
    assert code == 0 and "would delete 'tiny" in out and "without --dry-run this is refused" in err, err
    assert Store(server.home / "store").resolve(parse_reference("tiny"))
    # ... and with --force, while another name holds the digest, the model serves on.
    assert cli(server, monkeypatch, "tag", "tiny", "other")[0] == 0
    code, out, err = cli(server, monkeypatch, "rm", "--force", "tiny")
    assert code == 0 and "deleted 'tiny" in out, err
    with ollama.Client(host=server.url) as client:
        assert client.generate(model="chat", prompt="the cat").done

    def chat_ready() -> bool:
        chat = next(m for m in status(server)["spec"]["models"] if m["name"] == "chat")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in chat["conditions"])

    # ... and its status says so after the next round (it said PullFailed; a diff review).
    before = status(server)["spec"]["lastReconcile"]
    time.sleep(1.1)  # lastReconcile has whole seconds
    spec.write_text(spec.read_text() + "# a round, please\n")
    wait_for(lambda: status(server)["spec"]["lastReconcile"] != before, timeout=30)
    assert chat_ready(), status(server)["spec"]["models"]


def test_serve_follows_a_git_source_at_the_poll_interval_asked(tmp_path: Path, tiny_gguf: Path) -> None:
    """`--spec-poll` (a GitOps-review leftover: the git poll was fixed at 30 s): a commit is served
    within a few of the asked interval."""
    repo = tmp_path / "gitops"
    repo.mkdir()
    (repo / "models.yaml").write_text(spec_text("chat"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)

    git("init", "--quiet", "-b", "main")
    git("add", ".")
    git("commit", "--quiet", "-m", "chat")
    source = f"git+{repo}#models.yaml"
    server = start_server(
        tiny_home(tmp_path / "home", tiny_gguf), args=["--spec", source, "--spec-poll", "0.5s"]
    )
    try:
        assert [m["name"] for m in status(server)["spec"]["models"]] == ["chat"]
        (repo / "models.yaml").write_text(spec_text("chat", "code"))
        git("commit", "--quiet", "-am", "and code")
        started = time.monotonic()
        wait_for(
            lambda: [m["name"] for m in status(server)["spec"]["models"]] == ["chat", "code"], timeout=20
        )
        assert time.monotonic() - started < 10, "read at the interval asked, not every 30 s"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--spec-poll", "10s"], "--spec-poll is for a spec source"),
        (["--spec", "models.yaml", "--spec-poll", "0"], "at least 0.1 s"),
        (["--spec", "models.yaml", "--spec-poll", "soon"], "invalid duration"),
    ],
)
def test_bad_spec_poll_is_refused_before_start_up(
    args: list[str],
    error: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.yaml").write_text(spec_text("chat"))
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODELYARD_SPEC", raising=False)
    err = io.StringIO()
    with contextlib.suppress(SystemExit):  # argparse's own errors exit 2
        code = main(["serve", "--host", "127.0.0.1:1", *args], stdout=io.StringIO(), stderr=err)
        assert code == 1
    assert error in err.getvalue() + capsys.readouterr().err  # argparse's own, on sys.stderr


def test_apply_status_and_diff_against_a_plain_server(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(tiny_home(tmp_path / "home", tiny_gguf))
    try:
        spec = tmp_path / "models.yaml"
        spec.write_text(spec_text("chat"))
        code, out, _ = cli(server, monkeypatch, "status")  # nothing applied yet: the loaded models
        assert code == 0 and out.startswith("no spec applied"), out
        code, out, _ = cli(server, monkeypatch, "status", "--wait-ready", "--timeout", "5s")
        assert code == 0 and out.startswith("no spec applied"), "ready: it answers, with nothing to wait for"
        code, out, _ = cli(server, monkeypatch, "diff", "-f", str(spec))
        assert code == 0 and "chat" in out and "load" in out.lower()
        code, out, err = cli(
            server, monkeypatch, "apply", "-f", str(spec), "--wait-ready", "--timeout", "60s"
        )
        assert code == 0, err
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        with ollama.Client(host=server.url) as client:
            assert client.generate(model="chat", prompt="the cat").eval_count == 4

        spec.write_text(spec_text("chat").replace("parallel: 1", "paralel: 1"))
        code, _, err = cli(server, monkeypatch, "apply", "-f", str(spec))
        assert code == 1 and "paralel" in err and "parallel" in err, "every problem, with a hint"
        assert status(server)["spec"]["ready"], "the last good spec stays in force"
    finally:
        server.stop()


def test_status_wait_ready_waits_for_a_server_still_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --spec … &` then `status --wait-ready` (samples/gitops step 3) failed at once."""
    from modelyard import cli_spec

    starting = [cli_spec.NO_SERVER_YET, cli_spec.NO_SERVER_YET]  # no server answers yet
    answers: list[dict[str, object] | None] = [
        *starting,
        {"spec": {"ready": False}},
        {"spec": {"ready": True}},
    ]
    monkeypatch.setattr(cli_spec, "_status", lambda ctx, quiet=False, timeout=10.0: answers.pop(0))
    monkeypatch.setattr(cli_spec.time, "sleep", lambda _: None)
    monkeypatch.setattr(cli_spec, "_show", lambda ctx, status, as_json: None)
    wait = ["status", "--wait-ready", "--timeout", "60s"]
    err = io.StringIO()
    assert main(wait, stdout=io.StringIO(), stderr=err) == 0 and answers == [] and err.getvalue() == ""
    # A server that answers but gives no status (a wrong key: _status said why) ends it at once.
    answers[:] = [None, {"spec": {"ready": True}}]
    assert main(wait, stdout=io.StringIO(), stderr=io.StringIO()) == 1 and len(answers) == 1
    # At the timeout it names the models not ready.
    ready = {"type": "Ready", "status": "True"}
    models = [
        {"name": "chat", "conditions": [ready]},
        {"name": "code", "conditions": [{**ready, "status": "False"}]},
    ]
    monkeypatch.setattr(
        cli_spec,
        "_status",
        lambda ctx, quiet=False, timeout=10.0: {"spec": {"ready": False, "models": models}},
    )
    err = io.StringIO()
    assert main(["status", "--wait-ready", "--timeout", "0s"], stdout=io.StringIO(), stderr=err) == 1
    assert "not ready after 0 s: code (see the table above)" in err.getvalue()
    # And why the source is not in force, when it is not.
    unread = {"type": "SourceReady", "status": "False", "message": "git fetch failed: timed out"}
    monkeypatch.setattr(
        cli_spec,
        "_status",
        lambda ctx, quiet=False, timeout=10.0: {"spec": {"ready": False, "conditions": [unread]}},
    )
    err = io.StringIO()
    assert main(["status", "--wait-ready", "--timeout", "0s"], stdout=io.StringIO(), stderr=err) == 1
    assert "not ready after 0 s: the source: git fetch failed: timed out" in err.getvalue()
