"""The scheduler with real runners on tiny GGUFs (and Gemma for the memory estimate)."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from modelyard.builder.gguf_info import read_gguf
from modelyard.errors import ModelDoesNotFitError, ModelLoadError, ServerBusyError
from modelyard.runtime.memory import RUNNER_PROCESS_BYTES, shape_from_gguf
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner
from modelyard.runtime.scheduler import ModelRequest, ModelStatus, Scheduler, SchedulerSettings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tinygguf import write_tiny_llama

    folder = tmp_path_factory.mktemp("models")
    return write_tiny_llama(folder / "a.gguf", seed=1), write_tiny_llama(folder / "b.gguf", seed=2)


def request(path: Path, name: str, **kwargs: Any) -> ModelRequest:
    contents = read_gguf(path)
    options = {"num_ctx": 256, "num_parallel": 1, **kwargs.pop("options", {})}
    return ModelRequest(
        name=name,
        digest="sha256:" + name.encode().hex().ljust(64, "0")[:64],
        weights=path,
        shape=shape_from_gguf(contents.metadata, contents.tensors),
        options=options,
        **kwargs,
    )


def counting_starter() -> tuple[Callable[..., Runner], list[str]]:
    started: list[str] = []

    def start(spec: Any, **kwargs: Any) -> Runner:
        started.append(spec.name)
        return Runner.start(spec, **kwargs)

    return start, started


async def one_model_size(path: Path) -> int:
    """The larger of the estimate and the measured size: a budget 1.5 times this holds one model, not two."""
    scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
    try:
        await scheduler.preload(request(path, "probe"))
        entry = scheduler._entries["probe"]
        return max(scheduler.status()[0].size, entry.estimate.host + entry.process_bytes)
    finally:
        await scheduler.close()


def generate(lease_runner: Runner, n: int = 4) -> str:
    return lease_runner.complete(CompletionRequest("the cat", SamplingOptions(temperature=0, num_predict=n)))[
        0
    ]


def test_idle_model_is_evicted_busy_and_pinned_never(two_models: tuple[Path, Path]) -> None:
    a, b = two_models

    async def scenario() -> None:
        size = await one_model_size(a)
        settings = SchedulerSettings(ram_budget=int(size * 1.5), memory_wait=0.5, retry_after=2)
        scheduler = Scheduler(settings)
        try:
            # Idle A makes room for B.
            await scheduler.preload(request(a, "a"))
            async with scheduler.lease(request(b, "b")) as lease:
                assert await asyncio.to_thread(generate, lease.runner)
            assert [s.name for s in scheduler.status()] == ["b"]

            # Busy B is never evicted: A waits, then gets 503 with Retry-After.
            held = await scheduler.acquire(request(b, "b"))
            with pytest.raises(ServerBusyError) as busy:
                await scheduler.acquire(request(a, "a"))
            assert busy.value.retry_after == 2 and "busy or pinned" in str(busy.value)
            assert scheduler.is_loaded("b")
            held.release()
            (await scheduler.acquire(request(a, "a"))).release()  # now B is idle: evicted
            assert [s.name for s in scheduler.status()] == ["a"]

            # Pinned A is never evicted, even idle.
            await scheduler.preload(request(a, "a", pinned=True))
            with pytest.raises(ServerBusyError):
                await scheduler.acquire(request(b, "b"))
            assert scheduler.is_loaded("a") and not scheduler.is_loaded("b")
        finally:
            await scheduler.close()

    run(scenario())


def test_a_load_waiting_for_memory_holds_none_and_each_load_is_observed_once(
    two_models: tuple[Path, Path],
) -> None:
    """While it waits for room, a load shows as loading, waiting for memory, holding nothing (a
    metrics review: its estimate counted, past the budget); the load observers see each load once."""
    a, b = two_models

    async def scenario() -> None:
        size = await one_model_size(a)
        scheduler = Scheduler(SchedulerSettings(ram_budget=int(size * 1.5), memory_wait=3, retry_after=2))
        loads: list[str] = []
        scheduler.load_observers.append(lambda name, seconds: loads.append(name) if seconds > 0 else None)
        try:
            held = await scheduler.acquire(request(b, "b"))  # busy: never evicted
            waiting = asyncio.ensure_future(scheduler.acquire(request(a, "a")))
            for _ in range(100):
                await asyncio.sleep(0.02)
                rows = {row.name: row for row in scheduler.status()}
                if "a" in rows:
                    break
            row = rows["a"]
            assert (row.state, row.waiting, row.size, row.note) == ("loading", True, 0, "waiting for memory")
            assert sum(r.size for r in rows.values()) <= scheduler.ram_budget
            held.release()  # b idle: evicted, and a loads
            (await waiting).release()
            assert loads == ["b", "a"]
            assert not scheduler.status()[0].waiting
        finally:
            await scheduler.close()

    run(scenario())


def test_a_stopped_name_built_again_loads_its_new_digest_beside_the_old_ones_streams(
    two_models: tuple[Path, Path],
) -> None:
    """Deleted mid-stream, then built from other weights: the new digest serves at once, while
    the old runner finishes its stream and goes (a serving review: it waited for that stream)."""
    from dataclasses import replace as with_fields

    a, b = two_models

    async def scenario() -> None:
        # No queue beyond the slot: the old stream is not the new digest's queue (a diff review).
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34, memory_wait=5, max_queue=0))
        try:
            old = await scheduler.acquire(request(a, "m"))  # a stream in flight
            stopping = asyncio.ensure_future(scheduler.unload("m"))
            await asyncio.sleep(0.05)
            assert not stopping.done()  # waits for the stream
            rebuilt = with_fields(request(b, "m"), digest="sha256:" + "b" * 64)
            new = await asyncio.wait_for(scheduler.acquire(rebuilt), timeout=30)
            assert new.runner is not old.runner
            assert await asyncio.to_thread(generate, new.runner)
            rows = {(row.digest, row.state) for row in scheduler.status()}
            assert ("sha256:" + "b" * 64, "ready") in rows and len(rows) == 2
            new.release()
            old.release()  # the stream ends: the old runner goes, the new one stays
            assert await asyncio.wait_for(stopping, timeout=30)
            assert [row.digest for row in scheduler.status()] == ["sha256:" + "b" * 64]
        finally:
            await scheduler.close()

    run(scenario())


def test_model_larger_than_the_budget_is_refused_at_once(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=1024))
        started = time.monotonic()
        with pytest.raises(ModelDoesNotFitError, match="budget"):
            await scheduler.acquire(request(two_models[0], "a"))
        assert time.monotonic() - started < 1
        await scheduler.close()

    run(scenario())


def test_keep_alive_zero_unloads_forever_stays(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), clock=clock)
        try:
            async with scheduler.lease(request(two_models[0], "zero", keep_alive=0.0)) as lease:
                await asyncio.to_thread(generate, lease.runner)
            for _ in range(50):  # the unload runs as a task once the request ends
                if not scheduler.is_loaded("zero"):
                    break
                await asyncio.sleep(0.05)
            assert not scheduler.is_loaded("zero")

            await scheduler.preload(request(two_models[1], "forever", keep_alive=math.inf))
            await scheduler.preload(request(two_models[0], "five-min"))  # the default: 5 minutes
            clock.now += 299
            assert await scheduler.expire_idle() == []
            clock.now += 2
            assert await scheduler.expire_idle() == ["five-min"]
            clock.now += 10**9
            assert await scheduler.expire_idle() == []
            status = scheduler.status()
            assert [s.name for s in status] == ["forever"] and status[0].expires_at is None
            # What went after its keep_alive is told from what a request's keep_alive 0 unloaded
            # (the reconciler's Standby against selfHeal), until it loads again.
            assert scheduler.expired_names() == {"five-min"}
            await scheduler.preload(request(two_models[0], "five-min"))
            assert scheduler.expired_names() == set()
        finally:
            await scheduler.close()

    run(scenario())


def test_keep_alive_timer_starts_when_the_last_request_ends(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), clock=clock)
        try:
            held = await scheduler.acquire(request(two_models[0], "m", keep_alive=60.0))
            clock.now += 600  # a long request
            assert await scheduler.expire_idle() == []
            held.release()
            assert scheduler.status()[0].expires_at == clock.now + 60
            clock.now += 61
            assert await scheduler.expire_idle() == ["m"]
        finally:
            await scheduler.close()

    run(scenario())


def test_twenty_concurrent_first_requests_cause_one_load(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        starter, started = counting_starter()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), starter=starter)
        try:
            leases = await asyncio.gather(
                *(scheduler.acquire(request(two_models[0], "m")) for _ in range(20))
            )
            assert started == ["m"] and scheduler.loads == 1
            assert len({id(lease.runner) for lease in leases}) == 1
            status = scheduler.status()[0]
            assert status.slots_busy == 1 and status.queued == 19
            for lease in leases:
                lease.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_requests_waiting_for_memory_are_in_the_queue(two_models: tuple[Path, Path]) -> None:
    a, b = two_models

    async def scenario() -> None:
        size = await one_model_size(a)
        scheduler = Scheduler(SchedulerSettings(ram_budget=int(size * 1.5), memory_wait=60))
        try:
            held = await scheduler.acquire(request(a, "a"))  # busy: B's load waits for memory
            waiting = [asyncio.ensure_future(scheduler.acquire(request(b, "b"))) for _ in range(3)]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in waiting)
            assert scheduler.queue_depths() == {"a": 0, "b": 3}
            assert {s.name: (s.state, s.queued) for s in scheduler.status()}["b"] == ("loading", 3)

            held.release()  # idle A makes room: B loads, one request per slot, the rest queued
            leases = await asyncio.gather(*waiting)
            assert scheduler.queue_depths() == {"b": 2}
            for lease in leases:
                lease.release()
            assert scheduler.queue_depths() == {"b": 0}
        finally:
            await scheduler.close()

    run(scenario())


def test_a_new_digest_on_the_same_weights_is_served_by_the_same_runner(two_models: tuple[Path, Path]) -> None:
    """A name moves to an image that differs only in what the server renders (a new SYSTEM): the
    loaded runner serves it at once, through acquire and through the reconciler's ensure; new
    weights still load a new runner."""

    async def scenario() -> None:
        starter, _ = counting_starter()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), starter=starter)
        try:
            first = request(two_models[0], "m")
            await scheduler.preload(first)
            system_changed = ModelRequest(**{**first.__dict__, "digest": "sha256:" + "c" * 64})
            lease = await scheduler.acquire(system_changed)
            lease.release()
            assert scheduler.loads == 1 and scheduler.status()[0].digest == system_changed.digest
            again = ModelRequest(**{**first.__dict__, "digest": "sha256:" + "d" * 64})
            await scheduler.ensure(again)
            assert scheduler.loads == 1 and scheduler.status()[0].digest == again.digest
            other_options = ModelRequest(
                **{
                    **again.__dict__,
                    "digest": "sha256:" + "e" * 64,
                    "options": {"num_ctx": 256, "num_parallel": 2},
                }
            )
            await scheduler.ensure(other_options)
            assert scheduler.loads == 2
            new_weights = ModelRequest(
                **{**request(two_models[1], "m").__dict__, "digest": "sha256:" + "f" * 64}
            )
            await scheduler.ensure(new_weights)
            assert scheduler.loads == 3 and [s.digest for s in scheduler.status()][-1] == new_weights.digest
        finally:
            await scheduler.close()

    run(scenario())


def test_names_on_the_same_weights_share_one_runner(two_models: tuple[Path, Path]) -> None:
    """A copy and a derived image (same weights, adapters and load options) are served by the
    runner already loaded, as Ollama shares them: one load, memory counted once, each name listed
    with its own digest. Unloading one name leaves the runner to the others; evicting the runner
    unloads them all; a name that needs another runner leaves and loads its own."""

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            chat = request(two_models[0], "chat")
            pirate = ModelRequest(**{**request(two_models[0], "pirate").__dict__})
            copy = ModelRequest(**{**chat.__dict__, "name": "copy"})
            await scheduler.preload(chat)
            leases = [await scheduler.acquire(r) for r in (pirate, copy)]
            assert scheduler.loads == 1 and len({id(lease.runner) for lease in leases}) == 1
            rows = {s.name: s for s in scheduler.status()}
            assert set(rows) == {"chat", "pirate", "copy"}
            assert rows["pirate"].digest == pirate.digest and rows["copy"].digest == chat.digest
            assert rows["pirate"].size == 0 and rows["chat"].size > 0  # counted once
            assert rows["pirate"].runner_pid == rows["chat"].runner_pid
            for lease in leases:
                lease.release()

            assert await scheduler.unload("chat")  # the first name goes; pirate leads now
            rows = {s.name: s for s in scheduler.status()}
            assert set(rows) == {"pirate", "copy"} and rows["pirate"].size > 0
            assert scheduler.is_loaded("pirate") and not scheduler.is_loaded("chat")

            bigger = ModelRequest(**{**copy.__dict__, "options": {"num_ctx": 256, "num_parallel": 2}})
            (await scheduler.acquire(bigger)).release()  # copy needs another runner: it leaves
            assert scheduler.loads == 2
            assert {s.name for s in scheduler.status()} == {"pirate", "copy"}
            assert len({s.runner_pid for s in scheduler.status()}) == 2

            (await scheduler.acquire(chat)).release()  # chat joins pirate's runner again
            assert scheduler.loads == 2
            assert {s.name: s.runner_pid for s in scheduler.status()}["chat"] == next(
                s.runner_pid for s in scheduler.status() if s.name == "pirate"
            )
            assert await scheduler.unload("pirate") and await scheduler.unload("chat")
            assert {s.name for s in scheduler.status()} == {"copy"}
        finally:
            await scheduler.close()

    run(scenario())


def test_queue_bound_gives_503(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34, max_queue=2, retry_after=7))
        try:
            held = [
                await scheduler.acquire(request(two_models[0], "m")) for _ in range(3)
            ]  # 1 slot + 2 queued
            with pytest.raises(ServerBusyError, match="limit is 2") as busy:
                await scheduler.acquire(request(two_models[0], "m"))
            assert busy.value.retry_after == 7
            held[0].release()
            (await scheduler.acquire(request(two_models[0], "m"))).release()
            for lease in held[1:]:
                lease.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_killed_runner_is_detected_and_reloaded(
    two_models: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        starter, started = counting_starter()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), starter=starter)
        try:
            await scheduler.preload(request(two_models[0], "m"))
            pid = scheduler.status()[0].runner_pid
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if scheduler.status()[0].state == "failed":
                    break
                await asyncio.sleep(0.05)
            status = scheduler.status()[0]
            assert status.state == "failed" and "SIGKILL" in status.last_error
            # Said where an operator looks, and nothing counted as held by a runner that is gone.
            assert "SIGKILL" in status.note and status.size == 0 and status.size_vram == 0
            assert any("m: runner crashed" in r.getMessage() for r in caplog.records)
            async with scheduler.lease(request(two_models[0], "m")) as lease:
                assert await asyncio.to_thread(generate, lease.runner)
            assert started == ["m", "m"] and scheduler.status()[0].runner_pid != pid
        finally:
            await scheduler.close()

    run(scenario())


def test_a_crashed_model_leaves_the_list_when_its_keep_alive_runs_out(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            await scheduler.preload(request(two_models[0], "m", keep_alive=0.5))
            os.kill(scheduler.status()[0].runner_pid, signal.SIGKILL)
            while scheduler.status()[0].state != "failed":
                await asyncio.sleep(0.05)
            assert await scheduler.expire_idle() == [] and len(scheduler.status()) == 1
            await asyncio.sleep(0.6)
            await scheduler.expire_idle()
            assert scheduler.status() == [], "a failed entry does not stay listed for ever"
        finally:
            await scheduler.close()

    run(scenario())


@pytest.mark.parametrize("keep_alive", [None, 0.0], ids=["default-keep-alive", "keep-alive-0"])
def test_repeated_crashes_back_off(two_models: tuple[Path, Path], keep_alive: float | None) -> None:
    """With keep_alive 0 too: a crashed entry that left the list at its keep_alive took its
    count of crashes with it, and every request loaded again at once."""

    async def scenario() -> None:
        clock = FakeClock()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34, backoff_base=2.0), clock=clock)

        async def crash() -> None:
            os.kill(scheduler.status()[0].runner_pid, signal.SIGKILL)
            for _ in range(100):
                if scheduler.status()[0].state == "failed":
                    return
                await asyncio.sleep(0.05)

        try:
            held = await scheduler.acquire(request(two_models[0], "m", keep_alive=keep_alive))
            await crash()
            held.release()
            await scheduler.expire_idle()  # as the expiry loop would, at once
            # After the first crash the next request reloads at once; then 2 s, then 4 s.
            for expected_wait in (0.0, 2.0, 4.0):
                if expected_wait:
                    with pytest.raises(ServerBusyError, match="retrying after") as busy:
                        await scheduler.acquire(request(two_models[0], "m", keep_alive=keep_alive))
                    assert busy.value.retry_after == expected_wait
                    clock.now += expected_wait
                held = await scheduler.acquire(request(two_models[0], "m", keep_alive=keep_alive))
                await crash()
                held.release()
                await scheduler.expire_idle()
        finally:
            await scheduler.close()

    run(scenario())


def test_auto_parallel_fits_the_budget(two_models: tuple[Path, Path]) -> None:
    from modelyard.runtime.memory import estimate

    async def scenario() -> None:
        req = request(two_models[0], "m", options={"num_parallel": None})
        req = ModelRequest(**{**req.__dict__, "options": {"num_ctx": 256}})
        assert req.shape is not None
        two = estimate(req.shape, n_ctx=256, slots=2).host
        four = estimate(req.shape, n_ctx=256, slots=4).host
        scheduler = Scheduler(SchedulerSettings(ram_budget=RUNNER_PROCESS_BYTES + (two + four) // 2))
        try:
            await scheduler.preload(req)
            assert scheduler.status()[0].slots == 2
        finally:
            await scheduler.close()
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            await scheduler.preload(req)
            assert scheduler.status()[0].slots == 4
        finally:
            await scheduler.close()

    run(scenario())


@pytest.mark.gemma
def test_gemma_estimate_within_15_percent_of_measured(gemma_gguf: Path) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            for slots, n_ctx in ((1, 2048), (4, 4096)):
                req = request(gemma_gguf, f"g{slots}", options={"num_ctx": n_ctx, "num_parallel": slots})
                await scheduler.preload(req)
                entry = scheduler._entries[req.name]
                measured = entry.runner.info.total_bytes  # type: ignore[union-attr]
                assert abs(entry.estimate.total - measured) / measured < 0.15, (entry.estimate, measured)
                status = next(s for s in scheduler.status() if s.name == req.name)
                assert status.runner_rss and status.runner_rss > 0
                assert status.weights_resident is not None and status.weights_resident > 10_000_000
                assert status.processor == "100% CPU" and status.kv_bytes > 0
        finally:
            await scheduler.close()

    run(scenario())


def test_the_embeddings_context_is_counted_before_the_runner_makes_it(two_models: tuple[Path, Path]) -> None:
    """A model's first embeddings request adds a second context to its runner: the scheduler counts
    it first, once however many requests ask at the same moment, evicting an idle model to make
    room, and refuses when the model and its context cannot fit together even alone."""
    from modelyard.runtime.memory import embedding_context_tokens, embedding_estimate

    a, b = two_models
    req_a = request(a, "a")
    assert req_a.shape is not None
    tokens = embedding_context_tokens(256, req_a.shape.n_ctx_train, req_a.shape.pooled)
    extra = embedding_estimate(req_a.shape, n_ctx=tokens).host

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34, memory_wait=0.5))
        try:
            await scheduler.preload(req_a)
            await scheduler.preload(request(b, "b"))
            sizes = {s.name: s.size for s in scheduler.status()}
            # As the scheduler counts them now: A and B fit, A, B and A's embeddings context don't.
            scheduler.ram_budget = sizes["a"] + sizes["b"] + extra - 1
            async with scheduler.lease(req_a) as first, scheduler.lease(req_a) as second:
                await asyncio.gather(*(scheduler.reserve_embeddings(held) for held in (first, second)))
                result = await asyncio.to_thread(first.runner.embed, ["the cat"])
            assert len(result["embeddings"]) == 1
            assert [s.name for s in scheduler.status()] == ["a"], "idle B made room"
            assert scheduler.status()[0].size == sizes["a"] + extra, "counted once"

            # Without room even alone: refused at once, and nothing counted.
            await scheduler.unload("a")
            await scheduler.preload(req_a)
            scheduler.ram_budget = sizes["a"] + extra - 1
            async with scheduler.lease(req_a) as lease:
                with pytest.raises(ModelDoesNotFitError, match=f"embeddings context of {tokens} tokens"):
                    await scheduler.reserve_embeddings(lease)
            assert scheduler.status()[0].size == sizes["a"], "nothing counted for a refused context"
        finally:
            await scheduler.close()

    run(scenario())


@pytest.mark.gemma
def test_gemma_embeddings_context_estimate_within_15_percent_of_measured(gemma_gguf: Path) -> None:
    """Gemma 3's 262,144-token vocabulary makes its embeddings context 2 MiB a token: the estimate
    must match what the runner's resident memory grows by when the context is made and filled, but
    for the graph's rows of logits, reserved and, as the embeddings stop at the hidden states, never
    written on a CPU (memory.embedding_estimate)."""
    from modelyard.runtime import procstats
    from modelyard.runtime.memory import F32_BYTES, embedding_estimate

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            req = request(gemma_gguf, "g", options={"num_ctx": 1024})
            assert req.shape is not None and not req.shape.pooled
            async with scheduler.lease(req) as lease:
                before = procstats.process_memory(lease.runner.pid, gemma_gguf)
                await scheduler.reserve_embeddings(lease)
                result = await asyncio.to_thread(lease.runner.embed, ["word " * 2000])
                after = procstats.process_memory(lease.runner.pid, gemma_gguf)
            assert result["prompt_eval_count"] == 512, "a chat model embeds 512 tokens, the rest truncated"
            assert before is not None and after is not None
            grown = after.rss - before.rss
            counted = embedding_estimate(req.shape, n_ctx=512).host
            never_written = F32_BYTES * (512 - 1) * req.shape.n_vocab
            assert counted > grown
            assert abs(counted - never_written - grown) / grown < 0.15, (counted, never_written, grown)
        finally:
            await scheduler.close()

    run(scenario())


def test_swap_to_a_new_digest_under_load_fails_no_request(two_models: tuple[Path, Path]) -> None:
    """A name moves to a new digest: the new runner loads beside the old, traffic switches, the old
    drains and unloads; a steady stream of requests sees no failure."""
    a, b = two_models

    async def scenario(
        budget: int | None, side_by_side: bool = True
    ) -> tuple[list[str], list[BaseException], str]:
        scheduler = Scheduler(SchedulerSettings(ram_budget=budget or 2**34, memory_wait=30))
        old = request(a, "m")
        new = ModelRequest(**{**request(b, "m").__dict__, "digest": "sha256:" + "b" * 64})
        await scheduler.preload(old)
        served: list[str] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()
        current = [old]

        async def client() -> None:
            while not stop.is_set():
                try:
                    async with scheduler.lease(current[0]) as lease:
                        await asyncio.to_thread(generate, lease.runner, 2)
                        served.append(lease._entry.digest)
                except BaseException as exc:  # any failure at all fails the test
                    failures.append(exc)

        clients = [asyncio.create_task(client()) for _ in range(3)]
        await asyncio.sleep(0.5)
        current[0] = new  # the tag moved: requests now ask for the new digest
        await scheduler.ensure(new, side_by_side=side_by_side)
        notes = " ".join(s.note for s in scheduler.status())  # the new runner says how it came
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
        status = scheduler.status()
        await scheduler.close()
        assert [(s.digest, s.state) for s in status] == [(new.digest, "ready")], "only the new runner is left"
        return served, failures, notes

    served, failures, notes = run(scenario(None))
    assert failures == [] and "without downtime" in notes
    assert served[0] == request(a, "m").digest and served[-1] == "sha256:" + "b" * 64
    # Memory for one only: the old unloads first (a short gap); requests wait, none fail.
    single = run(one_model_size(a))
    served, failures, notes = run(scenario(int(single * 1.5)))
    assert failures == [] and served[-1] == "sha256:" + "b" * 64
    assert "memory holds only one (short gap)" in notes
    # The same when the caller's own budget (a spec's memory) holds only one, the machine's both.
    served, failures, notes = run(scenario(None, side_by_side=False))
    assert failures == [] and served[-1] == "sha256:" + "b" * 64
    assert "memory holds only one (short gap)" in notes


def slow_starter(started: list[Runner]) -> Callable[..., Runner]:
    """A runner start that takes half a second longer, noting each runner it brings."""

    def slow_start(spec: Any, **kwargs: Any) -> Runner:
        time.sleep(0.5)
        runner = Runner.start(spec, **kwargs)
        started.append(runner)
        return runner

    return slow_start


def test_a_request_that_leaves_during_a_load_does_not_fail_it_for_the_others(
    two_models: tuple[Path, Path],
) -> None:
    """Its load goes on: a request waiting for the same load gets the model (it got an empty 500
    when the first one's cancellation failed the load), and a load nobody waits for any more ends
    in the scheduler's hands (listed, counted, stopped with it), never as a runner outside it."""
    started: list[Runner] = []
    slow_start = slow_starter(started)

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), starter=slow_start)
        first = asyncio.create_task(scheduler.acquire(request(two_models[0], "m")))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(scheduler.acquire(request(two_models[0], "m")))
        await asyncio.sleep(0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        lease = await asyncio.wait_for(second, 60)
        assert len(started) == 1 and lease.runner is started[0]
        lease.release()

        alone = asyncio.create_task(scheduler.acquire(request(two_models[1], "n")))
        await asyncio.sleep(0.1)
        alone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await alone
        for _ in range(200):
            if len(scheduler.status()) == 2 and all(s.state == "ready" for s in scheduler.status()):
                break
            await asyncio.sleep(0.05)
        assert sorted(s.name for s in scheduler.status()) == ["m", "n"] and len(started) == 2
        await scheduler.close()
        assert not any(runner.alive for runner in started)

    run(scenario())


def test_a_model_unloaded_while_it_loads_serves_its_waiting_request_then_goes(
    two_models: tuple[Path, Path],
) -> None:
    """`stop` (keep_alive 0) during a load: the request waiting for the load is served, then the
    runner goes; it was left running outside the scheduler, and the request loaded it again. A
    request for it before it went calls the stop off, as Ollama's loaded runner takes it."""
    started: list[Runner] = []
    slow_start = slow_starter(started)

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34), starter=slow_start)
        waiting = asyncio.create_task(scheduler.acquire(request(two_models[0], "m")))
        await asyncio.sleep(0.2)
        unloading = asyncio.create_task(scheduler.unload("m"))
        lease = await asyncio.wait_for(waiting, 60)
        assert not unloading.done(), "it waits for the request it serves"
        lease.release()
        assert await asyncio.wait_for(unloading, 60)
        assert not started[0].alive
        (await asyncio.wait_for(scheduler.acquire(request(two_models[0], "m")), 60)).release()
        assert len(started) == 2 and scheduler.status()[0].state == "ready", "loaded again, afterwards"
        # Stopped again with a request in flight, then asked for before it went: it serves on.
        streaming = await scheduler.acquire(request(two_models[0], "m"))
        unloading = asyncio.create_task(scheduler.unload("m"))
        await asyncio.sleep(0.2)
        assert not unloading.done() and scheduler.status()[0].note.startswith("stopping")
        later = await asyncio.wait_for(scheduler.acquire(request(two_models[0], "m")), 5)
        assert later.runner is streaming.runner and len(started) == 2
        streaming.release()
        later.release()
        await asyncio.wait_for(unloading, 10)
        [row] = scheduler.status()
        assert row.state == "ready" and started[1].alive and not row.note.startswith("stopping")
        await scheduler.close()

    run(scenario())


