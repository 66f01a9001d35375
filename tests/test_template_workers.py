"""Template renders in worker processes (runtime/template_workers.py): the same prompts as rendering
here, and what rendering here cannot do: a render that needs too much memory fails alone, one long
Python call is killed at its time, and the pool replaces what it lost. Real worker processes."""

from __future__ import annotations

import os
import re
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from template_corpus import CALL, CHATML, GEMMA3_JINJA, QWEN25_JINJA, RESULT, WEATHER_QUESTION, WEATHER_TOOL

from modelyard.builder.prompt import ChatMessage, ModelPrompting, PromptRequest, ToolCall, render_prompt
from modelyard.builder.render_limits import RenderTimedOut, render_timeout
from modelyard.errors import ServerBusyError, TemplateError
from modelyard.runtime.template_workers import NoIdleWorker, TemplateWorkers, receive_frame

NOW = datetime(2024, 5, 1, 9, 0)
HI = PromptRequest.chat([ChatMessage("user", "hi")], now=NOW)
# One Python call that runs for seconds on a value within every size limit: no clock is read in it.
LONG_CALL = '{% set x = "x" * 1000000 %}{% set y = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}{{ y|wordwrap(1)|length }}'
# A hundred values of 8 Mi characters, 2 bytes each, held at once: 1.6 GB, each under the limits.
MANY_VALUES = (
    '{% set x = "\u20ac" * 1000000 %}{% set y = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}'
    + "".join(f"{{% set a{i} = y ~ {i} %}}" for i in range(100))
    + "{{ a1|length }}"
)


@pytest.fixture(scope="module")
def pool() -> Iterator[TemplateWorkers]:
    workers = TemplateWorkers(memory_bytes=512 * 1024 * 1024)
    workers.start()
    yield workers
    workers.close()


def wait_for_workers(workers: TemplateWorkers) -> list[int]:
    """The pool's workers' ids, once every one it should have has started."""
    deadline = time.monotonic() + 10
    while len(workers.pids()) < workers.size and time.monotonic() < deadline:
        time.sleep(0.01)
    return workers.pids()


def jinja(text: str) -> ModelPrompting:
    return ModelPrompting(chat_template=text, bos_token="<bos>", eos_token="<eos>", tokenizer_adds_bos=True)


SAME_AS_HERE = [
    pytest.param(jinja(GEMMA3_JINJA), HI, id="gemma3-jinja"),
    pytest.param(
        jinja(QWEN25_JINJA),
        PromptRequest.chat([WEATHER_QUESTION, CALL, RESULT], tools=[WEATHER_TOOL], now=NOW),
        id="qwen-tools",
    ),
    pytest.param(ModelPrompting(template=CHATML, system="Be brief."), HI, id="chatml-go-system"),
    pytest.param(
        ModelPrompting(template="{{ .System }}|{{ .Prompt }}|{{ .Response }}"),
        PromptRequest.chat(
            [ChatMessage("user", "a"), ChatMessage("assistant", "b"), ChatMessage("user", "c")]
        ),
        id="go-legacy-turns",
    ),
    pytest.param(
        ModelPrompting(template="{{ if .Suffix }}<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>{{ end }}"),
        PromptRequest.generate("def f():", suffix="return 1"),
        id="go-suffix",
    ),
    pytest.param(
        ModelPrompting(), PromptRequest.generate("x", template="{{ .Prompt }}!"), id="request-template"
    ),
    pytest.param(
        ModelPrompting(template="{{ range .Messages }}{{ .Content }}{{ end }}"),
        PromptRequest.chat([ChatMessage("user", "a lone surrogate: \ud800, an emoji: \U0001f600")]),
        id="surrogate",
    ),
]


def test_a_lone_surrogate_comes_out_as_go_decodes_it() -> None:
    request = PromptRequest.chat([ChatMessage("user", "a \ud800 b")])
    for template in ("{{ range .Messages }}{{ .Content }}{{ end }}", "{{ messages[0].content }}"):
        model = ModelPrompting(template=template)
        assert render_prompt(model, request).text == "a \ufffd b"


