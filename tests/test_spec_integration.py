"""The reconciler on this machine for real: the Distribution registry, real runners on tiny GGUFs,
a watched spec file and a git repository."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from registry_server import Registry, start_registry
from spec_fakes import spec_text
from spec_world import (
    build,
    conditions,
    eventually,
    generate,
    is_true,
    machine,
    push_image,
    restart_registry,
)
from tinygguf import write_tiny_llama

from modelyard.spec.schema import read_documents
from modelyard.spec.sources import FileSource, GitSource, parse_git_location

needs_registry = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="docker-registry not installed"
)
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ggufs")
    return {
        "a": write_tiny_llama(folder / "a.gguf", seed=1),
        "b": write_tiny_llama(folder / "b.gguf", seed=2),
        # about 26 MB once loaded, 90 MiB with its runner's process: more than the 72 MiB budget
        # below, which holds a tiny one and its runner
        "big": write_tiny_llama(folder / "big.gguf", seed=3, n_embd=256, n_ff=1024, n_layer=4),
    }


def write_spec(path: Path, body: str) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(spec_text(body))
    os.replace(temp, path)


@needs_registry
def test_a_moved_tag_swaps_under_a_steady_stream_of_requests_with_no_failure(
    registry: Registry, ggufs: dict[str, Path], tmp_path: Path
) -> None:
    """apply → Ready; a new image is pushed to the same tag → pulled and swapped in beside the old
    one while three clients keep sending requests through the spec's name: none fails."""
    workshop = tmp_path / "workshop"
    from modelyard.store import Store

    builder_store = Store(workshop / "store")
    old = build(builder_store, ggufs["a"], "chat-a", workshop)
    new = build(builder_store, ggufs["b"], "chat-b", workshop)
    tag = f"{registry.host}/team/chat{uuid.uuid4().hex[:6]}:v1"
    push_image(builder_store, "chat-a", tag, workshop)

    async def scenario() -> None:
        async with machine(tmp_path / "home") as box:
            result = await box.daemon.apply(
                read_documents(_spec_file(tmp_path, f"models: [{{name: chat, image: '{tag}', parallel: 2}}]"))
            )
            assert result["accepted"] and "pull" in result["plan"] and "loads once pulled" in result["plan"]
            assert box.daemon.ready() and is_true(box.daemon, "chat", "Ready", "Loaded")

            served: list[str] = []
            failures: list[BaseException] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    try:
                        request = box.daemon.request_for("chat")
                        assert request is not None
                        async with box.scheduler.lease(request) as lease:
                            await asyncio.to_thread(generate, lease.runner)
                            served.append(request.digest)
                    except BaseException as exc:  # any failure at all fails the test
                        failures.append(exc)

            clients = [asyncio.create_task(client()) for _ in range(3)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(push_image, builder_store, "chat-b", tag, workshop)
            await box.daemon.reconciler.reconcile()
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)

            assert failures == []
            assert served[0] == old and served[-1] == new and served.count(new) >= 3
            status = box.daemon.status()["models"][0]
            assert (status["serving"], status["resolvedDigest"]) == (new, new)
            kinds = [(e["kind"], e["message"]) for e in box.daemon.status()["events"]]
            assert any(k == "pulled" for k, _ in kinds)
            swapped = [m for k, m in kinds if k == "swapped"]
            assert swapped and "without downtime" in swapped[-1]
            assert [(s.name, s.digest) for s in box.scheduler.status()] == [("chat", new)]

    asyncio.run(scenario())


