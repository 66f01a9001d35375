"""The reconciler over a recording fake of its effects: no registry, no runners, a fake clock."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from spec_fakes import FakeClock, FakeEffects, digest, documents, spec_text

from modelyard.errors import (
    DigestMismatchError,
    ModelDoesNotFitError,
    ModelLoadError,
    ModelyardError,
    RegistryError,
    RegistryUnavailableError,
    ServerBusyError,
)
from modelyard.spec.plan import ActionKind, LoadTarget, Reason, format_plan
from modelyard.spec.reconciler import Reconciler, ReconcilerSettings, SpecSnapshot, classify
from modelyard.spec.sources import FileSource

IMAGE = "localhost:5000/team/chat:v1"
CHAT = f"models: [{{name: chat, image: {IMAGE}, context: 2048}}]"


def make(tmp_path: Path, effects: FakeEffects, clock: FakeClock) -> Reconciler:
    return Reconciler(effects, ReconcilerSettings(tmp_path / "state.json"), clock=clock, rand=lambda: 0.5)


def conditions(reconciler: Reconciler, name: str = "chat") -> dict[str, dict[str, Any]]:
    model = next(m for m in reconciler.status()["models"] if m["name"] == name)
    return {c["type"]: c for c in model["conditions"]}


@pytest.fixture
def world() -> tuple[FakeEffects, FakeClock]:
    return FakeEffects(tags={IMAGE: digest("a")}), FakeClock()


def test_apply_pulls_then_loads_and_reports_ready(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    assert reconciler.submit(documents(CHAT), "r1").generation == 1
    asyncio.run(reconciler.reconcile())
    assert effects.actions() == [
        ("pull", IMAGE, digest("a")),
        ("ensure", "chat", digest("a"), {"num_ctx": 2048}),
    ]
    found = conditions(reconciler)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("True", "Loaded")
    assert (found["Progressing"]["status"], found["Degraded"]["status"]) == ("False", "False")
    assert found["Ready"]["observedGeneration"] == 1
    status = reconciler.status()
    assert (
        status["ready"] and status["inventory"] == ["chat"] and status["models"][0]["serving"] == digest("a")
    )
    target = reconciler.target("chat")
    assert target is not None and target.digest == digest("a") and reconciler.target("other") is None

    # Nothing changed: another round acts on nothing, and lastTransitionTime stays.
    clock.now += 60
    asyncio.run(reconciler.reconcile())
    assert len(effects.actions()) == 2
    assert conditions(reconciler)["Ready"]["lastTransitionTime"] == found["Ready"]["lastTransitionTime"]


def test_rounds_that_change_nothing_do_not_rewrite_the_state_file(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every round wrote the same state again, two fsyncs on the server's event loop (a pause of
    every stream) every 30 s; now only what changed is written."""
    from modelyard.spec import reconciler as module

    effects, clock = world
    written: list[bytes] = []
    write = module.write_state
    monkeypatch.setattr(module, "write_state", lambda path, data: (written.append(data), write(path, data)))
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT), "r1")
    asyncio.run(reconciler.reconcile())
    assert written, "the spec and its model's load are saved"
    before = len(written)
    for _ in range(5):
        clock.now += 30
        asyncio.run(reconciler.reconcile())
    assert len(written) == before, "steady rounds: nothing written"
    (tmp_path / "state.json").unlink()  # by hand: written again at the next round
    asyncio.run(reconciler.reconcile())
    assert len(written) == before + 1 and (tmp_path / "state.json").exists()
    before += 1
    effects.crash("chat")  # something happens: the next round loads it again, and says so
    asyncio.run(reconciler.reconcile())
    assert len(written) > before
    assert make(tmp_path, effects, clock).status()["events"] == reconciler.status()["events"], "on disk"