def test_the_same_request_never_reloads_when_auto_slots_would_now_choose_fewer(
    two_models: tuple[Path, Path],
) -> None:
    async def scenario() -> None:
        req = ModelRequest(**{**request(two_models[0], "m").__dict__, "options": {"num_ctx": 256}})
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            await scheduler.preload(req)
            assert scheduler.status()[0].slots == 4
            scheduler.ram_budget = scheduler.status()[0].size + 1  # now only fewer slots would fit
            (await scheduler.acquire(req)).release()
            assert scheduler.loads == 1 and scheduler.status()[0].slots == 4, "no reload"
        finally:
            await scheduler.close()

    run(scenario())


def test_a_request_during_an_unload_waits_for_it_then_reloads(two_models: tuple[Path, Path]) -> None:
    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            await scheduler.preload(request(two_models[0], "m"))
            first_pid = scheduler.status()[0].runner_pid
            unloading = asyncio.create_task(scheduler.unload("m"))
            await asyncio.sleep(0)  # the unload has begun stopping the runner
            lease = await asyncio.wait_for(scheduler.acquire(request(two_models[0], "m")), timeout=30)
            assert await unloading is True
            assert lease.runner.pid != first_pid and lease.runner.alive
            lease.release()
        finally:
            await scheduler.close()

    run(scenario())