@needs_registry
def test_registry_down_keeps_serving_says_degraded_and_recovers(
    ggufs: dict[str, Path], tmp_path: Path
) -> None:
    own = start_registry(tmp_path / "registry")
    try:
        workshop = tmp_path / "workshop"
        from modelyard.store import Store

        builder_store = Store(workshop / "store")
        digest = build(builder_store, ggufs["a"], "chat-a", workshop)
        tag = f"{own.host}/team/chat:v1"
        push_image(builder_store, "chat-a", tag, workshop)

        async def scenario() -> Registry:
            async with machine(tmp_path / "home") as box:
                spec = read_documents(_spec_file(tmp_path, f"models: [{{name: chat, image: '{tag}'}}]"))
                await box.daemon.apply(spec)
                assert box.daemon.ready()

                own.stop()
                await box.daemon.reconciler.reconcile()
                found = conditions(box.daemon, "chat")
                assert (found["Ready"]["status"], found["Degraded"]["status"]) == ("True", "True")
                assert found["Degraded"]["reason"] == "PullFailed"
                assert "unavailable" in found["Degraded"]["message"]
                request = box.daemon.request_for("chat")
                assert request is not None and request.digest == digest
                async with box.scheduler.lease(request) as lease:  # still serving
                    assert await asyncio.to_thread(generate, lease.runner)

                back = await asyncio.to_thread(restart_registry, own)
                await box.daemon.reconciler.reconcile()
                assert conditions(box.daemon, "chat")["Degraded"]["status"] == "False"
                return back

        asyncio.run(scenario()).stop()
    finally:
        own.stop()


def test_a_watched_file_edit_applies_within_two_seconds_and_a_typo_is_rejected_whole(
    ggufs: dict[str, Path], tmp_path: Path
) -> None:
    spec_file = tmp_path / "models.yaml"

    async def scenario() -> None:
        async with machine(tmp_path / "home") as box:
            build(box.store, ggufs["a"], "tiny-a", tmp_path)
            build(box.store, ggufs["b"], "tiny-b", tmp_path)
            write_spec(spec_file, "models: [{name: chat, image: tiny-a}]")
            box.start(FileSource(spec_file, poll_interval=0.3))
            await eventually(box.daemon.ready, 20, "the first spec is ready")

            write_spec(spec_file, "models: [{name: chat, image: tiny-a}, {name: code, image: tiny-b}]")
            took = await eventually(
                lambda: box.daemon.ready() and box.scheduler.is_loaded("code"), 10, "the edit applies"
            )
            assert took < 2.0, f"the edit took {took:.2f} s"
            assert box.daemon.status()["generation"] == 2

            write_spec(
                spec_file,
                "models: [{name: chat, image: tiny-a}, {name: code, image: 'tiny b'}, {name: x, imag: y}]",
            )
            await eventually(lambda: box.daemon.status()["rejected"] is not None, 5, "the typo is rejected")
            status = box.daemon.status()
            paths = [i["path"] for i in status["rejected"]["issues"]]
            assert paths == ["spec.models[1].image", "spec.models[2].image", "spec.models[2].imag"]
            # The last good spec serves on; it is not Ready while the source's latest is refused.
            assert status["generation"] == 2 and not status["ready"] and box.daemon.serving()
            assert [c["reason"] for c in status["conditions"]] == ["Rejected"]
            assert box.scheduler.is_loaded("chat") and box.scheduler.is_loaded("code")

            write_spec(spec_file, "models: [{name: chat, image: tiny-a}]")  # prune: code goes
            await eventually(lambda: not box.scheduler.is_loaded("code"), 5, "code is pruned")
            assert box.daemon.status()["rejected"] is None

    asyncio.run(scenario())