def test_a_round_asks_the_registry_for_each_tag_once(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A reconcile audit: every pass of a round (pull, then load, then …) asked for every tag
    again, so a slow registry held the round up once per pass."""
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    assert len(effects.actions()) == 2, "a round of two passes at least: a pull, then a load"
    assert [c for c in effects.calls if c[0] == "resolve"] == [("resolve", IMAGE)]
    effects.errors[("resolve", IMAGE)] = [RegistryUnavailableError("localhost:5000", "timed out")]
    asyncio.run(reconciler.reconcile())
    assert [c for c in effects.calls if c[0] == "resolve"] == [("resolve", IMAGE)] * 2


def test_only_a_swap_carries_the_schedulers_note_on_how_it_went(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A reconcile audit: a reload (context changed) logged "replaced sha256:… without downtime",
    the note of the swap before it, which its runner kept."""
    effects, clock = world
    effects.notes["chat"] = "replaced sha256:aaaa without downtime"
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    reconciler.submit(documents(CHAT.replace("2048", "4096")))
    asyncio.run(reconciler.reconcile())
    kinds = {e["kind"]: e["message"] for e in reconciler.status()["events"]}
    assert "without downtime" not in kinds["loaded"] and "without downtime" not in kinds["reloaded"]
    effects.tags[IMAGE] = digest("b")
    effects.stored.add(digest("b"))
    asyncio.run(reconciler.reconcile())
    assert "without downtime" in reconciler.status()["events"][-1]["message"]


def test_a_crash_the_next_request_mends_is_an_event_of_its_model(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A spec review: a runner killed under traffic was loaded again by the next request within
    milliseconds, and the status showed nothing of it (the scheduler tells us: runner_crashed)."""
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    reconciler.runner_crashed("chat", "runner crashed (killed by SIGKILL)")
    reconciler.runner_crashed("not-the-specs", "runner crashed (killed by SIGKILL)")
    events = [(e["model"], e["kind"], e["message"]) for e in reconciler.status()["events"]]
    assert events[-1] == (
        "chat",
        "crashed",
        "runner crashed (killed by SIGKILL); the next request loads it again",
    )
    assert not [e for e in events if e[0] == "not-the-specs"]


def test_a_moved_tag_is_pulled_and_swapped_in(tmp_path: Path, world: tuple[FakeEffects, FakeClock]) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    effects.tags[IMAGE] = digest("b")
    asyncio.run(reconciler.reconcile())
    assert effects.actions()[2:] == [
        ("pull", IMAGE, digest("b")),
        ("ensure", "chat", digest("b"), {"num_ctx": 2048}),
    ]
    kinds = [e["kind"] for e in reconciler.status()["events"]]
    assert kinds[-2:] == ["pulled", "swapped"]
    assert reconciler.status()["models"][0]["resolvedDigest"] == digest("b")


def test_an_earlier_digest_serving_on_keeps_the_server_serving_though_not_reconciled(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """/health (serving) stays up through a tag move whose pull fails; Ready (reconciled) does not."""
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    assert not reconciler.serving(), "nothing answers before the first load"
    asyncio.run(reconciler.reconcile())
    assert reconciler.serving() and reconciler.ready()
    effects.tags[IMAGE] = digest("b")
    effects.errors[("pull", IMAGE)] = [DigestMismatchError("b", "c")]
    asyncio.run(reconciler.reconcile())
    assert not reconciler.ready() and reconciler.serving()
    assert reconciler.status()["models"][0]["serving"] == digest("a")


def test_a_long_pull_does_not_hold_back_other_changes_to_the_spec(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """Found: a 90 s pull of one tag kept a model added meanwhile from loading until it ended."""
    effects, clock = world
    other = "localhost:5000/team/other:v1"
    effects.tags[other] = digest("c")
    effects.stored.add(digest("c"))  # in the store already: nothing to pull for it

    async def scenario() -> None:
        reconciler = make(tmp_path, effects, clock)
        reconciler.submit(documents(CHAT))
        await reconciler.reconcile()
        effects.tags[IMAGE] = digest("b")  # the tag moves, and the registry is slow
        effects.pull_gate = asyncio.Event()
        await reconciler.reconcile(wait_for_pulls=False)  # returns with the pull under way
        assert conditions(reconciler)["Progressing"]["reason"] == "Pulling"
        assert reconciler.serving(), "the old digest serves on meanwhile"
        reconciler.submit(documents(CHAT[:-1] + f", {{name: other, image: {other}}}]"))
        await asyncio.wait_for(reconciler.reconcile(wait_for_pulls=False), 5)
        assert "other" in effects.loaded, "the model added meanwhile loaded without waiting"
        assert effects.loaded["chat"].digest == digest("a")
        effects.pull_gate.set()  # the pull ends: the next round takes it up
        for _ in range(100):
            await asyncio.sleep(0)
        await reconciler.reconcile(wait_for_pulls=False)
        assert effects.loaded["chat"].digest == digest("b")
        kinds = [e["kind"] for e in reconciler.status()["events"]]
        assert kinds[-2:] == ["pulled", "swapped"]

    asyncio.run(scenario())


def test_a_model_removed_from_the_spec_stops_its_pull(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A 40 GB pull of a model the spec no longer names is stopped, not run to its end."""
    effects, clock = world

    async def scenario() -> None:
        reconciler = make(tmp_path, effects, clock)
        effects.pull_gate = asyncio.Event()  # a slow registry
        reconciler.submit(documents(CHAT))
        await reconciler.reconcile(wait_for_pulls=False)
        assert any(c[:3] == ("pull", IMAGE, digest("a")) for c in effects.calls), effects.calls
        reconciler.submit(documents("models: []"))
        await reconciler.reconcile(wait_for_pulls=False)
        await asyncio.sleep(0)
        assert any(c[:3] == ("pull stopped", IMAGE, digest("a")) for c in effects.calls), effects.calls
        assert not reconciler.status()["models"]

    asyncio.run(scenario())


def test_failures_back_off_exponentially_then_recover(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    effects.errors[("ensure", "chat")] = [ModelLoadError("chat", "bad"), ModelLoadError("chat", "bad")]
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    degraded = conditions(reconciler)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "LoadFailed")
    model = reconciler.status()["models"][0]
    assert model["failures"] == 1 and model["phase"] == "Waiting"

    asyncio.run(reconciler.reconcile())  # still in backoff (1 s): nothing is tried
    assert [c[0] for c in effects.actions()].count("ensure") == 1
    clock.now += 1.0
    asyncio.run(reconciler.reconcile())  # second failure: the next wait doubles
    assert [c[0] for c in effects.actions()].count("ensure") == 2
    clock.now += 1.5
    asyncio.run(reconciler.reconcile())
    assert [c[0] for c in effects.actions()].count("ensure") == 2
    clock.now += 1.0
    asyncio.run(reconciler.reconcile())
    assert conditions(reconciler)["Ready"]["status"] == "True"
    assert conditions(reconciler)["Degraded"]["status"] == "False"
    assert reconciler.status()["models"][0]["failures"] == 0


def test_a_permanent_failure_waits_for_a_spec_change(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    effects.errors[("ensure", "chat")] = [ModelDoesNotFitError("chat", 2**32, 2**30)]
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    clock.now += 10_000
    asyncio.run(reconciler.reconcile())
    assert [c[0] for c in effects.actions()].count("ensure") == 1
    degraded = conditions(reconciler)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "DoesNotFit")
    assert "waiting for a change" in reconciler.status()["models"][0]["message"]

    reconciler.submit(documents(CHAT.replace("2048", "1024")))
    asyncio.run(reconciler.reconcile())
    assert effects.actions()[-1] == ("ensure", "chat", digest("a"), {"num_ctx": 1024})
    assert conditions(reconciler)["Ready"]["observedGeneration"] == 2


def test_registry_down_keeps_serving_and_says_degraded(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    effects.errors[("resolve", IMAGE)] = [RegistryUnavailableError("localhost:5000", "connection refused")]
    asyncio.run(reconciler.reconcile())
    found = conditions(reconciler)
    assert (found["Ready"]["status"], found["Degraded"]["status"], found["Degraded"]["reason"]) == (
        "True",
        "True",
        "PullFailed",
    )
    assert "going on with sha256:aaaa" in found["Degraded"]["message"]
    assert "unload" not in [c[0] for c in effects.actions()]
    asyncio.run(reconciler.reconcile())  # the registry is back
    assert conditions(reconciler)["Degraded"]["status"] == "False"


def test_a_swap_beyond_the_specs_memory_unloads_the_old_one_first(tmp_path: Path) -> None:
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}, sizes={"chat": 100}), FakeClock()
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents("memory: {ram: 150}\n" + CHAT))
    asyncio.run(reconciler.reconcile())
    effects.tags[IMAGE] = digest("b")
    asyncio.run(reconciler.reconcile())
    assert [c[:3] for c in effects.actions()][-1] == ("ensure", "chat", digest("b"))
    assert effects.side_by_side == [True, False], "the swap is told the old one goes first"
    assert "short gap" in " ".join(e["message"] for e in reconciler.status()["events"])