# --- shared runners: the races a review found, driven with fake runners (no processes) -------------


def fake_settings(**settings: Any) -> SchedulerSettings:
    """For FakeRunners, whose budgets are in bytes: no runner process of their own to count."""
    return SchedulerSettings(runner_process_bytes=0, **settings)


class FakeRunner:
    pids = iter(range(1000, 2000))

    def __init__(self, spec: Any) -> None:
        self.spec, self.pid, self.alive, self.info, self.exit_detail = spec, next(self.pids), True, None, ""

    def stop(self) -> None:
        self.alive = False

    def silent_while_working(self) -> float:
        return 0.0


def fake_scheduler(
    tmp_path: Path,
    budget: int = 10**6,
    clock: FakeClock | None = None,
    starter: Callable[..., Any] | None = None,
    **settings: Any,
) -> Scheduler:
    """A scheduler of FakeRunners (or what `starter` makes) over weights files w1 and w2."""
    for name in ("w1", "w2"):
        (tmp_path / name).write_bytes(b"x" * 1000)
    return Scheduler(
        fake_settings(ram_budget=budget, **settings),
        starter=starter or (lambda spec, **_: FakeRunner(spec)),
        **({"clock": clock} if clock is not None else {}),
    )


def fake(tmp_path: Path, name: str, weights: str, digest: str, **kwargs: Any) -> ModelRequest:
    return ModelRequest(name=name, digest=digest, weights=tmp_path / weights, **kwargs)


def rows(scheduler: Scheduler) -> dict[str, ModelStatus]:
    return {s.name: s for s in scheduler.status(live=False)}


