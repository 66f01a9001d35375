"""From a request to the prompt text, as Ollama builds it (server/routes.go, server/prompt.go,
template/template.go).

`render_prompt(model, request)` is the one entry point for the runner and the HTTP server:

- the template is the image's TEMPLATE (Go, or Jinja when the text is Jinja: `template_kind`), else
  the GGUF's `tokenizer.chat_template` (Jinja), else Ollama's default `{{ .Prompt }}`;
- chat: the image's MESSAGE layers go before the request's messages, and its SYSTEM goes first as a
  system message unless the request's first message is a system message;
- generate: the request's `system` (else the image's SYSTEM), the MESSAGE layers, then the prompt as
  a user message, through the same path as chat (no tools); a request `template` is executed
  directly on those messages; a `suffix` executes the template on Prompt and Suffix (fill in the
  middle); `raw` sends the prompt as it is, no template, no system;
- images: each becomes `[img-N]` in its message (replacing a `[img]` the text has, else in front),
  numbered in order, as Ollama does; whether the model can see them is the caller's business;
- `fits` (when given) truncates old messages as Ollama does: drop from the front until the prompt
  fits, keep system messages and the last message, never orphan tool results from their call.

Go templates run as Ollama's template.Execute does (`execute_ollama`): consecutive messages of one
role merged, system messages collected into `.System`, Ollama's values (`.Messages` of structs with
Role, Content, Thinking, Images, ToolCalls, ToolName, ToolCallID; `.Tools` printing as JSON; Think,
ThinkLevel, IsThinkSet). A template without `.Messages` is "legacy": it runs once per turn on
`.System`/`.Prompt`/`.Response`, and the last turn is cut after `{{ .Response }}`.

Not done here: Ollama's model-specific renderers and `<think>` filtering for some model families.
The deprecated `context` of generate only drops the MESSAGE layers here (as Ollama does); its text,
which needs the model's vocabulary, goes before the prompt in runtime/prompting.py. Everything is
pure: the clock comes in as `now`. Each execution of a template is a `RenderJob` of plain values,
which `render_prompt`'s caller may have run elsewhere (the server: in a worker process).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal

from modelyard.builder.gotemplate import (
    JSONList,
    JSONMap,
    Slice,
    Struct,
    StructType,
    Template,
    parse,
)
from modelyard.builder.jinja_template import (
    compile_chat_template,
    is_valid_jinja,
    render_chat_template,
    template_variables,
)
from modelyard.builder.render_limits import RenderBudget, RenderTooLong, prompt_deadline, render_timeout
from modelyard.errors import TemplateError

DEFAULT_TEMPLATE: Final = "{{ .Prompt }}"

TemplateKind = Literal["go", "jinja"]

# --- typed inputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made: Ollama's api.ToolCall."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    index: int = 0


@dataclass(frozen=True)
class ChatMessage:
    """One message, as Ollama's API takes it (images are the raw bytes)."""

    role: str
    content: str = ""
    images: tuple[bytes, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    thinking: str = ""
    tool_name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True)
class PromptRequest:
    """A chat request (`messages`, `tools`) or a generate request (`prompt`, `system`, `suffix`,
    `template`, `raw`, `images`). Build one with `PromptRequest.chat(...)` or `.generate(...)`."""

    kind: Literal["chat", "generate"]
    messages: tuple[ChatMessage, ...] = ()
    tools: tuple[Mapping[str, Any], ...] | None = None  # chat; None when the request sent none
    prompt: str = ""
    system: str = ""
    suffix: str = ""
    template: str = ""
    raw: bool = False
    images: tuple[bytes, ...] = ()
    think: bool | str | None = None  # None: not set; a string is a thinking level ("high")
    now: datetime | None = None  # for templates that print today's date
    # generate: the tokens of an earlier prompt and answer (Ollama's deprecated `context`), whose
    # text goes before this prompt; the image's MESSAGE layers are then left out, as Ollama does.
    context: tuple[int, ...] = ()

    @classmethod
    def chat(
        cls,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        think: bool | str | None = None,
        now: datetime | None = None,
    ) -> PromptRequest:
        return cls("chat", tuple(messages), tuple(tools) if tools is not None else None, think=think, now=now)

    @classmethod
    def generate(
        cls,
        prompt: str,
        *,
        system: str = "",
        suffix: str = "",
        template: str = "",
        raw: bool = False,
        images: Sequence[bytes] = (),
        think: bool | str | None = None,
        now: datetime | None = None,
        context: Sequence[int] = (),
    ) -> PromptRequest:
        return cls(
            "generate",
            prompt=prompt,
            system=system,
            suffix=suffix,
            template=template,
            raw=raw,
            images=tuple(images),
            think=think,
            now=now,
            context=tuple(context),
        )


