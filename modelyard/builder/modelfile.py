"""Ollama's Modelfile: parse its text into a `Modelfile` value, and format one back.

The grammar is Ollama's (`parser/parser.go`, reference/ollama.md §1.3), so a Modelfile that Ollama
accepts means the same here:

- one instruction per line, keyword first, case-insensitive, then a space or tab;
- `#` starts a comment only at the start of a line; after an instruction it is part of the value;
- an unquoted value runs to the end of the line and is trimmed of spaces and tabs;
- a value in `"…"` or `\"\"\"…\"\"\"` may span lines and keeps its inner spaces; it ends at the first
  line end where the text so far, trimmed, ends with the closing quote (so `\"\"\"say "hi"\"\"\"` is
  `say "hi"`).

Where modelyard departs from Ollama:
- exactly one FROM (Ollama merges several); DRAFT, RENDERER and PARSER are refused by name;
- a missing value is an error (`SYSTEM` alone, `FROM ""`, `ADAPTER ""`), not an empty string;
  an empty one (`SYSTEM ""`, `TEMPLATE ""`, `LICENSE ""`) is not given, with a warning (as in
  Ollama, whose create request drops empty fields: the base's stays);
- every ADAPTER applies (llama.cpp stacks LoRA adapters; in Ollama the last line wins);
- blanks between PARAMETER (or MESSAGE) and its name are skipped (Ollama reads an empty name);
- characters Go's `strconv.IsPrint` rejects (zero-width joiners in emoji, NBSP) are kept, not dropped;
- undecodable bytes are an error, not U+FFFD.

Everything is pure: no I/O, no logging. Every error is a ModelfileError with the 1-based line and
column of the token at fault.
"""

from __future__ import annotations

import codecs
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, ParamSpec, TypeVar

from modelyard.builder.params import (
    Parameters,
    ParameterValue,
    coerce_parameter,
    deprecation_warning,
    is_deprecated,
    parameter_type,
    validate_parameters,
)
from modelyard.builder.prompt import check_template
from modelyard.errors import ModelfileError, TemplateError

