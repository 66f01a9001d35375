"""Prompts for real runners: the image's TEMPLATE, the GGUF's chat template as fallback, SYSTEM and
MESSAGE layers, raw prompts, truncation, and a hostile template failing alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.builder import modelfile as mf
from modelyard.builder.prompt import ChatMessage, ModelPrompting, PromptRequest, ToolCall, render_prompt
from modelyard.builder.render_limits import MAX_RENDERED_CHARS, render_max_chars
from modelyard.errors import TemplateError
from modelyard.runtime.options import LoadOptions, SamplingOptions
from modelyard.runtime.prompting import (
    RunnerNeeded,
    _parts,
    _text_length,
    image_prompting,
    output_limit,
    prepare,
)
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner, RunnerSpec

CHAT_HI = PromptRequest.chat([ChatMessage("user", "hi")])
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "gemma3" / "Modelfile"
GREEDY = SamplingOptions(temperature=0.0, num_predict=16)
CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_with_chat_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    from tinygguf import write_tiny_llama

    path = write_tiny_llama(tmp_path_factory.mktemp("t") / "chat.gguf", chat_template=CHATML_JINJA)
    runner = Runner.start(RunnerSpec("chat", path, options=LoadOptions(num_ctx=256, num_parallel=2)))
    yield runner
    runner.stop()


@pytest.mark.gemma
def test_gemma_sample_template_system_and_messages(gemma_gguf: Path) -> None:
    sample = mf.parse(SAMPLE.read_text())
    prompting = image_prompting(
        sample.template,
        sample.system,
        [{"role": m.role, "content": m.content} for m in sample.messages],
        None,
    )
    runner = Runner.start(RunnerSpec("gemma", gemma_gguf, options=LoadOptions(num_ctx=1024)))
    try:
        request = PromptRequest.chat([ChatMessage("user", "And the capital of Italy?")])
        rendered = prepare(runner, prompting, request, GREEDY)
        assert rendered.completion.prompt == (
            "<start_of_turn>user\nYou are a concise assistant. Answer in one or two sentences.<end_of_turn>\n"
            "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
            "<start_of_turn>model\nParis.<end_of_turn>\n"
            "<start_of_turn>user\nAnd the capital of Italy?<end_of_turn>\n"
            "<start_of_turn>model\n"
        )
        text, _ = runner.complete(rendered.completion)
        assert "Rome" in text
    finally:
        runner.stop()


def test_gguf_chat_template_is_the_fallback(tiny_with_chat_template: Runner) -> None:
    prompting = image_prompting(None, "Be brief.", [], CHATML_JINJA)
    rendered = prepare(
        tiny_with_chat_template, prompting, PromptRequest.chat([ChatMessage("user", "hi")]), GREEDY
    )
    assert rendered.completion.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tiny_with_chat_template.complete(rendered.completion)[1].eval_count > 0


def test_raw_prompt_bypasses_the_template(tiny_with_chat_template: Runner) -> None:
    prompting = image_prompting("{{ .System }} {{ .Prompt }}", "system text", [], None)
    raw = prepare(tiny_with_chat_template, prompting, PromptRequest.generate("the cat", raw=True), GREEDY)
    assert raw.completion.prompt == "the cat"
    templated = prepare(tiny_with_chat_template, prompting, PromptRequest.generate("the cat"), GREEDY)
    assert templated.completion.prompt == "system text the cat"


def test_hostile_template_fails_one_request_only(tiny_with_chat_template: Runner) -> None:
    hostile = image_prompting(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{% if messages %}{% endif %}", None, [], None
    )
    with pytest.raises(TemplateError):
        prepare(tiny_with_chat_template, hostile, PromptRequest.chat([ChatMessage("user", "hi")]), GREEDY)
    _, done = tiny_with_chat_template.complete(CompletionRequest("the cat", GREEDY))
    assert done.eval_count == 16, "the runner serves the next request as before"


def test_old_messages_are_dropped_to_fit(tiny_with_chat_template: Runner) -> None:
    prompting = image_prompting(None, "system", [], CHATML_JINJA)
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", "the cat sat on the mat " * 4) for i in range(40)
    ]
    history.append(ChatMessage("user", "last question"))
    rendered = prepare(tiny_with_chat_template, prompting, PromptRequest.chat(history), GREEDY)
    assert rendered.dropped_messages > 0
    assert rendered.completion.prompt.startswith("<|im_start|>system\nsystem<|im_end|>"), (
        "the system message stays"
    )
    assert "last question" in rendered.completion.prompt, "the last message stays"
    assert len(tiny_with_chat_template.tokenize(rendered.completion.prompt, add_special=True)) < 256


LONG_HISTORY = [ChatMessage("user", "the cat sat on the mat " * 20)] * 3  # more bytes than 256 tokens


@pytest.mark.parametrize(
    ("request_", "needs_runner"),
    [
        (PromptRequest.chat([ChatMessage("user", "hi")]), False),  # fewer bytes than the context
        (PromptRequest.generate("the cat", raw=True), False),
        (PromptRequest.chat(LONG_HISTORY), True),  # its tokens must be counted
        (PromptRequest.generate("the cat " * 40, raw=True), True),  # raw, but longer than the context
        (PromptRequest.generate("the cat", context=(1, 2, 3)), True),  # a context to detokenize
        # The request's own template: as much work as its author writes, not for the event loop.
        (PromptRequest.generate("the cat", template="{{ range 1000 }}{{ end }}{{ .Prompt }}"), True),
    ],
)
def test_a_prompt_renders_without_the_runner_unless_it_must_ask(
    tiny_with_chat_template: Runner, request_: PromptRequest, needs_runner: bool
) -> None:
    """The server renders on its event loop with ask_runner=False, and goes to a thread (where
    waiting on the runner is fine) only when that raises."""
    prompting = image_prompting(None, None, [], CHATML_JINJA)
    asked = prepare(tiny_with_chat_template, prompting, request_, GREEDY)
    if needs_runner:
        with pytest.raises(RunnerNeeded):
            prepare(tiny_with_chat_template, prompting, request_, GREEDY, ask_runner=False)
    else:
        assert prepare(tiny_with_chat_template, prompting, request_, GREEDY, ask_runner=False) == asked


@pytest.mark.parametrize(
    ("values", "enough", "expected"),
    [
        pytest.param([], 100, 0, id="nothing"),
        pytest.param(["abc"], 100, 8 + 3, id="a-string"),
        pytest.param([{"a": "bc"}], 100, 8 + (8 + 1) + (8 + 2), id="a-dict"),
        pytest.param([[1, 2.5, [None]]], 1000, 2 * 8 + 3 * (8 + 24), id="numbers-and-null"),
        pytest.param([[[]] * 1000], 40, 40, id="stops-at-about-enough"),
    ],
)
def test_the_parts_of_json_values_are_counted_up_to_enough(
    values: list[Any], enough: int, expected: int
) -> None:
    assert _parts(list(values), enough) == expected


def test_the_parts_of_values_nested_past_recursion_are_counted() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = {"a": deep}
    request = PromptRequest.chat([ChatMessage("assistant", "", tool_calls=(ToolCall("f", deep),))])
    # each level a dict and its key, the leaf, the call's (name, arguments) pair and its name, no tools
    assert _text_length(request, 10**6) == 5000 * (8 + 8 + 1) + (8 + 24) + 8 + (8 + 1) + 8


@pytest.mark.parametrize(
    ("prompting", "request_", "request_length", "context", "expected"),
    [
        pytest.param(ModelPrompting(), CHAT_HI, 2, 4096, 8 * 2 + 256 * 3 + 16 * 4096, id="short"),
        pytest.param(
            ModelPrompting(system="be brief", template="{{ .Prompt }}"),
            CHAT_HI,
            2,
            4096,
            8 * (2 + 8 + 13) + 256 * 3 + 16 * 4096,
            id="the-images-own-text",
        ),
        pytest.param(
            ModelPrompting(), CHAT_HI, 10_000_000, 4096, MAX_RENDERED_CHARS, id="never-past-the-limit"
        ),
    ],
)
def test_what_a_prompts_template_may_write(
    prompting: ModelPrompting, request_: PromptRequest, request_length: int, context: int, expected: int
) -> None:
    assert output_limit(prompting, request_, request_length, context) == expected


def test_a_long_chat_of_short_messages_is_cut_to_fit_not_refused() -> None:
    """A template's markup around each message does not grow with it: a thousand "ok"s render to
    more than eight times their text. The render over the limit is one that does not fit."""
    from template_corpus import QWEN25_JINJA

    history = [ChatMessage("user" if i % 2 == 0 else "assistant", "ok") for i in range(1001)]
    request = PromptRequest.chat(history)
    prompting = ModelPrompting(chat_template=QWEN25_JINJA)
    # 8 characters per input character alone would refuse it; per message, it is allowed:
    assert len(render_prompt(prompting, request).text) > 8 * _text_length(request, 10**9)
    assert output_limit(prompting, request, _text_length(request, 10**9), 1024) > 256 * 1001
    limit = 10_000  # and tighter than the whole chat, which the bisection must then cut
    token = render_max_chars.set(limit)
    try:
        prompt = render_prompt(prompting, request, fits=lambda text, images: True)
    finally:
        render_max_chars.reset(token)
    assert 0 < prompt.dropped < 1000 and len(prompt.text) <= limit


FLOATS = [0.123456789012] * 8000


def _enum_tool(count: int) -> dict[str, Any]:
    enum = list(range(100_000, 100_000 + count))
    properties = {"id": {"type": "integer", "enum": enum, "description": "a product id"}}
    return {"type": "function", "function": {"name": "pick", "parameters": {"properties": properties}}}


@pytest.mark.parametrize(
    ("template", "request_"),
    [
        pytest.param(
            "LLAMA32_JINJA",
            PromptRequest.chat([ChatMessage("user", "pick one")], tools=[_enum_tool(6000)]),
            id="numbers-behind-tojson-indent-4",
        ),
        pytest.param(
            "LLAMA31_TOOLS",
            PromptRequest.chat(
                [
                    ChatMessage("user", "compute"),
                    ChatMessage("assistant", "", tool_calls=(ToolCall("sum", {"values": FLOATS}),)),
                ],
                tools=[{"type": "function", "function": {"name": "sum", "parameters": {}}}],
            ),
            id="floats-in-a-tool-call",
        ),
    ],
)
def test_numbers_in_tools_are_allowed_what_they_render_to(template: str, request_: PromptRequest) -> None:
    """A regression hunt found these refused: a number counted as one character of input, and
    `tojson(indent=4)` puts each on a line of its own (the runner cut them to fit before)."""
    from datetime import datetime

    import template_corpus

    text = getattr(template_corpus, template)
    prompting = ModelPrompting(chat_template=text) if "JINJA" in template else ModelPrompting(template=text)
    request_ = PromptRequest.chat(request_.messages, tools=request_.tools, now=datetime(2024, 5, 1))
    rendered = render_prompt(prompting, request_).text
    assert len(rendered) <= output_limit(prompting, request_, _text_length(request_, 10**9), 256)