@dataclass(frozen=True)
class ModelPrompting:
    """What an image says about prompts: its TEMPLATE, SYSTEM and MESSAGE layers, and from its GGUF
    the chat template and special tokens (for Jinja). `tokenizer_adds_bos`: the runner's tokenizer
    adds BOS itself, so a Jinja template's leading `bos_token` is dropped (no double BOS)."""

    template: str | None = None
    system: str | None = None
    messages: tuple[ChatMessage, ...] = ()
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    tokenizer_adds_bos: bool = False


@dataclass(frozen=True)
class Prompt:
    """The text to tokenize, the images its `[img-N]` tags stand for (in order), and how many of the
    request's messages were dropped to make it fit."""

    text: str
    images: tuple[bytes, ...] = ()
    dropped: int = 0


Fits = Callable[[str, int], bool]  # (prompt, number of images) -> whether it fits the context


# --- which language a template is in ----------------------------------------------------------------------

_JINJA_TAG = re.compile(r"\{%-?\s*[a-zA-Z]|\{#")
_JINJA_VARIABLES = re.compile(
    r"\{\{[^}]*\b(messages|bos_token|eos_token|add_generation_prompt|tools|raise_exception)\b"
)


@lru_cache(maxsize=64)  # a prompt asks it of its image's template at every render
def template_kind(text: str) -> TemplateKind:
    """ "go" for a Go text/template (Ollama's TEMPLATE), "jinja" for a Jinja chat template.

    A text with Jinja statements or comments (`{% … %}`, `{# … #}`) is Jinja when Jinja parses it, or
    when Go has no actions in it to offer instead (so a broken Jinja template reports its own error).
    Any other text is Go when Go parses it (plain text and `{{ .X }}` are Go), else Jinja when Jinja
    parses it and it uses the chat-template variables (`{{ bos_token }}`, `{{ messages[0].content }}`),
    else Go, whose parser then explains (`{{ nope }}` is a Go template calling an unknown function)."""
    try:
        parse(text)
        go_ok = True
    except TemplateError:
        go_ok = False
    if _JINJA_TAG.search(text):
        if is_valid_jinja(text) or not (go_ok and "{{" in text):
            return "jinja"
        return "go"
    if go_ok:
        return "go"
    return "jinja" if _JINJA_VARIABLES.search(text) and is_valid_jinja(text) else "go"


# --- Ollama's values for Go templates ---------------------------------------------------------------------