@pytest.mark.parametrize(("model", "request_"), SAME_AS_HERE)
def test_a_worker_renders_what_rendering_here_does(
    pool: TemplateWorkers, model: ModelPrompting, request_: PromptRequest
) -> None:
    assert render_prompt(model, request_, render=pool.render) == render_prompt(model, request_)


def test_a_cut_conversation_is_cut_as_here(pool: TemplateWorkers) -> None:
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i} " * 10) for i in range(40)]
    model = ModelPrompting(template=CHATML)

    def fits(text: str, _images: int) -> bool:
        return len(text) < 2000

    here = render_prompt(model, PromptRequest.chat(history), fits=fits)
    there = render_prompt(model, PromptRequest.chat(history), fits=fits, render=pool.render)
    assert there == here and here.dropped > 0


@pytest.mark.parametrize(
    ("model", "message"),
    [
        pytest.param(ModelPrompting(template="{{ index .Messages 5 }}"), "out of range", id="go"),
        pytest.param(
            jinja("{{ raise_exception('no system messages here') }}"), "no system messages here", id="raised"
        ),
        pytest.param(jinja("{{ ().__class__ }}"), "unsafe", id="sandbox"),
    ],
)
def test_a_template_error_comes_back_as_a_template_error(
    pool: TemplateWorkers, model: ModelPrompting, message: str
) -> None:
    with pytest.raises(TemplateError) as here:
        render_prompt(model, HI)
    with pytest.raises(TemplateError) as there:
        render_prompt(model, HI, render=pool.render)
    assert message in str(there.value).lower() or message in str(there.value)
    assert str(there.value) == str(here.value)


def test_a_long_python_call_is_stopped_at_its_time(pool: TemplateWorkers) -> None:
    """In this process |wordwrap runs its seconds to the end, past the budget; a worker is killed."""
    token = render_timeout.set(0.3)
    try:
        started = time.monotonic()
        with pytest.raises(RenderTimedOut, match=r"longer than 0\.3 s"):
            render_prompt(jinja(LONG_CALL), HI, render=pool.render)
        took = time.monotonic() - started
    finally:
        render_timeout.reset(token)
    assert took < 0.3 + 0.1 + 0.3, f"{took:.2f} s"  # its time, the grace, and a slow machine's slack
    assert render_prompt(jinja("{{ messages[0].content }}"), HI, render=pool.render).text == "hi"


def test_a_render_that_needs_too_much_memory_fails_alone(pool: TemplateWorkers) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TemplateError, match=r"too large|memory"):
        render_prompt(jinja(MANY_VALUES), HI, render=pool.render)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024, f"this process grew by {grown_kib // 1024} MiB"
    assert render_prompt(jinja("{{ messages[0].content }}"), HI, render=pool.render).text == "hi"


def test_a_worker_that_died_idle_is_not_handed_out(pool: TemplateWorkers) -> None:
    """Killed by anybody (the kernel's OOM killer, an operator) while idle: no request is blamed."""
    killed = wait_for_workers(pool)
    for pid in killed:
        os.kill(pid, 9)
    time.sleep(0.1)
    for _ in range(pool.size + 2):
        assert render_prompt(jinja("{{ messages[0].content }}"), HI, render=pool.render).text == "hi"
    assert not set(pool.pids()) & set(killed)


def test_a_worker_left_holding_memory_retires() -> None:
    workers = TemplateWorkers(size=1, retire_rss_bytes=1)  # every render leaves "too much"
    workers.start()
    try:
        seen = set()
        for _ in range(3):
            seen.update(wait_for_workers(workers))
            assert render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render).text == "hi"
        assert len(seen) == 3, seen  # each render had a fresh worker
    finally:
        workers.close()