def test_nobody_joins_a_runner_that_is_being_unloaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            a = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            unloading = asyncio.create_task(scheduler.unload("A"))  # drains: A holds a lease
            await asyncio.sleep(0)
            b = await scheduler.acquire(fake(tmp_path, "B", "w1", "dB"))
            assert b.runner is not a.runner and scheduler.loads == 2
            a.release()
            await unloading
            assert not a.runner.alive and b.runner.alive and set(rows(scheduler)) == {"B"}
            b.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_name_that_moves_leaves_a_shared_runner_and_nobody_joins_one_being_swapped(tmp_path: Path) -> None:
    """B shares A's runner; A moves to other weights: A gets a runner of its own, B keeps the old
    one. And once a swap has begun (it may wait for the load lock), nobody joins the runner it
    replaces: a name that would have drains it forever under its own traffic."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            b = await scheduler.acquire(fake(tmp_path, "B", "w1", "dB"))
            moved = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "A", "w2", "dA2")), 5)
            assert moved.runner is not b.runner and b.runner.alive and scheduler.loads == 2
            moved.release()
            b.release()

            for name in ("A", "B"):
                await scheduler.unload(name)
            (await scheduler.acquire(fake(tmp_path, "X", "w1", "dX"))).release()  # a runner of its own
            await scheduler._load_lock.acquire()  # D's load, then the swap, wait for it: D goes first
            joining = asyncio.create_task(scheduler.acquire(fake(tmp_path, "D", "w1", "dD")))
            await asyncio.sleep(0.01)
            old = await scheduler.acquire(fake(tmp_path, "X", "w2", "dX2"))  # X moves: a swap begins
            scheduler._load_lock.release()
            d = await asyncio.wait_for(joining, 5)
            assert d.runner is not old.runner  # it would have been drained under D's traffic
            old.release()
            await asyncio.wait_for(scheduler.ensure(fake(tmp_path, "X", "w2", "dX2")), 5)  # swapped
            x = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "X", "w2", "dX2")), 5)
            assert x.runner is not old.runner and x.runner is not d.runner and d.runner.alive
            x.release()
            d.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_one_names_keep_alive_0_does_not_unload_anothers_pinned_runner(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            await scheduler.ensure(fake(tmp_path, "A", "w1", "dA", pinned=True, keep_alive=math.inf))
            b = await scheduler.acquire(fake(tmp_path, "B", "w1", "dB", keep_alive=0))
            assert rows(scheduler)["A"].pinned and not rows(scheduler)["B"].pinned
            b.release()
            await asyncio.sleep(0.05)
            assert set(rows(scheduler)) == {"A"} and scheduler.loads == 1  # B left; A's runner stays
            assert rows(scheduler)["A"].pinned
            await scheduler.ensure(fake(tmp_path, "A", "w1", "dA", pinned=False))  # unpinned: by A only
            assert not any(s.pinned for s in rows(scheduler).values())
            assert scheduler._entries["A"].pinned is False
        finally:
            await scheduler.close()

    run(scenario())


def test_a_failed_swap_does_not_reopen_a_runner_that_is_being_unloaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)

        def starter(spec: Any, **_: Any) -> FakeRunner:
            if spec.weights.name == "w2":
                raise ModelLoadError("the new weights do not load")
            return FakeRunner(spec)

        scheduler._starter = starter
        try:
            (await scheduler.acquire(fake(tmp_path, "X", "w1", "dX"))).release()
            await scheduler._load_lock.acquire()  # another load in progress: the swap waits
            lease = await scheduler.acquire(fake(tmp_path, "X", "w2", "dX2"))  # a swap begins
            unloading = asyncio.create_task(scheduler.unload("X"))
            await asyncio.sleep(0.01)
            scheduler._load_lock.release()
            await asyncio.sleep(0.05)  # the swap fails
            y = await scheduler.acquire(fake(tmp_path, "Y", "w1", "dY"))
            assert y.runner is not lease.runner  # it did not join the runner on its way out
            lease.release()
            await asyncio.wait_for(unloading, 5)
            assert y.runner.alive and set(rows(scheduler)) == {"Y"}
            y.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_runner_left_by_its_longest_keep_alive_expires_on_what_the_others_ask(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        scheduler = fake_scheduler(tmp_path, clock=clock)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA", keep_alive=math.inf))).release()
            (await scheduler.acquire(fake(tmp_path, "B", "w1", "dB", keep_alive=60))).release()
            assert (
                rows(scheduler)["A"].expires_at is None and rows(scheduler)["B"].expires_at == clock.now + 60
            )
            await scheduler.unload("A")  # A goes: B's 60 s go on
            clock.now += 61
            assert await scheduler.expire_idle() == ["B"] and rows(scheduler) == {}
        finally:
            await scheduler.close()

    run(scenario())


async def kept_forever(scheduler: Scheduler, tmp_path: Path) -> None:
    """A loaded on w1, pinned and kept forever (as a spec's model): a runner other names join."""
    (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA", keep_alive=math.inf, pinned=True))).release()


def test_a_name_on_a_runner_another_keeps_goes_on_its_own_keep_alive(tmp_path: Path) -> None:
    """Found by a walkthrough: a name that joined the runner of a spec's model (kept forever) was
    listed "Forever" and never went, whatever its own keep_alive."""

    async def scenario() -> None:
        clock = FakeClock()
        scheduler = fake_scheduler(tmp_path, clock=clock)
        try:
            await kept_forever(scheduler, tmp_path)
            (await scheduler.acquire(fake(tmp_path, "B", "w1", "dB", keep_alive=20))).release()
            joined = clock.now
            clock.now += 5
            busy = await scheduler.acquire(fake(tmp_path, "C", "w1", "dC", keep_alive=20))
            assert rows(scheduler)["B"].expires_at == joined + 20 and rows(scheduler)["A"].expires_at is None
            assert rows(scheduler)["C"].expires_at == clock.now + 20, "busy: now + its keep_alive"
            clock.now += 16
            assert await scheduler.expire_idle() == ["B"], "B's 20 s ran out; C's request still runs"
            assert set(rows(scheduler)) == {"A", "C"} and scheduler.loads == 1
            busy.release()
            clock.now += 19
            assert await scheduler.expire_idle() == []
            clock.now += 2
            assert await scheduler.expire_idle() == ["C"] and set(rows(scheduler)) == {"A"}
            (await scheduler.acquire(fake(tmp_path, "B", "w1", "dB"))).release()  # B joins again
            assert set(rows(scheduler)) == {"A", "B"} and scheduler.loads == 1
        finally:
            await scheduler.close()

    run(scenario())


def test_unloading_a_crashed_model_with_open_requests_does_not_hang_the_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            lease = await scheduler.acquire(fake(tmp_path, "X", "w1", "dX"))
            entry = scheduler._entries["X"]
            scheduler._runner_died(entry, entry.runner)  # as the runner's reader thread reports it
            asyncio.get_running_loop().call_later(0.1, lease.release)  # its request fails, releases
            await asyncio.wait_for(scheduler.unload("X"), 5)
        finally:
            await scheduler.close()

    run(scenario())


def test_a_request_for_a_model_that_is_stopping_waits_at_most_memory_wait(tmp_path: Path) -> None:
    """`stop` during a stream without end: a request that needs another runner (other load
    options) gets a 503 that says why, not a hang; one its runner serves calls the stop off."""

    async def scenario() -> None:
        (tmp_path / "w1").write_bytes(b"x" * 1000)
        settings = fake_settings(ram_budget=10**6, memory_wait=0.3, retry_after=2)
        scheduler = Scheduler(settings, starter=lambda spec, **_: FakeRunner(spec))
        try:
            streaming = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            stopping = asyncio.ensure_future(scheduler.unload("A"))
            await asyncio.sleep(0.05)
            assert "stopping: it unloads once its 1 request(s) end" in rows(scheduler)["A"].note
            started = time.monotonic()
            with pytest.raises(ServerBusyError, match="A is stopping") as busy:
                await scheduler.acquire(fake(tmp_path, "A", "w1", "dA", options={"num_ctx": 512}))
            assert 0.25 < time.monotonic() - started < 2 and busy.value.retry_after == 2
            again = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "A", "w1", "dA")), 1)
            assert again.runner is streaming.runner and "stopping" not in rows(scheduler)["A"].note
            streaming.release()
            again.release()
            await stopping
            assert rows(scheduler)["A"].state == "ready" and scheduler.loads == 1
        finally:
            await scheduler.close()

    run(scenario())


def test_a_request_after_a_rebuild_is_not_queued_behind_the_old_digests_streams(tmp_path: Path) -> None:
    """A concurrency review: the name rebuilt from other weights, its one slot busy with a stream,
    the next request queued on the old runner for as long as that stream ran, though the new one
    was loaded and idle. With no slot free on the old digest, it waits for the new one."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, num_parallel=1)
        try:
            streaming = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            rebuilt = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "A", "w2", "dB")), 2)
            assert rebuilt.runner is not streaming.runner and rebuilt.runner.spec.weights == tmp_path / "w2"
            assert streaming.runner.alive, "the old stream goes on"
            rebuilt.release()
            streaming.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_failed_swap_leaves_the_waiting_request_to_the_old_digest(tmp_path: Path) -> None:
    """A diff review: rebuilt from weights that fail to load, the old digest's one slot busy, the
    waiting request started a new failing load every 20 ms for as long as the old stream ran."""
    from modelyard.errors import ModelLoadError

    starts: list[str] = []

    def start(spec: Any, **_: Any) -> FakeRunner:
        starts.append(spec.weights.name)
        if spec.weights.name == "w2":
            raise ModelLoadError(spec.name, "bad weights")
        return FakeRunner(spec)

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, starter=start, num_parallel=1)
        try:
            streaming = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            queued = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "A", "w2", "dB")), 2)
            assert queued.runner is streaming.runner and starts.count("w2") == 1
            assert "failed" in rows(scheduler)["A"].note
            queued.release()
            streaming.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_reload_for_other_options_after_a_revived_stop_is_not_called_off(tmp_path: Path) -> None:
    """A diff review: the stop's mark outlived its revival, so a later drain for a reload with
    other load options read as a stop, and requests with the usual options called it off."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            first = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            stopping = asyncio.ensure_future(scheduler.unload("A"))
            await asyncio.sleep(0.05)
            revived = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "A", "w1", "dA")), 1)
            first.release()
            other = asyncio.ensure_future(
                scheduler.acquire(fake(tmp_path, "A", "w1", "dA", options={"num_ctx": 512}))
            )
            await asyncio.sleep(0.05)
            usual = asyncio.ensure_future(scheduler.acquire(fake(tmp_path, "A", "w1", "dA")))
            await asyncio.sleep(0.05)
            assert not usual.done(), "it waits for the reload's drain"
            revived.release()
            reloaded = await asyncio.wait_for(other, 2)
            assert reloaded.runner is not revived.runner and scheduler.loads == 2
            reloaded.release()
            (await asyncio.wait_for(usual, 2)).release()
            await stopping
        finally:
            await scheduler.close()

    run(scenario())


def test_a_new_digest_of_other_load_options_loads_beside_the_old_one(tmp_path: Path) -> None:
    """A soak review: rebuilt from a GGUF of another trained context (so another default num_ctx),
    the name's next request waited for the old runner's stream to end, for ever with
    num_predict -1. Any new digest is a swap: the old runner serves its stream on."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            stream = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA", options={"num_ctx": 256}))
            rebuilt = fake(tmp_path, "A", "w2", "dA2", options={"num_ctx": 512})
            new = await asyncio.wait_for(scheduler.acquire(rebuilt), 2)
            assert new.runner is not stream.runner and stream.runner.alive
            new.release()
            stream.release()
            await asyncio.sleep(0.1)
            assert not stream.runner.alive and rows(scheduler)["A"].digest == "dA2"
        finally:
            await scheduler.close()

    run(scenario())


def test_a_reload_for_other_options_waits_drain_wait_for_the_streams_then_gets_a_503(tmp_path: Path) -> None:
    """A soak review: a request with other options (num_ctx) for a model serving a stream without
    end waited for ever, and every other request for the model got "A is stopping" 503s after
    memory_wait. Now its drain lasts drain_wait: the model serves on, the others are served, the
    request for other options gets a 503 that says why; once the stream ends it reloads."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, memory_wait=5, drain_wait=0.5, retry_after=2)
        try:
            usual = fake(tmp_path, "A", "w1", "dA", options={"num_parallel": 2})
            stream = await scheduler.acquire(usual)
            started = time.monotonic()
            other = asyncio.ensure_future(
                scheduler.acquire(
                    fake(tmp_path, "A", "w1", "dA", options={"num_ctx": 512, "num_parallel": 2})
                )
            )
            await asyncio.sleep(0.1)
            assert "reloading with other load options" in rows(scheduler)["A"].note
            meanwhile = await asyncio.wait_for(scheduler.acquire(usual), 2)  # waits the drain out
            assert meanwhile.runner is stream.runner
            with pytest.raises(ServerBusyError, match="that did not end within"):
                await other
            assert 0.4 < time.monotonic() - started < 2 and rows(scheduler)["A"].note == ""
            meanwhile.release()
            stream.release()
            reloaded = await asyncio.wait_for(
                scheduler.acquire(
                    fake(tmp_path, "A", "w1", "dA", options={"num_ctx": 512, "num_parallel": 2})
                ),
                2,
            )
            assert reloaded.runner is not stream.runner and not stream.runner.alive
            reloaded.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_stop_during_a_swap_unloads_the_new_digest_too(tmp_path: Path) -> None:
    """A diff review: `stop` while a rebuilt name's new digest loaded beside the old one unloaded
    the old once its streams ended, and the new one stayed loaded."""
    loading = threading.Event()

    def start(spec: Any, **_: Any) -> FakeRunner:
        if spec.weights.name == "w2":
            loading.wait(5)  # the new digest loads until the stop has come
        return FakeRunner(spec)

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, starter=start, num_parallel=2)
        try:
            streaming = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            served = await scheduler.acquire(fake(tmp_path, "A", "w2", "dB"))  # the old serves; swaps
            stopping = asyncio.ensure_future(scheduler.unload("A"))
            await asyncio.sleep(0.1)
            loading.set()
            await asyncio.sleep(0.2)  # the new runner is up, the old one's streams still run
            streaming.release()
            served.release()
            assert await asyncio.wait_for(stopping, 5)
            await asyncio.sleep(0.1)
            assert scheduler.status(live=False) == [], "neither digest stays loaded"
        finally:
            await scheduler.close()

    run(scenario())