MESSAGE: Final = StructType(
    "*template.templateMessage",
    tuple(
        (name, name)
        for name in ("Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName", "ToolCallID")
    ),
)
TOOL_CALL: Final = StructType("template.templateToolCall", (("ID", "id,omitempty"), ("Function", "function")))
TOOL_CALL_FUNCTION: Final = StructType(
    "template.templateToolCallFunction", (("Index", "index"), ("Name", "name"), ("Arguments", "arguments"))
)
TOOL: Final = StructType(
    "api.Tool", (("Type", "type"), ("Items", "items,omitempty"), ("Function", "function")), stringer=True
)
TOOL_FUNCTION: Final = StructType(
    "api.ToolFunction",
    (("Name", "name"), ("Description", "description,omitempty"), ("Parameters", "parameters")),
    stringer=True,
)
TOOL_PARAMETERS: Final = StructType(
    "api.ToolFunctionParameters",
    (
        ("Type", "type"),
        ("Defs", "$defs,omitempty"),
        ("Items", "items,omitempty"),
        ("Required", "required,omitempty"),
        ("Properties", "properties"),
    ),
    stringer=True,
)
TOOL_PROPERTY: Final = StructType(
    "api.ToolProperty",
    (
        ("AnyOf", "anyOf,omitempty"),
        ("Type", "type,omitempty"),
        ("Items", "items,omitempty"),
        ("Description", "description,omitempty"),
        ("Enum", "enum,omitempty"),
        ("Properties", "properties,omitempty"),
        ("Required", "required,omitempty"),
    ),
)

_TYPESCRIPT: Final = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


class PropertyType(Slice):
    """api.PropertyType: a JSON-schema type, one name or several; prints `string` or `[a b]`."""

    def go_string(self) -> str:
        if not self:
            return ""
        if len(self) == 1:
            return str(self[0])
        return "[" + " ".join(str(t) for t in self) + "]"

    def go_json(self) -> Any:
        return self[0] if len(self) == 1 else list(self)


class ToolProperty(Struct):
    """api.ToolProperty, which `toTypeScriptType` knows."""

    def typescript_type(self) -> str:
        any_of = self.get("AnyOf")
        if any_of:
            return " | ".join(p.typescript_type() for p in any_of)
        types = self.get("Type")
        if not types:
            return "any"
        return " | ".join(_TYPESCRIPT.get(t, "any") for t in types)


def _slice(items: Any, convert: Callable[[Any], Any] = lambda v: v) -> Slice:
    if not isinstance(items, list | tuple) or not items:
        return Slice(nil=True)
    return Slice(convert(v) for v in items)


def _properties(raw: Any) -> JSONMap:
    if not isinstance(raw, Mapping):
        return JSONMap(nil=True)
    return JSONMap({str(k): _tool_property(v) for k, v in raw.items()})


def _property_type(raw: Any) -> PropertyType:
    if isinstance(raw, str):
        return PropertyType([raw])
    if isinstance(raw, list | tuple) and raw:
        return PropertyType(str(t) for t in raw)
    return PropertyType(nil=True)


def _tool_property(raw: Any) -> ToolProperty:
    raw = raw if isinstance(raw, Mapping) else {}
    values = (
        _slice(raw.get("anyOf"), _tool_property),
        _property_type(raw.get("type")),
        raw.get("items"),
        str(raw.get("description") or ""),
        _slice(raw.get("enum")),
        _properties(raw.get("properties")) if raw.get("properties") is not None else JSONMap(nil=True),
        _slice(raw.get("required"), str),
    )
    return ToolProperty(TOOL_PROPERTY, values)


def tool_value(raw: Mapping[str, Any]) -> Struct:
    """A tool as the API takes it (`{"type": "function", "function": {...}}`), as Ollama's Go value:
    fields it does not know are dropped, its JSON comes out in Go's field order."""
    function = raw.get("function") if isinstance(raw.get("function"), Mapping) else {}
    assert isinstance(function, Mapping)
    params = function.get("parameters") if isinstance(function.get("parameters"), Mapping) else {}
    assert isinstance(params, Mapping)
    return TOOL(
        Type=str(raw.get("type") or ""),
        Items=raw.get("items"),
        Function=TOOL_FUNCTION(
            Name=str(function.get("name") or ""),
            Description=str(function.get("description") or ""),
            Parameters=TOOL_PARAMETERS(
                Type=str(params.get("type") or ""),
                Defs=params.get("$defs"),
                Items=params.get("items"),
                Required=_slice(params.get("required"), str),
                Properties=_properties(params.get("properties")),
            ),
        ),
    )


