"""From request to prompt as Ollama builds it: SYSTEM and MESSAGE layers, chat and generate, raw,
suffix, template overrides, the GGUF's chat template as fallback, images, truncation."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from template_corpus import (
    CALL,
    CHATML,
    GEMMA3_JINJA,
    LLAMA32_JINJA,
    QWEN25_JINJA,
    RESULT,
    SAMPLE_GEMMA3,
    WEATHER_QUESTION,
    WEATHER_TOOL,
)

from modelyard.builder.prompt import (
    ChatMessage,
    ModelPrompting,
    Prompt,
    PromptRequest,
    RenderJob,
    ToolCall,
    ollama_template,
    render_prompt,
    run_render_job,
    template_kind,
)
from modelyard.errors import TemplateError

NOW = datetime(2024, 5, 1, 9, 0)
DUMP = "{{ if .System }}<{{ .System }}>{{ end }}{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
LAYERS = (ChatMessage("user", "What is 2+2?"), ChatMessage("assistant", "4"))
HI = ChatMessage("user", "hi")


def model(**kwargs: object) -> ModelPrompting:
    return ModelPrompting(**{"template": DUMP, **kwargs})  # type: ignore[arg-type]


def chat(*messages: ChatMessage, **kwargs: object) -> PromptRequest:
    return PromptRequest.chat(messages, **kwargs)  # type: ignore[arg-type]


# --- which language a template is in -----------------------------------------------------------------------

KINDS = [
    pytest.param("{{ .Prompt }}", "go", id="go-field"),
    pytest.param("", "go", id="empty"),
    pytest.param("plain text", "go", id="plain-text"),
    pytest.param(CHATML, "go", id="go-chatml"),
    pytest.param(SAMPLE_GEMMA3.template, "go", id="go-sample-gemma3"),
    pytest.param("{{ .A }", "go", id="broken-go"),
    pytest.param("{{ nope }}", "go", id="go-unknown-function"),
    pytest.param("{# note #}{{ .Prompt }}", "go", id="go-with-jinja-looking-text"),
    pytest.param(GEMMA3_JINJA, "jinja", id="jinja-gemma3"),
    pytest.param(LLAMA32_JINJA, "jinja", id="jinja-llama3.2"),
    pytest.param(QWEN25_JINJA, "jinja", id="jinja-qwen2.5"),
    pytest.param("{{ bos_token }}{{ messages[0]['content'] }}", "jinja", id="jinja-expressions-only"),
    pytest.param("{{ messages }}", "jinja", id="jinja-bare-variable"),
    pytest.param("{% if x %}", "jinja", id="broken-jinja"),
    pytest.param("{% raw %}{{ .X }}{% endraw %}", "jinja", id="jinja-raw-block"),
]


@pytest.mark.parametrize(("text", "kind"), KINDS)
def test_template_kind(text: str, kind: str) -> None:
    assert template_kind(text) == kind


# --- chat: SYSTEM and MESSAGE layers ---------------------------------------------------------------------

CHAT = [
    pytest.param(model(system="S"), chat(HI), "<S>[system:S][user:hi]", id="system-layer-prepended"),
    pytest.param(
        model(system="S"),
        chat(ChatMessage("system", "R"), HI),
        "<R>[system:R][user:hi]",
        id="request-system-wins",
    ),
    pytest.param(
        model(system="S", messages=LAYERS),
        chat(HI),
        "<S>[system:S][user:What is 2+2?][assistant:4][user:hi]",
        id="message-layers-after-system",
    ),
    pytest.param(
        model(system="S", messages=LAYERS),
        chat(ChatMessage("system", "R"), HI),
        "<R>[user:What is 2+2?][assistant:4][system:R][user:hi]",
        id="message-layers-before-request-system",
    ),
    pytest.param(
        model(), chat(HI, ChatMessage("user", "again")), "[user:hi\n\nagain]", id="same-role-merged"
    ),
    pytest.param(
        model(system="S"),
        chat(HI, ChatMessage("system", "late")),
        "<S\n\nlate>[system:S][user:hi][system:late]",
        id="systems-collected",
    ),
    pytest.param(model(system="S"), chat(), "", id="no-messages-only-loads"),
    pytest.param(
        model(template="{{ .Think }}/{{ .ThinkLevel }}/{{ .IsThinkSet }}{{ range .Messages }}{{ end }}"),
        chat(HI, think=True),
        "true/medium/true",
        id="think",
    ),
    pytest.param(
        model(template="{{ range .Tools }}{{ .Function.Name }};{{ end }}{{ len .Messages }}"),
        chat(HI, tools=[WEATHER_TOOL]),
        "get_current_weather;1",
        id="tools",
    ),
    pytest.param(
        model(template="{{ .Prompt }}"),
        chat(ChatMessage("system", "S"), HI, ChatMessage("assistant", "yo"), ChatMessage("user", "more")),
        "hiyomore",
        id="legacy-template-turns",
    ),
]


@pytest.mark.parametrize(("prompting", "request_", "expected"), CHAT)
def test_chat(prompting: ModelPrompting, request_: PromptRequest, expected: str) -> None:
    assert render_prompt(prompting, request_).text == expected


def test_sample_gemma3_modelfile() -> None:
    """samples/gemma3: its SYSTEM and MESSAGE layers around a question, through its own TEMPLATE."""
    prompting = ModelPrompting(
        template=SAMPLE_GEMMA3.template,
        system=SAMPLE_GEMMA3.system,
        messages=tuple(ChatMessage(m.role, m.content) for m in SAMPLE_GEMMA3.messages),
    )
    assert render_prompt(prompting, chat(ChatMessage("user", "Why is the sky blue?"))).text == (
        "<start_of_turn>user\nYou are a concise assistant. Answer in one or two sentences.<end_of_turn>\n"
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n<start_of_turn>model\n"
    )


# --- generate ---------------------------------------------------------------------------------------------

FIM = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}"

GENERATE = [
    pytest.param(
        model(system="S"), PromptRequest.generate("hi"), "<S>[system:S][user:hi]", id="system-layer"
    ),
    pytest.param(
        model(system="S"),
        PromptRequest.generate("hi", system="R"),
        "<R>[system:R][user:hi]",
        id="request-system",
    ),
    pytest.param(
        model(system="S", messages=LAYERS),
        PromptRequest.generate("hi"),
        "<S>[system:S][user:What is 2+2?][assistant:4][user:hi]",
        id="message-layers",
    ),
    pytest.param(
        model(system="S", messages=LAYERS),
        PromptRequest.generate("hi", context=[1, 2, 3]),
        "<S>[system:S][user:hi]",
        id="context-leaves-message-layers-out",  # its text goes first, in runtime/prompting.py
    ),
    pytest.param(
        model(system="S", messages=LAYERS),
        PromptRequest.generate("[INST] raw [/INST]", raw=True),
        "[INST] raw [/INST]",
        id="raw-bypasses-everything",
    ),
    pytest.param(
        model(system="S"),
        PromptRequest.generate("hi", template="{{ .System }}|{{ .Prompt }}"),
        "S|hi",
        id="template-override",
    ),
    pytest.param(
        model(template=FIM),
        PromptRequest.generate("def add(", suffix="return x"),
        "<PRE> def add( <SUF>return x <MID>",
        id="suffix",
    ),
    pytest.param(
        model(template=FIM), PromptRequest.generate("def add("), "def add(", id="suffix-template-no-suffix"
    ),
    pytest.param(
        ModelPrompting(system="S", messages=LAYERS),
        PromptRequest.generate("hi"),
        "What is 2+2?4hi",
        id="no-template",
    ),
    pytest.param(
        model(template="{{ .Tools }}|{{ json .Tools }}|{{ range .Messages }}{{ end }}"),
        PromptRequest.generate("hi"),
        "[]|[]|",
        id="generate-tools-empty-not-nil",
    ),
]


@pytest.mark.parametrize(("prompting", "request_", "expected"), GENERATE)
def test_generate(prompting: ModelPrompting, request_: PromptRequest, expected: str) -> None:
    assert render_prompt(prompting, request_).text == expected


def test_chat_tools_absent_are_nil() -> None:
    prompting = model(template="{{ .Tools }}|{{ json .Tools }}|{{ range .Messages }}{{ end }}")
    assert render_prompt(prompting, chat(HI)).text == "null|null|"


def test_suffix_needs_a_template_that_takes_it() -> None:
    with pytest.raises(TemplateError, match="does not support insert"):
        render_prompt(model(), PromptRequest.generate("a", suffix="b"))
    # A request's own template that does not parse says so, not that it lacks .Suffix.
    with pytest.raises(TemplateError, match=r"unclosed action|unexpected") as broken:
        render_prompt(model(), PromptRequest.generate("a", suffix="b", template="{{ .Suffix "))
    assert "does not support insert" not in str(broken.value)


def test_raw_keeps_images() -> None:
    assert render_prompt(model(), PromptRequest.generate("x", raw=True, images=[b"img"])) == Prompt(
        "x", (b"img",)
    )


# --- images -----------------------------------------------------------------------------------------------

IMAGES = [
    pytest.param(
        PromptRequest.generate("look", images=[b"a", b"b"]),
        "[user:[img-0][img-1]look]",
        (b"a", b"b"),
        id="prefixed",
    ),
    pytest.param(
        PromptRequest.generate("[img] vs [img]", images=[b"a", b"b"]),
        "[user:[img-0] vs [img-1]]",
        (b"a", b"b"),
        id="placeholders",
    ),
    pytest.param(
        chat(
            ChatMessage("user", "one", images=(b"a",)),
            ChatMessage("assistant", "ok"),
            ChatMessage("user", "two", images=(b"b",)),
        ),
        "[user:[img-0]one][assistant:ok][user:[img-1]two]",
        (b"a", b"b"),
        id="numbered-across-messages",
    ),
    pytest.param(
        PromptRequest.generate("look", images=[b"a"], template=DUMP),
        "[user:look]",
        (b"a",),
        id="template-override-adds-no-tags",
    ),
]


@pytest.mark.parametrize(("request_", "text", "images"), IMAGES)
def test_images(request_: PromptRequest, text: str, images: tuple[bytes, ...]) -> None:
    assert render_prompt(model(), request_) == Prompt(text, images)


# --- truncation -------------------------------------------------------------------------------------------

LONG = [
    ChatMessage("system", "S"),
    ChatMessage("user", "first " * 20),
    ChatMessage("assistant", "answer one"),
    ChatMessage("user", "second"),
    ChatMessage("assistant", "answer two"),
    ChatMessage("user", "third"),
]


def test_truncation_drops_old_messages_and_keeps_system() -> None:
    seen: list[str] = []

    def fits(text: str, images: int) -> bool:
        seen.append(text)
        return len(text) <= 80

    rendered = render_prompt(model(), chat(*LONG), fits=fits)
    assert rendered.text == "<S>[system:S][user:second][assistant:answer two][user:third]"
    assert rendered.dropped == 2
    assert seen[0].startswith("<S>[system:S][user:first")


def test_truncation_keeps_the_last_message_even_when_it_does_not_fit() -> None:
    rendered = render_prompt(model(), chat(*LONG), fits=lambda text, images: False)
    assert rendered.text == "<S>[system:S][user:third]"
    assert rendered.dropped == 4


def test_truncation_never_orphans_tool_results() -> None:
    messages = [
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
        ChatMessage("tool", "sunny"),
        ChatMessage("tool", "22C"),
    ]
    rendered = render_prompt(model(), chat(*messages), fits=lambda text, images: "[assistant" not in text)
    assert rendered.text == "[assistant:][tool:sunny][tool:22C]"
    assert rendered.dropped == 1


ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
MESSAGES = st.lists(
    st.builds(
        lambda role, n, calls: ChatMessage(
            role, "x" * n, tool_calls=(ToolCall("f", {}),) if calls and role == "assistant" else ()
        ),
        ROLES,
        st.integers(0, 30),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


@given(messages=MESSAGES, limit=st.integers(0, 600))
@settings(max_examples=300, deadline=None)
def test_truncation_by_bisection_drops_what_ollamas_scan_drops(
    messages: list[ChatMessage], limit: int
) -> None:
    """Ollama tries dropping 0, 1, 2… messages, a render each; bisection must find the same first
    fit wherever fewer messages never render longer."""
    from modelyard.builder.prompt import _tool_block_start

    def ollama_dropped() -> int:  # Ollama's chatPrompt, as it scans
        for i in range(len(messages)):
            begin = _tool_block_start(messages, i)
            kept = [m for m in messages[:begin] if m.role == "system"] + messages[begin:]
            text = render_prompt(model(), chat(*kept)).text
            if len(text) <= limit or i == len(messages) - 1:
                return begin - sum(m.role == "system" for m in messages[:begin])
        raise AssertionError("unreachable")

    rendered = render_prompt(model(), chat(*messages), fits=lambda text, images: len(text) <= limit)
    assert rendered.dropped == ollama_dropped()


def test_truncation_of_thousands_of_messages_renders_a_few_times() -> None:
    renders: list[int] = []
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(5000)]

    def fits(text: str, images: int) -> bool:
        renders.append(len(text))
        return len(text) <= 2000

    rendered = render_prompt(model(), chat(*history), fits=fits)
    assert len(rendered.text) <= 2000 and rendered.dropped > 4800
    assert len(renders) <= 14, "bisection: as many renders as 5000 has bits, not one per message"


def test_truncation_counts_images() -> None:
    counts: list[int] = []
    messages = [
        ChatMessage("user", "a", images=(b"1", b"2")),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c"),
    ]
    render_prompt(model(), chat(*messages), fits=lambda text, images: counts.append(images) or images == 0)
    assert counts == [2, 0]


# --- Jinja chat templates ----------------------------------------------------------------------------------


def test_gguf_chat_template_is_the_fallback() -> None:
    prompting = ModelPrompting(chat_template=QWEN25_JINJA, system="S")
    assert render_prompt(prompting, chat(HI)).text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_jinja_template_layer_with_tools_and_tool_calls() -> None:
    prompting = ModelPrompting(template=QWEN25_JINJA)
    request_ = chat(WEATHER_QUESTION, CALL, RESULT, tools=[WEATHER_TOOL])
    text = render_prompt(prompting, request_).text
    assert '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France"' in text
    assert "<tool_response>\n22 degrees celsius\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_jinja_gets_special_tokens_and_the_clock() -> None:
    prompting = ModelPrompting(chat_template=LLAMA32_JINJA, bos_token="<|begin_of_text|>")
    text = render_prompt(prompting, chat(HI, now=NOW)).text
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Today Date: 01 May 2024" in text


def test_bos_added_by_the_tokenizer_is_not_doubled() -> None:
    prompting = ModelPrompting(chat_template=GEMMA3_JINJA, bos_token="<bos>", tokenizer_adds_bos=True)
    assert (
        render_prompt(prompting, chat(HI)).text
        == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_template_errors_surface() -> None:
    with pytest.raises(TemplateError, match=r"template:1:4: function \"nope\" not defined"):
        render_prompt(model(template="{{ nope }}"), chat(HI))
    with pytest.raises(TemplateError, match="Python internals"):
        render_prompt(
            ModelPrompting(template="{% if x %}{{ ''.__class__ }}{% endif %}{{ ''.__class__ }}"), chat(HI)
        )


# --- Ollama's own parse expectations (template/template_test.go TestParse) ----------------------------------

OLLAMA_VARS = [
    pytest.param("{{ .Prompt }}", ["prompt", "response"], id="prompt"),
    pytest.param("{{ .System }} {{ .Prompt }}", ["prompt", "response", "system"], id="system-prompt"),
    pytest.param(
        "{{ .System }} {{ .Prompt }} {{ .Response }}", ["prompt", "response", "system"], id="with-response"
    ),
    pytest.param(
        "{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}",
        ["prompt", "response", "system", "tools"],
        id="tools",
    ),
    pytest.param(
        "{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}",
        ["content", "messages", "role"],
        id="messages",
    ),
    pytest.param(
        '{{ range .Messages }}{{ if eq .Role "tool" }}Tool Result: {{ .ToolName }} {{ .Content }}'
        "{{ end }}{{ end }}",
        ["content", "messages", "role", "toolname"],
        id="tool-name",
    ),
]


@pytest.mark.parametrize(("text", "expected"), OLLAMA_VARS)
def test_ollama_vars(text: str, expected: list[str]) -> None:
    assert sorted({name.lower() for name in ollama_template(text).identifiers()}) == expected


def test_the_renders_of_one_prompt_share_its_time() -> None:
    """Cutting a chat to fit renders it a dozen times; found by a red team, each had its own
    budget: a slow template made one prompt take 22 s. They share one render's time now."""
    import time as clock

    from modelyard.builder.render_limits import RenderTimedOut, render_timeout

    slow = model(template="{{ range 150000 }}{{ end }}" + DUMP)  # tens of milliseconds a render
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(2000)]
    token = render_timeout.set(0.2)
    try:
        started = clock.monotonic()
        with pytest.raises(RenderTimedOut):
            render_prompt(slow, chat(*history), fits=lambda text, images: False)
        assert clock.monotonic() - started < 1.0, "bisection's renders took a budget each"
    finally:
        render_timeout.reset(token)