def test_renders_from_many_threads_share_the_workers(pool: TemplateWorkers) -> None:
    results: dict[int, str] = {}

    def render(i: int) -> None:
        request = PromptRequest.chat([ChatMessage("user", f"question {i}")])
        results[i] = render_prompt(jinja("{{ messages[0].content }}"), request, render=pool.render).text

    threads = [threading.Thread(target=render, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: f"question {i}" for i in range(16)}


def test_closing_the_pool_ends_its_workers() -> None:
    workers = TemplateWorkers(size=2)
    assert render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render).text == "hi"
    pids = workers.pids()
    assert pids
    workers.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no such child left
    with pytest.raises(ServerBusyError, match="shutting down"):
        render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render)


def test_workers_that_cannot_start_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken installation (here: an interpreter that exits at once) is the server's fault, not the
    template's: a RuntimeError (a 500, logged) that says why, not a wait and a template error."""
    monkeypatch.setattr("sys.executable", "/bin/false")
    workers = TemplateWorkers(size=1)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"no template worker could be started: .*status 1"):
            render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render)
        assert time.monotonic() - started < 1.5
    finally:
        workers.close()


def test_values_nested_too_deeply_to_send_are_a_template_error(pool: TemplateWorkers) -> None:
    """JSON takes tool-call arguments nested some 990 deep; pickling fails from about 500: the
    request's fault (a 400), and no worker is killed for it."""
    import json

    deep = json.loads('{"a":' * 900 + "1" + "}" * 900)
    request = PromptRequest.chat([ChatMessage("assistant", "q", tool_calls=(ToolCall("f", deep),))])
    before = wait_for_workers(pool)
    with pytest.raises(TemplateError, match="nested too deeply"):
        render_prompt(ModelPrompting(template=CHATML), request, render=pool.render)
    assert sorted(pool.pids()) == sorted(before)


def test_waiting_for_a_busy_worker_is_not_rendering_time() -> None:
    """With the only worker busy on a slow render, another waits for it and then has its own time;
    render_now does not wait."""
    workers = TemplateWorkers(size=1)
    workers.start()
    wait_for_workers(workers)
    token = render_timeout.set(0.3)
    try:

        def slow_render() -> None:  # a thread of its own: the default budget, set here to 1 s
            render_timeout.set(1.0)
            with pytest.raises(RenderTimedOut):
                render_prompt(jinja(LONG_CALL), HI, render=workers.render)

        slow = threading.Thread(target=slow_render)
        slow.start()
        time.sleep(0.1)  # the worker is busy with it now
        with pytest.raises(NoIdleWorker):
            render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render_now)
        started = time.monotonic()
        text = render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render).text
        waited = time.monotonic() - started
        slow.join()
    finally:
        render_timeout.reset(token)
        workers.close()
    assert text == "hi" and waited > 0.6, waited  # it waited longer than its own 0.3 s, then rendered


def test_a_worker_keeps_nothing_of_the_servers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_API_KEY", "not-for-templates")
    monkeypatch.setenv("PYTHONINTMAXSTRDIGITS", "0")  # the interpreter's: a template's int() sees it
    monkeypatch.chdir("/tmp")
    workers = TemplateWorkers(size=1, memory_bytes=300 * 1024 * 1024)
    workers.start()
    try:
        [pid] = wait_for_workers(workers)
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"not-for-templates" not in environment and b"PYTHONINTMAXSTRDIGITS=0" in environment
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max address space\s+314572800\s+314572800", limits), limits
    finally:
        workers.close()


