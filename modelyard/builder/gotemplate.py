"""Go's `text/template`, in Python: the language of every Ollama TEMPLATE.

`parse(text)` gives a `Template` (pure, immutable, cached by text); `Template.execute(data)` renders
it. The output is the one Go gives, byte for byte, for the language Ollama templates use and the rest
of `text/template`: actions and pipelines, `{{-`/`-}}` trimming, comments, `if`/`else if`/`else`,
`range` (lists, maps in key order, `$i, $v :=`, `else`, `break`, `continue`), `with`, variables
(`$`, `:=`, `=`), parenthesised pipelines, field chains, `define`/`template`/`block`, every literal,
the builtins (`and or not eq ne lt le gt ge len index slice print printf println html js urlquery
call`) and Ollama's funcs (`json`, `currentDate`, `yesterdayDate`, `toTypeScriptType`). The tests hold
it to Go itself (tests/go_oracle).

Data is plain Python: dicts are Go `map[string]any` (a missing key is the zero value, as with Ollama's
`missingkey=zero`), lists are `[]any`, str, int (Go int), float (float64), bool, None (a nil
interface). Values of Ollama's own Go types are `Struct`s (a missing field is an error, as in Go)
and `JSONList`/`JSONMap` (types whose `String()` prints their JSON, as Ollama's Tools and tool-call
arguments). An object with a `go_string()` method prints through it (Go's fmt.Stringer); one with
`go_json()` marshals what that returns (json.Marshaler).

The semantics follow Go's own source (text/template/{parse,exec,funcs}.go, fmt, encoding/json):
Go's truth (empty is false, structs are true), printing (`<no value>`, `<nil>`, `[a b]`,
`map[a:1]`, floats as `%g` with the shortest digits: 1e+06, 0.1), comparisons (int with float is an
error, as in Go), json (compact, keys sorted, `<>&` as \\u003c…). Where Go changed after 1.19 this
follows Ollama's Go: `range` over an int (1.22), `else with` (1.23), and `\\b`/`\\f` in json (1.22).

Go's reflection shows through in places, and is mirrored: a map value or an element of `[]any` is
still inside an interface{}, so `.Missing.X` is a nil-pointer error (not `<no value>`) and `slice`
refuses such a value as an index; exec errors name Go's types (`int`, `map[string]interface {}`).

Not supported: complex numbers, method calls on values (beyond the String() hooks above), `%[n]`
argument indexes and `*` widths in printf, channels. Templates may recurse through `template` only
`MAX_TEMPLATE_DEPTH` deep (Go allows 100000).

Every failure is a TemplateError; its message starts `template:LINE:COL:` (1-based, where Go counts
columns from 0) and says what Go would.

A template comes from strangers: a render runs under a budget (render_limits: time, counted at
every range iteration, template call and function call; characters output; a function's text
result sized, before it runs where its arguments allow), and a template's own text is bounded.
"""

from __future__ import annotations

import base64
import math
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal, NoReturn, TypeAlias

from modelyard.builder.render_limits import RenderBudget, check_built, check_template_size
from modelyard.errors import TemplateError

MAX_TEMPLATE_DEPTH: Final = 100
OLLAMA_FUNCS: Final = frozenset({"json", "currentDate", "yesterdayDate", "toTypeScriptType"})
BUILTIN_FUNCS: Final = frozenset(
    {
        "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf", "println",
        "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
    }
)  # fmt: skip


# --- values that stand for Go's ---------------------------------------------------------------------------


class _NoValue:
    """Go's invalid reflect.Value: what a missing field yields; printed `<no value>`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Final = _NoValue()


@dataclass(frozen=True)
class StructType:
    """A Go struct type: its name (for messages), its fields in order with their json tags
    (`"name"`, `"name,omitempty"`, `"-"`), and whether it has a String() method printing its JSON."""

    name: str
    fields: tuple[tuple[str, str], ...]
    stringer: bool = False

    def __call__(self, **values: Any) -> Struct:
        names = [name for name, _ in self.fields]
        if set(values) != set(names):
            raise TypeError(f"{self.name} takes exactly the fields {names}, got {sorted(values)}")
        return Struct(self, tuple(values[name] for name in names))


@dataclass(frozen=True)
class Struct:
    """A value of a Go struct type: `.Field` reads a field; a field the type lacks is an error."""

    type: StructType
    values: tuple[Any, ...]

    def get(self, name: str) -> Any:
        for (field_name, _), value in zip(self.type.fields, self.values, strict=True):
            if field_name == name:
                return value
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(field_name == name for field_name, _ in self.type.fields)

    def go_json(self) -> _JSONObject:
        pairs: list[tuple[str, Any]] = []
        for (name, tag), value in zip(self.type.fields, self.values, strict=True):
            key, _, options = tag.partition(",")
            if key == "-":
                continue
            if "omitempty" in options.split(",") and _json_empty(value):
                continue
            pairs.append((key or name, value))
        return _JSONObject(tuple(pairs))


@dataclass(frozen=True)
class _JSONObject:
    """A JSON object whose members keep their order (a Go struct), unlike a map's sorted keys."""

    pairs: tuple[tuple[str, Any], ...]


class Slice(list[Any]):
    """A Go slice that knows whether it is nil: the nil slice marshals to JSON `null`, an empty one to
    `[]`; both print `[]`, are false and have length 0. A plain list is a non-nil slice."""

    def __init__(self, items: Iterable[Any] = (), *, nil: bool = False) -> None:
        super().__init__(items)
        self.nil = nil and not self

    def go_json(self) -> Any:
        return None if self.nil else list(self)


class JSONList(Slice):
    """A Go slice whose type prints as its JSON (Ollama's Tools): `null` for the nil slice."""

    def go_string(self) -> str:
        return marshal_json(self)


class JSONMap(dict[str, Any]):
    """A Go map whose type prints as its JSON (Ollama's tool-call arguments); the nil map prints `{}`."""

    def __init__(self, items: Mapping[str, Any] | None = None, *, nil: bool = False) -> None:
        super().__init__(items or {})
        self.nil = nil and not self

    def go_json(self) -> Any:
        return None if self.nil else dict(self)

    def go_string(self) -> str:
        return "{}" if self.nil else marshal_json(self)


# --- json.Marshal -----------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """json.Marshal refuses the value (NaN, an infinity, a non-string map key)."""