def test_a_new_digest_on_the_same_runner_drops_an_earlier_swaps_note(tmp_path: Path) -> None:
    """A spec review: after a swap, a tag moved to an image with the same weights (a new SYSTEM)
    kept the runner, and its event still said "replaced <the digest before> without downtime"."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            (await scheduler.acquire(fake(tmp_path, "A", "w2", "dB"))).release()  # the old serves; swaps
            for _ in range(100):
                if [(row.digest, row.state) for row in scheduler.status(live=False)] == [("dB", "ready")]:
                    break
                await asyncio.sleep(0.02)
            assert rows(scheduler)["A"].note.startswith("replaced dA without downtime")
            (await scheduler.acquire(fake(tmp_path, "A", "w2", "dC"))).release()
            assert (rows(scheduler)["A"].digest, rows(scheduler)["A"].note, scheduler.loads) == ("dC", "", 2)
        finally:
            await scheduler.close()

    run(scenario())


def test_a_runner_that_came_by_a_swap_and_crashed_says_it_crashed(tmp_path: Path) -> None:
    """A concurrency review: its note still said "replaced … without downtime"."""
    exits: list[Callable[[Any], None]] = []

    def start(spec: Any, **kwargs: Any) -> FakeRunner:
        exits.append(kwargs["on_exit"])
        return FakeRunner(spec)

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, starter=start)
        told: list[tuple[str, str]] = []
        scheduler.crash_observers.append(lambda name, why: told.append((name, why)))
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            (await scheduler.acquire(fake(tmp_path, "A", "w2", "dB"))).release()  # the old serves; swaps
            for _ in range(100):
                if [(row.digest, row.state) for row in scheduler.status(live=False)] == [("dB", "ready")]:
                    break
                await asyncio.sleep(0.02)
            assert rows(scheduler)["A"].note.startswith("replaced dA without downtime")
            crashed = scheduler.status(live=False)[0]
            runner = next(r for e in scheduler._entries.values() if (r := e.runner) is not None)
            runner.exit_detail = "killed by SIGKILL"
            exits[-1](runner)
            await asyncio.sleep(0.05)
            row = rows(scheduler)["A"]
            assert crashed.state == "ready" and row.state == "failed"
            assert row.note == "runner crashed (killed by SIGKILL)", row.note
            assert told == [("A", "runner crashed (killed by SIGKILL)")], "its observers are told"
        finally:
            await scheduler.close()

    run(scenario())


def test_keep_alive_0_takes_its_name_off_a_shared_runner_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            (await scheduler.acquire(fake(tmp_path, "B", "w1", "dB"))).release()
            assert set(rows(scheduler)) == {"A", "B"} and scheduler.loads == 1
            # A asks for 0 (as `ollama stop A` does): A goes, B keeps the runner and now leads it.
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA", keep_alive=0))).release()
            assert set(rows(scheduler)) == {"B"} and rows(scheduler)["B"].expires_at is not None
            assert scheduler.loads == 1, "the runner stayed for B"
            # A pinned name stays whatever a request asks.
            (await scheduler.acquire(fake(tmp_path, "C", "w1", "dC", pinned=True))).release()
            (await scheduler.acquire(fake(tmp_path, "C", "w1", "dC", keep_alive=0))).release()
            assert set(rows(scheduler)) == {"B", "C"}
        finally:
            await scheduler.close()

    run(scenario())


def test_a_name_that_said_keep_alive_0_on_a_shared_runner_gets_the_default_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            (await scheduler.acquire(fake(tmp_path, "B", "w1", "dB", keep_alive=0))).release()
            (await scheduler.acquire(fake(tmp_path, "B", "w1", "dB"))).release()  # no keep_alive: the default
            await scheduler.unload("A")
            await asyncio.sleep(0.05)
            assert set(rows(scheduler)) == {"B"}  # B's own default keeps it, not its earlier 0
        finally:
            await scheduler.close()

    run(scenario())


def test_status_shows_the_context_a_slot_really_holds(two_models: tuple[Path, Path]) -> None:
    """llama.cpp rounds a context up to a multiple of 256: /api/ps shows what a slot holds (as
    Ollama's context_length, "the effective context"), while context_length stays the num_ctx
    loaded, which the reconciler compares with the spec's."""

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34))
        try:
            await scheduler.preload(request(two_models[0], "small", options={"num_ctx": 100}))
            status = scheduler.status()[0]
            assert (status.context_length, status.context_effective) == (100, 256)
        finally:
            await scheduler.close()

    run(scenario())


def test_the_queue_bound_holds_while_the_model_loads(tmp_path: Path) -> None:
    """Found by a soak test: requests that came during a load all waited for it (the bound was
    checked only once it was loaded), so a burst queued without limit for as long as a load takes."""

    async def scenario() -> None:
        (tmp_path / "w1").write_bytes(b"x" * 1000)

        def slow(spec: Any, **_: Any) -> FakeRunner:
            time.sleep(0.5)
            return FakeRunner(spec)

        settings = fake_settings(ram_budget=10**6, num_parallel=2, max_queue=3, retry_after=2)
        scheduler = Scheduler(settings, starter=slow)
        try:
            burst = [
                asyncio.ensure_future(scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))) for _ in range(8)
            ]
            await asyncio.sleep(0.1)  # the load is under way
            refused = [task for task in burst if task.done()]
            assert len(refused) == 3, "2 slots and 3 queued: the other 3 at once, not after the load"
            for task in refused:
                with pytest.raises(ServerBusyError, match="5 requests in flight or queued") as busy:
                    task.result()
                assert busy.value.retry_after == 2
            assert scheduler.queue_depths() == {"A": 5}
            leases = await asyncio.gather(*(task for task in burst if task not in refused))
            assert len(leases) == 5
            for lease in leases:
                lease.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_name_that_left_while_busy_and_came_back_is_not_timed_by_its_old_request(tmp_path: Path) -> None:
    """Found in review: the old request's end counted against the name's new ones (a counter of
    leases per name went to -1), so a name busy again was detached as idle."""

    async def scenario() -> None:
        clock = FakeClock()
        scheduler = fake_scheduler(tmp_path, clock=clock)
        try:
            await kept_forever(scheduler, tmp_path)
            old = await scheduler.acquire(fake(tmp_path, "B", "w1", "dB", keep_alive=20))
            await scheduler.unload("B")  # B leaves the runner A keeps, its request still running
            assert set(rows(scheduler)) == {"A"}
            old.release()
            busy = await scheduler.acquire(fake(tmp_path, "B", "w1", "dB", keep_alive=20))  # back
            assert scheduler.loads == 1 and rows(scheduler)["B"].expires_at == clock.now + 20
            clock.now += 25
            assert await scheduler.expire_idle() == [], "B's request runs: it stays"
            assert rows(scheduler)["B"].expires_at == clock.now + 20
            busy.release()
            clock.now += 21
            assert await scheduler.expire_idle() == ["B"]
        finally:
            await scheduler.close()

    run(scenario())


def test_a_request_with_other_load_options_is_served_by_the_load_it_caused_despite_steady_traffic(
    tmp_path: Path,
) -> None:
    """A scheduler audit: the requests with the usual options, waiting for the reload that one
    with another num_ctx caused, woke first and unloaded the new runner before that request took
    it, again and again (18 reloads in 25 s; served only when the traffic stopped). As Ollama's
    queue: the request that caused a reload is served by it; the others reload after it."""

    async def scenario() -> None:
        (tmp_path / "w1").write_bytes(b"x" * 1000)

        def slow(spec: Any, **_: Any) -> FakeRunner:
            time.sleep(0.05)
            return FakeRunner(spec)

        scheduler = Scheduler(fake_settings(ram_budget=10**6, num_parallel=4), starter=slow)
        stop = asyncio.Event()
        served: list[str] = []

        async def steady() -> None:
            while not stop.is_set():
                lease = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
                served.append("usual")
                await asyncio.sleep(0.01)
                lease.release()

        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            traffic = [asyncio.create_task(steady()) for _ in range(3)]
            await asyncio.sleep(0.05)
            other = fake(tmp_path, "A", "w1", "dA", options={"num_ctx": 512})
            lease = await asyncio.wait_for(scheduler.acquire(other), timeout=5)
            assert lease.runner.spec.options.num_ctx == 512
            assert scheduler.loads == 2, "one reload for it, not one per usual request"
            lease.release()
            await asyncio.sleep(0.3)
            assert scheduler.loads == 3 and served, "then the usual options again, once"
            stop.set()
            await asyncio.gather(*traffic)
        finally:
            stop.set()
            await scheduler.close()

    run(scenario())


