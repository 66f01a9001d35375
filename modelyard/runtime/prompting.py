"""From an image and a request to what a runner runs: the prompt rendered through the image's
TEMPLATE (else the GGUF's chat template), its SYSTEM and MESSAGE layers applied as Ollama applies
them, old messages dropped when the conversation outgrows the context.

A template that fails (a Jinja template reaching for Python internals included) raises
TemplateError for this one request; the runner is never asked, so it goes on serving the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from modelyard.builder.prompt import (
    ChatMessage,
    ModelPrompting,
    Prompt,
    PromptRequest,
    Render,
    render_prompt,
    run_render_job,
)
from modelyard.builder.render_limits import MAX_RENDERED_CHARS, render_max_chars
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.protocol import CompletionRequest, RunnerInfo
from modelyard.runtime.runner import Runner


def image_prompting(
    template: str | None, system: str | None, messages: Sequence[Mapping[str, Any]], chat_template: str | None
) -> ModelPrompting:
    """What an image says about prompts (its layers, and the GGUF's chat template)."""
    return ModelPrompting(
        template=template,
        system=system,
        messages=tuple(ChatMessage(str(m.get("role", "")), str(m.get("content", ""))) for m in messages),
        chat_template=chat_template,
    )


def with_tokens(prompting: ModelPrompting, info: RunnerInfo) -> ModelPrompting:
    """The special tokens a Jinja template needs come from the loaded model; our runner's tokenizer
    adds BOS itself, so the template's own leading BOS is dropped."""
    return replace(prompting, bos_token=info.bos, eos_token=info.eos, tokenizer_adds_bos=True)


class RunnerNeeded(Exception):
    """prepare(ask_runner=False) could not finish without asking the runner (a round trip)."""


@dataclass(frozen=True)
class RenderedRequest:
    completion: CompletionRequest
    dropped_messages: int  # old messages left out so that the prompt fits the context


def prepare(
    runner: Runner,
    prompting: ModelPrompting,
    request: PromptRequest,
    sampling: SamplingOptions,
    *,
    format: str | dict[str, Any] | None = None,
    truncate: bool = True,
    shift: bool = True,
    top_logprobs: int = 0,
    tokens: Sequence[int] = (),
    echo: bool = False,
    logit_bias: Sequence[tuple[int, float]] = (),
    ask_runner: bool = True,
    render: Render = run_render_job,
) -> RenderedRequest:
    """Render the prompt for `runner`'s model, fitting the conversation into one slot's context.
    `top_logprobs` > 0: the tokens come with their log-probabilities and that many candidates.
    `tokens`: the prompt as token ids, which no template touches (`request` must be raw).
    `echo`: the runner sends the prompt back first (CompletionRequest.echo). `ask_runner` False:
    raise RunnerNeeded rather than wait for the runner (to count a long prompt's tokens, or to
    detokenize a context), so that a caller on an event loop can go to a thread only then.
    `render` runs the template (builder.prompt.Render: here, or in a worker process)."""
    if tokens:
        assert request.raw, "a prompt of token ids takes no template"
        text, dropped = "", 0
    else:
        text, dropped = _rendered(runner, prompting, request, truncate, ask_runner, render)
    completion = CompletionRequest(
        text,
        sampling,
        format=format,
        truncate=truncate,
        shift=shift,
        top_logprobs=top_logprobs,
        tokens=tuple(tokens),
        echo=echo,
        logit_bias=tuple(logit_bias),
    )
    return RenderedRequest(completion, dropped)


def _rendered(
    runner: Runner,
    prompting: ModelPrompting,
    request: PromptRequest,
    truncate: bool,
    ask_runner: bool,
    render: Render,
) -> tuple[str, int]:
    """The prompt's text, and how many old messages were left out so that it fits."""
    assert runner.info is not None
    limit = runner.info.n_ctx_per_slot
    length = _text_length(request, limit)
    if not ask_runner and length + 4 >= limit:
        # Longer than the context by its characters alone: its tokens must be counted, and
        # rendering it is long work, which a caller without the runner (an event loop) passes on.
        raise RunnerNeeded
    if not ask_runner and request.template:
        # The request's own template (Ollama's `template` field): as much work as its author
        # writes (a range over a million), which must not hold up the loop every request runs on.
        raise RunnerNeeded

    def fits(text: str, _images: int) -> bool:
        # Every token stands for at least one byte of text, but for BOS/EOS and SentencePiece's
        # leading space: a prompt with fewer bytes than the context (less that margin) fits, and
        # the runner need not be asked (a round trip, on the path to the first token).
        if len(text.encode()) + 4 < limit:
            return True
        if not ask_runner:
            raise RunnerNeeded
        return len(runner.tokenize(text, add_special=True)) < limit

    if length >= limit:  # counted further only off the loop (a body's million parts: a second)
        length = _text_length(request, MAX_RENDERED_CHARS // OUTPUT_PER_INPUT_CHAR)  # enough to say
    most = render_max_chars.set(output_limit(prompting, request, length, limit))
    try:
        prompt: Prompt = render_prompt(
            with_tokens(prompting, runner.info), request, fits=fits if truncate else None, render=render
        )
    finally:
        render_max_chars.reset(most)
    text = prompt.text
    if request.context and not request.raw:  # Ollama's deprecated context: its text, then the prompt
        if not ask_runner:
            raise RunnerNeeded
        text = runner.detokenize(list(request.context)) + text
    return text, prompt.dropped


# What a prompt's template may write: this many characters per character of its input (the
# request's text, the image's own SYSTEM, MESSAGEs and template), per message (a template's
# markup around each, which does not grow with it), and per token of the context besides. Chat
# templates add a few dozen characters a message; one that makes a short request into megabytes
# makes the server tokenize, send and (as `context`) return them, a hundred times the render's
# own cost. A chat cut to fit takes a render over the limit as one that does not fit.
OUTPUT_PER_INPUT_CHAR = 8
OUTPUT_PER_MESSAGE = 256
OUTPUT_PER_CONTEXT_TOKEN = 16


def output_limit(
    prompting: ModelPrompting, request: PromptRequest, request_length: int, context_tokens: int
) -> int:
    """The characters a render of this request's prompt may write (`request_length`: its text's,
    as _text_length counts; `context_tokens`: one slot's context)."""
    own = len(prompting.system or "") + sum(len(m.content) for m in prompting.messages)
    own += len(prompting.template or "") + len(prompting.chat_template or "") + len(request.template)
    messages = len(request.messages) + len(prompting.messages) + 2  # a system, a generate's prompt
    allowed = (
        OUTPUT_PER_INPUT_CHAR * (request_length + own)
        + OUTPUT_PER_MESSAGE * messages
        + OUTPUT_PER_CONTEXT_TOKEN * context_tokens
    )
    return min(MAX_RENDERED_CHARS, allowed)


def _text_length(request: PromptRequest, enough: int) -> int:
    """The characters of a request's own text, not its template's: about what the rendered prompt
    holds (a template may leave some out; counting long only sends a request to a thread), and the
    parts of its tools, tool calls and images, which cost the render's job as much to send. Counted
    without recursion (JSON nests a thousand deep) and only up to `enough`."""
    texts = len(request.prompt) + len(request.system) + len(request.suffix)
    parts: list[Any] = [request.tools or ()]
    for m in request.messages:
        texts += len(m.content) + len(m.thinking) + sum(map(len, m.images))
        parts += [(call.name, call.arguments) for call in m.tool_calls]
    return texts + _parts(parts, enough - texts)


# What a JSON value's part stands for in a prompt, over a string's own characters: its quotes and
# separator, or a line of its own behind indentation (`tools|tojson(indent=4)`); a number, bool or
# null its digits too (a float's repr is up to 24).
PART_CHARS = 8
SCALAR_CHARS = 24


def _parts(values: list[Any], enough: int) -> int:
    """The characters JSON-like values stand for in a prompt, counted up to about `enough`."""
    count = 0
    while values and count < enough:
        value = values.pop()
        count += PART_CHARS
        if isinstance(value, str):
            count += len(value)
        elif isinstance(value, list | tuple):
            values += value
        elif isinstance(value, dict | Mapping):  # dict first: an ABC's check costs microseconds
            values += value.keys()
            values += value.values()
        else:
            count += SCALAR_CHARS
    return count