MESSAGE_ROLES: Final = ("system", "user", "assistant")
INSTRUCTIONS: Final = ("FROM", "TEMPLATE", "SYSTEM", "PARAMETER", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES")
# Ollama accepts these too (speculative decoding, its own prompt renderers); modelyard has neither.
_UNSUPPORTED_INSTRUCTIONS: Final = ("DRAFT", "RENDERER", "PARSER")

_BLANKS: Final = " \t"
_LINE_BREAK_CHARS: Final = "\r\n"
_WORD_END = re.compile(r"[ \t\r\n]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_CHAR = re.compile(r"[\r\n]")
_KEYWORD = re.compile(r"[A-Za-z]*")
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]+")
_TRIPLE_QUOTE: Final = '"""'
_QUOTE: Final = '"'
# golang.org/x/mod/semver: vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]], no leading zeros in numbers.
_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRERELEASE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"{_NUMBER}(?:\.{_NUMBER}|\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRERELEASE_ID}(?:\.{_PRERELEASE_ID})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?",
    re.ASCII,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Message:
    role: str  # one of MESSAGE_ROLES
    content: str


Location = tuple[str, int, int]  # file, 1-based line and column


@dataclass(frozen=True)
class Modelfile:
    """What a Modelfile says, in either syntax. Two Modelfiles that mean the same compare equal.

    `parameters` holds typed values (`stop` is a tuple of strings, in the order written); it is a
    hashable `Parameters` mapping whatever mapping was passed in. `requires` is kept without the "v"
    that Ollama also allows in front of it.
    """

    from_: str
    parameters: Mapping[str, ParameterValue] = field(default_factory=Parameters)
    template: str | None = None
    system: str | None = None
    adapters: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    messages: tuple[Message, ...] = ()
    requires: str | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Where FROM's and each ADAPTER's value were written (file, line, column), for the errors of
    # resolving them; empty when not parsed from a file.
    from_at: Location | None = field(default=None, compare=False)
    adapters_at: tuple[Location, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Freeze what a caller may hand over as lists or dicts, so that equality and hashing work.
        object.__setattr__(self, "parameters", Parameters(self.parameters))
        for name in ("adapters", "licenses", "messages", "warnings", "adapters_at"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.requires is not None and self.requires.startswith("v"):
            object.__setattr__(self, "requires", self.requires[1:])


def parse_requires(version: str) -> str:
    """A REQUIRES version without its optional "v", or a ModelfileError if it is not semver."""
    bare = version[1:] if version.startswith("v") else version
    if not _SEMVER.fullmatch(bare):
        raise ModelfileError(f"{version!r} is not a valid semver version (e.g. 0.14.0)")
    return bare


# --- decoding ------------------------------------------------------------------------------------------

_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def parse_bytes(data: bytes, file: str = "Modelfile") -> Modelfile:
    """Parse a Modelfile read as bytes: UTF-8, or UTF-8/UTF-16 (LE or BE) with a byte-order mark."""
    return parse(decode_modelfile(data, file), file)


def decode_modelfile(data: bytes, file: str = "Modelfile") -> str:
    """The text of a Modelfile file, decoded as Ollama does (`unicode.BOMOverride` over UTF-8)."""
    encoding, body = "utf-8", data
    for bom, bom_encoding in _BOMS:
        if data.startswith(bom):
            encoding, body = bom_encoding, data[len(bom) :]
            break
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as error:
        line, column = _position_of_byte(body, error.start, encoding)
        raise ModelfileError(
            f"the file is not valid {encoding.upper()} (byte {body[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8",
            file=file,
            line=line,
            column=column,
        ) from None


def _position_of_byte(body: bytes, offset: int, encoding: str) -> tuple[int, int]:
    before = body[:offset].decode(encoding, errors="replace")
    line_starts = _line_starts(before)
    return len(line_starts), len(before) - line_starts[-1] + 1


def _line_starts(text: str) -> list[int]:
    return [0, *(match.end() for match in _LINE_BREAK.finditer(text))]


# --- scanning ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    text: str
    start: int  # index into the source where the token (its opening quote, if quoted) starts


@dataclass(frozen=True)
class _Instruction:
    keyword: str  # upper case, one of INSTRUCTIONS
    start: int
    argument: _Token | None  # the parameter name or message role
    value: _Token


class _Source:
    """The text being parsed, with positions turned into line and column for errors."""

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self._line_starts = _line_starts(text)

    def line(self, index: int) -> int:
        return bisect_right(self._line_starts, index)

    def position(self, index: int) -> tuple[int, int]:
        """The 1-based line and column of `index`."""
        line = self.line(index)
        return line, index - self._line_starts[line - 1] + 1

    def error(self, message: str, index: int) -> ModelfileError:
        line, column = self.position(index)
        return ModelfileError(message, file=self.file, line=line, column=column)

    def skip_blanks(self, index: int) -> int:
        while index < len(self.text) and self.text[index] in _BLANKS:
            index += 1
        return index

    def at_line_end(self, index: int) -> bool:
        return index >= len(self.text) or self.text[index] in _LINE_BREAK_CHARS

    def line_end(self, index: int) -> int:
        """The index of the line break at or after `index`, or the end of the text."""
        return _line_end(self.text, index)

    def after_line_break(self, index: int) -> int:
        """Past the line break at `index` ("\\r\\n" is one break)."""
        if self.text.startswith("\r\n", index):
            return index + 2
        return index + 1

    def word(self, index: int) -> _Token:
        """The text from `index` to the next blank or line end."""
        end = _WORD_END.search(self.text, index)
        stop = end.start() if end else len(self.text)
        return _Token(self.text[index:stop], index)


def _line_end(text: str, index: int) -> int:
    found = _LINE_BREAK_CHAR.search(text, index)
    return found.start() if found else len(text)


def _instructions(source: _Source) -> Iterable[_Instruction]:
    index = 0
    while index < len(source.text):
        index = source.skip_blanks(index)
        if source.at_line_end(index):
            index = source.after_line_break(index)
        elif source.text[index] == "#":
            index = source.after_line_break(source.line_end(index))
        else:
            instruction, index = _read_instruction(source, index)
            yield instruction


def _read_instruction(source: _Source, start: int) -> tuple[_Instruction, int]:
    keyword = _read_keyword(source, start)
    index = source.skip_blanks(start + len(keyword))
    argument = None
    if keyword in ("PARAMETER", "MESSAGE"):
        argument = _read_argument(source, index, keyword)
        index = source.skip_blanks(argument.start + len(argument.text))
        label = f"{keyword} {argument.text}"
    else:
        label = keyword
    value, index = _read_value(source, index, label)
    return _Instruction(keyword, start, argument, value), index


def _read_keyword(source: _Source, index: int) -> str:
    word = source.word(index)
    letters = _KEYWORD.match(word.text)
    keyword = (letters.group() if letters else "").upper()
    after_keyword = index + len(keyword)
    if keyword in INSTRUCTIONS:
        if len(keyword) < len(word.text):
            found = word.text[len(keyword)]
            if found == ":":  # `from: …`: YAML, in a file the Modelfile grammar was chosen for
                raise source.error(
                    "this looks like the YAML form of a Modelfile: give the file a .yaml or .yml name",
                    after_keyword,
                )
            raise source.error(f"expected a space or tab after {keyword}, found {found!r}", after_keyword)
        if source.at_line_end(after_keyword):
            raise source.error(f"expected a space or tab after {keyword}, then its value", after_keyword)
        return keyword
    if keyword in _UNSUPPORTED_INSTRUCTIONS and len(keyword) == len(word.text):
        raise source.error(
            f"modelyard does not support {keyword}; the instructions it supports are {_instruction_list()}",
            index,
        )
    raise source.error(f"unknown instruction {word.text!r}; expected one of {_instruction_list()}", index)


def _instruction_list() -> str:
    return ", ".join(INSTRUCTIONS)


def _read_argument(source: _Source, index: int, keyword: str) -> _Token:
    what = "a parameter name" if keyword == "PARAMETER" else "a message role"
    if source.at_line_end(index):
        raise source.error(f"expected {what} after {keyword}", index)
    argument = source.word(index)
    if keyword == "PARAMETER":
        _check_parameter_name(source, argument)
    elif argument.text not in MESSAGE_ROLES:
        raise source.error(
            f"message role must be one of {', '.join(MESSAGE_ROLES)}, got {argument.text!r}", index
        )
    after = argument.start + len(argument.text)
    if source.at_line_end(source.skip_blanks(after)):
        raise source.error(f"expected a value after {keyword} {argument.text}", after)
    return argument


def _check_parameter_name(source: _Source, name: _Token) -> None:
    valid = _PARAMETER_NAME.match(name.text)
    valid_length = valid.end() if valid else 0
    if valid_length < len(name.text):
        raise source.error(
            f"a parameter name has only letters, digits and '_'; found {name.text[valid_length]!r} "
            f"in {name.text!r}",
            name.start + valid_length,
        )


def _read_value(source: _Source, index: int, label: str) -> tuple[_Token, int]:
    """The value starting at `index` (after the blanks), and the index of the line end after it."""
    if source.at_line_end(index):
        raise source.error(f"expected a value after {label}", index)
    for quote in (_TRIPLE_QUOTE, _QUOTE):
        if source.text.startswith(quote, index):
            return _read_quoted(source, index, quote, label)
    end = source.line_end(index)
    return _Token(source.text[index:end].rstrip(_BLANKS), index), end


def _read_quoted(source: _Source, opening: int, quote: str, label: str) -> tuple[_Token, int]:
    closing = _find_closing_quote(source.text, opening, quote)
    if closing is None:
        raise source.error(_unterminated_message(source, opening, quote, label), opening)
    content_end, line_end = closing
    return _Token(source.text[opening + len(quote) : content_end], opening), line_end


def _find_closing_quote(text: str, opening: int, quote: str) -> tuple[int, int] | None:
    """Where the value quoted at `opening` ends, as Ollama decides it: (end of content, end of line).

    Ollama checks at each line end whether the text so far, trimmed, starts and ends with the quote
    (and is long enough to hold both). So a quote that is not last on its line does not close; and a
    line inside a value may not end with the quote. `format` uses this too, to prove its output reads back.
    """
    minimum = 2 * len(quote)
    search_from = opening
    while True:
        line_end = _line_end(text, search_from)
        trimmed_end = line_end
        while trimmed_end > opening and text[trimmed_end - 1] in _BLANKS:
            trimmed_end -= 1
        if trimmed_end - opening >= minimum and text.startswith(quote, trimmed_end - len(quote)):
            return trimmed_end - len(quote), line_end
        if line_end == len(text):
            return None
        search_from = line_end + 1


def _unterminated_message(source: _Source, opening: int, quote: str, label: str) -> str:
    message = f"expected a closing {quote} for the {label} that starts at line {source.line(opening)}"
    rest_of_line = source.text[opening + len(quote) : source.line_end(opening)]
    if quote in rest_of_line:
        message += f" (a closing {quote} counts only at the end of a line)"
    return message


def checked_template(text: str) -> str:
    """The TEMPLATE text, once it parses as the template a request will run."""
    try:
        check_template(text)
    except TemplateError as error:
        raise ModelfileError(f"TEMPLATE does not parse: {error}") from None
    return text


def empty_text_warning(keyword: str, where: Location) -> str:
    """An empty TEMPLATE, SYSTEM or LICENSE is not given, in both forms: Ollama's create request
    drops empty fields, so `SYSTEM ""` keeps the base's system prompt."""
    file, line, column = where
    base = f"the base model's {keyword.lower()} stays"
    return f"{file}:{line}:{column}: an empty {keyword} is ignored, as in Ollama: {base}"


# --- building the value --------------------------------------------------------------------------------


@dataclass
class _Draft:
    """What the instructions read so far say; turned into a Modelfile once the text is read."""

    source: _Source
    from_: str | None = None
    from_line: int = 0
    template: str | None = None
    system: str | None = None
    requires: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    from_at: Location | None = None
    adapters_at: list[Location] = field(default_factory=list)

    def add(self, instruction: _Instruction) -> None:
        value = instruction.value
        match instruction.keyword:
            case "FROM":
                self._set_from(instruction)
            case "TEMPLATE":
                given = self._given(value, "TEMPLATE")
                self.template = self._located(value, checked_template, value.text) if given else None
            case "SYSTEM":
                self.system = value.text if self._given(value, "SYSTEM") else None
            case "ADAPTER":
                self.adapters.append(self._not_empty(value, "ADAPTER needs a path"))
                self.adapters_at.append(self._at(value))
            case "LICENSE":
                if self._given(value, "LICENSE"):
                    self.licenses.append(value.text)
            case "REQUIRES":
                self.requires = self._located(value, parse_requires, value.text)
            case "MESSAGE":
                assert instruction.argument is not None  # _read_instruction reads a role for MESSAGE
                self.messages.append(Message(instruction.argument.text, value.text))
            case "PARAMETER":
                assert instruction.argument is not None
                self._add_parameter(instruction.argument, value)

    def _set_from(self, instruction: _Instruction) -> None:
        if self.from_ is not None:
            raise self.source.error(
                f"a Modelfile has exactly one FROM, and there is already one at line {self.from_line}",
                instruction.start,
            )
        self.from_ = self._not_empty(instruction.value, "FROM needs a model name or path")
        self.from_line = self.source.line(instruction.start)
        self.from_at = self._at(instruction.value)

    def _at(self, token: _Token) -> Location:
        return (self.source.file, *self.source.position(token.start))

    def _given(self, value: _Token, keyword: str) -> bool:
        """Whether a text value is given: an empty one is not (empty_text_warning)."""
        if value.text:
            return True
        line, column = self.source.position(value.start)
        self.warnings.append(empty_text_warning(keyword, (self.source.file, line, column)))
        return False

    def _not_empty(self, value: _Token, message: str) -> str:
        if not value.text:
            raise self.source.error(message, value.start)
        return value.text

    def _add_parameter(self, name: _Token, value: _Token) -> None:
        if is_deprecated(name.text):
            line, column = self.source.position(name.start)
            self.warnings.append(f"{self.source.file}:{line}:{column}: {deprecation_warning(name.text)}")
            return
        self._located(name, parameter_type, name.text)
        typed = self._located(value, coerce_parameter, name.text, value.text)
        if isinstance(typed, str) and name.text == "stop":
            self.stop.append(typed)
        else:
            self.parameters[name.text] = typed

    def _located(self, token: _Token, check: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a check that knows nothing of positions, and place its error at `token`."""
        try:
            return check(*args, **kwargs)
        except ModelfileError as error:
            raise self.source.error(error.message, token.start) from None

    def build(self) -> Modelfile:
        if self.from_ is None:
            raise ModelfileError(
                "no FROM line; a Modelfile must name its base model or GGUF file with FROM",
                file=self.source.file,
            )
        parameters: dict[str, ParameterValue] = dict(self.parameters)
        if self.stop:
            parameters["stop"] = tuple(self.stop)
        return Modelfile(
            from_=self.from_,
            parameters=parameters,
            template=self.template,
            system=self.system,
            adapters=tuple(self.adapters),
            licenses=tuple(self.licenses),
            messages=tuple(self.messages),
            requires=self.requires,
            warnings=tuple(self.warnings),
            from_at=self.from_at,
            adapters_at=tuple(self.adapters_at),
        )


def parse(text: str, file: str = "Modelfile") -> Modelfile:
    """Parse Modelfile text; raises ModelfileError, and nothing else, for any text that is not one."""
    if text.startswith("\ufeff"):  # a BOM left by decoding with "utf-8" instead of "utf-8-sig"
        text = text[1:]
    draft = _Draft(_Source(text, file))
    for instruction in _instructions(draft.source):
        draft.add(instruction)
    return draft.build()


# --- formatting ----------------------------------------------------------------------------------------


def format(m: Modelfile) -> str:
    """The canonical text of `m`: FROM, TEMPLATE, SYSTEM, PARAMETERs by name, ADAPTERs, LICENSEs,
    MESSAGEs, REQUIRES. `parse(format(m)) == m`; a value that no quoting can carry is a ModelfileError.
    """
    _check_paths(m)
    lines = [f"FROM {_quoted(m.from_, 'FROM')}"]
    if m.template is not None:
        lines.append(f"TEMPLATE {_quoted(m.template, 'TEMPLATE')}")
    if m.system is not None:
        lines.append(f"SYSTEM {_quoted(m.system, 'SYSTEM')}")
    lines.extend(_parameter_lines(m.parameters))
    lines.extend(f"ADAPTER {_quoted(adapter, 'ADAPTER')}" for adapter in m.adapters)
    lines.extend(f"LICENSE {_quoted(text, 'LICENSE')}" for text in m.licenses)
    lines.extend(_message_line(message) for message in m.messages)
    if m.requires is not None:
        lines.append(f"REQUIRES {_canonical_requires(m.requires)}")
    return "\n".join(lines) + "\n"


def _check_paths(m: Modelfile) -> None:
    if not m.from_:
        raise ModelfileError("FROM needs a model name or path, and this Modelfile has an empty one")
    if "" in m.adapters:
        raise ModelfileError("ADAPTER needs a path, and this Modelfile has an empty one")


def _canonical_requires(version: str) -> str:
    # Modelfile keeps requires without its "v"; a version that still has one would not read back equal.
    if parse_requires(version) != version:
        raise ModelfileError(f"requires {version!r} is not a semver version without a 'v' (e.g. 0.14.0)")
    return version


def _parameter_lines(parameters: Mapping[str, ParameterValue]) -> list[str]:
    lines: list[str] = []
    for name, value in sorted(validate_parameters(parameters).items()):
        if isinstance(value, tuple):
            if not value:
                raise ModelfileError("an empty stop list cannot be written as PARAMETER lines")
            lines.extend(f"PARAMETER stop {_quoted(stop, 'PARAMETER stop')}" for stop in value)
        else:
            lines.append(f"PARAMETER {name} {_parameter_text(value)}")
    return lines


def _parameter_text(value: int | float | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value  # a duration: a bare token that reads back as it is
    return repr(value)  # repr of a float reads back to the same float


def _message_line(message: Message) -> str:
    if message.role not in MESSAGE_ROLES:
        raise ModelfileError(f"message role must be one of {', '.join(MESSAGE_ROLES)}, got {message.role!r}")
    return f"MESSAGE {message.role} {_quoted(message.content, f'MESSAGE {message.role}')}"


def _quoted(value: str, label: str) -> str:
    """`value` bare when it reads back unchanged, else in triple quotes, else a ModelfileError."""
    if _reads_back_bare(value):
        return value
    quoted = _TRIPLE_QUOTE + value + _TRIPLE_QUOTE
    if _find_closing_quote(quoted, 0, _TRIPLE_QUOTE) == (len(quoted) - len(_TRIPLE_QUOTE), len(quoted)):
        return quoted
    # Single quotes would not help: a line that ends with """ ends with " as well.
    raise ModelfileError(
        f"the {label} value cannot be written in a Modelfile: a line inside it ends with "
        f"{_TRIPLE_QUOTE}, which would close the quotes early ({_excerpt(value)}); use the YAML form"
    )


def _reads_back_bare(value: str) -> bool:
    return (
        value != ""
        and not value[0].isspace()
        and not value[-1].isspace()
        and _QUOTE not in value
        and not any(char in value for char in _LINE_BREAK_CHARS)
    )


def _excerpt(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")