def test_options_that_can_never_fit_are_refused_without_harm_to_the_model_or_its_other_requests(
    two_models: tuple[Path, Path],
) -> None:
    """A scheduler audit: a request whose options could never fit unloaded the runner serving the
    others, then left the model failed and backing off, so that well-formed requests got 503
    "failed to load … retrying after 2 s" (clients with retries retried what could never work)."""

    async def scenario() -> None:
        size = await one_model_size(two_models[0])
        model = size - RUNNER_PROCESS_BYTES  # one runner's model, and half as much again
        scheduler = Scheduler(SchedulerSettings(ram_budget=size + model // 2))
        try:
            serving = await scheduler.acquire(request(two_models[0], "A"))
            huge = request(two_models[0], "A", options={"num_parallel": 256})
            for _ in range(3):
                with pytest.raises(ModelDoesNotFitError, match=r"needs about \d+\.\d MiB of RAM"):
                    # (It waited for the serving lease to go, to unload the runner for nothing.)
                    await asyncio.wait_for(scheduler.acquire(huge), timeout=5)
            assert serving.runner.alive and scheduler.loads == 1, "the runner serving A stays"
            serving.release()
            again = await scheduler.acquire(request(two_models[0], "A"))
            assert again.runner is serving.runner
            again.release()
            await scheduler.unload("A")
            with pytest.raises(ModelDoesNotFitError):
                await scheduler.acquire(huge)  # loaded by nothing: refused by _make_room
            after = await scheduler.acquire(request(two_models[0], "A"))  # no backoff
            after.release()
            assert [row.state for row in scheduler.status(live=False)] == ["ready"]
        finally:
            await scheduler.close()

    run(scenario())


def test_a_model_that_failed_to_load_says_so_and_can_be_unloaded(tmp_path: Path) -> None:
    """A reconcile audit: a load llama.cpp refused showed as a crash, and its failed entry, listed
    by ps, could not be stopped (only a loaded one could)."""

    async def scenario() -> None:
        (tmp_path / "w1").write_bytes(b"x" * 1000)

        def refuses(spec: Any, **_: Any) -> FakeRunner:
            raise ModelLoadError(spec.name, "llama.cpp refused the weights")

        scheduler = Scheduler(fake_settings(ram_budget=10**6), starter=refuses)
        try:
            with pytest.raises(ModelLoadError):
                await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            [row] = scheduler.status(live=False)
            assert (row.state, row.failure_kind) == ("failed", "load-failed")
            assert scheduler.holds("A") and not scheduler.is_loaded("A")
            assert await scheduler.unload("A")
            assert scheduler.status(live=False) == [] and not scheduler.holds("A")
        finally:
            await scheduler.close()

    run(scenario())


def test_a_model_that_measures_more_than_its_estimate_makes_idle_ones_go_to_keep_the_budget(
    tmp_path: Path,
) -> None:
    """A scheduler audit: room was made for a model's estimate, and the runner then measured a few
    MB more: 614 MB loaded under a 612 MB budget."""
    from modelyard.runtime.protocol import RunnerInfo

    async def scenario() -> None:
        (tmp_path / "w1").write_bytes(b"x" * 1000)
        (tmp_path / "w2").write_bytes(b"y" * 1000)

        def measured(spec: Any, **_: Any) -> FakeRunner:
            runner = FakeRunner(spec)
            heavy = spec.name == "B"  # its estimate is about 1,000 bytes; it measures 1,500
            runner.info = RunnerInfo(1, 256, 256, 1, 256, 64, 1500 if heavy else 900, 0, 0, 0, 0, 0.1, False)
            return runner

        scheduler = Scheduler(fake_settings(ram_budget=2300), starter=measured)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            b = await scheduler.acquire(fake(tmp_path, "B", "w2", "dB"))
            assert scheduler._entries["B"].estimate.host + 900 <= 2300, "the estimate fitted beside A"
            assert set(rows(scheduler)) == {"B"}, "A, idle, went: 900 + 1,500 is past 2,300"
            b.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_load_every_request_left_while_it_waited_for_memory_never_happens(tmp_path: Path) -> None:
    """A scheduler audit: five requests waited for memory behind a busy model and all their
    clients left; once the busy model was free it was evicted, and the other loaded for nobody."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, budget=1500)  # one model of 1,000 bytes at a time
        try:
            a = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            waiting = [
                asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB"))) for _ in range(5)
            ]
            await asyncio.sleep(0.1)
            assert scheduler.queue_depths().get("B") == 5
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            await asyncio.sleep(1.2)  # the load's wait for memory looks again within a second
            a.release()
            await asyncio.sleep(0.1)
            assert scheduler.loads == 1 and set(rows(scheduler)) == {"A"}, "A stays; B never loads"
            again = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            assert again.runner is a.runner
            again.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_cap_on_loaded_models_unloads_the_least_recently_used_idle_one(tmp_path: Path) -> None:
    """A scheduler audit: nothing capped how many models were loaded (twelve small ones under a
    100 MB budget, each runner a process of its own); $MODELYARD_MAX_LOADED_MODELS does, as Ollama's
    $OLLAMA_MAX_LOADED_MODELS."""

    async def scenario() -> None:
        for name in ("w1", "w2", "w3"):
            (tmp_path / name).write_bytes(name.encode() * 500)
        settings = fake_settings(ram_budget=10**6, max_loaded_models=2, memory_wait=0.5)
        scheduler = Scheduler(settings, starter=lambda spec, **_: FakeRunner(spec))
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            b = await scheduler.acquire(fake(tmp_path, "B", "w2", "dB"))
            (await scheduler.acquire(fake(tmp_path, "C", "w3", "dC"))).release()
            assert set(rows(scheduler)) == {"B", "C"}, "A, idle and least recently used, went"
            # Names on one runner are one model; and a cap every busy model holds waits, then 503.
            (await scheduler.acquire(fake(tmp_path, "C2", "w3", "dC"))).release()
            assert scheduler.loads == 3
            c = await scheduler.acquire(fake(tmp_path, "C", "w3", "dC"))
            with pytest.raises(ServerBusyError, match=r"one of the 2 models loaded at most"):
                await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            b.release()
            c.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_the_cap_on_loaded_models_comes_from_the_environment(tmp_path: Path) -> None:
    from modelyard.server.serve import scheduler_settings
    from modelyard.settings import Settings

    environ = {"HOME": str(tmp_path), "MODELYARD_MAX_LOADED_MODELS": "2"}
    assert scheduler_settings(Settings.from_env(environ)).max_loaded_models == 2
    assert scheduler_settings(Settings.from_env({"HOME": str(tmp_path)})).max_loaded_models is None


def test_a_bad_keep_alive_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    """A README audit: `serve` said only "invalid duration 'bogus'"."""
    from modelyard.errors import ModelyardError
    from modelyard.server.serve import scheduler_settings
    from modelyard.settings import Settings

    environ = {"HOME": str(tmp_path), "MODELYARD_KEEP_ALIVE": "bogus"}
    with pytest.raises(ModelyardError, match=r"^\$MODELYARD_KEEP_ALIVE: invalid duration 'bogus'"):
        scheduler_settings(Settings.from_env(environ))
    environ["MODELYARD_KEEP_ALIVE"] = "90"  # bare seconds, as $OLLAMA_KEEP_ALIVE
    assert scheduler_settings(Settings.from_env(environ)).default_keep_alive == 90


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12GiB", 12 * 2**30), ("512MiB", 512 * 2**20), ("auto", None), ("0", "must be more than 0")],
)
def test_the_ram_budget_setting(tmp_path: Path, value: str, expected: int | str | None) -> None:
    """A budget of nothing refused every model with 507 (a docs review: 0 was taken)."""
    from modelyard.settings import Settings

    environ = {"HOME": str(tmp_path), "MODELYARD_RAM_BUDGET": value}
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=r"^\$MODELYARD_RAM_BUDGET " + expected):
            Settings.from_env(environ)
    else:
        assert Settings.from_env(environ).ram_budget == expected


def test_a_runner_that_hangs_with_requests_is_killed_and_loaded_again(two_models: tuple[Path, Path]) -> None:
    """A runner stopped (SIGSTOP here; a GPU hang or a deadlock alike) held its requests and slots
    for ever, and the model looked loaded. With requests in hand and nothing said for hang_timeout
    (tokens, or the heartbeat it sends while it works), it is killed: its requests fail saying
    why, and the next request loads it again."""

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerSettings(ram_budget=2**34, hang_timeout=1.5))
        scheduler.start()
        try:
            lease = await scheduler.acquire(request(two_models[0], "A"))
            endless = CompletionRequest("the cat", SamplingOptions(temperature=0, num_predict=-1))
            events: asyncio.Queue[Any] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            lease.runner.submit(endless, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
            working_until = time.monotonic() + 2.5  # longer than hang_timeout, saying all along
            while time.monotonic() < working_until:
                await events.get()
            assert scheduler.kill_hung_runners() == [] and lease.runner.alive, "a runner that works stays"
            os.kill(lease.runner.pid, signal.SIGSTOP)
            started = time.monotonic()
            while True:
                event = await asyncio.wait_for(events.get(), timeout=10)
                if not hasattr(event, "text"):
                    break
            assert time.monotonic() - started < 6
            assert "said nothing for" in str(event.error) and "killed" in str(event.error)
            lease.release()
            [row] = scheduler.status(live=False)
            assert row.state == "failed" and "said nothing for" in row.last_error
            again = await scheduler.acquire(request(two_models[0], "A"))
            assert generate(again.runner)
            again.release()
        finally:
            await scheduler.close()

    run(scenario())


@pytest.mark.parametrize(("side_by_side", "budget"), [(False, 10**6), (True, 1500)])
def test_a_swap_with_a_short_gap_loads_the_new_digest(
    tmp_path: Path, side_by_side: bool, budget: int
) -> None:
    """Found in review: the load given up once no request waited for it caught the swap's own load
    (a reconciler's ensure is no request): the old digest was unloaded and the new one never loaded,
    which every tag move in an exported pod (its budget holds one) would have hit."""

    async def scenario() -> None:
        (tmp_path / "v1").write_bytes(b"x" * 1000)
        (tmp_path / "v2").write_bytes(b"y" * 1000)
        settings = fake_settings(ram_budget=budget)
        scheduler = Scheduler(settings, starter=lambda spec, **_: FakeRunner(spec))
        try:
            await scheduler.ensure(fake(tmp_path, "A", "v1", "d1", pinned=True))
            await scheduler.ensure(fake(tmp_path, "A", "v2", "d2", pinned=True), side_by_side=side_by_side)
            rows_now = [(r.name, r.digest, r.state) for r in scheduler.status(live=False)]
            assert rows_now == [("A", "d2", "ready")]
        finally:
            await scheduler.close()

    run(scenario())


def test_a_model_loaded_for_a_request_is_not_evicted_before_that_request_takes_it(tmp_path: Path) -> None:
    """Found in review (and before it, by a scheduler audit): a load queued behind another could
    evict, as idle, the model just loaded for requests that had not yet taken it (they resume a
    turn later); those loaded it again, evicting the first, and two models took turns loading
    for ever."""

    async def scenario() -> None:
        scheduler = fake_scheduler(tmp_path, budget=1500)  # one model of 1,000 bytes at a time

        async def use(name: str, weights: str) -> None:
            lease = await scheduler.acquire(fake(tmp_path, name, weights, f"d{name}"))
            await asyncio.sleep(0.02)
            lease.release()

        try:
            await use("A", "w1")
            burst = [use(n, w) for _ in range(3) for n, w in (("B", "w2"), ("A", "w1"))]
            await asyncio.wait_for(asyncio.gather(*burst), timeout=10)
            assert scheduler.loads <= 4, f"{scheduler.loads} loads for one switch and back"
        finally:
            await scheduler.close()

    run(scenario())


def test_loads_queued_behind_another_do_not_evict_each_other_before_their_requests_take_them(
    tmp_path: Path,
) -> None:
    """Found in review: requests for A, C, then A again, each queued behind a slow load of X,
    loaded A, C and A in turn, each evicting the last as idle before its request resumed to take
    it, for ever (as before today). A model just loaded counts as busy until they resume."""

    async def scenario() -> None:
        for name in ("wx", "wa", "wc"):
            (tmp_path / name).write_bytes(name.encode() * 500)

        def slow(spec: Any, **_: Any) -> FakeRunner:
            time.sleep(0.3 if spec.name == "X" else 0.01)
            return FakeRunner(spec)

        scheduler = Scheduler(fake_settings(ram_budget=1500, memory_wait=3), starter=slow)

        async def use(name: str, weights: str) -> None:
            lease = await scheduler.acquire(fake(tmp_path, name, weights, f"d{name}"))
            await asyncio.sleep(0.05)
            lease.release()

        try:
            x = asyncio.create_task(scheduler.preload(fake(tmp_path, "X", "wx", "dX")))
            await asyncio.sleep(0.05)
            burst = []
            for name, weights in (("A", "wa"), ("C", "wc"), ("A", "wa")):
                burst.append(asyncio.create_task(use(name, weights)))
                await asyncio.sleep(0.01)
            await x
            await asyncio.wait_for(asyncio.gather(*burst), timeout=5)
            assert scheduler.loads <= 4
        finally:
            await scheduler.close()

    run(scenario())


def drain_scheduler(tmp_path: Path, **settings: Any) -> Scheduler:
    """Memory for one model of 1,000 bytes at a time."""
    for name in ("w1", "w2"):
        (tmp_path / name).write_bytes(b"x" * 1000)
    return Scheduler(fake_settings(ram_budget=1500, **settings), starter=lambda spec, **_: FakeRunner(spec))


async def steady_traffic(scheduler: Scheduler, request: ModelRequest, stop: asyncio.Event) -> list[str]:
    """A client that always has a request in flight (the next one asks before the last ends), as a
    chat UI with two tabs does; returns what each request got: a runner's pid, or the error."""
    got: list[str] = []
    held = await scheduler.acquire(request)
    got.append(str(held.runner.pid))
    while not stop.is_set():
        following = asyncio.create_task(scheduler.acquire(request))
        await asyncio.sleep(0.05)
        held.release(served=True)
        try:
            held = await following
        except ServerBusyError as exc:
            got.append(f"503: {exc}")
            return got
        got.append(str(held.runner.pid))
    held.release(served=True)
    return got


def test_a_model_in_steady_use_makes_room_for_another_once_its_requests_end(tmp_path: Path) -> None:
    """A scheduler audit: a model in steady use kept another that needed its memory out until
    memory_wait, then 503. Now it takes no new request, goes once those in flight end (as
    Ollama's scheduler drains the runner it chose), and its next requests load it again."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=5, drain_wait=5)
        stop = asyncio.Event()
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            traffic = [asyncio.create_task(steady_traffic(scheduler, a, stop)) for _ in range(2)]
            await asyncio.sleep(0.3)
            started = time.monotonic()
            b = await scheduler.acquire(fake(tmp_path, "B", "w2", "dB"))
            assert time.monotonic() - started < 1, "B waited for A's requests in flight, not memory_wait"
            assert rows(scheduler)["B"].state == "ready"
            assert not scheduler.is_loaded("A"), "A went; its requests since wait to load it again"
            b.release(served=True)
            await asyncio.sleep(0.3)
            stop.set()
            got = await asyncio.wait_for(asyncio.gather(*traffic), timeout=10)
            assert not [g for one in got for g in one if g.startswith("503")], got
            pids = {g for one in got for g in one}
            assert len(pids) == 2, "A's requests were served before B and by A loaded again after"
            assert scheduler.loads == 3
        finally:
            await scheduler.close()

    run(scenario())


def test_a_drain_for_memory_is_called_off_after_drain_wait_and_the_model_serves_on(tmp_path: Path) -> None:
    """Found in review: with a stream on A that does not end, a request for B closed A, so A's
    other requests waited as long as B did, and both lost (B got its 503 all the same). The
    drain is called off after drain_wait: A serves on, and B alone waits out memory_wait."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=1.5, drain_wait=0.3, retry_after=2)
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            stream = await scheduler.acquire(a)
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            await asyncio.sleep(0.1)
            assert "to make room for B" in rows(scheduler)["A"].note and rows(scheduler)["A"].stopping
            started = time.monotonic()
            short = await asyncio.wait_for(scheduler.acquire(a), timeout=5)
            assert short.runner is stream.runner and 0.1 < time.monotonic() - started < 1.0
            short.release(served=True)
            with pytest.raises(ServerBusyError, match="busy or pinned"):
                await waiting_b
            assert set(rows(scheduler)) == {"A"} and rows(scheduler)["A"].note == ""
            assert not rows(scheduler)["A"].stopping
            again = await scheduler.acquire(a)  # not closed again by the load that gave up
            assert again.runner is stream.runner
            again.release()
            stream.release(served=True)
        finally:
            await scheduler.close()

    run(scenario())


def test_a_drain_for_memory_is_called_off_when_the_load_is_given_up(tmp_path: Path) -> None:
    """The requests for B leave (their clients went): A, closed for B, takes requests again."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=30, drain_wait=30)
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            stream = await scheduler.acquire(a)
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            await asyncio.sleep(0.1)
            blocked = asyncio.create_task(scheduler.acquire(a))
            await asyncio.sleep(0.1)
            assert not blocked.done(), "A is closed while B waits for its memory"
            waiting_b.cancel()
            short = await asyncio.wait_for(blocked, timeout=3)
            assert short.runner is stream.runner and scheduler.loads == 1
            short.release()
            stream.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_stop_during_a_drain_for_memory_unloads_the_model_even_if_that_load_is_given_up(
    tmp_path: Path,
) -> None:
    """Found in review: `stop A` while A drained for C's load, then C's client left: calling the
    drain off opened A again under the stop, which then waited for as long as traffic came."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=30, drain_wait=30)
        stop = asyncio.Event()
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            stream = await scheduler.acquire(a)
            first_runner = stream.runner
            traffic = [asyncio.create_task(steady_traffic(scheduler, a, stop)) for _ in range(2)]
            await asyncio.sleep(0.1)
            waiting_c = asyncio.create_task(scheduler.acquire(fake(tmp_path, "C", "w2", "dC")))
            await asyncio.sleep(0.1)
            unloading = asyncio.create_task(scheduler.unload("A"))
            await asyncio.sleep(0.1)
            waiting_c.cancel()
            await asyncio.sleep(1.5)  # the load's wait notices within a second that nobody waits
            assert not unloading.done() and rows(scheduler)["A"].note.startswith("stopping:")
            stream.release(served=True)
            await asyncio.wait_for(unloading, timeout=3)
            assert not first_runner.alive, "the stop unloaded A once its requests ended"
            stop.set()
            await asyncio.wait_for(asyncio.gather(*traffic), timeout=5)
        finally:
            await scheduler.close()

    run(scenario())


def test_a_busy_pinned_model_is_never_closed_for_another(tmp_path: Path) -> None:
    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=0.5, retry_after=2)
        try:
            a = fake(tmp_path, "A", "w1", "dA", pinned=True)
            held = await scheduler.acquire(a)
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            await asyncio.sleep(0.1)
            other = await asyncio.wait_for(scheduler.acquire(a), timeout=0.2)  # not closed
            other.release()
            with pytest.raises(ServerBusyError):
                await waiting_b
            held.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_an_eviction_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A soak review: drains for memory were logged, idle models unloaded for another went unsaid."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path)
        try:
            (await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))).release()
            with caplog.at_level("INFO", logger="modelyard"):
                (await scheduler.acquire(fake(tmp_path, "B", "w2", "dB"))).release()
            assert "A unloads to make room for B" in caplog.text and set(rows(scheduler)) == {"B"}
        finally:
            await scheduler.close()

    run(scenario())


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_load_evicts_and_drains_none_of_the_models_it_protects(tmp_path: Path, busy: bool) -> None:
    """A spec review: a priority-0 model's load evicted the priority-10 one, whose reload evicted
    it in turn, for ever. The reconciler names the spec's models before a load in `protects`: the
    load waits for memory as behind a pinned model, and then says why; unprotected, it evicts."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=0.3, retry_after=2)
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            held = await scheduler.acquire(a)
            if not busy:
                held.release()
            with pytest.raises(ServerBusyError, match="pinned or before it in the spec"):
                await scheduler.ensure(fake(tmp_path, "B", "w2", "dB", protects=frozenset({"A", "Z"})))
            assert set(rows(scheduler)) == {"A"} and not rows(scheduler)["A"].stopping
            if busy:
                held.release(served=True)
            await asyncio.wait_for(scheduler.ensure(fake(tmp_path, "B", "w2", "dB")), 5)
            assert set(rows(scheduler)) == {"B"}
        finally:
            await scheduler.close()

    run(scenario())


def test_real_runners_a_model_generating_without_pause_makes_room_for_another(
    two_models: tuple[Path, Path],
) -> None:
    """The same with real runners: three clients keep A generating with no gap; B, which memory
    holds only instead of A, is served once A's requests in flight end, and A's clients all get
    their answers (those that came meanwhile from A loaded again)."""
    a, b = two_models

    async def scenario() -> None:
        size = await one_model_size(a)
        # Waits well past a 16-token answer's time (a fraction of a second): on a loaded machine
        # (CI beside a benchmark) llama.cpp's threads wait for each other at every op, and the 10 s
        # drain_wait ran out before A's requests in flight ended.
        settings = SchedulerSettings(ram_budget=int(size * 1.5), memory_wait=60, drain_wait=30)
        scheduler = Scheduler(settings)
        stop = asyncio.Event()
        answers: list[str] = []

        async def client() -> None:
            while not stop.is_set():
                async with scheduler.lease(request(a, "a")) as lease:
                    answers.append(await asyncio.to_thread(generate, lease.runner, 16))

        try:
            await scheduler.preload(request(a, "a"))
            clients = [asyncio.create_task(client()) for _ in range(3)]
            await asyncio.sleep(1)
            started = time.monotonic()
            async with scheduler.lease(request(b, "b")) as lease:
                assert await asyncio.to_thread(generate, lease.runner)
            assert time.monotonic() - started < 30, "served after A's requests in flight, not memory_wait"
            before = len(answers)
            await asyncio.sleep(1)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
            assert len(answers) > before and all(answers), "A's clients were served again after B"
            assert scheduler.loads == 3
        finally:
            await scheduler.close()

    run(scenario())


def test_of_two_busy_models_closed_for_a_load_neither_goes_unless_both_can(tmp_path: Path) -> None:
    """Found in review: a load that needed two busy models closed both; the first to finish its
    requests was unloaded at once, the other's stream never ended, and the load got its 503 all
    the same: the first's requests waited, and it was loaded again, for nothing."""

    async def scenario() -> None:
        (tmp_path / "big").write_bytes(b"x" * 2000)
        scheduler = drain_scheduler(tmp_path, memory_wait=2, drain_wait=1, retry_after=1)
        scheduler.ram_budget = 2100  # A and C, or B alone
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            stream = await scheduler.acquire(fake(tmp_path, "C", "w2", "dC"))  # it never ends
            held = await scheduler.acquire(a)
            first = held.runner
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "big", "dB")))
            await asyncio.sleep(0.1)
            held.release(served=True)  # A is idle (and closed); C is not
            with pytest.raises(ServerBusyError, match="busy or pinned"):
                await waiting_b
            again = await scheduler.acquire(a)
            assert again.runner is first and scheduler.loads == 2, "A was never unloaded"
            again.release()
            stream.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_model_loaded_after_its_only_client_left_expires_as_idle(tmp_path: Path) -> None:
    """Found in review: the only request for A left while A's runner started; A, loaded for
    nobody, counted as wanted for ever and never expired, and every load that needed its memory
    waited memory_wait for it, then 503."""

    async def scenario() -> None:
        for name in ("w1", "w2"):
            (tmp_path / name).write_bytes(b"x" * 1000)

        def slow(spec: Any, **_: Any) -> FakeRunner:
            time.sleep(0.3)
            return FakeRunner(spec)

        settings = fake_settings(ram_budget=1500, memory_wait=2, default_keep_alive=60)
        scheduler = Scheduler(settings, starter=slow)
        try:
            leaving = asyncio.create_task(scheduler.acquire(fake(tmp_path, "A", "w1", "dA")))
            await asyncio.sleep(0.1)
            leaving.cancel()
            await asyncio.sleep(0.4)
            assert scheduler.is_loaded("A")
            expires = rows(scheduler)["A"].expires_at
            assert expires is not None and expires <= time.monotonic() + 60, "its idle timer runs"
            b = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")), timeout=1.5)
            assert set(rows(scheduler)) == {"B"}, "A, idle, made room at once"
            b.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_load_whose_client_left_unloads_no_model_for_it(tmp_path: Path) -> None:
    """Found in review: B's only client left while A drained for it; A's request ended a moment
    later and A was unloaded for nobody (the load noticed only at its next look, a second on)."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=30, drain_wait=10)
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            held = await scheduler.acquire(a)
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            await asyncio.sleep(1.05)  # past the load's first look
            waiting_b.cancel()
            await asyncio.sleep(0.05)
            held.release(served=True)
            await asyncio.sleep(0.5)
            again = await scheduler.acquire(a)
            assert again.runner is held.runner and scheduler.loads == 1
            again.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_stop_just_after_a_model_is_closed_for_memory_keeps_the_drain(tmp_path: Path) -> None:
    """Found in review: the drain for memory took charge only when its task first ran; a stop in
    between lost it, and calling the drain off (the load's client left) opened the model again
    under the stop."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=30, drain_wait=30)
        try:
            a = fake(tmp_path, "A", "w1", "dA")
            held = await scheduler.acquire(a)
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            while not scheduler._entries["A"].closing:
                await asyncio.sleep(0)
            unloading = asyncio.create_task(scheduler.unload("A"))  # before the drain's task runs
            await asyncio.sleep(0.1)
            waiting_b.cancel()
            await asyncio.sleep(0.3)
            assert rows(scheduler)["A"].note.startswith("stopping:")
            held.release(served=True)
            await asyncio.wait_for(unloading, timeout=2)
            assert not held.runner.alive
        finally:
            await scheduler.close()

    run(scenario())


def test_a_drain_called_off_lets_the_next_busy_model_go_under_the_cap(tmp_path: Path) -> None:
    """Found in review: with $MODELYARD_MAX_LOADED_MODELS, a model whose drain was called off
    dropped out of the count, and the next busy one was never closed: 503 at memory_wait."""

    async def scenario() -> None:
        for name in ("w1", "w2", "w3"):
            (tmp_path / name).write_bytes(name.encode() * 500)
        settings = fake_settings(ram_budget=10**6, max_loaded_models=2, memory_wait=3, drain_wait=0.5)
        scheduler = Scheduler(settings, starter=lambda spec, **_: FakeRunner(spec))
        try:
            stream = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))  # it never ends
            c = await scheduler.acquire(fake(tmp_path, "C", "w3", "dC"))
            scheduler._entries["C"].last_used += 1  # A is the least recently used: closed first
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            await asyncio.sleep(0.1)
            assert "to make room for B" in rows(scheduler)["A"].note
            await asyncio.sleep(0.7)  # A's drain called off: C is closed next
            assert "to make room for B" in rows(scheduler)["C"].note
            c.release(served=True)
            (await asyncio.wait_for(waiting_b, timeout=2)).release()
            assert set(rows(scheduler)) == {"A", "B"}
            stream.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_model_pinned_while_it_drains_for_another_stays(tmp_path: Path) -> None:
    """Found in review: a spec that pinned a model while it drained for another load did not stop
    the drain; the model went, though a busy pinned model is never closed for another."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=1, drain_wait=30, retry_after=1)
        try:
            held = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA"))
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")))
            await asyncio.sleep(0.1)
            await scheduler.ensure(fake(tmp_path, "A", "w1", "dA", pinned=True))
            await asyncio.sleep(0.3)
            assert rows(scheduler)["A"].note == "", "the drain was called off"
            held.release(served=True)
            with pytest.raises(ServerBusyError):
                await waiting_b
            assert scheduler.is_loaded("A") and scheduler.loads == 1
        finally:
            await scheduler.close()

    run(scenario())


class SlowFakeRunner(FakeRunner):
    started: ClassVar[list[FakeRunner]] = []

    def __init__(self, spec: Any) -> None:
        time.sleep(0.3)
        super().__init__(spec)
        SlowFakeRunner.started.append(self)


def test_a_stop_while_a_swap_begins_leaves_no_runner_unaccounted_for(tmp_path: Path) -> None:
    """Found by a scheduler review's stress run: `stop C` waited for C's load, then unloaded the
    entry it found, which was a swap's new digest not started yet; the swap started its runner
    anyway, outside every list: over the budget, and alive after close()."""

    async def scenario() -> None:
        for name in ("w1", "w2"):
            (tmp_path / name).write_bytes(b"x" * 1000)
        SlowFakeRunner.started.clear()  # this test's runners only
        scheduler = Scheduler(fake_settings(ram_budget=1500), starter=lambda spec, **_: SlowFakeRunner(spec))
        old, new = fake(tmp_path, "C", "w1", "dC1"), fake(tmp_path, "C", "w2", "dC2")
        try:
            first = asyncio.create_task(scheduler.acquire(old))
            await asyncio.sleep(0.05)
            swapping: list[asyncio.Task[Any]] = []
            loaded = scheduler._entries["C"].loaded
            assert loaded is not None
            loaded.add_done_callback(lambda _: swapping.append(asyncio.ensure_future(scheduler.acquire(new))))
            stopping = asyncio.create_task(scheduler.unload("C"))
            (await first).release()
            (await swapping[0]).release()  # served by the old digest while the swap runs
            await asyncio.wait_for(stopping, timeout=5)
            await asyncio.sleep(0.5)
            tracked = {e.runner for e in scheduler._every_entry() if e.runner is not None}
            alive = [r for r in SlowFakeRunner.started if r.alive]
            assert all(r in tracked for r in alive), "a runner alive that no entry accounts for"
        finally:
            await scheduler.close()
        assert not [r for r in SlowFakeRunner.started if r.alive], "close() stopped every runner"

    run(scenario())


@pytest.mark.parametrize("side_by_side", [True, False])
def test_a_caller_that_stops_waiting_for_ensure_does_not_cancel_the_swap(
    tmp_path: Path, side_by_side: bool
) -> None:
    """Found in review: cancelling ensure() (a caller's timeout) cancelled the swap between its
    phases; with a short gap, the name stayed loading for ever and every request for it hung."""

    async def scenario() -> None:
        scheduler = drain_scheduler(tmp_path, memory_wait=3)
        scheduler.ram_budget = 2500 if side_by_side else 1500
        try:
            held = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA1"))
            ensuring = asyncio.create_task(
                scheduler.ensure(fake(tmp_path, "A", "w2", "dA2"), side_by_side=side_by_side)
            )
            await asyncio.sleep(0.2)
            ensuring.cancel()
            await asyncio.gather(ensuring, return_exceptions=True)
            held.release(served=True)
            lease = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "A", "w2", "dA2")), timeout=3)
            assert lease.runner.spec.weights.name == "w2"
            lease.release()
            await asyncio.sleep(0.3)  # the old digest's drain ends (its runner stops in a thread)
            assert not scheduler._retiring and not held.runner.alive, "the old digest went"
        finally:
            await scheduler.close()

    run(scenario())


def test_a_load_whose_waiters_all_left_as_it_ended_expires_as_idle(tmp_path: Path) -> None:
    """Found in review: the request that began a load left while it ran, and the one waiting for it
    left in the turn between the load's end and its own resumption: the model counted as wanted
    for ever (never expired, never evicted)."""

    async def scenario() -> None:
        for name in ("w1", "w2"):
            (tmp_path / name).write_bytes(b"x" * 1000)
        settings = fake_settings(ram_budget=1500, memory_wait=2, default_keep_alive=60)
        scheduler = Scheduler(settings, starter=lambda spec, **_: SlowFakeRunner(spec))
        a = fake(tmp_path, "A", "w1", "dA")
        try:
            starter = asyncio.create_task(scheduler.acquire(a))
            await asyncio.sleep(0.1)
            waiter = asyncio.create_task(scheduler.acquire(a))
            await asyncio.sleep(0.05)
            starter.cancel()
            loaded = scheduler._entries["A"].loaded
            assert loaded is not None
            loaded.add_done_callback(lambda _: waiter.cancel())
            await asyncio.gather(starter, waiter, return_exceptions=True)
            await asyncio.sleep(0.05)
            assert scheduler.is_loaded("A") and rows(scheduler)["A"].expires_at is not None
            b = await asyncio.wait_for(scheduler.acquire(fake(tmp_path, "B", "w2", "dB")), timeout=1.5)
            b.release()  # A, idle, made room at once
        finally:
            await scheduler.close()

    run(scenario())


def test_an_embeddings_context_is_not_held_up_by_a_load_waiting_for_its_model(tmp_path: Path) -> None:
    """Found in review: a request on A asked for its embeddings context while B's load waited for
    A's memory; the reservation counted B as holding memory, and each waited for the other until
    B's memory_wait (503)."""
    from modelyard.runtime.memory import ModelShape, embedding_context_tokens, embedding_estimate

    shape = ModelShape(
        architecture="llama", n_layers=1, layer_bytes=(1000,), input_bytes=100, output_bytes=100,
        tied_output=False, n_embd=8, n_ff=16, n_vocab=50, n_head=1, kv_heads=(1,), key_length=8,
        value_length=8, sliding_window=0, swa_layers=(False,), n_ctx_train=512,
    )  # fmt: skip

    async def scenario() -> None:
        (tmp_path / "w1").write_bytes(b"x" * 1000)
        a = ModelRequest(
            name="A", digest="dA", weights=tmp_path / "w1", shape=shape, options={"num_parallel": 1}
        )
        scheduler = Scheduler(fake_settings(ram_budget=10**9), starter=lambda spec, **_: FakeRunner(spec))
        held = await scheduler.acquire(a)
        entry = scheduler._entries["A"]
        context = embedding_context_tokens(entry.options.num_ctx, 512, False)
        embeddings = embedding_estimate(shape, n_ctx=context).host
        # A and its embeddings context fit; B (waiting for A) and A do not.
        scheduler.ram_budget = entry.host_bytes + embeddings + 500
        (tmp_path / "big").write_bytes(b"x" * (embeddings + 1000))
        try:
            waiting_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "big", "dB")))
            await asyncio.sleep(0.1)
            await asyncio.wait_for(scheduler.reserve_embeddings(held), timeout=1)
            held.release(served=True)
            (await asyncio.wait_for(waiting_b, timeout=2)).release()  # A, idle now, made room
        finally:
            await scheduler.close()

    run(scenario())