def message_value(message: ChatMessage) -> Struct:
    return MESSAGE(
        Role=message.role,
        Content=message.content,
        Thinking=message.thinking,
        Images=_slice(message.images),
        ToolCalls=_slice(
            message.tool_calls,
            lambda call: TOOL_CALL(
                ID=call.id,
                Function=TOOL_CALL_FUNCTION(
                    Index=call.index, Name=call.name, Arguments=JSONMap(call.arguments)
                ),
            ),
        ),
        ToolName=message.tool_name,
        ToolCallID=message.tool_call_id,
    )


@dataclass(frozen=True)
class TemplateValues:
    """Ollama's template.Values: what one execution of a Go template gets. `tools` None is the nil
    slice (chat without tools), () an empty one (generate)."""

    messages: tuple[ChatMessage, ...] = ()
    tools: tuple[Mapping[str, Any], ...] | None = None
    prompt: str = ""
    suffix: str = ""
    think: bool | str | None = None
    now: datetime | None = None

    def think_values(self) -> dict[str, Any]:
        """Think, ThinkLevel and IsThinkSet from api.ThinkValue: true means level "medium"; any
        level turns thinking on."""
        think = self.think
        if isinstance(think, str):  # a level asks for thinking, whichever (Ollama's ThinkValue.Bool)
            return {"Think": bool(think), "ThinkLevel": think, "IsThinkSet": True}
        return {
            "Think": bool(think),
            "ThinkLevel": "medium" if think else "",
            "IsThinkSet": think is not None,
        }


def collate(messages: Sequence[ChatMessage]) -> tuple[str, list[ChatMessage]]:
    """Ollama's collate: every system message's content joined by blank lines, and the messages with
    consecutive ones of a role merged (contents joined by a blank line; tool messages stay apart)."""
    system = [m.content for m in messages if m.role == "system"]
    merged: list[ChatMessage] = []
    for m in messages:
        if merged and merged[-1].role == m.role and m.role != "tool":
            merged[-1] = replace(merged[-1], content=merged[-1].content + "\n\n" + m.content)
        else:
            merged.append(m)
    return "\n\n".join(system), merged


def check_template(text: str) -> None:
    """Parse a TEMPLATE as a request will use it (Go or Jinja, as `template_kind` decides), so that a
    broken one fails the build that brings it and not every request to the model later.
    Raises TemplateError with the parser's message."""
    if template_kind(text) == "go":
        ollama_template(text)
    else:
        compile_chat_template(text)


def ollama_template(text: str) -> Template:
    """A Go template as Ollama's template.Parse leaves it: `{{ .Response }}` appended when the
    template mentions neither .Messages nor .Response."""
    template = parse(text)
    names = {name.lower() for name in template.identifiers()}
    if "messages" not in names and "response" not in names:
        return template.with_field_appended("Response")
    return template


def uses_messages(template: Template) -> bool:
    return any(name.lower() == "messages" for name in template.identifiers())


def execute_ollama(template: Template | str, values: TemplateValues) -> str:
    """Ollama's template.Execute: messages templates get the collated messages, legacy templates run
    once per user/assistant turn on .System, .Prompt and .Response."""
    tmpl = ollama_template(template) if isinstance(template, str) else template
    think = values.think_values()
    system, messages = collate(values.messages)
    if values.prompt and values.suffix:
        data = {"Prompt": values.prompt, "Suffix": values.suffix, "Response": "", **think}
        return tmpl.execute(data, now=values.now)
    if uses_messages(tmpl):
        tools = values.tools
        data = {
            "System": system,
            "Messages": [message_value(m) for m in messages],
            "Tools": JSONList((tool_value(t) for t in tools or ()), nil=tools is None),
            "Response": "",
            **think,
        }
        return tmpl.execute(data, now=values.now)
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}
    budget = RenderBudget()  # one for the whole prompt, however many turns run the template

    def run(t: Template) -> None:
        out.append(t.execute({**turn, **think}, now=values.now, budget=budget))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if m.role == "system":
            if turn["Prompt"] or turn["Response"]:
                run(tmpl)
            turn["System"] = m.content
        elif m.role == "user":
            if turn["Response"]:
                run(tmpl)
            turn["Prompt"] = m.content
        elif m.role == "assistant":
            turn["Response"] = m.content
    run(tmpl.cut_after_field("Response"))
    return "".join(out)