def test_an_invalid_spec_is_rejected_whole_and_the_last_good_one_stays(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT), "good")
    asyncio.run(reconciler.reconcile())
    bad = f"models: [{{name: chat, image: {IMAGE}, context: 2048}}, {{name: code, image: x, paralel: 2}}]"
    result = reconciler.submit(documents(bad), "typo")
    assert not result.accepted and result.generation == 1 and result.error is not None
    asyncio.run(reconciler.reconcile())
    status = reconciler.status()
    assert status["generation"] == 1 and [m["name"] for m in status["models"]] == ["chat"]
    assert status["rejected"]["revision"] == "typo"
    assert status["rejected"]["issues"][0]["path"] == "spec.models[1].paralel"
    assert "ensure" not in [c[0] for c in effects.actions()[2:]]
    assert reconciler.submit(documents(CHAT), "fixed").accepted
    assert reconciler.status()["rejected"] is None and reconciler.generation == 1


def test_a_first_spec_that_is_rejected_still_engages_the_status(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """/api/status shows the spec part (with the rejection) rather than "no spec applied"."""
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    assert not reconciler.engaged
    reconciler.submit(documents(f"models: [{{name: chat, image: {IMAGE}, paralel: 2}}]"), "typo")
    assert reconciler.spec is None and reconciler.engaged


def test_a_source_whose_bad_edit_is_undone_shows_no_rejection(tmp_path: Path) -> None:
    """Back at the spec in force, the source has nothing rejected, now or after a restart."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    spec = tmp_path / "models.yaml"
    spec.write_text(spec_text(CHAT))
    source = FileSource(spec)

    def reconciler_reading() -> Reconciler:
        reconciler = Reconciler(
            effects, ReconcilerSettings(tmp_path / "state.json", debounce=0), clock=clock, rand=lambda: 0.5
        )
        asyncio.run(reconciler._read(source, first=True))
        return reconciler

    reconciler = reconciler_reading()
    spec.write_text(spec_text(CHAT.replace("2048", "lots")))
    asyncio.run(reconciler._read(source))
    assert reconciler.status()["rejected"] is not None and reconciler.generation == 1
    spec.write_text(spec_text(CHAT))
    asyncio.run(reconciler._read(source))
    assert reconciler.status()["rejected"] is None and reconciler.generation == 1
    assert reconciler_reading().status()["rejected"] is None


def test_a_saved_spec_stays_in_force_only_for_the_source_it_came_from(tmp_path: Path) -> None:
    """A CLI review: `serve --spec FILE` with FILE invalid put in force the spec that `apply` had
    set in an earlier run, and /health said all was well. Restarted on the file it came from, the
    last good spec stays in force while the file is broken, as it does while the server runs."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    spec = tmp_path / "models.yaml"
    broken = spec_text(CHAT.replace("2048", "lots"))

    def serve(source: FileSource | None) -> Reconciler:
        reconciler = make(tmp_path, effects, clock)

        async def briefly() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(reconciler.run(source, stop))
            await asyncio.sleep(0.3)
            stop.set()
            await running

        asyncio.run(briefly())
        return reconciler

    make(tmp_path, effects, clock).submit(documents(CHAT), "applied")  # `apply` in an earlier run
    spec.write_text(broken)
    following = serve(FileSource(spec))
    status = following.status()
    assert status["name"] is None and status["rejected"] is not None and status["models"] == []
    assert not following.serving(), "/health under serve --spec: nothing serves the file's spec"

    spec.write_text(spec_text(CHAT))
    assert serve(FileSource(spec)).status()["name"] is not None
    spec.write_text(broken)
    restarted = serve(FileSource(spec)).status()
    assert restarted["name"] is not None and restarted["rejected"] is not None, "its own last good spec"
    # Nor is the file's spec in force for `apply`: apply's own, shelved meanwhile, comes back.
    applied = serve(None)
    assert applied._revision == "applied" and "unshelved" in [e["kind"] for e in applied.status()["events"]]

    # A state file from before sources were recorded: its spec is taken to be the source's.
    make(tmp_path, effects, clock).submit(documents(CHAT), "applied")
    saved = json.loads((tmp_path / "state.json").read_text())
    del saved["source"]
    (tmp_path / "state.json").write_text(json.dumps(saved))
    assert serve(FileSource(spec)).status()["name"] is not None


def test_the_source_condition_says_whether_its_latest_revision_is_in_force(tmp_path: Path) -> None:
    """A GitOps review: a source that could not be read, or whose latest revision was rejected,
    showed only in the status's text: Ready stayed True and `status --wait-ready` passed on the
    last good spec. Now SourceReady says why, and ready() waits for the source (serving() not)."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    spec = tmp_path / "models.yaml"
    spec.write_text(spec_text(CHAT))
    reconciler = Reconciler(
        effects, ReconcilerSettings(tmp_path / "state.json", debounce=0), clock=clock, rand=lambda: 0.5
    )

    def source() -> dict[str, Any]:
        [condition] = reconciler.status()["conditions"]
        assert condition["type"] == "SourceReady"
        return condition

    async def until(check: Any) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(reconciler.status())

    async def follow() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(reconciler.run(FileSource(spec, poll_interval=0.02), stop))
        try:
            assert await reconciler.wait_ready(5)
            read = source()
            assert (read["status"], read["reason"]) == ("True", "Read") and reconciler.serving()

            clock.now += 10
            spec.write_text(spec_text(CHAT.replace("2048", "lots")))
            await until(lambda: source()["reason"] == "Rejected")
            assert not reconciler.ready() and reconciler.serving(), "the last good spec serves on"
            assert source()["status"] == "False" and "the last good spec stays" in source()["message"]
            assert source()["lastTransitionTime"] != read["lastTransitionTime"]
            assert not await reconciler.wait_ready(0.1)

            spec.unlink()
            await until(lambda: source()["reason"] == "ReadFailed")
            assert not reconciler.ready() and reconciler.serving()

            clock.now += 10
            spec.write_text(spec_text(CHAT))  # the revision in force again
            assert await reconciler.wait_ready(5), "ready again once the source reads as in force"
            assert (source()["status"], source()["reason"]) == ("True", "Read")
            assert reconciler.status()["rejected"] is None and reconciler.generation == 1
        finally:
            stop.set()
            await running

    asyncio.run(follow())
    assert make(tmp_path, effects, clock).status()["conditions"] == [], "no source followed: none"


def test_a_saved_spec_of_a_git_source_named_as_before_stays_in_force(tmp_path: Path) -> None:
    """A local repository is now named by its absolute path: a spec saved under the spelling an
    earlier version kept (`git+./ops`, `git+file:///…`) is the same source's, not forgotten."""
    from modelyard.spec.sources import GitSource, parse_git_location

    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    source = GitSource(parse_git_location(f"git+file://{tmp_path}/ops#m.yaml"), tmp_path / "cache")
    assert source.description == f"git+{tmp_path}/ops#m.yaml"
    assert source.former_descriptions == (f"git+file://{tmp_path}/ops#m.yaml",)
    earlier = make(tmp_path, effects, clock)
    earlier._source = source.former_descriptions[0]  # what that version saved with the spec
    earlier.submit(documents(CHAT), "git:1")
    restarted = make(tmp_path, effects, clock)
    restarted._source = source.description
    restarted._take_up_this_sources_spec(source.former_descriptions)
    assert restarted.spec is not None
    restarted._take_up_this_sources_spec(())
    assert restarted.spec is None, "without it, another source's: shelved"


def test_a_spec_apply_set_is_shelved_while_a_source_is_followed_and_comes_back_after(tmp_path: Path) -> None:
    """A README review: one `serve --spec b.yaml` run lost the spec `apply` had set for good; a
    plain `serve` after it started with none. It is shelved for `apply`, and comes back."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    applied = make(tmp_path, effects, clock)
    assert applied.submit(documents(CHAT), "").accepted
    applied_digest = applied.spec.digest if applied.spec else ""

    followed = make(tmp_path, effects, clock)  # `serve --spec b.yaml`, after a restart
    followed._source = "file:b.yaml"
    followed._take_up_this_sources_spec()
    assert followed.spec is None, "apply's spec is not the file's"
    followed.submit(documents(CHAT.replace("2048", "1024")), "file:1")  # what b.yaml says

    again = make(tmp_path, effects, clock)  # a plain `serve`: apply's spec again
    again._take_up_this_sources_spec()
    assert again.spec is not None and again.spec.digest == applied_digest
    kinds = [e["kind"] for e in again.status()["events"]]
    assert kinds.count("shelved") == 2 and kinds[-1] == "unshelved", kinds
    assert again.generation == followed.generation + 1

    back = make(tmp_path, effects, clock)  # and b.yaml's, when it is followed once more
    back._source = "file:b.yaml"
    back._take_up_this_sources_spec()
    assert back.spec is not None and back.spec.digest != applied_digest and back._revision == "file:1"


def test_a_restart_loads_the_saved_spec_while_its_source_hangs_and_is_not_ready_before(
    tmp_path: Path,
) -> None:
    """A GitOps review: restarted while its git host accepted and never answered, the server
    loaded nothing for 120 s (the first read came before the first round), and /health said 200
    from the restored reports before any model was loaded."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    spec = tmp_path / "models.yaml"
    spec.write_text(spec_text(CHAT))
    answered = threading.Event()

    class HangingSource:  # the same source, whose reads hang until the test lets them go
        description, poll_interval, former_descriptions = str(spec), 0.05, ()

        def read(self) -> SpecSnapshot:
            answered.wait(10)
            return FileSource(spec).read()

    async def serve(source: FileSource | HangingSource, reconciler: Reconciler) -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(reconciler.run(source, stop))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        stop.set()
        answered.set()
        await running

    asyncio.run(serve(FileSource(spec), make(tmp_path, effects, clock)))
    assert "chat" in effects.loaded
    effects.loaded.clear()  # the server restarted: nothing is loaded
    answered.clear()
    restarted = Reconciler(
        effects,
        ReconcilerSettings(tmp_path / "state.json", first_read_head_start=0.1),
        clock=clock,
        rand=lambda: 0.5,
    )
    assert not restarted.serving(), "the restored reports say Ready; no model is loaded"
    asyncio.run(serve(HangingSource(), restarted))
    assert "chat" in effects.loaded and restarted.serving()


def test_a_restart_keeps_generation_inventory_and_history(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    first = make(tmp_path, effects, clock)
    two = f"models: [{{name: chat, image: {IMAGE}}}, {{name: old, image: {IMAGE}}}]"
    first.submit(documents(two))
    asyncio.run(first.reconcile())
    since = conditions(first)["Ready"]["lastTransitionTime"]

    clock.now += 3600
    second = make(tmp_path, effects, clock)  # the daemon restarted; the runners kept going here
    assert second.generation == 1 and second.spec is not None and len(second.spec.models) == 2
    second.submit(documents(f"models: [{{name: chat, image: {IMAGE}}}]"))
    asyncio.run(second.reconcile())
    # prune still knows "old" was loaded by the spec; "chat" is adopted, not reloaded
    assert effects.actions()[-2:] == [("unload", "old"), ("ensure", "chat", digest("a"), {})]
    assert conditions(second)["Ready"]["lastTransitionTime"] == since
    assert [e["kind"] for e in second.status()["events"]][:2] == ["accepted", "pulled"]


def test_a_restart_with_nothing_loaded_loads_the_saved_spec(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    first = make(tmp_path, effects, clock)
    first.submit(documents(CHAT))
    asyncio.run(first.reconcile())
    effects.loaded.clear()  # the machine rebooted
    second = make(tmp_path, effects, clock)
    asyncio.run(second.reconcile())
    assert effects.actions()[-1] == ("ensure", "chat", digest("a"), {"num_ctx": 2048})
    assert second.ready()


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RegistryError("blob not found"), id="pull-fails"),
        pytest.param(DigestMismatchError(digest("b"), digest("c"), "registry"), id="pull-fails-for-good"),
    ],
)
def test_a_restart_serves_the_image_before_while_a_moved_tags_pull_fails(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock], error: ModelyardError
) -> None:
    """A spec review: the tag moved to an image that could not be pulled; before the restart the
    old digest served on, after it nothing did (the registry's answer was known before the pull
    succeeded), though the image before was in the store."""
    effects, clock = world
    first = make(tmp_path, effects, clock)
    first.submit(documents(CHAT))
    asyncio.run(first.reconcile())
    effects.tags[IMAGE] = digest("b")  # moved: its pull fails
    effects.errors[("pull", IMAGE)] = [error] * 10
    asyncio.run(first.reconcile())
    assert effects.loaded["chat"].digest == digest("a"), "it serves on before the restart"
    effects.loaded.clear()  # the machine rebooted
    second = make(tmp_path, effects, clock)
    asyncio.run(second.reconcile())
    assert effects.loaded["chat"].digest == digest("a"), "and after it"
    degraded = conditions(second)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "PullFailed"), "and says what is wrong"
    clock.now += 600  # the registry fixed: the next round pulls and swaps
    effects.errors.clear()
    asyncio.run(second.reconcile())
    if isinstance(error, DigestMismatchError):
        return  # a permanent failure waits for a change to the model (its rule, unchanged)
    assert effects.loaded["chat"].digest == digest("b")