def test_a_swap_whose_victim_a_request_takes_meanwhile_unloads_the_old_digest_first(tmp_path: Path) -> None:
    """Found by a scheduler review's stress run: a swap beside the old digest chose two idle models
    to unload; a request took the second while the first stopped, so it stayed, and the new runner
    started beside it all the same, over the budget. Now memory holds only one: a short gap."""

    class SlowStop(FakeRunner):
        def stop(self) -> None:
            time.sleep(0.2)
            super().stop()

    async def scenario() -> None:
        for name, size in (("w1", 1000), ("w2", 1000), ("x", 500), ("y", 500)):
            (tmp_path / name).write_bytes(b"x" * size)
        runners: list[FakeRunner] = []
        peaks: list[int] = []  # the memory of the runners alive as each starts, itself included

        def start(spec: Any, **_: Any) -> FakeRunner:
            runners.append(SlowStop(spec))
            peaks.append(sum(r.spec.weights.stat().st_size for r in runners if r.alive))
            return runners[-1]

        scheduler = Scheduler(fake_settings(ram_budget=2100), starter=start)
        try:
            for name, weights in (("A", "w1"), ("X", "x"), ("Y", "y")):
                (await scheduler.acquire(fake(tmp_path, name, weights, f"d{name}"))).release()
            ensuring = asyncio.create_task(scheduler.ensure(fake(tmp_path, "A", "w2", "dA2")))
            await asyncio.sleep(0.1)  # X is stopping
            y = await scheduler.acquire(fake(tmp_path, "Y", "y", "dY"))
            await asyncio.wait_for(ensuring, timeout=5)
            assert scheduler.is_loaded("Y") and y.runner.alive and not runners[0].alive
            assert max(peaks) <= 2100, f"a runner started with {max(peaks)} bytes of runners alive"
            y.release()
        finally:
            await scheduler.close()

    run(scenario())