# --- Jinja --------------------------------------------------------------------------------------------------


def _hf_message(message: ChatMessage) -> dict[str, Any]:
    """A message in the shape Hugging Face chat templates expect."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "type": "function",
                **({"id": call.id} if call.id else {}),
                "function": {"name": call.name, "arguments": dict(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.thinking:
        out["reasoning_content"] = message.thinking
    if message.tool_name:
        out["name"] = message.tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def render_jinja(
    text: str,
    messages: Sequence[ChatMessage],
    model: ModelPrompting,
    *,
    tools: Sequence[Mapping[str, Any]] | None,
    think: bool | str | None,
    now: datetime | None,
) -> str:
    extra: dict[str, Any] = {}
    if think is not None:
        extra["enable_thinking"] = bool(think)
        if isinstance(think, str):
            extra["reasoning_effort"] = think
    rendered = render_chat_template(
        text,
        [_hf_message(m) for m in messages],
        tools=list(tools) if tools else None,
        add_generation_prompt=True,
        bos_token=model.bos_token,
        eos_token=model.eos_token,
        now=now,
        extra=extra,
    )
    if model.tokenizer_adds_bos and model.bos_token and rendered.startswith(model.bos_token):
        rendered = rendered[len(model.bos_token) :]
    return rendered


# --- one render, as plain data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderJob:
    """One execution of a template: the template and everything it reads, as plain values, so that
    another process may run it (runtime/template_workers.py runs each in a worker process whose
    memory and time are bounded). `kind` None: the template's language is found where it runs (a
    stranger's template is parsed there, not here). `values.suffix` set: fill in the middle (Go)."""

    kind: TemplateKind | None
    text: str
    values: TemplateValues
    bos_token: str = ""
    eos_token: str = ""
    tokenizer_adds_bos: bool = False


def run_render_job(job: RenderJob) -> str:
    """Run one render here, in this process, under the render's budget (render_limits). A lone
    surrogate (JSON's "\\ud800", which Python's decoder keeps) comes out as U+FFFD, as Go's decoder
    makes it on Ollama's way in: a prompt is UTF-8 from here on."""
    values = job.values
    kind = job.kind or template_kind(job.text)
    if values.suffix and not _reads_suffix(kind, job.text):  # a template that does not parse says why
        raise TemplateError("this model's template does not support insert (it has no .Suffix)")
    if kind == "jinja":
        tokens = ModelPrompting(
            bos_token=job.bos_token, eos_token=job.eos_token, tokenizer_adds_bos=job.tokenizer_adds_bos
        )
        text = render_jinja(
            job.text, values.messages, tokens, tools=values.tools, think=values.think, now=values.now
        )
    else:
        text = execute_ollama(ollama_template(job.text), values)
    return without_lone_surrogates(text)


