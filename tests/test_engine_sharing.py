"""Prompts that take their first tokens' KV cells from a busy slot (prompt_cache.share_from_busy),
driven in this process on the tiny random-weight model: n copies of one prompt evaluate it once,
a prompt that shares a long start with a running request copies that request's cells, and every
answer is the one the prompt gives alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine_decoding import Engines, answer, run_all

from modelyard.runtime.engine import Engine
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.protocol import CompletionRequest

SHARED = " ".join(f"line {i} of the shared system prompt says something" for i in range(3))


@pytest.fixture
def engines(tiny_gguf: Path) -> Iterator[Engines]:
    made = Engines(tiny_gguf)
    yield made
    made.close()


def alone(engines: Engines, prompt: str, **options: Any) -> str:
    engine, events = engines.new(slots=4)
    engine.waiting.append((1, CompletionRequest(prompt, SamplingOptions(**options))))
    run_all(engine)
    return answer(events, 1).text


def prompt_length(engine: Engine, prompt: str) -> int:
    return len(engine.model.tokenize(prompt, add_special=True, parse_special=True))


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 1.0, "seed": 7}])
def test_n_copies_of_a_prompt_evaluate_it_once(engines: Engines, options: dict[str, Any]) -> None:
    prompt = SHARED + " and the question is"
    expected = alone(engines, prompt, num_predict=12, **options)
    engine, events = engines.new(slots=4)
    length = prompt_length(engine, prompt)
    assert length > 40
    for request_id in (1, 2, 3):
        request = CompletionRequest(prompt, SamplingOptions(num_predict=12, **options))
        engine.waiting.append((request_id, request))
    engine._admit()
    assert [s.request_id for s in engine.slots if s.busy] == [1]  # the others wait for its cells
    run_all(engine)
    answers = [answer(events, request_id) for request_id in (1, 2, 3)]
    assert [a.text for a in answers] == [expected] * 3
    assert [a.done["prompt_cached"] for a in answers] == [0, length - 1, length - 1]
    assert [a.done["prompt_shared"] for a in answers] == [0, length - 1, length - 1]
    assert engine.stats()["prompt_shared_tokens"] == 2 * (length - 1)


def test_a_prompt_copies_the_shared_start_of_a_running_request(engines: Engines) -> None:
    first = SHARED + " so tell me about cats"
    second = SHARED + " but what about birds and fish"
    expected = [alone(engines, p, num_predict=n, temperature=0) for p, n in ((first, 30), (second, 10))]
    engine, events = engines.new(slots=4)
    engine.waiting.append((1, CompletionRequest(first, SamplingOptions(num_predict=30, temperature=0))))
    for _ in range(4):  # its prompt in, a few tokens out
        engine._admit()
        engine.step()
    [running] = [s for s in engine.slots if s.busy]
    assert running.generated > 0
    engine.waiting.append((2, CompletionRequest(second, SamplingOptions(num_predict=10, temperature=0))))
    run_all(engine)
    assert [answer(events, i).text for i in (1, 2)] == expected
    shared = answer(events, 2).done["prompt_cached"]
    assert shared == engine.stats()["prompt_shared_tokens"] > 32


def test_a_short_common_start_is_evaluated_not_copied(engines: Engines) -> None:
    engine, events = engines.new(slots=4)
    engine.waiting.append((1, CompletionRequest("line 1 of a story", SamplingOptions(num_predict=20))))
    engine._admit()
    engine.step()
    engine.waiting.append((2, CompletionRequest("line 1 of another", SamplingOptions(num_predict=4))))
    run_all(engine)
    assert answer(events, 2).done["prompt_cached"] == 0
    assert engine.stats()["prompt_shared_tokens"] == 0


def test_a_waiting_request_keeps_a_free_slot_from_those_behind_it(engines: Engines) -> None:
    """Requests behind one that waits for a busy slot's cells take the other free slots, not the
    last: else the waiting one would wait for a whole answer to end, not for a prompt."""
    prompt = SHARED + " and the question is"
    engine, events = engines.new(slots=4)
    length = prompt_length(engine, prompt)
    for request_id in (1, 2):
        engine.waiting.append(
            (request_id, CompletionRequest(prompt, SamplingOptions(num_predict=8, temperature=0)))
        )
    for request_id in (3, 4, 5):
        other = CompletionRequest(f"another story, number {request_id}", SamplingOptions(num_predict=40))
        engine.waiting.append((request_id, other))
    engine._admit()
    assert sorted(s.request_id for s in engine.slots if s.busy) == [1, 3, 4]
    assert [request_id for request_id, _ in engine.waiting] == [2, 5]
    [first] = [s for s in engine.slots if s.request_id == 1]
    while first.prefilling:  # request 1's prompt goes in, beside the others'
        engine.step()
    engine._admit()
    assert sorted(s.request_id for s in engine.slots if s.busy) == [1, 2, 3, 4]
    run_all(engine)
    assert answer(events, 2).done["prompt_cached"] == length - 1
    assert answer(events, 2).text == answer(events, 1).text