def test_a_model_over_the_budget_is_degraded_and_the_others_unaffected(
    ggufs: dict[str, Path], tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with machine(tmp_path / "home") as box:
            build(box.store, ggufs["a"], "tiny-a", tmp_path)
            build(box.store, ggufs["big"], "big", tmp_path)
            body = """
                memory: {ram: 72MiB}
                models: [{name: big, image: big, priority: 9}, {name: chat, image: tiny-a}]
            """
            await box.daemon.apply(read_documents(_spec_file(tmp_path, body)))
            assert is_true(box.daemon, "big", "Degraded", "DoesNotFit")
            assert "even with nothing else loaded" in conditions(box.daemon, "big")["Degraded"]["message"]
            assert is_true(box.daemon, "chat", "Ready") and box.scheduler.is_loaded("chat")
            assert not box.scheduler.is_loaded("big")

    asyncio.run(scenario())


def test_a_runner_killed_with_sigkill_is_reloaded(ggufs: dict[str, Path], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with machine(tmp_path / "home") as box:
            build(box.store, ggufs["a"], "tiny-a", tmp_path)
            spec_file = _spec_file(tmp_path, "models: [{name: chat, image: tiny-a}]")
            box.start(FileSource(spec_file, poll_interval=0.3))
            await eventually(box.daemon.ready, 20, "ready")
            pid = box.scheduler.status()[0].runner_pid
            os.kill(pid, signal.SIGKILL)
            await eventually(
                lambda: (
                    box.scheduler.is_loaded("chat") and box.scheduler.status()[0].runner_pid not in (pid, -1)
                ),
                10,
                "the runner is reloaded",
            )
            events = [e for e in box.daemon.status()["events"] if e["kind"] == "loaded"]
            assert "SIGKILL" in events[-1]["message"]
            # The crash itself is an event too, however fast the model came back (the scheduler's
            # crash observers: a request can load it again before a round sees it down).
            crashed = [e for e in box.daemon.status()["events"] if e["kind"] == "crashed"]
            assert crashed and "SIGKILL" in crashed[-1]["message"] and crashed[-1]["model"] == "chat"
            await eventually(box.daemon.ready, 5, "ready again")

    asyncio.run(scenario())


def test_a_restarted_daemon_reloads_what_the_spec_says_and_keeps_its_history(
    ggufs: dict[str, Path], tmp_path: Path
) -> None:
    home = tmp_path / "home"

    async def first() -> str:
        async with machine(home) as box:
            build(box.store, ggufs["a"], "tiny-a", tmp_path)
            await box.daemon.apply(
                read_documents(_spec_file(tmp_path, "models: [{name: chat, image: tiny-a}]"))
            )
            assert box.daemon.ready()
            return str(conditions(box.daemon, "chat")["Ready"]["lastTransitionTime"])

    async def second(since: str) -> None:
        async with machine(home) as box:  # no source, no apply: the saved spec is in force
            box.start(None)
            await eventually(box.daemon.ready, 20, "the saved spec is loaded again")
            status = box.daemon.status()
            assert status["generation"] == 1 and status["inventory"] == ["chat"]
            # Loaded before the restart and again after: the same event, counted twice.
            assert [(e["kind"], e["count"]) for e in status["events"]][:2] == [("accepted", 1), ("loaded", 2)]
            assert conditions(box.daemon, "chat")["Ready"]["lastTransitionTime"] >= since

    since = asyncio.run(first())
    asyncio.run(second(since))


@needs_git
def test_a_git_source_picks_up_a_new_commit_and_leaves_the_checkout_alone(
    ggufs: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "gitops"
    (repo / "specs").mkdir(parents=True)
    write_spec(repo / "specs" / "models.yaml", "models: [{name: chat, image: tiny-a}]")

    def git(*args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
        env["GIT_COMMITTER_EMAIL"] = "t@t"
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout

    git("init", "--quiet", "-b", "main")
    git("add", ".")
    git("commit", "--quiet", "-m", "one model")

    async def scenario() -> None:
        async with machine(tmp_path / "home") as box:
            build(box.store, ggufs["a"], "tiny-a", tmp_path)
            build(box.store, ggufs["b"], "tiny-b", tmp_path)
            source = GitSource(
                parse_git_location(f"git+{repo}#specs"), tmp_path / "home" / "cache", poll_interval=0.3
            )
            box.start(source)
            await eventually(box.daemon.ready, 20, "ready from the first commit")
            first = box.daemon.status()["source"]["revision"]

            write_spec(
                repo / "specs" / "models.yaml",
                "models: [{name: chat, image: tiny-a}, {name: code, image: tiny-b}]",
            )
            assert box.daemon.status()["source"]["revision"] == first, "an uncommitted edit is not applied"
            git("commit", "--quiet", "-am", "two models")
            head = git("rev-parse", "HEAD").strip()
            started = time.monotonic()
            await eventually(lambda: box.scheduler.is_loaded("code") and box.daemon.ready(), 15, "the commit")
            assert time.monotonic() - started < 5
            assert box.daemon.status()["source"]["revision"] == f"git:{head}"
            assert git("status", "--porcelain") == "" and git("rev-parse", "HEAD").strip() == head

    asyncio.run(scenario())


def _spec_file(folder: Path, body: str) -> Path:
    path = folder / f"spec-{uuid.uuid4().hex[:6]}.yaml"
    write_spec(path, body)
    return path