def test_suspend_changes_nothing(tmp_path: Path, world: tuple[FakeEffects, FakeClock]) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT + "\nsuspend: true"))
    asyncio.run(reconciler.reconcile())
    assert effects.actions() == []
    status = reconciler.status()
    assert status["suspended"] and status["models"][0]["phase"] == "Suspended"


def test_a_crash_is_healed_and_reported(tmp_path: Path, world: tuple[FakeEffects, FakeClock]) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    asyncio.run(reconciler.reconcile())
    effects.crash("chat")
    asyncio.run(reconciler.reconcile())
    assert effects.actions()[-1][0:2] == ("ensure", "chat")
    events = reconciler.status()["events"]
    assert events[-1]["kind"] == "loaded" and "SIGKILL" in events[-1]["message"]
    assert conditions(reconciler)["Degraded"]["status"] == "False"


def test_a_model_that_failed_to_load_is_reported_so_not_as_a_crash(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A reconcile audit: weights llama.cpp refused showed Degraded Crashed, though they never ran."""
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT + "\nselfHeal: false"))  # reported, not loaded again
    asyncio.run(reconciler.reconcile())
    effects.crash("chat", "llama.cpp refused the weights", kind="load-failed")
    asyncio.run(reconciler.reconcile())
    degraded = conditions(reconciler)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "LoadFailed")
    assert "refused" in degraded["message"]


def test_wait_ready_returns_once_ready_or_at_the_timeout(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)

    async def scenario() -> tuple[bool, bool]:
        reconciler.submit(documents(CHAT))
        early = await reconciler.wait_ready(0.05)
        waiter = asyncio.create_task(reconciler.wait_ready(5))
        await reconciler.reconcile()
        return early, await waiter

    assert asyncio.run(scenario()) == (False, True)


@pytest.mark.parametrize(
    ("error", "reason", "permanent"),
    [
        pytest.param(ModelDoesNotFitError("m", 2, 1), Reason.DOES_NOT_FIT, True, id="does-not-fit"),
        pytest.param(DigestMismatchError("a", "b"), Reason.PULL_FAILED, True, id="digest-mismatch"),
        pytest.param(RegistryUnavailableError("h", "down"), Reason.PULL_FAILED, False, id="registry-down"),
        pytest.param(ModelLoadError("m", "x"), Reason.LOAD_FAILED, False, id="load-failed"),
        # The scheduler's reason decides, never the words of its message.
        pytest.param(
            ServerBusyError("m failed to load or crashed (bad)", 4.0, reason="load-failed"),
            Reason.LOAD_FAILED,
            False,
            id="load-backoff",
        ),
        pytest.param(
            ServerBusyError("m is down (SIGKILL)", 4.0, reason="crashed"),
            Reason.CRASHED,
            False,
            id="crash-backoff",
        ),
        pytest.param(
            ServerBusyError("not enough memory", 2.0, reason="memory"),
            Reason.DOES_NOT_FIT,
            False,
            id="memory",
        ),
        pytest.param(
            ServerBusyError("queue full; crashed?", 1.0, reason="queue"),
            Reason.LOAD_FAILED,
            False,
            id="queue",
        ),
    ],
)
def test_classify(error: Exception, reason: Reason, permanent: bool) -> None:
    failure = classify(error, ActionKind.LOAD)  # type: ignore[arg-type]
    assert (failure.reason, failure.permanent) == (reason, permanent)


def test_a_busy_scheduler_s_retry_after_is_kept() -> None:
    failure = classify(ServerBusyError("m crashed", 4.0, reason="crashed"), ActionKind.LOAD)
    assert failure.retry_after == 4.0


@pytest.mark.parametrize(
    ("first_load_fails", "served"),
    [
        pytest.param(False, digest("a"), id="a-failed-swap-serves-the-old-digest"),
        pytest.param(True, None, id="a-failed-first-load-serves-nothing"),
    ],
)
def test_requests_follow_a_load_only_while_it_can_succeed(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock], first_load_fails: bool, served: str | None
) -> None:
    effects, clock = world
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    if not first_load_fails:
        asyncio.run(reconciler.reconcile())
        effects.tags[IMAGE] = digest("b")
    seen: list[str | None] = []

    def during(target: LoadTarget) -> None:  # requests during the load already go to the new digest
        now = reconciler.target("chat")
        seen.append(now.digest if now is not None else None)

    effects.during_ensure = during
    effects.errors[("ensure", "chat")] = [ModelLoadError("chat", "bad weights")]
    asyncio.run(reconciler.reconcile())
    assert seen == [digest("b") if not first_load_fails else digest("a")]
    after = reconciler.target("chat")
    assert (after.digest if after is not None else None) == served


def test_models_on_one_image_pull_it_once(tmp_path: Path, world: tuple[FakeEffects, FakeClock]) -> None:
    effects, clock = world
    two = f"models: [{{name: chat, image: {IMAGE}}}, {{name: code, image: {IMAGE}, context: 1024}}]"
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(two))
    planned = asyncio.run(reconciler.preview())
    assert planned is not None
    assert [line.split("  (")[0] for line in format_plan(planned).splitlines()] == [
        f"↓ pull    chat, code {IMAGE}@{digest('a')[:19]}"
    ]
    asyncio.run(reconciler.reconcile())
    assert [c for c in effects.actions() if c[0] == "pull"] == [("pull", IMAGE, digest("a"))]
    assert set(effects.loaded) == {"chat", "code"}


def test_a_shared_pull_that_fails_fails_every_model_on_it_once(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    effects, clock = world
    two = f"models: [{{name: chat, image: {IMAGE}}}, {{name: code, image: {IMAGE}}}]"
    effects.errors[("pull", IMAGE)] = [RegistryUnavailableError("localhost:5000", "connection refused")]
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(two))
    asyncio.run(reconciler.reconcile())
    assert [c[0] for c in effects.actions()] == ["pull"]
    for name in ("chat", "code"):
        degraded = conditions(reconciler, name)["Degraded"]
        assert (degraded["status"], degraded["reason"]) == ("True", "PullFailed")


def test_a_failure_retried_again_and_again_is_one_event_counted(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """Found by a walkthrough: each retry of a pull that cannot succeed wrote the same event again,
    and `status` (the last 5) soon showed nothing else."""
    from modelyard.spec.status import format_status

    effects, clock = world
    refused = RegistryUnavailableError("localhost:5000", "connection refused")
    effects.errors[("pull", IMAGE)] = [refused] * 4
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(CHAT))
    for _ in range(4):
        asyncio.run(reconciler.reconcile())
        clock.now += 3600  # past any backoff
    failed = [e for e in reconciler.status()["events"] if e["kind"] == "failed"]
    assert len(failed) == 1 and failed[0]["count"] == 4, reconciler.status()["events"]
    assert "(4 times)" in format_status(reconciler.status())
    asyncio.run(reconciler.reconcile())  # the registry is back
    kinds = [(e["kind"], e["count"]) for e in reconciler.status()["events"]]
    assert kinds == [("accepted", 1), ("failed", 4), ("pulled", 1), ("loaded", 1)]


def test_status_as_a_table_shows_the_latest_events_and_keeps_long_names_in_line(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    from modelyard.spec.status import format_status

    effects, clock = world
    long_name = "a-model-name-longer-than-twenty-characters"
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(f"models: [{{name: {long_name}, image: {IMAGE}, context: 2048}}]"))
    asyncio.run(reconciler.reconcile())
    table = format_status(reconciler.status())
    header = next(line for line in table.splitlines() if line.startswith("NAME"))
    row = next(line for line in table.splitlines() if line.startswith(long_name))
    assert row.index(" True ") == header.index(" READY "), table
    assert "events (the last" in table and f"loaded     {long_name}:" in table, table


def test_background_pulls_are_recorded_only_for_what_the_spec_still_wants(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """Found in review: a pull the spec moved away from left its model 'Pulling' for ever, filed its
    late failure against the model's new entry, and a tag moving again started a second pull of it."""
    effects, clock = world

    async def settle(reconciler: Reconciler) -> None:
        for _ in range(50):
            await asyncio.sleep(0)
        await reconciler.reconcile(wait_for_pulls=False)

    async def scenario() -> None:
        reconciler = make(tmp_path, effects, clock)
        reconciler.submit(documents(CHAT))
        await reconciler.reconcile()
        effects.pull_gate = asyncio.Event()
        effects.tags[IMAGE] = digest("b")  # the tag moves: a slow pull starts
        await reconciler.reconcile(wait_for_pulls=False)
        effects.tags[IMAGE] = digest("c")  # and moves again during it: that pull stops, c's starts,
        await reconciler.reconcile(wait_for_pulls=False)  # never two of the tag at once
        await settle(reconciler)
        pulls = [c for c in effects.calls if c[0].startswith("pull")][1:]
        assert pulls == [
            ("pull", IMAGE, digest("b")),
            ("pull stopped", IMAGE, digest("b")),
            ("pull", IMAGE, digest("c")),
        ], pulls
        effects.tags[IMAGE] = digest("a")  # rolled back to what serves: Ready, not Pulling
        await reconciler.reconcile(wait_for_pulls=False)
        await asyncio.sleep(0)  # the stopped pull's task runs to its cancel
        assert ("pull stopped", IMAGE, digest("c")) in effects.calls
        assert conditions(reconciler)["Ready"]["status"] == "True", conditions(reconciler)
        effects.errors[("pull", IMAGE)] = [DigestMismatchError("b", "x")]
        effects.pull_gate.set()  # the pull nobody wants now fails: nobody's failure
        await settle(reconciler)
        found = conditions(reconciler)
        assert found["Ready"]["status"] == "True" and found["Degraded"]["status"] == "False", found
        assert reconciler.ready()

    asyncio.run(scenario())


def test_an_apply_waits_only_for_the_pulls_its_own_plan_needs(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """Found in review: an apply waited on every pull the daemon ran, a stuck one for ever."""
    effects, clock = world
    other = "localhost:5000/team/other:v1"
    effects.tags[other] = digest("c")
    effects.stored.add(digest("c"))

    async def scenario() -> None:
        reconciler = make(tmp_path, effects, clock)
        reconciler.submit(documents(CHAT))
        await reconciler.reconcile()
        effects.pull_gate = asyncio.Event()  # never set: the registry hangs
        effects.tags[IMAGE] = digest("b")
        await reconciler.reconcile(wait_for_pulls=False)  # the daemon's round: chat's pull hangs
        reconciler.submit(documents(f"models: [{{name: other, image: {other}}}]"))  # chat goes
        await asyncio.wait_for(reconciler.reconcile(), 5)  # an apply's round: chat's pull is no need
        assert "other" in effects.loaded

    asyncio.run(scenario())


def test_a_model_measured_too_big_once_loaded_is_not_loaded_again_and_again(tmp_path: Path) -> None:
    """A spec review: an estimate just over the room left, within the estimate's margin, loaded,
    measured over, was unloaded ('the budget is for the models before it'), and loaded again on
    the next pass, three times a round, every interval, for ever, while the status said Loading.
    The measurement is kept (persisted): the model stays DoesNotFit until room or the spec changes,
    and loads again once there is room for what it measured. (The margin applies under the spec's
    own memory: under the server's budget the scheduler would take the estimate as it is.)"""
    clock = FakeClock()
    effects = FakeEffects(
        tags={IMAGE: digest("a"), "localhost:5000/team/big:v1": digest("b")},
        sizes={"chat": 6_000, "big": 4_500},
        measured={"big": 5_000},
        budget=100_000,
    )
    models = f"models: [{{name: chat, image: {IMAGE}}}, {{name: big, image: localhost:5000/team/big:v1}}]"
    body = "memory: {ram: 10000}\n" + models
    reconciler = make(tmp_path, effects, clock)
    reconciler.submit(documents(body))
    for _ in range(3):
        asyncio.run(reconciler.reconcile())
        clock.now += 60
    loads = [c for c in effects.actions() if c[:2] == ("ensure", "big")]
    assert len(loads) == 1 and "big" not in effects.loaded
    found = conditions(reconciler, "big")
    assert (found["Degraded"]["status"], found["Degraded"]["reason"]) == ("True", "DoesNotFit")
    # A restarted daemon remembers it too.
    again = make(tmp_path, effects, clock)
    again.submit(documents(body))
    asyncio.run(again.reconcile())
    assert len([c for c in effects.actions() if c[:2] == ("ensure", "big")]) == 1
    # Room for what it measured: it loads.
    again.submit(documents("memory: {ram: 11000}\n" + models))
    clock.now += 60
    asyncio.run(again.reconcile())
    assert "big" in effects.loaded


def test_an_applys_plan_is_the_one_its_round_acts_on(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A spec review: `apply` put the spec in force (which wakes the daemon's loop), then took the
    plan it printed while the loop's round was already acting on it: "nothing to do" while that
    round unloaded a model. The plan is now taken under the round lock, after a round under way and
    before the next: it is what the next round does."""
    effects, clock = world
    other = "localhost:5000/team/other:v1"
    effects.tags[other] = digest("c")
    effects.stored.update({digest("a"), digest("c")})
    both = f"models: [{{name: chat, image: {IMAGE}}}, {{name: other, image: {other}}}]"

    async def scenario() -> None:
        reconciler = make(tmp_path, effects, clock)
        reconciler.submit(documents(both))
        await reconciler.reconcile()
        effects.tags[IMAGE] = digest("b")  # a round under way swaps chat, slowly
        effects.stored.add(digest("b"))
        gate = asyncio.Event()
        swapping = asyncio.Event()

        async def slow_ensure(target: LoadTarget, *, side_by_side: bool = True) -> Any:
            swapping.set()
            await gate.wait()
            return await FakeEffects.ensure(effects, target, side_by_side=side_by_side)

        effects.ensure = slow_ensure  # type: ignore[method-assign]
        clock.now += 60
        under_way = asyncio.create_task(reconciler.reconcile())
        await swapping.wait()
        only_chat = f"models: [{{name: chat, image: {IMAGE}}}]"
        applying = asyncio.create_task(reconciler.submit_and_preview(documents(only_chat)))
        await asyncio.sleep(0.05)
        assert not applying.done(), "the plan waits for the round under way"
        gate.set()
        await under_way
        result, planned = await applying
        assert result.error is None and planned is not None
        assert [(a.kind, a.model) for a in planned.actions] == [(ActionKind.UNLOAD, "other")]
        await reconciler.reconcile()
        assert "other" not in effects.loaded and effects.loaded["chat"].digest == digest("b")

    asyncio.run(scenario())


def test_every_problem_of_a_rejected_spec_is_logged(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """A CLI review: the server's log named the first of four problems; status named them all."""
    reconciler = make(tmp_path, *world)
    two = CHAT.replace("2048", "lots").replace("]", ", {name: chat2, image: x, parallel: 0}]")
    with caplog.at_level("INFO", logger="modelyard"):
        assert not reconciler.submit(documents(two), "r2").accepted
    logged = caplog.text
    assert "context" in logged and "parallel" in logged and "2 problem(s)" in logged, logged


def test_a_source_read_parses_the_spec_off_the_event_loop(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GitOps review: a spec of megabytes was parsed on the event loop, /health held for seconds."""
    import time

    from modelyard.spec import reconciler as module

    parse = module.parse_spec

    def slow_parse(documents: Any) -> Any:
        time.sleep(0.5)
        return parse(documents)

    monkeypatch.setattr(module, "parse_spec", slow_parse)
    spec = tmp_path / "models.yaml"
    spec.write_text(spec_text(CHAT))
    reconciler = make(tmp_path, *world)

    async def read_while_ticking() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(tick())
        await reconciler._read(FileSource(spec), first=True)
        ticking.cancel()
        return ticks

    assert asyncio.run(read_while_ticking()) > 20 and reconciler.generation == 1


def test_a_file_of_a_folder_source_emptied_while_it_is_rewritten_drops_no_model(
    tmp_path: Path, world: tuple[FakeEffects, FakeClock]
) -> None:
    """A GitOps review: a file rewritten in place (truncated, then written) was read empty, merged
    as nothing, and its models left the spec and were unloaded, to load again a moment later."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "a.yaml").write_text(spec_text(CHAT))
    (folder / "b.yaml").write_text(spec_text(f"models: [{{name: other, image: {IMAGE}}}]"))
    reconciler = make(tmp_path, *world)
    source = FileSource(folder)
    asyncio.run(reconciler._read(source, first=True))
    assert reconciler.generation == 1 and reconciler.status()["name"] is not None
    (folder / "b.yaml").write_text("")
    asyncio.run(reconciler._read(source, first=True))
    status = reconciler.status()
    assert reconciler.generation == 1 and "is empty (being written?)" in (status["source"]["error"] or "")
    assert status["rejected"] is None, "a source error, read again at the next poll: not a rejection"


def test_a_restart_acts_on_what_its_source_says_now_not_on_the_saved_spec(tmp_path: Path) -> None:
    """A review: with the first read beside the first round, a restart loaded the saved spec's
    model that the source had dropped while the server was down, then unloaded it."""
    effects = FakeEffects(tags={IMAGE: digest("a"), "localhost:5000/team/other:v1": digest("b")})
    clock = FakeClock()
    spec = tmp_path / "models.yaml"
    spec.write_text(spec_text(CHAT))

    async def serve() -> Reconciler:
        reconciler = make(tmp_path, effects, clock)
        stop = asyncio.Event()
        running = asyncio.create_task(reconciler.run(FileSource(spec), stop))
        await asyncio.sleep(0.3)
        stop.set()
        await running
        return reconciler

    asyncio.run(serve())
    effects.loaded.clear()  # the server restarted
    spec.write_text(spec_text("models: [{name: other, image: 'localhost:5000/team/other:v1'}]"))
    before = len(effects.actions())
    restarted = asyncio.run(serve())
    after = [a[:2] for a in effects.actions()[before:]]
    assert ("ensure", "other") in after and ("ensure", "chat") not in after, after
    assert restarted.ready()


def _switched_to(tmp_path: Path, effects: FakeEffects, clock: FakeClock, source: str) -> Reconciler:
    """A restart that follows `source` ("" for `apply`)."""
    reconciler = make(tmp_path, effects, clock)
    reconciler._source = source
    reconciler._take_up_this_sources_spec()
    return reconciler


def test_the_eight_specs_shelved_last_are_kept_whatever_their_sources_are_called(tmp_path: Path) -> None:
    """A review: the state file's sorted keys lost the order, and `apply`'s ("" sorts first) went
    first of all, though shelved last."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    for source in [*(f"file:/srv/z{i}.yaml" for i in range(7, 0, -1)), "", "file:/srv/z0.yaml"]:
        reconciler = _switched_to(tmp_path, effects, clock, source)
        if reconciler.spec is None:
            assert reconciler.submit(documents(CHAT), source).accepted
    reconciler = _switched_to(tmp_path, effects, clock, "file:/srv/a.yaml")  # shelves z0's: z7's goes
    kept = list(reconciler._shelved)
    assert len(kept) == 8 and "file:/srv/z7.yaml" not in kept and "" in kept, kept
    assert _switched_to(tmp_path, effects, clock, "")._revision == "", "apply's comes back"


def test_an_unshelved_spec_does_not_wait_out_another_sources_backoff(tmp_path: Path) -> None:
    """A review: a model of the unshelved spec waited out the backoff its namesake of the other
    source's spec had earned (up to 5 min), on another image."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    applied = _switched_to(tmp_path, effects, clock, "")
    assert applied.submit(documents(CHAT), "").accepted
    followed = _switched_to(tmp_path, effects, clock, "file:/srv/b.yaml")
    assert followed.submit(documents(CHAT.replace("2048", "1024")), "b1").accepted
    effects.errors[("ensure", "chat")] = [ModelLoadError("chat", "boom")] * 3
    for _ in range(3):
        asyncio.run(followed.reconcile())
        clock.now = followed._inventory.memory("chat").retry_at
    assert followed._inventory.memory("chat").failures == 3
    back = _switched_to(tmp_path, effects, clock, "")
    memory = back._inventory.memory("chat")
    assert (memory.failures, memory.failure, memory.retry_at) == (0, None, 0.0)


def test_a_shelved_spec_that_no_longer_validates_says_so(tmp_path: Path) -> None:
    """A review: it was dropped without an event, and status said nothing of why no spec was in force."""
    effects, clock = FakeEffects(tags={IMAGE: digest("a")}), FakeClock()
    followed = _switched_to(tmp_path, effects, clock, "file:/srv/b.yaml")
    assert followed.submit(documents(CHAT), "b1").accepted
    _switched_to(tmp_path, effects, clock, "")  # shelves b's
    state = json.loads((tmp_path / "state.json").read_text())
    state["shelved"][0]["spec"]["spec"]["models"][0]["context"] = "lots"  # as a later version might refuse
    (tmp_path / "state.json").write_text(json.dumps(state))
    back = _switched_to(tmp_path, effects, clock, "file:/srv/b.yaml")
    assert back.spec is None
    last = back.status()["events"][-1]
    assert last["kind"] == "unshelved" and "no longer validates" in last["message"], last
