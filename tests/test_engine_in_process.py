"""The runner's Engine driven in this process (no socket): what a request that fails while its
token is picked leaves behind, and the prompt cache's choice across slots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.runtime import llama
from modelyard.runtime.engine import Engine
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.protocol import CompletionRequest


@pytest.fixture
def engine(tiny_gguf: Path) -> Iterator[tuple[Engine, list[dict[str, Any]]]]:
    # Not repacked: some VMs advertise CPU instructions the repacked kernels need and cannot run.
    model = llama.Model(tiny_gguf, LoadOptions(num_gpu=0), repack=False)
    ctx = llama.Context(model, n_ctx=2 * 128, n_seq_max=2, n_batch=64, threads=2)
    events: list[dict[str, Any]] = []
    yield Engine(model, ctx, 2, events.append), events
    ctx.close()
    model.close()


def run(engine: Engine, request_id: int, prompt: str, n: int) -> None:
    engine.waiting.append(
        (request_id, CompletionRequest(prompt, SamplingOptions(temperature=0, num_predict=n)))
    )
    while engine._has_work():
        engine._admit()
        engine.step()


def test_a_request_that_fails_while_sampling_fails_alone(
    engine: tuple[Engine, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, events = engine
    real = llama.Sampler.sample
    calls = {"n": 0}

    def failing_once(self: llama.Sampler, ctx: llama.Context, index: int) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the sampler chain selected no token (-1)")
        return real(self, ctx, index)

    monkeypatch.setattr(llama.Sampler, "sample", failing_once)
    run(runner, 1, "the cat sat on", 8)
    errors = [e for e in events if e["event"] == "error"]
    assert [(e["id"], e["kind"]) for e in errors] == [(1, "internal")]
    assert "selected no token" in errors[0]["message"]
    assert not any(s.busy for s in runner.slots)
    assert all(len(s.cache) == 0 for s in runner.slots), "what the failed request left is not reused"

    run(runner, 2, "the cat sat on", 8)  # the engine goes on serving
    done = [e for e in events if e["event"] == "done"]
    assert [(e["id"], e["eval_count"]) for e in done] == [(2, 8)]


def test_the_next_turn_goes_back_to_its_slot(engine: tuple[Engine, list[dict[str, Any]]]) -> None:
    runner, events = engine
    run(runner, 1, "the cat sat on the mat and", 6)
    first = next(s for s in runner.slots if len(s.cache))
    run(runner, 2, "a dog ran", 4)  # another conversation: the other, never used, slot
    assert sum(1 for s in runner.slots if len(s.cache)) == 2
    text = "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == 1)
    run(runner, 3, "the cat sat on the mat and" + text + " then", 4)
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[3]["prompt_cached"] >= len(
        runner.model.tokenize("the cat sat on the mat and", add_special=True)
    )
    assert (
        list(first.cache[: done[3]["prompt_cached"]])
        == runner.model.tokenize("the cat sat on the mat and" + text + " then", add_special=True)[
            : done[3]["prompt_cached"]
        ]
    )