def marshal_json(value: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped. Values
    json.Marshal refuses (NaN, infinities) give "" as Ollama's `json` func returns then."""
    out: list[str] = []
    try:
        _marshal(value, out)
    except _Unsupported:
        return ""
    return "".join(out)


def _marshal(value: Any, out: list[str]) -> None:
    hook = getattr(value, "go_json", None)
    if hook is not None:
        _marshal(hook(), out)
    elif value is None or value is NO_VALUE:
        out.append("null")
    elif isinstance(value, _JSONObject):
        out.append("{")
        for i, (key, member) in enumerate(value.pairs):
            if i:
                out.append(",")
            out.append(_json_string(key))
            out.append(":")
            _marshal(member, out)
        out.append("}")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_json_float(value))
    elif isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, bytes | bytearray):
        out.append(_json_string(base64.b64encode(value).decode("ascii")))
    elif isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise _Unsupported("map keys must be strings")
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_json_string(key))
            out.append(":")
            _marshal(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _marshal(item, out)
        out.append("]")
    else:
        raise _Unsupported(f"json: unsupported type {type(value).__name__}")


_JSON_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def _json_string(s: str) -> str:
    parts = ['"']
    for ch in s:
        code = ord(ch)
        if ch in _JSON_SHORT_ESCAPES:
            parts.append(_JSON_SHORT_ESCAPES[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            parts.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate is not UTF-8; Go writes U+FFFD
            parts.append("\ufffd")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _json_empty(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str | bytes | list | tuple | Mapping):
        return len(value) == 0
    return False


# --- numbers as Go prints them ----------------------------------------------------------------------------


def _shortest_digits(x: float) -> tuple[str, int]:
    """The shortest decimal digits that read back as |x| (x finite, non-zero), and the decimal point
    position: |x| == 0.DIGITS × 10**dp."""
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    all_digits = whole + fraction
    stripped = all_digits.lstrip("0")
    dp = len(whole) + (int(exponent) if exponent else 0) - (len(all_digits) - len(stripped))
    return stripped.rstrip("0"), dp


def _fixed(digits: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * -dp + digits
    if dp >= len(digits):
        return digits + "0" * (dp - len(digits))
    return digits[:dp] + "." + digits[dp:]


def _exponential(digits: str, dp: int) -> str:
    exp = dp - 1
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{head}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def format_float(x: float) -> str:
    """fmt's %v of a float64: %g with the shortest digits that read back, in exponent form when the
    exponent is below -4 or at least 6, as strconv does (100000, 1e+06, 0.0001, 1e-05)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return sign + "0"
    digits, dp = _shortest_digits(x)
    exp = dp - 1
    return sign + (_exponential(digits, dp) if exp < -4 or exp >= 6 else _fixed(digits, dp))


def _json_float(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        raise _Unsupported("json: unsupported value")
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return sign + "0"
    digits, dp = _shortest_digits(x)
    if abs(x) < 1e-6 or abs(x) >= 1e21:
        text = _exponential(digits, dp)
        if len(text) >= 4 and text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
            text = text[:-2] + text[-1]
        return sign + text
    return sign + _fixed(digits, dp)


# --- fmt's printing of values -----------------------------------------------------------------------------


def go_type_name(value: Any) -> str:
    """The Go type name a value stands for, as Go's messages spell it."""
    if value is None or value is NO_VALUE:
        return "<nil>"
    if isinstance(value, Struct):
        return value.type.name
    if isinstance(value, JSONList):
        return "template.JSONList"
    if isinstance(value, JSONMap):
        return "template.JSONMap"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "[]uint8"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


def _stringer(value: Any) -> str | None:
    """What the value's String() method returns, when its Go type has one."""
    if isinstance(value, Struct):
        return marshal_json(value) if value.type.stringer else None
    hook = getattr(value, "go_string", None)
    return None if hook is None else str(hook())


def sprint_value(value: Any) -> str:
    """fmt's %v of one value (what `{{ . }}` prints, once `<no value>` is out of the way)."""
    if value is None:
        return "<nil>"
    if value is NO_VALUE:
        return "<no value>"
    text = _stringer(value)
    if text is not None:
        return text
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return "[" + " ".join(str(b) for b in value) + "]"
    if isinstance(value, Struct):
        return "{" + " ".join(sprint_value(v) for v in value.values) + "}"
    if isinstance(value, Mapping):
        return (
            "map["
            + " ".join(f"{sprint_value(k)}:{sprint_value(value[k])}" for k in _sorted_keys(value))
            + "]"
        )
    if isinstance(value, list | tuple):
        return "[" + " ".join(sprint_value(v) for v in value) + "]"
    return str(value)


def _sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(mapping)
    except TypeError:
        return list(mapping)


def _is_string(value: Any) -> bool:
    return isinstance(value, str)


def sprint(*args: Any) -> str:
    """fmt.Sprint: operands printed with %v, a space between two operands when neither is a string."""
    parts: list[str] = []
    for i, arg in enumerate(args):
        if i and not _is_string(arg) and not _is_string(args[i - 1]):
            parts.append(" ")
        parts.append(sprint_value(arg))
    return "".join(parts)


def sprintln(*args: Any) -> str:
    return " ".join(sprint_value(arg) for arg in args) + "\n"


def _go_is_print(ch: str) -> bool:
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


_QUOTE_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(s: str, *, ascii_only: bool = False) -> str:
    """strconv.Quote (QuoteToASCII with ascii_only)."""
    parts = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            parts.append("\\" + ch)
        elif _go_is_print(ch) and not (ascii_only and code >= 0x80):
            parts.append(ch)
        elif ch in _QUOTE_ESCAPES:
            parts.append(_QUOTE_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            parts.append(f"\\x{code:02x}")
        elif code < 0x10000:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    parts.append('"')
    return "".join(parts)


@dataclass
class _Spec:
    minus: bool = False
    plus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    width: int | None = None
    precision: int | None = None


def _pad(text: str, spec: _Spec, *, numeric: bool = False) -> str:
    if spec.width is None or len(text) >= spec.width:
        return text
    fill = spec.width - len(text)
    if spec.minus:
        return text + " " * fill
    if spec.zero:
        if numeric and text[:1] in "+- ":
            return text[0] + "0" * fill + text[1:]
        return "0" * fill + text
    return " " * fill + text


def _bad_verb(verb: str, arg: Any, spec: _Spec | None = None) -> str:
    """Go's %!verb(type=value): the value printed with %v and the same width and precision."""
    if arg is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({go_type_name(arg)}={_format_arg(arg, 'v', spec or _Spec(), plain=True)})"


def _format_int(n: int, verb: str, spec: _Spec) -> str:
    sign = "-" if n < 0 else ("+" if spec.plus else (" " if spec.space else ""))
    magnitude = abs(n)
    if verb in "dv":
        digits = str(magnitude)
    elif verb == "x":
        digits = f"{magnitude:x}"
    elif verb == "X":
        digits = f"{magnitude:X}"
    elif verb == "o":
        digits = f"{magnitude:o}"
    elif verb == "O":
        digits = "0o" + f"{magnitude:o}"
    elif verb == "b":
        digits = f"{magnitude:b}"
    elif verb == "c":
        return _pad(chr(n) if 0 <= n <= 0x10FFFF else "\ufffd", spec)
    elif verb == "q":
        return _pad("'" + (chr(n) if 0 <= n <= 0x10FFFF else "\ufffd") + "'", spec)
    elif verb == "U":
        return _pad(f"U+{n:04X}", spec)
    else:
        return _bad_verb(verb, n, spec)
    if spec.precision is not None:
        digits = digits.rjust(spec.precision, "0")
    if spec.sharp and verb in "xX":
        digits = ("0x" if verb == "x" else "0X") + digits
    elif spec.sharp and verb == "o" and not digits.startswith("0"):
        digits = "0" + digits
    numeric = spec.precision is None
    return _pad(sign + digits, spec, numeric=numeric)


def _format_float(x: float, verb: str, spec: _Spec) -> str:
    if verb in "vgG" and spec.precision is None:
        text = format_float(x)
        if verb == "G":
            text = text.upper()
    elif verb in "eEfFgG":
        precision = 6 if spec.precision is None else spec.precision
        if math.isnan(x) or math.isinf(x):
            text = format_float(x)
        else:
            text = f"%.{precision}{verb}" % x
            if verb in "fF" and text == "-0" + text[2:] and not math.copysign(1.0, x) < 0:
                text = text[1:]
    else:
        return _bad_verb(verb, x, spec)
    if spec.plus and not text.startswith(("-", "+")):
        text = "+" + text
    elif spec.space and not text.startswith(("-", "+")):
        text = " " + text
    return _pad(text, spec, numeric=not (math.isnan(x) or math.isinf(x)))


def _format_string(s: str, verb: str, spec: _Spec) -> str:
    if verb in "vs":
        text = s if spec.precision is None else s[: spec.precision]
        return _pad(text, spec)
    if verb == "q":
        return _pad(go_quote(s, ascii_only=spec.plus), spec)
    if verb in "xX":
        raw = s.encode("utf-8", "surrogateescape")
        if spec.precision is not None:
            raw = raw[: spec.precision]
        hex_digits = [f"{b:02x}" if verb == "x" else f"{b:02X}" for b in raw]
        prefix = ("0x" if verb == "x" else "0X") if spec.sharp else ""
        if spec.space:
            return _pad(" ".join(prefix + h for h in hex_digits), spec)
        return _pad(prefix + "".join(hex_digits), spec)
    return _bad_verb(verb, s, spec)


def _format_arg(arg: Any, verb: str, spec: _Spec, *, nested: bool = False, plain: bool = False) -> str:
    """One printf operand. `plain`: inside a %!verb(...), where Go ignores String() methods."""
    if arg is None or arg is NO_VALUE:
        if nested:
            return "<nil>"
        return _pad("<nil>", spec) if verb == "v" else _bad_verb(verb, None, spec)
    text = None if plain else _stringer(arg)
    if text is not None and verb in "vsxXq":
        return _format_string(text, verb, spec)
    if isinstance(arg, bool):
        return _pad("true" if arg else "false", spec) if verb in "vt" else _bad_verb(verb, arg, spec)
    if isinstance(arg, int):
        return _format_int(arg, verb, spec)
    if isinstance(arg, float):
        return _format_float(arg, verb, spec)
    if isinstance(arg, str):
        return _format_string(arg, verb, spec)
    if isinstance(arg, Struct):
        inner = " ".join(_format_arg(v, verb, spec, nested=True) for v in arg.values)
        return "{" + inner + "}"
    if isinstance(arg, Mapping):
        inner = " ".join(
            f"{_format_arg(k, verb, spec, nested=True)}:{_format_arg(arg[k], verb, spec, nested=True)}"
            for k in _sorted_keys(arg)
        )
        return "map[" + inner + "]"
    if isinstance(arg, bytes | bytearray):
        if verb == "s":
            return _format_string(arg.decode("utf-8", "replace"), "s", spec)
        return "[" + " ".join(_format_int(b, verb, spec) for b in arg) + "]"
    if isinstance(arg, list | tuple):
        return "[" + " ".join(_format_arg(v, verb, spec, nested=True) for v in arg) + "]"
    return _pad(str(arg), spec)


def sprintf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the verbs templates use: v s q d t f e g x X c o b U %, flags `-+# 0`, width and
    precision; Go's `%!verb(type=value)`, `%!v(MISSING)` and `%!(EXTRA …)` for mismatches."""
    out: list[str] = []
    argi = 0
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        spec = _Spec()
        while i < n and fmt[i] in "-+# 0":
            flag = fmt[i]
            if flag == "-":
                spec.minus = True
                spec.zero = False
            elif flag == "+":
                spec.plus = True
            elif flag == "#":
                spec.sharp = True
            elif flag == " ":
                spec.space = True
            elif not spec.minus:
                spec.zero = True
            i += 1
        width, i = _parse_num(fmt, i)
        if width is not None:
            spec.width = width
        if i < n and fmt[i] == ".":
            precision, i = _parse_num(fmt, i + 1)
            spec.precision = precision or 0
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_arg(args[argi], verb, spec))
        argi += 1
    if argi < len(args):
        extra = ", ".join(
            "<nil>" if a is None else f"{go_type_name(a)}={sprint_value(a)}" for a in args[argi:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _parse_num(fmt: str, i: int) -> tuple[int | None, int]:
    """A printf width or precision from `i`, as Go's fmt parses it: None when there are no digits;
    a number past a million is "too large" and ends the format there (`%!(NOVERB)`), so that no
    verb pads a value to gigabytes. Returns the number and where parsing stopped."""
    num, found = 0, False
    while i < len(fmt) and fmt[i].isdigit():
        if num > 1_000_000:  # Go's tooLarge, checked before each digit
            return None, len(fmt)
        num = num * 10 + int(fmt[i])
        found = True
        i += 1
    return (num if found else None), i


def _html_escape(s: str) -> str:
    return (
        s.replace("&", "&amp;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\x00", "\ufffd")
    )


_JS_ESCAPES: Final = {
    "\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D",
}  # fmt: skip


def _js_escape(s: str) -> str:
    parts: list[str] = []
    for ch in s:
        code = ord(ch)
        if ch in _JS_ESCAPES:
            parts.append(_JS_ESCAPES[ch])
        elif code < 0x20:
            parts.append(f"\\u00{code:02X}")
        elif code < 0x80 or _go_is_print(ch):
            parts.append(ch)
        else:
            parts.append(f"\\u{code:04X}")
    return "".join(parts)


def _eval_args(args: Sequence[Any]) -> str:
    """text/template's evalArgs: one string argument as is, else fmt.Sprint of the printable values."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(*("<no value>" if a is None or a is NO_VALUE else a for a in args))


# --- the lexer ---------------------------------------------------------------------------------------------

_SPACE: Final = " \t\r\n"
_KEYWORDS: Final = {
    "block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with",
}  # fmt: skip

TokenKind: TypeAlias = Literal[
    "error", "bool", "char", "charconst", "assign", "declare", "eof", "field", "identifier", "leftdelim",
    "leftparen", "number", "pipe", "rawstring", "rightdelim", "rightparen", "space", "string", "text",
    "variable", "dot", "keyword",
]  # fmt: skip


@dataclass(frozen=True)
class _Token:
    kind: TokenKind
    val: str
    pos: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "EOF"
        if self.kind in ("keyword", "dot"):
            return f"<{self.val}>"
        if len(self.val) > 10:
            return go_quote(self.val[:10]) + "..."
        return go_quote(self.val)


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or unicodedata.category(ch) == "Nd"


def _left_trim_marker(text: str, i: int) -> bool:
    return i + 1 < len(text) and text[i] == "-" and text[i + 1] in _SPACE


def _right_trim_marker(text: str, i: int) -> bool:
    return i + 1 < len(text) and text[i] in _SPACE and text[i + 1] == "-"


class _Lexer:
    """Go's text/template lexer, state for state; it runs to the end at once and raises on errors."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.start = 0
        self.paren_depth = 0
        self.action_start = 0
        self.tokens: list[_Token] = []

    def fail(self, message: str, pos: int | None = None) -> NoReturn:
        raise _syntax_error(self.text, self.start if pos is None else pos, message)

    def emit(self, kind: TokenKind) -> None:
        self.tokens.append(_Token(kind, self.text[self.start : self.pos], self.start))
        self.start = self.pos

    def ignore(self) -> None:
        self.start = self.pos

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_right_delim(self) -> tuple[bool, bool]:
        if _right_trim_marker(self.text, self.pos) and self.text.startswith("}}", self.pos + 2):
            return True, True
        return self.text.startswith("}}", self.pos), False

    def at_terminator(self) -> bool:
        ch = self.peek()
        return ch == "" or ch in _SPACE or ch in ".,|:)(" or self.text.startswith("}}", self.pos)

    def run(self) -> list[_Token]:
        while True:
            if not self.lex_text():
                return self.tokens
            self.lex_left_delim()

    def lex_text(self) -> bool:
        x = self.text.find("{{", self.pos)
        if x < 0:
            self.pos = len(self.text)
            if self.pos > self.start:
                self.emit("text")
            self.emit("eof")
            return False
        self.pos = x
        trim = 0
        if _left_trim_marker(self.text, x + 2):
            chunk = self.text[self.start : x]
            trim = len(chunk) - len(chunk.rstrip(_SPACE))
        self.pos -= trim
        if self.pos > self.start:
            self.emit("text")
        self.pos += trim
        self.ignore()
        return True

    def lex_left_delim(self) -> None:
        self.action_start = self.pos
        self.pos += 2
        trim = _left_trim_marker(self.text, self.pos)
        after = 2 if trim else 0
        if self.text.startswith("/*", self.pos + after):
            self.pos += after
            self.ignore()
            self.lex_comment()
            return
        self.emit("leftdelim")
        self.pos += after
        self.ignore()
        self.paren_depth = 0
        self.lex_inside_action()

    def lex_comment(self) -> None:
        self.pos += 2
        end = self.text.find("*/", self.pos)
        if end < 0:
            self.fail("unclosed comment", self.action_start)
        self.pos = end + 2
        delim, trim = self.at_right_delim()
        if not delim:
            self.fail("comment ends before closing delimiter")
        if trim:
            self.pos += 2
        self.pos += 2
        if trim:
            self.pos += len(self.text[self.pos :]) - len(self.text[self.pos :].lstrip(_SPACE))
        self.ignore()

    def lex_right_delim(self) -> None:
        trim = _right_trim_marker(self.text, self.pos)
        if trim:
            self.pos += 2
            self.ignore()
        self.pos += 2
        self.emit("rightdelim")
        if trim:
            self.pos += len(self.text[self.pos :]) - len(self.text[self.pos :].lstrip(_SPACE))
            self.ignore()

    def lex_inside_action(self) -> None:
        while True:
            delim, _ = self.at_right_delim()
            if delim:
                if self.paren_depth == 0:
                    self.lex_right_delim()
                    return
                self.fail("unclosed left paren", self.action_start)
            if self.pos >= len(self.text):
                self.fail("unclosed action", self.action_start)
            ch = self.text[self.pos]
            self.pos += 1
            if ch in _SPACE:
                self.pos -= 1
                if self.lex_space():
                    self.lex_right_delim()
                    return
            elif ch == "=":
                self.emit("assign")
            elif ch == ":":
                if self.peek() != "=":
                    self.fail("expected :=")
                self.pos += 1
                self.emit("declare")
            elif ch == "|":
                self.emit("pipe")
            elif ch == '"':
                self.lex_quote()
            elif ch == "`":
                self.lex_raw_quote()
            elif ch == "$":
                self.lex_variable()
            elif ch == "'":
                self.lex_char()
            elif ch == "." and self.peek() != "" and not "0" <= self.peek() <= "9":
                self.lex_field_or_variable("field")
            elif ch in "+-." or "0" <= ch <= "9":
                self.pos -= 1
                self.lex_number()
            elif _is_alnum(ch):
                self.pos -= 1
                self.lex_identifier()
            elif ch == "(":
                self.emit("leftparen")
                self.paren_depth += 1
            elif ch == ")":
                self.emit("rightparen")
                self.paren_depth -= 1
                if self.paren_depth < 0:
                    self.fail("unexpected right paren U+0029 ')'")
            elif ord(ch) < 0x80 and _go_is_print(ch):
                self.emit("char")
            else:
                self.fail(f"unrecognized character in action: U+{ord(ch):04X} {go_quote(ch)[1:-1]!r}")

    def lex_space(self) -> bool:
        """A run of spaces; True when it is the one space of a ` -}}`, so the delimiter comes next."""
        spaces = 0
        while self.peek() != "" and self.peek() in _SPACE:
            self.pos += 1
            spaces += 1
        if _right_trim_marker(self.text, self.pos - 1) and self.text.startswith("}}", self.pos + 1):
            self.pos -= 1
            if spaces == 1:
                return True
        self.emit("space")
        return False

    def lex_identifier(self) -> None:
        while self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
        word = self.text[self.start : self.pos]
        if not self.at_terminator():
            self.fail(f"bad character {_describe_rune(self.peek())}")
        if word in _KEYWORDS:
            self.emit("keyword")
        elif word in ("true", "false"):
            self.emit("bool")
        else:
            self.emit("identifier")

    def lex_variable(self) -> None:
        if self.at_terminator():
            self.emit("variable")
            return
        self.lex_field_or_variable("variable")

    def lex_field_or_variable(self, kind: Literal["field", "variable"]) -> None:
        if self.at_terminator():
            self.emit("variable" if kind == "variable" else "dot")
            return
        while self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
        if not self.at_terminator():
            self.fail(f"bad character {_describe_rune(self.peek())}")
        self.emit(kind)

    def lex_char(self) -> None:
        while True:
            ch = self.peek()
            self.pos += 1
            if ch == "\\":
                nxt = self.peek()
                self.pos += 1
                if nxt not in ("", "\n"):
                    continue
                self.fail("unterminated character constant")
            if ch in ("", "\n"):
                self.fail("unterminated character constant")
            if ch == "'":
                break
        self.emit("charconst")

    def lex_quote(self) -> None:
        while True:
            ch = self.peek()
            self.pos += 1
            if ch == "\\":
                nxt = self.peek()
                self.pos += 1
                if nxt not in ("", "\n"):
                    continue
                self.fail("unterminated quoted string")
            if ch in ("", "\n"):
                self.fail("unterminated quoted string")
            if ch == '"':
                break
        self.emit("string")

    def lex_raw_quote(self) -> None:
        end = self.text.find("`", self.pos)
        if end < 0:
            self.fail("unterminated raw quoted string")
        self.pos = end + 1
        self.emit("rawstring")

    def accept(self, valid: str) -> bool:
        if self.peek() != "" and self.peek() in valid:
            self.pos += 1
            return True
        return False

    def accept_run(self, valid: str) -> None:
        while self.accept(valid):
            pass

    def scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if self.peek() != "" and _is_alnum(self.peek()):
            self.pos += 1
            return False
        return True

    def lex_number(self) -> None:
        if not self.scan_number():
            self.fail(f"bad number syntax: {go_quote(self.text[self.start : self.pos])}")
        if self.peek() in ("+", "-"):
            if not self.scan_number() or self.text[self.pos - 1] != "i":
                self.fail(f"bad number syntax: {go_quote(self.text[self.start : self.pos])}")
            self.fail("complex numbers are not supported")
        self.emit("number")


def _describe_rune(ch: str) -> str:
    if not ch:
        return "EOF"
    return f"U+{ord(ch):04X} '{ch}'"


# --- the parse tree ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    pos: int
    ident: tuple[str, ...]

    def __str__(self) -> str:
        return "".join("." + i for i in self.ident)


@dataclass(frozen=True)
class _Variable:
    pos: int
    ident: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.ident)


@dataclass(frozen=True)
class _Dot:
    pos: int

    def __str__(self) -> str:
        return "."


@dataclass(frozen=True)
class _Nil:
    pos: int

    def __str__(self) -> str:
        return "nil"


@dataclass(frozen=True)
class _Bool:
    pos: int
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True)
class _Number:
    pos: int
    text: str
    int_value: int | None  # set when the number has an integral value
    float_value: float | None
    is_char: bool = False

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class _String:
    pos: int
    quoted: str
    text: str

    def __str__(self) -> str:
        return self.quoted


@dataclass(frozen=True)
class _Identifier:
    pos: int
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _Command:
    pos: int
    args: tuple[_Arg, ...]

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


@dataclass(frozen=True)
class _Pipe:
    pos: int
    is_assign: bool
    decl: tuple[_Variable, ...]
    cmds: tuple[_Command, ...]

    def __str__(self) -> str:
        head = ", ".join(str(v) for v in self.decl) + " := " if self.decl else ""
        return head + " | ".join(str(c) for c in self.cmds)


@dataclass(frozen=True)
class _Chain:
    pos: int
    node: _Arg
    fields: tuple[str, ...]

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, _Pipe) else str(self.node)
        return inner + "".join("." + f for f in self.fields)


_Arg: TypeAlias = _Field | _Variable | _Dot | _Nil | _Bool | _Number | _String | _Identifier | _Pipe | _Chain


@dataclass(frozen=True)
class _Text:
    pos: int
    text: str


@dataclass(frozen=True)
class _Action:
    pos: int
    pipe: _Pipe

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass(frozen=True)
class _Branch:
    """if, range or with; an `else if` is an if alone in the else list."""

    kind: Literal["if", "range", "with"]
    pos: int
    pipe: _Pipe
    body: _List
    else_body: _List | None

    def __str__(self) -> str:
        return "{{" + self.kind + " " + str(self.pipe) + "}}"


@dataclass(frozen=True)
class _TemplateCall:
    pos: int
    name: str
    pipe: _Pipe | None

    def __str__(self) -> str:
        return "{{template " + go_quote(self.name) + (" " + str(self.pipe) if self.pipe else "") + "}}"


@dataclass(frozen=True)
class _Break:
    pos: int

    def __str__(self) -> str:
        return "{{break}}"


@dataclass(frozen=True)
class _Continue:
    pos: int

    def __str__(self) -> str:
        return "{{continue}}"


@dataclass(frozen=True)
class _List:
    pos: int
    nodes: tuple[_Node, ...]


_Node: TypeAlias = _Text | _Action | _Branch | _TemplateCall | _Break | _Continue | _List


@dataclass(frozen=True)
class _End:
    pos: int


@dataclass(frozen=True)
class _Else:
    pos: int
    chained: str = ""  # "if" or "with" when the else chains another branch


# --- the parser --------------------------------------------------------------------------------------------


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _syntax_error(text: str, pos: int, message: str) -> TemplateError:
    line, col = _line_col(text, pos)
    return TemplateError(f"template:{line}:{col}: {message}")


def _unquote(text: str, pos: int, source: str) -> str:
    """Go's strconv.Unquote for "…" and `…` literals."""
    if text.startswith("`"):
        return text[1:-1].replace("\r", "")
    out: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        value, i = _unescape(body, i + 1, '"', pos, source)
        out.append(value)
    return "".join(out)


_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}


def _unescape(body: str, i: int, quote: str, pos: int, source: str) -> tuple[str, int]:
    """One escape after its backslash (at body[i]); returns its text and the index after it."""
    if i >= len(body):
        raise _syntax_error(source, pos, "invalid syntax")
    ch = body[i]
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch], i + 1
    if ch == quote:
        return ch, i + 1
    sizes = {"x": 2, "u": 4, "U": 8}
    if ch in sizes:
        digits = body[i + 1 : i + 1 + sizes[ch]]
        if len(digits) != sizes[ch] or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise _syntax_error(source, pos, "invalid syntax")
        code = int(digits, 16)
        if ch == "x":
            if code >= 0x80:  # a raw byte: not a character on its own; Go keeps the byte
                return bytes([code]).decode("latin-1"), i + 3
            return chr(code), i + 3
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise _syntax_error(source, pos, "invalid syntax")
        return chr(code), i + 1 + sizes[ch]
    if "0" <= ch <= "7":
        digits = body[i : i + 3]
        if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
            raise _syntax_error(source, pos, "invalid syntax")
        return chr(int(digits, 8)), i + 3
    raise _syntax_error(source, pos, "invalid syntax")


def _parse_go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) without the range check: None when it is not an integer."""
    sign = 1
    body = text
    if body[:1] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if not body:
        return None
    base = 10
    digits = body
    prefixes = {"0x": 16, "0X": 16, "0o": 8, "0O": 8, "0b": 2, "0B": 2}
    if body[:2] in prefixes:
        base, digits = prefixes[body[:2]], body[2:]
        if digits.startswith("_"):
            digits = digits[1:]
    elif len(body) > 1 and body[0] == "0":
        base, digits = 8, body[1:]
        if digits.startswith("_"):
            digits = digits[1:]
    if not digits or digits.startswith("_") or digits.endswith("_") or "__" in digits:
        return None
    try:
        return sign * int(digits.replace("_", ""), base)
    except ValueError:
        return None


def _parse_go_float(text: str) -> float | None:
    body = text.lstrip("+-")
    negative = text.startswith("-")
    lowered = body.lower()
    try:
        value = float.fromhex(body.replace("_", "")) if lowered.startswith("0x") else float(body)
    except ValueError:
        return None
    if math.isinf(value):
        return None
    return -value if negative else value


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1


def _new_number(tok: _Token, source: str) -> _Number:
    text = tok.val
    if tok.kind == "charconst":
        body = text[1:-1]
        if body.startswith("\\"):
            value, end = _unescape(body, 1, "'", tok.pos, source)
        else:
            value, end = body[:1], 1
        if end != len(body) or len(value) != 1:
            raise _syntax_error(source, tok.pos, f"malformed character constant: {text}")
        code = ord(value)
        return _Number(tok.pos, text, code, float(code), is_char=True)
    if text.endswith("i"):
        raise _syntax_error(source, tok.pos, "complex numbers are not supported")
    as_int = _parse_go_int(text)
    if as_int is not None and not (_INT64_MIN <= as_int <= _UINT64_MAX):
        as_int = None  # beyond uint64: Go tries it as a float
    if as_int is not None:
        return _Number(tok.pos, text, as_int, float(as_int))
    as_float = _parse_go_float(text)
    if as_float is None:
        raise _syntax_error(source, tok.pos, f"illegal number syntax: {go_quote(text)}")
    if not any(c in text for c in ".eEpP"):
        raise _syntax_error(source, tok.pos, f"integer overflow: {go_quote(text)}")
    integral = int(as_float) if as_float.is_integer() and _INT64_MIN <= as_float <= _INT64_MAX else None
    return _Number(tok.pos, text, integral, as_float)


class _Parser:
    """Go's text/template parser (parse.go), one tree at a time; definitions go into `defined`."""

    def __init__(self, text: str, tokens: list[_Token], funcs: frozenset[str]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0
        self.funcs = funcs
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.defined: dict[str, _List] = {}

    def fail(self, tok: _Token, message: str) -> NoReturn:
        raise _syntax_error(self.text, tok.pos, message)

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def backup(self, to: int | None = None) -> None:
        self.i = self.i - 1 if to is None else to

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next_non_space(self) -> _Token:
        tok = self.next()
        while tok.kind == "space":
            tok = self.next()
        return tok

    def peek_non_space(self) -> _Token:
        tok = self.next_non_space()
        if tok.kind != "eof":
            self.backup()
        return tok

    def unexpected(self, tok: _Token, context: str) -> NoReturn:
        self.fail(tok, f"unexpected {tok.describe()} in {context}")

    def expect(self, kind: TokenKind, context: str) -> _Token:
        tok = self.next_non_space()
        if tok.kind != kind:
            self.unexpected(tok, context)
        return tok

    def is_keyword(self, tok: _Token, word: str) -> bool:
        return tok.kind == "keyword" and tok.val == word

    # top level

    def parse(self) -> _List:
        nodes: list[_Node] = []
        while self.peek().kind != "eof":
            if self.peek().kind == "leftdelim":
                mark = self.i
                self.next()
                if self.is_keyword(self.next_non_space(), "define"):
                    self.parse_definition()
                    continue
                self.backup(mark)
            node = self.text_or_action()
            if isinstance(node, _End | _Else):
                self.fail(
                    self.tokens[self.i - 1],
                    "unexpected {{end}}" if isinstance(node, _End) else "unexpected {{else}}",
                )
            nodes.append(node)
        return _List(0, tuple(nodes))

    def parse_definition(self) -> None:
        context = "define clause"
        tok = self.next_non_space()
        if tok.kind not in ("string", "rawstring"):
            self.unexpected(tok, context)
        name = _unquote(tok.val, tok.pos, self.text)
        self.expect("rightdelim", context)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self.item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            self.fail(self.tokens[self.i - 1], f"unexpected {{{{else}}}} in {context}")
        self.add(name, body, tok)

    def add(self, name: str, body: _List, tok: _Token) -> None:
        existing = self.defined.get(name)
        if existing is not None and not _is_empty_tree(existing) and not _is_empty_tree(body):
            self.fail(tok, f"template: multiple definition of template {go_quote(name)}")
        if existing is None or _is_empty_tree(existing):
            self.defined[name] = body

    def item_list(self) -> tuple[_List, _End | _Else]:
        start = self.peek_non_space().pos
        nodes: list[_Node] = []
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _End | _Else):
                return _List(start, tuple(nodes)), node
            nodes.append(node)
        self.fail(self.peek(), "unexpected EOF")

    def text_or_action(self) -> _Node | _End | _Else:
        tok = self.next_non_space()
        if tok.kind == "text":
            return _Text(tok.pos, tok.val)
        if tok.kind == "leftdelim":
            return self.action()
        self.unexpected(tok, "input")

    def action(self) -> _Node | _End | _Else:
        tok = self.next_non_space()
        if tok.kind == "keyword":
            if tok.val == "block":
                return self.block_control()
            if tok.val in ("break", "continue"):
                return self.loop_control(tok)
            if tok.val == "else":
                return self.else_control()
            if tok.val == "end":
                return _End(self.expect("rightdelim", "end").pos)
            if tok.val == "if":
                return self.branch("if", allow_else_chain=("if",))
            if tok.val == "range":
                return self.branch("range", allow_else_chain=())
            if tok.val == "template":
                return self.template_control()
            if tok.val == "with":
                return self.branch("with", allow_else_chain=("with",))
        self.backup()
        tok = self.peek()
        return _Action(tok.pos, self.pipeline("command", "rightdelim"))

    def loop_control(self, keyword: _Token) -> _Break | _Continue:
        tok = self.next_non_space()
        if tok.kind != "rightdelim":
            self.unexpected(tok, "{{" + keyword.val + "}}")
        if self.range_depth == 0:
            self.fail(keyword, "{{" + keyword.val + "}} outside {{range}}")
        return _Break(keyword.pos) if keyword.val == "break" else _Continue(keyword.pos)

    def else_control(self) -> _Else:
        peek = self.peek_non_space()
        if peek.kind == "keyword" and peek.val in ("if", "with"):
            return _Else(peek.pos, peek.val)
        tok = self.expect("rightdelim", "else")
        return _Else(tok.pos)

    def branch(self, kind: Literal["if", "range", "with"], allow_else_chain: tuple[str, ...]) -> _Branch:
        saved = len(self.vars)
        pipe = self.pipeline(kind, "rightdelim")
        if kind == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if kind == "range":
            self.range_depth -= 1
        else_body: _List | None = None
        if isinstance(end, _Else):
            if end.chained and end.chained in allow_else_chain:
                self.next()  # the `if` or `with` keyword
                else_body = _List(end.pos, (self.branch(end.chained, allow_else_chain),))  # type: ignore[arg-type]
            else:
                if end.chained:
                    self.unexpected(self.peek_non_space(), "else")
                else_body, end2 = self.item_list()
                if not isinstance(end2, _End):
                    self.fail(self.tokens[self.i - 1], "expected end; found {{else}}")
        del self.vars[saved:]
        return _Branch(kind, pipe.pos, pipe, body, else_body)

    def block_control(self) -> _TemplateCall:
        context = "block clause"
        tok = self.next_non_space()
        if tok.kind not in ("string", "rawstring"):
            self.unexpected(tok, context)
        name = _unquote(tok.val, tok.pos, self.text)
        pipe = self.pipeline(context, "rightdelim")
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved_vars, saved_depth
        if not isinstance(end, _End):
            self.fail(self.tokens[self.i - 1], f"unexpected {{{{else}}}} in {context}")
        self.add(name, body, tok)
        return _TemplateCall(tok.pos, name, pipe)

    def template_control(self) -> _TemplateCall:
        context = "template clause"
        tok = self.next_non_space()
        if tok.kind not in ("string", "rawstring"):
            self.unexpected(tok, context)
        name = _unquote(tok.val, tok.pos, self.text)
        pipe: _Pipe | None = None
        if self.next_non_space().kind != "rightdelim":
            self.backup()
            pipe = self.pipeline(context, "rightdelim")
        return _TemplateCall(tok.pos, name, pipe)

    # pipelines

    def pipeline(self, context: str, end: TokenKind) -> _Pipe:
        start = self.peek_non_space().pos
        decl: list[_Variable] = []
        is_assign = False
        while True:
            v = self.peek_non_space()
            if v.kind != "variable":
                break
            mark = self.i
            self.next()
            nxt = self.peek_non_space()
            if nxt.kind in ("assign", "declare"):
                is_assign = nxt.kind == "assign"
                self.next_non_space()
                decl.append(_Variable(v.pos, tuple(v.val.split("."))))
                self.vars.append(v.val)
            elif nxt.kind == "char" and nxt.val == ",":
                self.next_non_space()
                decl.append(_Variable(v.pos, tuple(v.val.split("."))))
                self.vars.append(v.val)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in ("variable", "rightdelim", "rightparen"):
                        continue
                    self.fail(nxt, "range can only initialize variables")
                self.fail(nxt, f"too many declarations in {context}")
            else:
                self.backup(mark)
            break
        cmds: list[_Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                pipe = _Pipe(start, is_assign, tuple(decl), tuple(cmds))
                self.check_pipeline(pipe, context, tok)
                return pipe
            if tok.kind in (
                "bool", "charconst", "dot", "field", "identifier", "number", "rawstring", "string",
                "variable", "leftparen",
            ) or self.is_keyword(tok, "nil"):  # fmt: skip
                self.backup()
                cmds.append(self.command())
            else:
                self.unexpected(tok, context)

    def check_pipeline(self, pipe: _Pipe, context: str, tok: _Token) -> None:
        if not pipe.cmds:
            self.fail(tok, f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if isinstance(cmd.args[0], _Bool | _Dot | _Nil | _Number | _String):
                self.fail(tok, f"non executable command in pipeline stage {i + 2}")

    def command(self) -> _Command:
        start = self.peek_non_space().pos
        args: list[_Arg] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("rightdelim", "rightparen"):
                self.backup()
            elif tok.kind != "pipe":
                self.unexpected(tok, "operand")
            break
        if not args:
            self.fail(self.peek(), "empty command")
        return _Command(start, tuple(args))

    def operand(self) -> _Arg | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().kind == "field":
            pos = self.peek().pos
            fields: list[str] = []
            while self.peek().kind == "field":
                fields.append(self.next().val[1:])
            if isinstance(node, _Field):
                return _Field(node.pos, node.ident + tuple(fields))
            if isinstance(node, _Variable):
                return _Variable(node.pos, node.ident + tuple(fields))
            if isinstance(node, _Bool | _String | _Number | _Nil | _Dot):
                self.fail(self.tokens[self.i - 1], f"unexpected . after term {go_quote(str(node))}")
            return _Chain(pos, node, tuple(fields))
        return node

    def term(self) -> _Arg | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "identifier":
            if tok.val not in self.funcs:
                self.fail(tok, f"function {go_quote(tok.val)} not defined")
            return _Identifier(tok.pos, tok.val)
        if kind == "dot":
            return _Dot(tok.pos)
        if self.is_keyword(tok, "nil"):
            return _Nil(tok.pos)
        if kind == "variable":
            name = tok.val.split(".")[0]
            if name not in self.vars:
                self.fail(tok, f"undefined variable {go_quote(name)}")
            return _Variable(tok.pos, tuple(tok.val.split(".")))
        if kind == "field":
            return _Field(tok.pos, (tok.val[1:],))
        if kind == "bool":
            return _Bool(tok.pos, tok.val == "true")
        if kind in ("number", "charconst"):
            return _new_number(tok, self.text)
        if kind == "leftparen":
            return self.pipeline("parenthesized pipeline", "rightparen")
        if kind in ("string", "rawstring"):
            return _String(tok.pos, tok.val, _unquote(tok.val, tok.pos, self.text))
        self.backup()
        return None


def _is_empty_tree(node: _Node) -> bool:
    if isinstance(node, _List):
        return all(_is_empty_tree(n) for n in node.nodes)
    if isinstance(node, _Text):
        return node.text.strip() == ""
    return False


# --- templates ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A parsed template: immutable, safe to share and to cache.

    `missing_key` is Go's missingkey option ("zero" as Ollama sets it, or "invalid", Go's default);
    `ollama_funcs` says whether json, currentDate… are defined, as in Ollama's parsed templates."""

    text: str
    root: _List
    defined: tuple[tuple[str, _List], ...] = ()
    missing_key: Literal["zero", "invalid"] = "zero"
    ollama_funcs: bool = True
    _lookup: Mapping[str, _List] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", dict(self.defined))

    def execute(self, data: Any, *, now: datetime | None = None, budget: RenderBudget | None = None) -> str:
        """Render with `data` as dot. `now` feeds currentDate and yesterdayDate; a template that calls
        them without it fails, so that rendering stays a pure function of its inputs. `budget`: the
        time and output it may take (render_limits; a fresh default one when not given)."""
        state = _State(self, now, budget or RenderBudget())
        value = NO_VALUE if data is None else data
        state.vars.append(["$", value, False])
        try:
            state.walk(value, self.root)
        except _LoopSignal as signal:  # pragma: no cover - the parser refuses break outside range
            raise _exec_error(self, signal.node, "break outside range") from None
        except RecursionError:
            raise TemplateError("template: the template nests too deeply to render") from None
        except MemoryError:
            raise TemplateError("template: the template builds values too large to render") from None
        return "".join(state.out)

    def identifiers(self) -> list[str]:
        """Every field and variable name the template's actions use (Ollama's Identifiers, over the
        main template and every defined one): `{{ .Messages }}` gives "Messages", `$.Tools` "$" and
        "Tools". Names in branch conditions count; chains after parentheses do not."""
        names: list[str] = []
        for tree in (self.root, *(body for _, body in self.defined)):
            for node in tree.nodes:
                names.extend(_identifiers(node))
        return names

    def with_field_appended(self, name: str) -> Template:
        """This template with `{{ .NAME }}` added at its end (Ollama's touch-up of templates that lack
        `.Response`)."""
        action = _Action(
            len(self.text),
            _Pipe(len(self.text), False, (), (_Command(len(self.text), (_Field(len(self.text), (name,)),)),)),
        )
        root = _List(self.root.pos, (*self.root.nodes, action))
        return Template(self.text, root, self.defined, self.missing_key, self.ollama_funcs)

    def cut_after_field(self, name: str) -> Template:
        """This template without whatever follows the first `.NAME` field, as Ollama cuts a legacy
        template after `{{ .Response }}` for the turn being generated. The result runs like Ollama's
        re-parsed tree: Go's default missingkey, none of Ollama's funcs. A cut that would leave an
        if/range/with without a body is an error (Ollama panics there)."""
        cut = _Cutter(name, self)
        root = cut.walk_list(self.root)
        return Template(self.text, root or _List(self.root.pos, ()), self.defined, "invalid", False)


def _identifiers(node: Any) -> list[str]:
    if isinstance(node, _List):
        return [name for n in node.nodes for name in _identifiers(n)]
    if isinstance(node, _TemplateCall):
        return _identifiers(node.pipe) if node.pipe else []
    if isinstance(node, _Action):
        return _identifiers(node.pipe)
    if isinstance(node, _Branch):
        names = _identifiers(node.pipe) + _identifiers(node.body)
        return names + (_identifiers(node.else_body) if node.else_body else [])
    if isinstance(node, _Pipe):
        return [name for cmd in node.cmds for arg in cmd.args for name in _identifiers(arg)]
    if isinstance(node, _Field | _Variable):
        return list(node.ident)
    return []


class _Cutter:
    """Ollama's deleteNode walk: keep nodes until the first `.NAME` field, drop every later one."""

    def __init__(self, name: str, template: Template) -> None:
        self.name = name
        self.template = template
        self.cut = False

    def walk_list(self, node: _List) -> _List | None:
        if self.cut:
            return None
        kept = [k for k in (self.walk(n) for n in node.nodes) if k is not None]
        return _List(node.pos, tuple(kept))

    def walk(self, node: _Node) -> _Node | None:
        if self.cut:
            return None
        if isinstance(node, _List):
            return self.walk_list(node)
        if isinstance(node, _Branch):
            body = self.walk_list(node.body)
            else_body = self.walk_list(node.else_body) if node.else_body is not None else None
            if body is None or (node.else_body is not None and else_body is None):
                raise _exec_error(
                    self.template,
                    node,
                    f"cutting the template after .{self.name} leaves this {node.kind} without a body",
                )
            return _Branch(node.kind, node.pos, node.pipe, body, else_body)
        if isinstance(node, _Action):
            pipe = self.walk_pipe(node.pipe)
            return None if pipe is None else _Action(node.pos, pipe)
        return node

    def walk_pipe(self, pipe: _Pipe) -> _Pipe | None:
        if self.cut:
            return None
        cmds: list[_Command] = []
        for cmd in pipe.cmds:
            args = [k for k in (self.walk_arg(a) for a in cmd.args) if k is not None]
            if not args:
                return None
            cmds.append(_Command(cmd.pos, tuple(args)))
        return _Pipe(pipe.pos, pipe.is_assign, pipe.decl, tuple(cmds))

    def walk_arg(self, arg: _Arg) -> _Arg | None:
        if isinstance(arg, _Field) and self.name in arg.ident:  # kept even after the cut, as in Ollama
            self.cut = True
            return arg
        if self.cut:
            return None
        if isinstance(arg, _Pipe):
            return self.walk_pipe(arg)
        return arg


@lru_cache(maxsize=64)  # a request may bring its own template: each parsed one is held
def parse(text: str) -> Template:
    """Parse a Go template as Ollama does (missingkey=zero, Ollama's funcs defined). Cached by text."""
    check_template_size(text)
    tokens = _Lexer(text).run()
    parser = _Parser(text, tokens, BUILTIN_FUNCS | OLLAMA_FUNCS)
    try:
        root = parser.parse()
    except (RecursionError, MemoryError):  # thousands of nested {{if}}: a parser recursing per level
        raise TemplateError("template: the template nests too deeply to parse") from None
    return Template(text, root, tuple(parser.defined.items()))


# --- execution ---------------------------------------------------------------------------------------------


class _LoopSignal(Exception):
    def __init__(self, node: _Break | _Continue) -> None:
        self.node = node


def _exec_error(template: Template, node: Any, message: str) -> TemplateError:
    line, col = _line_col(template.text, getattr(node, "pos", 0))
    return TemplateError(f"template:{line}:{col}: executing at <{node}>: {message}")


# Functions whose result grows with their arguments, by at most this factor of their text (js and
# html escape a character into up to six; printf's widths are bounded apart, as Go bounds them).
_GROWING_FUNCS: Final = {"print": 1, "println": 1, "printf": 1, "html": 6, "js": 6, "urlquery": 3}


class _FuncError(Exception):
    """A builtin failed; evalCall wraps it as `error calling NAME: …`."""


class _Final:
    """The pipeline's previous value, passed to the next command as its last argument."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_ParamKind: TypeAlias = Literal["value", "any", "string"]
# Each function's parameters as text/template sees them: reflect.Value, any or string; the last one of
# a variadic function repeats.
_SIGNATURES: Final[dict[str, tuple[tuple[_ParamKind, ...], bool]]] = {
    "and": (("value", "value"), True),
    "or": (("value", "value"), True),
    "not": (("value",), False),
    "len": (("value",), False),
    "index": (("value", "value"), True),
    "slice": (("value", "value"), True),
    "eq": (("value", "value"), True),
    "ne": (("value", "value"), False),
    "lt": (("value", "value"), False),
    "le": (("value", "value"), False),
    "gt": (("value", "value"), False),
    "ge": (("value", "value"), False),
    "call": (("value", "value"), True),
    "print": (("any",), True),
    "println": (("any",), True),
    "printf": (("string", "any"), True),
    "html": (("any",), True),
    "js": (("any",), True),
    "urlquery": (("any",), True),
    "json": (("any",), False),
    "currentDate": (("string",), True),
    "yesterdayDate": (("string",), True),
    "toTypeScriptType": (("any",), False),
}


class _State:
    def __init__(
        self, template: Template, now: datetime | None, budget: RenderBudget, depth: int = 0
    ) -> None:
        self.template = template
        self.now = now
        self.budget = budget
        self.depth = depth
        self.vars: list[list[Any]] = []  # [name, value, wrapped]
        self.out: list[str] = []
        self.node: Any = None
        # Whether a value is still inside an interface{} (a map value or an element of []any) as Go's
        # reflect sees it: builtins mostly look through that, but `slice` indexes do not.
        self.dot_wrapped = False
        self.last_wrapped = False
        self.arg_wrapped = False

    def fail(self, message: str, node: Any = None) -> NoReturn:
        raise _exec_error(self.template, node if node is not None else self.node, message)

    # variables

    def var_entry(self, name: str) -> list[Any]:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry
        self.fail(f"undefined variable: {name}")

    def var_value(self, name: str) -> Any:
        return self.var_entry(name)[1]

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                entry[2] = False
                return
        self.fail(f"undefined variable: {name}")

    # walking

    def walk(self, dot: Any, node: _Node) -> None:
        self.node = node
        if isinstance(node, _Text):
            self.budget.wrote(len(node.text))
            self.out.append(node.text)
        elif isinstance(node, _List):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, _Action):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                printed = _printable(value)
                self.budget.wrote(len(printed))
                self.out.append(printed)
        elif isinstance(node, _Branch):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_or_with(dot, node)
        elif isinstance(node, _TemplateCall):
            self.walk_template(dot, node)
        elif isinstance(node, _Break | _Continue):
            raise _LoopSignal(node)
        else:  # pragma: no cover - every node kind is handled above
            self.fail(f"unknown node: {node}")

    def walk_if_or_with(self, dot: Any, node: _Branch) -> None:
        mark = len(self.vars)
        value = self.eval_pipeline(dot, node.pipe)
        if _truth(value):
            if node.kind == "with":
                outer_wrapped, self.dot_wrapped = self.dot_wrapped, False
                self.walk(value, node.body)
                self.dot_wrapped = outer_wrapped
            else:
                self.walk(dot, node.body)
        elif node.else_body is not None:
            self.walk(dot, node.else_body)
        del self.vars[mark:]

    def walk_range(self, dot: Any, node: _Branch) -> None:
        self.node = node
        outer = len(self.vars)
        value = _indirect_interface(self.eval_pipeline(dot, node.pipe))
        mark = len(self.vars)
        decls = len(node.pipe.decl)

        outer_wrapped = self.dot_wrapped
        # Asked of the container once, not of every element: an isinstance against an ABC
        # (Mapping) can cost microseconds in a process with many classes (four times the loop).
        holds = _holds_interfaces(value)

        def iteration(index: Any, element: Any) -> bool:
            self.budget.step()  # `range 10000000000` ends at the budget's deadline
            wrapped = holds and not isinstance(element, Struct)
            if decls > 0:
                self.set_top_var(1, element, wrapped)
            if decls > 1:
                self.set_top_var(2, index, False)
            self.dot_wrapped = wrapped
            try:
                self.walk(element, node.body)
            except _LoopSignal as signal:
                return isinstance(signal.node, _Continue)
            finally:
                del self.vars[mark:]
                self.dot_wrapped = outer_wrapped
            return True

        ran = False
        if isinstance(value, list | tuple | bytes | bytearray) and not isinstance(value, str):
            for i, element in enumerate(value):
                ran = True
                if not iteration(i, element):
                    break
        elif isinstance(value, Mapping):
            for key in _sorted_keys(value):
                ran = True
                if not iteration(key, value[key]):
                    break
        elif isinstance(value, int) and not isinstance(value, bool):
            if decls > 1:
                self.fail(f"can't use {value} to iterate over more than one variable", node)
            for i in range(value):
                ran = True
                if not iteration(NO_VALUE, i):
                    break
        elif value is not NO_VALUE:
            self.fail(f"range can't iterate over {sprint_value(value)}", node)
        if not ran and node.else_body is not None:
            self.walk(dot, node.else_body)
        del self.vars[outer:]

    def set_top_var(self, n: int, value: Any, wrapped: bool) -> None:
        if len(self.vars) < n:
            self.fail("range has no variable to set")
        self.vars[-n][1:] = [value, wrapped]

    def walk_template(self, dot: Any, node: _TemplateCall) -> None:
        body = self.template._lookup.get(node.name)
        if body is None:
            self.fail(f"template {go_quote(node.name)} not defined", node)
        if self.depth >= MAX_TEMPLATE_DEPTH:
            self.fail(f"exceeded maximum template depth ({MAX_TEMPLATE_DEPTH})", node)
        value = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else NO_VALUE
        self.budget.step()  # a template that calls itself twice, forty deep, ends at the deadline
        inner = _State(self.template, self.now, self.budget, self.depth + 1)
        inner.vars.append(["$", value, False])
        inner.out = self.out
        inner.walk(value, body)

    # evaluation

    def eval_pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        self.node = pipe
        value: Any = NO_VALUE
        final: _Final | None = None
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, final)
            if value is None:  # a nil interface{}: Go digs into it and finds nothing
                value = NO_VALUE
            final = _Final(value)
        for variable in pipe.decl:
            if pipe.is_assign:
                self.set_var(variable.ident[0], value)
            else:
                self.vars.append([variable.ident[0], value, False])
        return value

    def not_a_function(self, args: Sequence[_Arg], final: _Final | None) -> None:
        if len(args) > 1 or final is not None:
            self.fail(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: _Command, final: _Final | None) -> Any:
        first = cmd.args[0]
        if isinstance(first, _Field):
            self.node = first
            return self.eval_field_chain(dot, dot, first, first.ident, cmd.args, final)
        if isinstance(first, _Chain):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, _Identifier):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, _Pipe):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, _Variable):
            return self.eval_variable(dot, first, cmd.args, final)
        self.node = first
        self.not_a_function(cmd.args, final)
        if isinstance(first, _Bool):
            return first.value
        if isinstance(first, _Dot):
            return dot
        if isinstance(first, _Nil):
            self.fail("nil is not a command")
        if isinstance(first, _Number):
            return self.ideal_constant(first)
        if isinstance(first, _String):
            return first.text
        self.fail(f"can't evaluate command {go_quote(str(first))}")  # pragma: no cover

    def ideal_constant(self, number: _Number) -> Any:
        self.node = number
        text = number.text
        is_hex_int = len(text) > 2 and text[0] == "0" and text[1] in "xX" and not any(c in text for c in "pP")
        if (
            number.float_value is not None
            and not is_hex_int
            and not number.is_char
            and any(c in text for c in ".eEpP")
        ):
            return number.float_value
        if number.int_value is not None:
            if not _INT64_MIN <= number.int_value <= _INT64_MAX:
                self.fail(f"{text} overflows int")
            return number.int_value
        return NO_VALUE  # pragma: no cover - the parser keeps only numbers with a value

    def eval_chain(self, dot: Any, chain: _Chain, args: Sequence[_Arg], final: _Final | None) -> Any:
        self.node = chain
        if isinstance(chain.node, _Nil):
            self.fail(f"indirection through explicit nil in {chain}")
        receiver = self.eval_arg(dot, None, chain.node)
        return self.eval_field_chain(dot, receiver, chain, chain.fields, args, final)

    def eval_variable(self, dot: Any, variable: _Variable, args: Sequence[_Arg], final: _Final | None) -> Any:
        self.node = variable
        value = self.var_value(variable.ident[0])
        if len(variable.ident) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, variable, variable.ident[1:], args, final)

    def eval_field_chain(
        self,
        dot: Any,
        receiver: Any,
        node: Any,
        ident: Sequence[str],
        args: Sequence[_Arg],
        final: _Final | None,
    ) -> Any:
        for name in ident[:-1]:
            receiver = self.eval_field(name, node, (), None, receiver)
        return self.eval_field(ident[-1], node, args, final, receiver)

    def eval_field(
        self, name: str, node: Any, args: Sequence[_Arg], final: _Final | None, receiver: Any
    ) -> Any:
        self.last_wrapped = False
        if receiver is NO_VALUE:
            return NO_VALUE
        if receiver is None:
            self.fail(f"nil pointer evaluating interface {{}}.{name}", node)
        has_args = len(args) > 1 or final is not None
        if isinstance(receiver, Struct):
            if receiver.has(name):
                if has_args:
                    self.fail(f"{name} has arguments but cannot be invoked as function", node)
                return receiver.get(name)
        elif isinstance(receiver, Mapping):
            if has_args:
                self.fail(f"{name} is not a method but has arguments", node)
            if name in receiver:
                self.last_wrapped = _holds_interface(receiver, receiver[name])
                return receiver[name]
            self.last_wrapped = self.template.missing_key == "zero"
            return None if self.template.missing_key == "zero" else NO_VALUE
        self.fail(f"can't evaluate field {name} in type {go_type_name(receiver)}", node)

    def eval_function(
        self, dot: Any, ident: _Identifier, context: Any, args: Sequence[_Arg], final: _Final | None
    ) -> Any:
        self.node = ident
        name = ident.name
        if name not in BUILTIN_FUNCS and not (name in OLLAMA_FUNCS and self.template.ollama_funcs):
            self.fail(f"{go_quote(name)} is not a defined function")
        params, variadic = _SIGNATURES[name]
        given = args[1:]
        count = len(given) + (1 if final is not None else 0)
        fixed = len(params) - 1 if variadic else len(params)
        if variadic and count < fixed:
            self.fail(f"wrong number of args for {name}: want at least {fixed} got {len(given)}")
        if not variadic and count != len(params):
            self.fail(f"wrong number of args for {name}: want {len(params)} got {count}")
        if name in ("and", "or"):
            result: Any = NO_VALUE
            for arg in given:
                result = self.eval_arg(dot, "value", arg)
                if _truth(result) == (name == "or"):
                    return result
            if final is not None:
                result = final.value
            return result
        values: list[Any] = []
        wrapped: list[bool] = []
        for i, arg in enumerate(given):
            values.append(self.eval_arg(dot, params[min(i, len(params) - 1)], arg))
            wrapped.append(self.arg_wrapped)
        if final is not None:
            values.append(self.validate(final.value, params[min(len(given), len(params) - 1)]))
            wrapped.append(False)
        if name in _GROWING_FUNCS:  # sized before they run: print of many copies of a large value
            given_chars = sum(len(v) for v in values if isinstance(v, str))
            check_built(given_chars * _GROWING_FUNCS[name], f"a value ({name})")
        try:
            if name == "slice":
                return _slice(values[0], values[1:], wrapped[1:])
            result = self.call(name, values)
        except _FuncError as err:
            self.fail(f"error calling {name}: {err}", context)
        self.budget.step()
        if isinstance(result, str):  # printf "%s%s" $x $x, doubled in a loop, is never printed
            check_built(len(result), f"a value ({name})")
        return result

    def validate(self, value: Any, kind: _ParamKind | None) -> Any:
        """validateType: what a function parameter of this kind receives for an evaluated value."""
        if kind is None:
            return value
        if kind == "any":
            return None if value is NO_VALUE else value
        if kind == "string":
            if value is NO_VALUE:
                self.fail("invalid value; expected string")
            if not isinstance(value, str):
                got = "interface {}" if value is None else go_type_name(value)
                self.fail(f"wrong type for value; expected string; got {got}")
        return value

    def eval_arg(self, dot: Any, kind: _ParamKind | None, node: _Arg) -> Any:
        """The value a parameter of this kind receives; `arg_wrapped` then says whether Go would still
        see it inside an interface{}."""
        self.node = node
        self.arg_wrapped = False
        if isinstance(node, _Dot):
            self.arg_wrapped = self.dot_wrapped
            return self.validate(dot, kind)
        if isinstance(node, _Nil):
            if kind == "string":
                self.fail("cannot assign nil to string")
            return NO_VALUE if kind in ("value", None) else None
        if isinstance(node, _Field):
            value = self.eval_field_chain(dot, dot, node, node.ident, (node,), None)
            self.arg_wrapped = self.last_wrapped
            return self.validate(value, kind)
        if isinstance(node, _Variable):
            value = self.eval_variable(dot, node, (), None)
            self.arg_wrapped = self.last_wrapped if len(node.ident) > 1 else self.var_entry(node.ident[0])[2]
            return self.validate(value, kind)
        if isinstance(node, _Pipe):
            return self.validate(self.eval_pipeline(dot, node), kind)
        if isinstance(node, _Identifier):
            return self.validate(self.eval_function(dot, node, node, (node,), None), kind)
        if isinstance(node, _Chain):
            value = self.eval_chain(dot, node, (), None)
            self.arg_wrapped = self.last_wrapped
            return self.validate(value, kind)
        if kind == "string":
            if isinstance(node, _String):
                return node.text
            self.fail(f"expected string; found {node}")
        if isinstance(node, _Bool):
            return node.value
        if isinstance(node, _Number):
            return self.ideal_constant(node)
        if isinstance(node, _String):
            return node.text
        self.fail(f"can't handle assignment of {node} to empty interface argument")  # pragma: no cover

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "not":
            return not _truth(args[0])
        if name == "len":
            return _length(args[0])
        if name == "index":
            return _index(args[0], args[1:])
        if name == "eq":
            return _eq(args[0], args[1:])
        if name == "ne":
            return not _eq(args[0], args[1:])
        if name == "lt":
            return _lt(args[0], args[1])
        if name == "le":
            return _lt(args[0], args[1]) or _eq(args[0], args[1:])
        if name == "gt":
            return not (_lt(args[0], args[1]) or _eq(args[0], args[1:]))
        if name == "ge":
            return not _lt(args[0], args[1])
        if name == "call":
            return _call(args[0], args[1:])
        if name == "print":
            return sprint(*args)
        if name == "println":
            return sprintln(*args)
        if name == "printf":
            return sprintf(args[0], *args[1:])
        if name == "html":
            return _html_escape(_eval_args(args))
        if name == "js":
            return _js_escape(_eval_args(args))
        if name == "urlquery":
            return urllib.parse.quote_plus(_eval_args(args), safe="")
        if name == "json":
            return marshal_json(args[0])
        if name in ("currentDate", "yesterdayDate"):
            if self.now is None:
                raise _FuncError("the current date was not given (pass now=)")
            day = self.now.date() - timedelta(days=1 if name == "yesterdayDate" else 0)
            return day.isoformat()
        if name == "toTypeScriptType":
            hook = getattr(args[0], "typescript_type", None)
            return hook() if hook is not None else "any"
        raise _FuncError(f"unknown function {name}")  # pragma: no cover


def _printable(value: Any) -> str:
    if value is NO_VALUE:
        return "<no value>"
    return sprint_value(value)


def _indirect_interface(value: Any) -> Any:
    return NO_VALUE if value is None else value


def _truth(value: Any) -> bool:
    if value is NO_VALUE or value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, Struct):
        return True
    if isinstance(value, str | bytes | bytearray | list | tuple | Mapping):
        return len(value) > 0
    return True


def _length(item: Any) -> int:
    if item is None:
        raise _FuncError("len of nil pointer")
    if item is NO_VALUE:
        raise _FuncError("reflect: call of reflect.Value.Type on zero Value")
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogateescape"))
    if isinstance(item, bytes | bytearray | list | tuple | Mapping) and not isinstance(item, Struct):
        return len(item)
    raise _FuncError(f"len of type {go_type_name(item)}")


def _index_arg(index: Any, cap: int) -> int:
    if index is NO_VALUE or index is None:
        raise _FuncError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _FuncError(f"cannot index slice/array with type {go_type_name(index)}")
    if index < 0 or index > cap:
        raise _FuncError(f"index out of range: {index}")
    return index


def _index(item: Any, indexes: Sequence[Any]) -> Any:
    item = _indirect_interface(item)
    if item is NO_VALUE:
        raise _FuncError("index of untyped nil")
    for index in indexes:
        index = _indirect_interface(index)
        if item is None:
            raise _FuncError("index of nil pointer")
        if isinstance(item, str | bytes | bytearray | list | tuple):
            raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
            x = _index_arg(index, len(raw))
            if x >= len(raw):
                raise _FuncError("reflect: slice index out of range")
            item = raw[x]
        elif isinstance(item, Mapping) and not isinstance(item, Struct):
            if index is NO_VALUE:
                raise _FuncError("value is nil; should be of type string")
            if not isinstance(index, str):
                raise _FuncError(f"value has type {go_type_name(index)}; should be string")
            item = item.get(index)
        else:
            raise _FuncError(f"can't index item of type {go_type_name(item)}")
    return item


def _slice_index(index: Any, cap: int, wrapped: bool) -> int:
    if wrapped:
        raise _FuncError("cannot index slice/array with type interface {}")
    return _index_arg(index, cap)


def _holds_interface(container: Any, element: Any) -> bool:
    """Whether Go sees this element of this container inside an interface{}: values of map[string]any
    and []any do, the typed slices and maps of Ollama's values (Slice, JSONList, structs) do not."""
    return not isinstance(element, Struct) and _holds_interfaces(container)


def _holds_interfaces(container: Any) -> bool:
    """Whether this container's elements are interface{} values (unless they are structs)."""
    if isinstance(container, Slice | bytes | bytearray):
        return False
    return isinstance(container, Mapping | list | tuple)


def _slice(item: Any, indexes: Sequence[Any], wrapped: Sequence[bool]) -> Any:
    """Go's slice builtin; `wrapped` marks indexes still inside an interface{}, which it refuses."""
    item = _indirect_interface(item)
    if item is NO_VALUE:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        raw = item.encode("utf-8", "surrogateescape")
        bounds = [0, len(raw)]
        for i, index in enumerate(indexes):
            x = _slice_index(index, len(raw), wrapped[i])
            if i < 2:
                bounds[i] = x
        if bounds[0] > bounds[1]:
            raise _FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
        return raw[bounds[0] : bounds[1]].decode("utf-8", "replace")
    if isinstance(item, list | tuple | bytes | bytearray):
        idx = [0, len(item), len(item)]
        for i, index in enumerate(indexes):
            idx[i] = _slice_index(index, len(item), wrapped[i])
        if idx[0] > idx[1]:
            raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
        if len(indexes) == 3 and idx[1] > idx[2]:
            raise _FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
        part = item[idx[0] : idx[1]]
        return type(item)(part) if isinstance(item, Slice) else part
    raise _FuncError(f"can't slice item of type {go_type_name(item)}")


def _basic_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "invalid"


def _comparable(value: Any) -> bool:
    if isinstance(value, Struct):
        return all(_comparable(v) and not isinstance(v, list | tuple | Mapping) for v in value.values)
    return not isinstance(value, list | tuple | Mapping | bytes | bytearray)


def _eq(arg1: Any, others: Sequence[Any]) -> bool:
    arg1 = _indirect_interface(arg1)
    if not others:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in others:
        arg = _indirect_interface(arg)
        k2 = _basic_kind(arg)
        if k1 != k2:
            if arg1 is not NO_VALUE and arg is not NO_VALUE:
                raise _FuncError("incompatible types for comparison")
            continue
        if k1 != "invalid":
            if arg1 == arg:
                return True
            continue
        if arg1 is NO_VALUE or arg is NO_VALUE:
            if (arg1 is NO_VALUE) == (arg is NO_VALUE):
                return True
            continue
        if _go_kind(arg1) != _go_kind(arg):
            raise _FuncError(
                f"non-comparable types {sprint_value(arg1)}: {go_type_name(arg1)}, "
                f"{go_type_name(arg)}: {sprint_value(arg)}"
            )
        if not _comparable(arg):
            raise _FuncError(f"non-comparable type {sprint_value(arg)}: {go_type_name(arg)}")
        if type(arg1) is type(arg) and arg1 == arg:
            return True
    return False


def _go_kind(value: Any) -> str:
    if isinstance(value, Struct):
        return "struct"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple | bytes | bytearray):
        return "slice"
    return type(value).__name__


def _lt(arg1: Any, arg2: Any) -> bool:
    arg1 = _indirect_interface(arg1)
    arg2 = _indirect_interface(arg2)
    k1 = _basic_kind(arg1)
    k2 = _basic_kind(arg2)
    if k1 == "invalid" or k2 == "invalid":
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    if k1 == "bool":
        raise _FuncError("invalid type for comparison")
    if k1 == "string":
        return bool(arg1.encode("utf-8", "surrogateescape") < arg2.encode("utf-8", "surrogateescape"))
    return bool(arg1 < arg2)


def _call(fn: Any, args: Sequence[Any]) -> Any:
    fn = _indirect_interface(fn)
    if fn is NO_VALUE:
        raise _FuncError("call of nil")
    if not callable(fn):
        raise _FuncError(f"non-function of type {go_type_name(fn)}")
    try:
        return fn(*[None if a is NO_VALUE else a for a in args])
    except TemplateError:
        raise
    except Exception as err:  # the function is the caller's; its failure is the template's error
        raise _FuncError(str(err)) from err