def test_a_short_gap_swap_and_another_models_load_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """Found by a scheduler review: memory holds one model; A swaps digests while a request runs on
    the old one, so the new digest waits for the old to go, then for the load lock. B's load took
    that lock and waited for memory, which the new digest held on paper: each waited for the other
    until memory_wait, and B got a 503 (its requests and A's waited 4 s). Now the new digest holds
    nothing until it has the lock: B loads once the old A goes, then A's new digest after B."""

    async def scenario() -> None:
        for name in ("w1", "w2", "w3"):
            (tmp_path / name).write_bytes(b"x" * 1000)
        settings = fake_settings(ram_budget=1500, memory_wait=4)
        scheduler = Scheduler(settings, starter=lambda spec, **_: FakeRunner(spec))
        try:
            old = await scheduler.acquire(fake(tmp_path, "A", "w1", "dA1"))
            ensuring = asyncio.create_task(scheduler.ensure(fake(tmp_path, "A", "w2", "dA2")))
            await asyncio.sleep(0.05)  # the swap waits for the old A's request
            asking_b = asyncio.create_task(scheduler.acquire(fake(tmp_path, "B", "w3", "dB")))
            await asyncio.sleep(0.05)
            asking_a = asyncio.create_task(scheduler.acquire(fake(tmp_path, "A", "w2", "dA2")))
            await asyncio.sleep(0.05)
            old.release(served=True)  # the old A goes now
            b = await asyncio.wait_for(asking_b, timeout=1)
            assert b.runner.spec.weights.name == "w3"
            b.release(served=True)
            a = await asyncio.wait_for(asking_a, timeout=1)
            assert (a.runner.spec.weights.name, rows(scheduler)["A"].digest) == ("w2", "dA2")
            await asyncio.wait_for(ensuring, timeout=1)
            a.release(served=True)
        finally:
            await scheduler.close()

    run(scenario())