_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """`text` with U+FFFD for each lone surrogate (JSON's "\\ud800" decodes to one in Python; Go's
    decoder makes it U+FFFD): a prompt goes on as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode()  # a few microseconds for a long prompt, where the search takes tens
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


# What runs a RenderJob: run_render_job, or a worker process that does.
Render = Callable[[RenderJob], str]


# --- the entry point -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Renderer:
    """One template, whichever its language, rendering a list of messages."""

    kind: TemplateKind | None  # None: found where the template runs (RenderJob)
    text: str
    model: ModelPrompting
    run: Render

    def job(self, values: TemplateValues) -> RenderJob:
        model = self.model
        return RenderJob(
            self.kind, self.text, values, model.bos_token, model.eos_token, model.tokenizer_adds_bos
        )

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]] | None,
        request: PromptRequest,
    ) -> str:
        values = TemplateValues(
            tuple(messages), None if tools is None else tuple(tools), think=request.think, now=request.now
        )
        return self.run(self.job(values))


def _renderer(model: ModelPrompting, override: str = "", run: Render = run_render_job) -> _Renderer:
    if override:
        return _Renderer(None, override, model, run)
    if model.template is not None:
        return _Renderer(None, model.template, model, run)
    if model.chat_template:
        return _Renderer("jinja", model.chat_template, model, run)
    return _Renderer("go", DEFAULT_TEMPLATE, model, run)


def chat_template_text(model: ModelPrompting) -> str:
    """The template a chat request renders through (the image's, the GGUF's, or Ollama's default)."""
    return _renderer(model).text


def takes_tools(model: ModelPrompting) -> bool:
    """Whether the model's chat template renders `tools` (Ollama's "tools" capability): a Go
    template that reads .Tools, a Jinja template that reads `tools`. Mentioning the word is not it."""
    renderer = _renderer(model)
    return _capabilities(renderer.text, renderer.kind)[0]


def takes_suffix(model: ModelPrompting) -> bool:
    """Whether the model's template renders a suffix (Ollama's "insert" capability: fill in the
    middle): a Go template that reads .Suffix."""
    renderer = _renderer(model)
    return _capabilities(renderer.text, renderer.kind)[1]


@lru_cache(maxsize=64)
def _capabilities(text: str, kind: TemplateKind | None) -> tuple[bool, bool]:
    """(takes tools, takes a suffix), kept for a template that does not parse too: every chat with
    tools asks, on the server's event loop, and parsing 256 KiB takes a second."""
    kind = kind or template_kind(text)
    try:
        if kind == "go":
            names = {name.lower() for name in parse(text).identifiers()}
            return "tools" in names, "suffix" in names
        return "tools" in template_variables(text), False
    except TemplateError:
        return False, False


def _reads_suffix(kind: TemplateKind, text: str) -> bool:
    """Raises TemplateError for a Go template that does not parse."""
    return kind == "go" and "suffix" in {n.lower() for n in parse(text).identifiers()}


def _tool_block_start(messages: Sequence[ChatMessage], i: int) -> int:
    """Where the run of tool results ending at i starts, including the assistant call before it."""
    if i <= 0 or i >= len(messages) or messages[i].role != "tool":
        return i
    start = i
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    before = start - 1
    if before >= 0 and messages[before].role == "assistant" and messages[before].tool_calls:
        return before
    return i


def _tag_images(messages: Sequence[ChatMessage]) -> tuple[list[ChatMessage], tuple[bytes, ...]]:
    images: list[bytes] = []
    tagged: list[ChatMessage] = []
    for m in messages:
        prefix = ""
        content = m.content
        for image in m.images:
            tag = f"[img-{len(images)}]"
            images.append(image)
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        tagged.append(replace(m, content=prefix + content) if m.images else m)
    return tagged, tuple(images)


def _chat_prompt(
    renderer: _Renderer,
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]] | None,
    request: PromptRequest,
    fits: Fits | None,
) -> Prompt:
    """Ollama's chatPrompt: truncate from the front until the prompt fits (keeping system messages and
    the last message), tag images, render.

    Ollama tries dropping 0, 1, 2… messages in turn, a render each: thousands of messages took
    minutes. Fewer messages never render longer, so the fewest to drop is found by bisection, in
    as many renders as the count has bits, with Ollama's answer."""
    start = 0
    system: list[ChatMessage] = []
    if fits is not None:
        last = len(messages) - 1
        tried: dict[int, tuple[bool, int, list[ChatMessage]]] = {}

        def attempt(i: int) -> tuple[bool, int, list[ChatMessage]]:
            """Whether the prompt fits from message i on (its tool block whole); where it begins."""
            if i not in tried:
                begin = _tool_block_start(messages, i)
                kept_system = [m for m in messages[:begin] if m.role == "system"]
                try:
                    text = renderer.render([*kept_system, *messages[begin:]], tools, request)
                    measuring = time.monotonic()
                    fitting = fits(text, sum(len(m.images) for m in messages[begin:])) or i == last
                    _not_rendering(time.monotonic() - measuring)
                except RenderTooLong as too_long:  # longer than a prompt may be: it does not fit
                    if i == last:
                        raise RenderTooLong(
                            f"the prompt is too long for the context even with only its last message "
                            f"({too_long})"
                        ) from None
                    fitting = False
                tried[i] = (fitting, begin, kept_system)
            return tried[i]

        low, high = 0, max(last, 0)  # from `high` on it fits (the last message is always kept)
        if not attempt(0)[0]:
            low = 1
            while low < high:
                middle = (low + high) // 2
                if attempt(middle)[0]:
                    high = middle
                else:
                    low = middle + 1
        _, start, system = attempt(low)
    tagged, images = _tag_images(messages[start:])
    text = renderer.render([*system, *tagged], tools, request)
    return Prompt(text, images, start - len(system) if start else 0)


