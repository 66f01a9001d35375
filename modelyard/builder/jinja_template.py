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
A render has a budget of time and characters (render_limits): every loop iteration, macro and
call block takes a step of it (a call inserted into the template's tree), what it outputs and
joins is counted, and a value that would pass the limit (padding, `%` and format widths, `+`,
`~`, joins, replaces) is refused before it is built.
Compiled templates are cached by their text. Rendering is pure: the clock comes in as `now`.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, NoReturn

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelyard.builder.render_limits import (
    MAX_BUILT_CHARS,
    MAX_TEMPLATE_CHARS,
    RenderBudget,
    check_built,
    check_nesting,
    check_template_size,
    current_budget,
    nesting_depth,
)
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


class _BudgetedCode(CodeGenerator):
    """Jinja's code generator, whose templates join `~` concatenations through a function that
    counts what it would build: Jinja imports str_join as a module global, rebound here last.
    (Buffers, `{% set %}` blocks and macros join through `environment.concat`: _Sandbox's.)"""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        super().visit_Template(node, frame)
        self.writeline("str_join = environment.concat")


def _checked_concat(parts: Iterable[Any]) -> str:
    pieces = [part if type(part) is str else str(_sized_output(part)) for part in parts]
    check_built(sum(len(piece) for piece in pieces), "a joined value")
    return "".join(pieces)


@jinja2.pass_eval_context
def _finalize(_eval_context: Any, value: Any) -> Any:
    """_sized_output as Jinja's `finalize`. Taking the evaluation context is what keeps Jinja from
    running a `{{ … }}` of constants while it compiles (CodeGenerator folds output through a
    finalize that takes nothing): outside any render's budget, in whatever process checks the
    template (`{{ "ab "|center(2000000)|wordwrap(3) }}` took 45 s to compile)."""
    return _sized_output(value)


def _sized_output(value: Any) -> Any:
    """A value about to be turned into text (output, joined): a container whose text would pass
    the limit is refused before str() builds it (`{{ [b] * 1000000 }}` asked for terabytes)."""
    if type(value) is str or not isinstance(value, list | tuple | dict):
        return value
    total, stack, seen = 0, [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            total += len(item) + 4  # quoted, and a separator
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 8
        if total > MAX_BUILT_CHARS or seen > MAX_BUILT_CHARS:
            check_built(max(total, seen), "a value's text")
    return value


@jinja2.pass_context  # so that Jinja's optimizer cannot run it once at compile time instead
def _budget_step(_context: Any, _value: Any = None) -> str:
    budget = current_budget.get()
    if budget is not None:
        budget.step()
    return ""


@jinja2.pass_context  # so that Jinja's optimizer cannot apply it at compile time to a constant
def _budgeted(_context: Any, iterable: Any) -> Any:
    """A loop's iterable, each item taken a step of the render's budget."""
    budget = current_budget.get()
    if budget is None:
        return iterable
    if isinstance(iterable, Collection):
        return _SizedSteps(iterable, budget)  # its length known: loop.length, loop.last
    return _steps(iterable, budget)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, which carries values from one loop iteration to the next: none nested
    deeper than MAX_NESTING, or hashing it (a dict key, |unique) crashes the process."""

    def __setitem__(self, name: str, value: Any) -> None:
        check_nesting(value)
        super().__setitem__(name, value)


class _SizedSteps:
    # Underscored: the sandbox shows a template no attribute of it (the budget is not its to see).
    def __init__(self, items: Collection[Any], budget: RenderBudget) -> None:
        self._items = items
        self._budget = budget

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return _steps(self._items, self._budget)


def _steps(iterable: Iterable[Any], budget: RenderBudget) -> Iterator[Any]:
    step = budget.step
    for item in iterable:
        step()
        yield item


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing loudly: an unsafe attribute raises instead of rendering as
    an empty Undefined, and `*`, `**`, `%`, padding, joining and replacing cannot build huge values
    (render_limits: the loops and the output are counted against the render's budget)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BudgetedCode
    concat = staticmethod(_checked_concat)  # Jinja's is "".join

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # Jinja's signature
        _check_call_size(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree, with every loop iteration, macro call and call block a step of the
        render's budget: whatever it loops over (a list, a string) and however it recurses, the
        budget's clock is read. A plain loop's iterable goes through the `_budgeted` filter (a
        filter is called directly, cheaply: chat templates loop over every message); a recursive
        loop's body, a macro's and a call block's begin with the `_budget_step` filter."""
        tree = super()._parse(source, name, filename)
        for node in tree.find_all((nodes.For, nodes.Macro, nodes.CallBlock)):
            if isinstance(node, nodes.For) and not node.recursive:
                node.iter = nodes.Filter(node.iter, "_budgeted", [], [], None, None).set_lineno(node.lineno)
                continue
            # A filter, not a name: a template cannot rebind it ({% set _budget_step = dict %}).
            step = nodes.ExprStmt(nodes.Filter(nodes.Const(None), "_budget_step", [], [], None, None))
            body: list[nodes.Node] = node.body  # type: ignore[attr-defined]  # each of the three has one
            body.insert(0, step.set_lineno(node.lineno))
        return tree

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise jinja2.sandbox.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "+":  # chat templates add strings a lot: checked cheaply
            if type(left) in _SIZED and type(right) in _SIZED and len(left) + len(right) > MAX_BUILT_CHARS:
                check_built(len(left) + len(right), "a value (+)")
            return left + right
        if operator_name == "%":
            if isinstance(left, str):
                _check_format_widths(left, right)
            return operator.mod(left, right)
        if operator_name == "*":
            both_ints = isinstance(left, int) and isinstance(right, int)
            if both_ints and abs(left).bit_length() + abs(right).bit_length() > MAX_POWER_BITS:
                raise TemplateError("the chat template computes a number too large to render")
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * max(times, 0) > MAX_STRING_REPEAT:
                    raise TemplateError("the chat template builds a value too large to render")
            return operator.mul(left, right)
        powers = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
        if powers and right * abs(left).bit_length() > MAX_POWER_BITS:
            raise TemplateError("the chat template computes a number too large to render")
        return operator.pow(left, right)


_SIZED: Final = frozenset({str, list, tuple})  # what `+` may double (by exact type: a fast test)
_WIDTH_IN_PERCENT_FORMAT: Final = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?")
_WIDTH_IN_BRACE_FORMAT: Final = re.compile(r"\{[^{}]*?(\d{7,})[^{}]*\}")
_NESTED_BRACE_FIELD: Final = re.compile(r"\{[^{}]+\{")  # `{:>{}}`: a width given as an argument
_PADDING_METHODS: Final = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _check_format_widths(text: str, args: Any = ()) -> None:
    """`'%050000000d' % 1`, `'%*d' % (N, 1)`: a width or precision that pads past MAX_BUILT_CHARS,
    refused before. A `*` width comes from the arguments: then none of them may be that large."""
    star = False
    fields = 0
    for match in _WIDTH_IN_PERCENT_FORMAT.finditer(text):
        fields += 1
        for number in match.groups():
            if number == "*":
                star = True
            elif number is not None and len(number) > 6:
                check_built(int(number), "a padded value")
    if star:
        _check_int_widths(args if isinstance(args, tuple) else (args,))
    if fields > 1:  # `'%(a)s' * 200000 % {'a': b}`: every field takes a copy of its argument
        values = args.values() if isinstance(args, Mapping) else args if isinstance(args, tuple) else (args,)
        longest = max((len(v) for v in values if isinstance(v, str)), default=0)
        check_built(fields * longest, "a formatted value")


def _check_int_widths(values: Iterable[Any]) -> None:
    """No number among `values`, or one level inside them (`{1[0]}` reaches into a list), is a
    width past the limit."""
    for value in values:
        inner: Iterable[Any] = ()
        if isinstance(value, Mapping):
            inner = value.values()
        elif isinstance(value, list | tuple):
            inner = value
        for number in (value, *inner):
            if isinstance(number, int) and not isinstance(number, bool):
                check_built(abs(number), "a padded value")


def _joined_length(separator: Any, items: Any) -> int:
    """What joining `items` would build (0 when they cannot be counted before: a generator, whose
    output the render's budget then counts)."""
    if not isinstance(items, Collection):
        return 0
    return sum(len(str(item)) for item in items) + len(str(separator)) * max(len(items) - 1, 0)


def _check_call_size(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Before a str method runs: refuse one whose result would pass MAX_BUILT_CHARS."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in its own function
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in _PADDING_METHODS:
        widths = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
        tab = len(owner) * max(widths, default=8) if name == "expandtabs" else max(widths, default=0)
        check_built(tab, "a padded value")
    elif name in ("format", "format_map"):
        for width in _WIDTH_IN_BRACE_FORMAT.findall(owner):
            check_built(int(width), "a padded value")
        mapped = args[0].values() if args and isinstance(args[0], Mapping) else ()
        values = (*args, *kwargs.values(), *mapped)
        # `('{0}' * 300000).format(b)`: every field may take a copy of the longest argument.
        fields = max(owner.count("{") - 2 * owner.count("{{"), 0)
        longest = max((len(v) for v in values if isinstance(v, str)), default=0)
        check_built(fields * longest, "a formatted value")
        if _NESTED_BRACE_FIELD.search(owner):
            _check_int_widths(values)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        check_built(_replaced_length(owner, args[0], args[1]), "a replaced string")
    elif name == "join" and args:
        check_built(_joined_length(owner, args[0]), "a joined string")
    elif name == "translate":  # one character may become any string: refused
        raise TemplateError("the chat template may not use str.translate")


def _replaced_length(text: str, old: str, new: str) -> int:
    return len(text) + text.count(old) * (len(new) - len(old))


def _bounded_filter(name: str, size: Callable[..., int]) -> Callable[..., Any]:
    """Jinja's own filter `name`, refusing to run where `size(*args)` passes MAX_BUILT_CHARS."""
    original = jinja2.filters.FILTERS[name]

    def bounded(*args: Any, **kwargs: Any) -> Any:
        check_built(size(*args, **kwargs), f"a value (|{name})")
        return original(*args, **kwargs)

    if hasattr(original, "jinja_pass_arg"):  # its pass_environment / pass_eval_context marker
        bounded.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


def _text_length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _format_size(value: Any, *args: Any, **kwargs: Any) -> int:
    _check_format_widths(str(value), args or kwargs)  # `|format` is `%`, its arguments the widths
    return 0


def _indent_size(value: Any, width: Any = 4, *_args: Any, **_kwargs: Any) -> int:
    per_line = _int(width, 0) or _text_length(width)  # a number of spaces, or a string
    return (str(value).count("\n") + 1) * per_line


def _join_size(_ctx: Any, value: Any, d: Any = "", *_args: Any, **_kwargs: Any) -> int:
    return _joined_length(d, value)  # with `attribute`, an item's text bounds what is joined of it


def _sum_size(_env: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> int:
    """`|sum(start=[])` concatenates: what it would build (numbers: nothing to size)."""
    if isinstance(start, str | list | tuple) and isinstance(iterable, Collection):
        return len(start) + sum(len(item) for item in iterable if isinstance(item, str | list | tuple))
    return 0


# Jinja's filters that can build a large value from small arguments, with what they would build.
_BOUNDED_FILTERS: Final[dict[str, Callable[..., int]]] = {
    "center": lambda _value, width=80, *_a, **_k: _int(width, 80),
    "indent": _indent_size,
    "replace": lambda _ctx, value, old, new, *_a, **_k: _replaced_length(str(value), str(old), str(new)),
    "join": _join_size,
    "format": _format_size,
    "slice": lambda _ctx, _value, slices, *_a, **_k: _int(slices, 0),  # lists made, one by one
    "batch": lambda _value, linecount, *_a, **_k: _int(linecount, 0),  # a fill of this many
    "sum": _sum_size,
}


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' tojson: json.dumps as is, no HTML escaping, non-ASCII kept. With an indent,
    each of the text's parts goes on a line of its own behind that much indentation per level: its
    size is refused before it is built (`|tojson(indent=2000000)` on a list of a hundred is 200 M)."""
    if indent is not None and not isinstance(indent, bool):
        width = len(indent) if isinstance(indent, str) else _int(indent, 0)
        check_built(width, "an indentation")
        compact = json.dumps(value, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)
        # A line per item and per container's end at most, each indented at most as deep as the
        # value nests: a bound a little over the real size (a hundred tools at indent 4: 1.3x).
        lines = compact.count(",") + 2 * (compact.count("[") + compact.count("{")) + 1
        check_built(len(compact) + lines * (1 + width * nesting_depth(value)), "a JSON text")
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _cycler(*items: Any) -> jinja2.utils.Cycler:
    """Jinja's cycler(), whose RuntimeError for no items is the template's mistake."""
    if not items:
        raise TemplateError("chat template: cycler() needs at least one item")
    return jinja2.utils.Cycler(*items)


@jinja2.pass_environment
def _truncate(environment: Any, s: Any, length: Any = 255, *args: Any, **kwargs: Any) -> str:
    """Jinja's |truncate, whose AssertionError for a length shorter than its end is the template's
    mistake."""
    end = kwargs.get("end", args[1] if len(args) > 1 else "...")
    if isinstance(length, int) and length < len(str(end)):
        raise TemplateError(f"chat template: truncate to {length}, shorter than its end {end!r}")
    return jinja2.filters.do_truncate(environment, s, length, *args, **kwargs)


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(str(message))


@lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        # No work at compile time: Jinja's optimizer calls filters on constants while it compiles,
        # outside any render's budget, in whatever process checks the template (the server's).
        optimized=False,
        extensions=[loopcontrols, _Generation],
        finalize=_finalize,  # every `{{ value }}`, before its str()
    )
    env.filters["tojson"] = _tojson
    for name, size in _BOUNDED_FILTERS.items():
        env.filters[name] = _bounded_filter(name, size)
    env.globals["raise_exception"] = _raise_exception
    env.filters["_budgeted"] = _budgeted
    env.filters["_budget_step"] = _budget_step
    env.globals["namespace"] = _Namespace
    env.globals["cycler"] = _cycler
    env.filters["truncate"] = _truncate
    del env.globals["lipsum"]  # lorem ipsum of any length, in one call no budget sees
    del env.filters["pprint"]  # pformat's output is not sized before it is built; no chat template uses it
    return env


@lru_cache(maxsize=32)  # a request may bring its own: each compiled one is held
def compile_chat_template(text: str) -> jinja2.Template:
    """Compile a chat template in the sandbox (cached by text); a syntax error is a TemplateError."""
    check_template_size(text)
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"chat template:{err.lineno}: {err.message}") from None
    except (RecursionError, SyntaxError, MemoryError) as err:  # nested past what Python compiles
        raise TemplateError(f"chat template: too deeply nested to compile ({type(err).__name__})") from None


@lru_cache(maxsize=64)
def template_variables(text: str) -> frozenset[str]:
    """The names a Jinja template reads from its context (asked on every request with tools: a
    model's template is parsed once). Raises TemplateError when it does not parse."""
    check_template_size(text)
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(text)))
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"chat template:{err.lineno}: {err.message}") from None
    except (RecursionError, MemoryError) as err:
        raise TemplateError(f"chat template: too deeply nested to parse ({type(err).__name__})") from None


def is_valid_jinja(text: str) -> bool:
    """Whether the text parses as a Jinja template (without compiling or caching it)."""
    if len(text) > MAX_TEMPLATE_CHARS:
        return False
    try:
        _environment().parse(text)
    except (jinja2.TemplateSyntaxError, RecursionError, MemoryError):
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
    budget = RenderBudget()
    token = current_budget.set(budget)
    try:
        out = []
        chars, most = 0, budget.max_chars
        for chunk in template.generate(variables):  # counted inline: a chunk per output, many
            chars += len(chunk)
            if chars > most:
                budget.wrote(chars)  # over: raises
            out.append(chunk)
        return "".join(out)
    except TemplateError:
        raise
    except jinja2.sandbox.SecurityError as err:
        raise TemplateError(f"{SANDBOX_MESSAGE} ({err})") from None
    except jinja2.TemplateError as err:
        line = getattr(err, "lineno", None)
        where = f"chat template:{line}: " if line else "chat template: "
        raise TemplateError(f"{where}{err.message or type(err).__name__}") from None
    except RecursionError:
        raise TemplateError("chat template: it recurses too deeply to render") from None
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
    except MemoryError:
        raise TemplateError("chat template: it builds values too large to render") from None
    finally:
        current_budget.reset(token)
