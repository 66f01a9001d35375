"""Jinja chat templates (a GGUF's `tokenizer.chat_template`, Hugging Face style), rendered only in
Jinja's immutable sandbox.

The environment is the one transformers' `apply_chat_template` builds: `trim_blocks`,
`lstrip_blocks`, the `loopcontrols` extension and `{% generation %}` blocks, a `tojson` filter that
keeps non-ASCII and does not escape HTML (with `indent`, `separators`, `sort_keys`, `ensure_ascii`),
and the globals `raise_exception(message)` and `strftime_now(format)`. A render gets `messages`,
`tools`, `add_generation_prompt`, `bos_token`, `eos_token` and any extra variables the caller passes.

The sandbox is Jinja's ImmutableSandboxedEnvironment, made stricter: touching an unsafe attribute
(`''.__class__`, `cycler.__init__.__globals__`, a list's `append`) fails at once rather than
yielding an empty Undefined, string repetition and powers are bounded, and every failure is a
TemplateError: one that tried to leave the sandbox says so; `raise_exception('x')` gives 'x'.
Compiled templates are cached by their text. Rendering is pure: the clock comes in as `now`.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NoReturn

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelyard.errors import TemplateError

MAX_STRING_REPEAT: Final = 1_000_000  # characters one `*` may build
MAX_POWER_BITS: Final = 4096  # bits a `**` result may have

_TEMPLATE_MISTAKES: Final = (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError)
SANDBOX_MESSAGE: Final = "the chat template tried to reach Python internals, which the sandbox forbids"


class _Generation(Extension):
    """`{% generation %}…{% endgeneration %}` (transformers marks assistant tokens with it): the body
    renders as is."""

    tags = {"generation"}  # noqa: RUF012 - Jinja's Extension API is a class attribute

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing loudly: an unsafe attribute raises instead of rendering as
    an empty Undefined, and `*` and `**` cannot build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise jinja2.sandbox.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * max(times, 0) > MAX_STRING_REPEAT:
                    raise TemplateError("the chat template builds a value too large to render")
            return operator.mul(left, right)
        powers = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
        if powers and right * abs(left).bit_length() > MAX_POWER_BITS:
            raise TemplateError("the chat template computes a number too large to render")
        return operator.pow(left, right)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson: json.dumps as is, no HTML escaping, non-ASCII kept."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(str(message))


@lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


@lru_cache(maxsize=64)
def compile_chat_template(text: str) -> jinja2.Template:
    """Compile a chat template in the sandbox (cached by text); a syntax error is a TemplateError."""
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"chat template:{err.lineno}: {err.message}") from None


@lru_cache(maxsize=64)
def template_variables(text: str) -> frozenset[str]:
    """The names a Jinja template reads from its context (asked on every request with tools: a
    model's template is parsed once). Raises TemplateError when it does not parse."""
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(text)))
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"chat template:{err.lineno}: {err.message}") from None


def is_valid_jinja(text: str) -> bool:
    """Whether the text parses as a Jinja template (without compiling or caching it)."""
    try:
        _environment().parse(text)
    except jinja2.TemplateSyntaxError:
        return False
    return True


def _strftime_now(now: datetime | None) -> Callable[[str], str]:
    def strftime_now(fmt: str) -> str:
        if now is None:
            raise TemplateError("the chat template needs the current date (strftime_now); pass now=")
        return now.strftime(str(fmt))

    return strftime_now


def render_chat_template(
    text: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    now: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Render a Hugging Face chat template as transformers' apply_chat_template does.

    `messages` are dicts in the OpenAI/HF shape (`role`, `content`, `tool_calls`…); `tools` the tool
    schemas, or None when there are none; `extra` more variables (e.g. `enable_thinking`)."""
    template = compile_chat_template(text)
    variables: dict[str, Any] = {
        **(extra or {}),
        "messages": [dict(m) for m in messages],
        "tools": [dict(t) for t in tools] if tools is not None else None,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "strftime_now": _strftime_now(now),
    }
    try:
        return template.render(variables)
    except TemplateError:
        raise
    except jinja2.sandbox.SecurityError as err:
        raise TemplateError(f"{SANDBOX_MESSAGE} ({err})") from None
    except jinja2.TemplateError as err:
        line = getattr(err, "lineno", None)
        where = f"chat template:{line}: " if line else "chat template: "
        raise TemplateError(f"{where}{err.message or type(err).__name__}") from None
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        ZeroDivisionError,
        OverflowError,
    ) as err:
        # The template's own mistake (e.g. `'a' + 1`, `messages[5]`), not a bug in the renderer.
        raise TemplateError(f"chat template: {type(err).__name__}: {err}") from None