@pytest.mark.parametrize(
    ("sent", "max_bytes", "error"),
    [
        pytest.param(struct.pack("!Q", 5) + b"hello", 5, None, id="whole"),
        pytest.param(struct.pack("!Q", 6) + b"hello!", 5, ValueError, id="longer-than-a-reply-may-be"),
        pytest.param(struct.pack("!Q", 9) + b"stall", 64, TimeoutError, id="never-finished"),
        pytest.param(struct.pack("!Q", 2), 64, TimeoutError, id="only-its-length"),
        pytest.param(b"", 64, EOFError, id="closed"),
    ],
)
def test_a_frame_is_read_by_its_deadline_and_size(sent: bytes, max_bytes: int, error: type | None) -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(sent)
        if not sent:
            theirs.close()
        started = time.monotonic()
        if error is None:
            assert receive_frame(ours, max_bytes, started + 0.2) == b"hello"
        else:
            with pytest.raises(error):
                receive_frame(ours, max_bytes, started + 0.2)
        assert time.monotonic() - started < 1.0
    finally:
        ours.close()
        theirs.close()


def test_renders_waiting_for_a_worker_get_one_in_the_order_they_came() -> None:
    workers = TemplateWorkers(size=1)
    workers.start()
    wait_for_workers(workers)
    finished: list[int] = []

    def slow_render() -> None:  # holds the only worker for 0.5 s
        render_timeout.set(0.5)
        with pytest.raises(RenderTimedOut):
            render_prompt(jinja(LONG_CALL), HI, render=workers.render)

    def quick_render(i: int) -> None:
        request = PromptRequest.chat([ChatMessage("user", f"{i}")])
        render_prompt(jinja("{{ messages[0].content }}"), request, render=workers.render)
        finished.append(i)

    try:
        threads = [threading.Thread(target=slow_render)]
        threads[0].start()
        time.sleep(0.1)
        for i in range(5):
            threads.append(threading.Thread(target=quick_render, args=(i,)))
            threads[-1].start()
            time.sleep(0.03)
        with pytest.raises(NoIdleWorker):  # it would jump the queue
            render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render_now)
        for thread in threads:
            thread.join()
    finally:
        workers.close()
    assert finished == list(range(5))


def test_a_render_that_waits_too_long_for_a_worker_is_told_to_come_back() -> None:
    """Every worker busy for WORKER_WAIT_S: a 503 with Retry-After (ServerBusyError), not a
    template error: the request was fine."""
    workers = TemplateWorkers(size=1)
    workers.start()
    wait_for_workers(workers)

    def slow_render() -> None:  # holds the only worker past WORKER_WAIT_S (3.1 s)
        render_timeout.set(3.6)
        with pytest.raises(RenderTimedOut):
            render_prompt(jinja(LONG_CALL), HI, render=workers.render)

    slow = threading.Thread(target=slow_render)
    try:
        slow.start()
        time.sleep(0.2)
        with pytest.raises(ServerBusyError) as busy:
            render_prompt(jinja("{{ messages[0].content }}"), HI, render=workers.render)
        assert busy.value.reason == "templates" and busy.value.retry_after > 0
    finally:
        slow.join()
        workers.close()


def test_a_chat_cut_to_fit_after_a_wait_has_its_time_for_every_render() -> None:
    """The wait for a worker is not the prompt's time: the bisection's later renders had found the
    prompt's shared deadline spent by the first one's wait."""
    workers = TemplateWorkers(size=1)
    workers.start()
    wait_for_workers(workers)

    def slow_render() -> None:  # holds the only worker for about a second
        render_timeout.set(1.0)
        with pytest.raises(RenderTimedOut):
            render_prompt(jinja(LONG_CALL), HI, render=workers.render)

    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i} " * 10) for i in range(40)]
    slow = threading.Thread(target=slow_render)
    token = render_timeout.set(0.5)
    try:
        slow.start()
        time.sleep(0.1)
        prompt = render_prompt(
            ModelPrompting(template=CHATML),
            PromptRequest.chat(history),
            fits=lambda text, _images: len(text) < 2000,
            render=workers.render,
        )
    finally:
        render_timeout.reset(token)
        slow.join()
        workers.close()
    assert 0 < prompt.dropped < 40