def _not_rendering(seconds: float) -> None:
    """Time the prompt's renders do not share: tokenizing a candidate to see whether it fits (a
    security review: a prompt of a few MB, tokenized in seconds, was refused as a template taking
    longer than 2 s to render, instead of being cut to fit)."""
    deadline = prompt_deadline.get()
    if deadline is not None:
        prompt_deadline.set(deadline + seconds)


def render_prompt(
    model: ModelPrompting,
    request: PromptRequest,
    *,
    fits: Fits | None = None,
    render: Render = run_render_job,
) -> Prompt:
    """The prompt Ollama would send the model for this request (see the module docstring).

    `fits(text, images)` says whether a candidate prompt fits the context; without it nothing is
    truncated. `render` runs each execution of the template (here, by default; the server's worker
    processes). Template failures raise TemplateError. However many times the template renders (a
    chat cut to fit), they share one render's time (render_limits.prompt_deadline)."""
    if prompt_deadline.get() is not None:
        return _render_prompt(model, request, fits, render)
    shared = prompt_deadline.set(time.monotonic() + render_timeout.get())
    try:
        return _render_prompt(model, request, fits, render)
    finally:
        prompt_deadline.reset(shared)


def _render_prompt(
    model: ModelPrompting, request: PromptRequest, fits: Fits | None, render: Render
) -> Prompt:
    if request.kind == "chat":
        if not request.messages:
            return Prompt("")  # Ollama only loads the model
        messages = [*model.messages, *request.messages]
        if request.messages[0].role != "system" and model.system:
            messages.insert(0, ChatMessage("system", model.system))
        return _chat_prompt(_renderer(model, run=render), messages, request.tools, request, fits)

    if request.raw:
        return Prompt(request.prompt, request.images)
    renderer = _renderer(model, request.template, render)
    if request.suffix:  # the template must read .Suffix: checked where it runs (run_render_job)
        values = TemplateValues(
            prompt=request.prompt, suffix=request.suffix, think=request.think, now=request.now
        )
        return Prompt(render(renderer.job(values)), request.images)
    generate: list[ChatMessage] = []
    system = request.system or model.system
    if system:
        generate.append(ChatMessage("system", system))
    if not request.context:
        generate.extend(model.messages)
    generate.append(ChatMessage("user", request.prompt, images=request.images))
    if request.template:
        return Prompt(renderer.render(generate, None, request), request.images)
    # []api.Tool{}, as Ollama's generate passes: .Tools prints [], not null.
    return _chat_prompt(renderer, generate, (), request, fits)