def test_the_time_spent_measuring_a_fit_is_not_the_renders() -> None:
    """A security review: a chat of a few MB spent the shared render time tokenizing its candidate
    prompts (`fits`), and was refused as a template slower than its budget instead of cut to fit."""
    import time as clock

    from modelyard.builder.render_limits import render_timeout

    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(64)]
    measured: list[int] = []

    def slow_fits(text: str, images: int) -> bool:  # tokenizing megabytes in the runner
        measured.append(len(text))
        clock.sleep(0.1)
        return len(text) < 200

    token = render_timeout.set(0.2)
    try:
        rendered = render_prompt(model(), chat(*history), fits=slow_fits)
    finally:
        render_timeout.reset(token)
    assert len(measured) >= 4, "more time measuring than the renders may take"
    assert len(rendered.text) < 200 and rendered.dropped > 40


@pytest.mark.parametrize(
    ("prompting", "request_", "kind"),
    [
        pytest.param(
            ModelPrompting(), PromptRequest.generate("x", template="{{ .Prompt }}"), None, id="request"
        ),
        pytest.param(model(template="{{ .Prompt }}"), PromptRequest.generate("x"), None, id="image"),
        pytest.param(
            model(template="{{ .Prompt }}{{ .Suffix }}"),
            PromptRequest.generate("x", suffix="y"),
            None,
            id="image-suffix",
        ),
        pytest.param(ModelPrompting(chat_template=GEMMA3_JINJA), chat(HI), "jinja", id="gguf-jinja"),
        pytest.param(ModelPrompting(), PromptRequest.generate("x"), "go", id="ollama-default"),
    ],
)
def test_a_strangers_template_is_parsed_where_it_runs(
    prompting: ModelPrompting, request_: PromptRequest, kind: str | None
) -> None:
    """An image's TEMPLATE and a request's `template` reach the renderer unparsed (their language
    found there, in a worker process in the server: parsing 256 KiB takes half a second); a GGUF's
    chat template is Jinja, Ollama's default Go."""
    jobs: list[RenderJob] = []

    def recording(job: RenderJob) -> str:
        jobs.append(job)
        return run_render_job(job)

    render_prompt(prompting, request_, render=recording)
    assert [job.kind for job in jobs] == [kind]


def test_a_suffix_needs_a_template_that_reads_it() -> None:
    with pytest.raises(TemplateError, match=r"does not support insert"):
        render_prompt(ModelPrompting(template="{{ .Prompt }}"), PromptRequest.generate("x", suffix="y"))
    with pytest.raises(TemplateError, match=r"unexpected|function"):  # the parser's own words
        render_prompt(ModelPrompting(), PromptRequest.generate("x", suffix="y", template="{{ nope }}"))


def test_a_broken_templates_capabilities_are_read_once() -> None:
    """Every chat with tools asks whether the model takes them, on the server's event loop; a
    template that does not parse was parsed again each time (a second for 256 KiB)."""
    import time as clock

    from modelyard.builder.prompt import takes_suffix, takes_tools

    broken = ModelPrompting(chat_template="{{ a" + " + a" * 40_000 + " }}{% if %}")
    started = clock.perf_counter()
    assert not takes_tools(broken)
    first = clock.perf_counter() - started
    started = clock.perf_counter()
    assert not takes_tools(broken) and not takes_suffix(broken)
    again = clock.perf_counter() - started
    assert again < first / 10, (first, again)
