from __future__ import annotations

import codecs
import contextlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from modelyard.builder.modelfile import (
    MESSAGE_ROLES,
    Message,
    Modelfile,
    format,
    parse,
    parse_bytes,
    parse_requires,
)
from modelyard.builder.params import DEPRECATED_PARAMETERS, MINIMUMS
from modelyard.builder.prompt import check_template
from modelyard.errors import ModelfileError, TemplateError

BOUNDED = settings(max_examples=300, deadline=None)


def only_from(value: str = "llama3") -> Modelfile:
    return Modelfile(from_=value)


# --- parsing: what a good Modelfile means ----------------------------------------------------------------

GOOD = [
    pytest.param("FROM llama3", only_from(), id="minimal"),
    pytest.param("FROM llama3\n", only_from(), id="trailing-newline"),
    pytest.param("from llama3", only_from(), id="keyword-lower"),
    pytest.param("FrOm llama3", only_from(), id="keyword-mixed-case"),
    pytest.param("FROM\tllama3", only_from(), id="keyword-then-tab"),
    pytest.param("   FROM llama3", only_from(), id="leading-blanks"),
    pytest.param("FROM    llama3", only_from(), id="several-blanks-after-keyword"),
    pytest.param("FROM /what/is/the path \t", only_from("/what/is/the path"), id="unquoted-trimmed"),
    pytest.param("\n\n  \nFROM llama3\n\n", only_from(), id="blank-lines"),
    pytest.param("FROM llama3\r\nSYSTEM hi\r\n", Modelfile("llama3", system="hi"), id="crlf"),
    pytest.param("FROM llama3\rSYSTEM hi", Modelfile("llama3", system="hi"), id="lone-cr"),
    pytest.param("\ufeffFROM llama3", only_from(), id="bom-in-text"),
    # comments
    pytest.param("# a comment\nFROM llama3", only_from(), id="comment"),
    pytest.param("   # indented comment\nFROM llama3", only_from(), id="comment-indented"),
    pytest.param(
        "\t#tab\nFROM llama3\n#PARAMETER temperature hot", only_from(), id="comment-hides-instruction"
    ),
    pytest.param("FROM llama3 # not a comment", only_from("llama3 # not a comment"), id="hash-in-value"),
    pytest.param(
        "FROM llama3\nSYSTEM #1 rule", Modelfile("llama3", system="#1 rule"), id="hash-starts-value"
    ),
    # quotes
    pytest.param('FROM "     model 1"', only_from("     model 1"), id="double-quotes-keep-spaces"),
    pytest.param('FROM """  model 1 """', only_from("  model 1 "), id="triple-quotes-keep-spaces"),
    # Empty is not given (Ollama's create request drops it): the base's stays; a warning says so.
    pytest.param('FROM x\nSYSTEM ""', Modelfile("x"), id="double-quotes-empty"),
    pytest.param('FROM x\nSYSTEM """"""', Modelfile("x"), id="triple-quotes-empty"),
    pytest.param('FROM x\nSYSTEM a\nSYSTEM ""', Modelfile("x"), id="empty-after-one"),
    pytest.param(
        'FROM x\nTEMPLATE ""\nLICENSE ""\nLICENSE L', Modelfile("x", licenses=("L",)), id="empty-texts"
    ),
    pytest.param('FROM x\nSYSTEM "a\nb\n"', Modelfile("x", system="a\nb\n"), id="double-quotes-multiline"),
    pytest.param(
        'FROM x\nTEMPLATE """{{ .System }}\n\n  {{ .Prompt }}\n"""',
        Modelfile("x", template="{{ .System }}\n\n  {{ .Prompt }}\n"),
        id="triple-quotes-multiline",
    ),
    pytest.param(
        'FROM x\nSYSTEM """say "hi" """', Modelfile("x", system='say "hi" '), id="triple-inner-quote"
    ),
    pytest.param(
        'FROM x\nSYSTEM """say "hi""""', Modelfile("x", system='say "hi"'), id="triple-ends-in-quote"
    ),
    pytest.param(
        'FROM x\nSYSTEM """"hi" she said"""', Modelfile("x", system='"hi" she said'), id="triple-starts-quote"
    ),
    pytest.param('FROM x\nSYSTEM """a""" b"""', Modelfile("x", system='a""" b'), id="triple-inside-a-line"),
    pytest.param('FROM x\nSYSTEM "x"  \t', Modelfile("x", system="x"), id="blanks-after-closing-quote"),
    # Ollama's rule: a quote closes only at the end of a line, so inner quotes are part of the value.
    pytest.param(
        'FROM x\nSYSTEM "a" b "c"', Modelfile("x", system='a" b "c'), id="double-quote-closes-at-line-end"
    ),
    pytest.param('FROM x\nSYSTEM "a" b\nc"', Modelfile("x", system='a" b\nc'), id="double-quote-next-line"),
    pytest.param('FROM x\nSYSTEM a "b"', Modelfile("x", system='a "b"'), id="quote-inside-unquoted"),
    pytest.param('FROM x\nSYSTEM "a\r\nb"', Modelfile("x", system="a\r\nb"), id="quoted-keeps-crlf"),
    # every instruction
    pytest.param("FROM x\nTEMPLATE {{ .Prompt }}", Modelfile("x", template="{{ .Prompt }}"), id="template"),
    pytest.param("FROM x\nSYSTEM Be brief.", Modelfile("x", system="Be brief."), id="system"),
    pytest.param(
        "FROM x\nADAPTER ./a.gguf\nADAPTER ./b.gguf",
        Modelfile("x", adapters=("./a.gguf", "./b.gguf")),
        id="adapters",
    ),
    pytest.param(
        'FROM x\nLICENSE MIT\nLICENSE """Apache\n2.0"""',
        Modelfile("x", licenses=("MIT", "Apache\n2.0")),
        id="licenses",
    ),
    pytest.param(
        'FROM x\nMESSAGE system Be brief.\nMESSAGE user hi\nMESSAGE assistant "hello"',
        Modelfile(
            "x",
            messages=(Message("system", "Be brief."), Message("user", "hi"), Message("assistant", "hello")),
        ),
        id="messages-every-role",
    ),
    pytest.param(
        'FROM x\nMESSAGE user ""', Modelfile("x", messages=(Message("user", ""),)), id="message-empty"
    ),
    pytest.param("FROM x\nREQUIRES 0.5.0", Modelfile("x", requires="0.5.0"), id="requires"),
    pytest.param("FROM x\nREQUIRES v0.5.0", Modelfile("x", requires="0.5.0"), id="requires-v-prefix"),
    pytest.param("FROM x\nREQUIRES 1", Modelfile("x", requires="1"), id="requires-major-only"),
    pytest.param(
        "FROM x\nREQUIRES 1.2.3-rc.1+build.5",
        Modelfile("x", requires="1.2.3-rc.1+build.5"),
        id="requires-full",
    ),
    pytest.param("FROM x\nPARAMETER temperature 0.5", Modelfile("x", {"temperature": 0.5}), id="parameter"),
    pytest.param(
        "FROM x\nPARAMETER   top_k    4  ", Modelfile("x", {"top_k": 4}), id="parameter-extra-blanks"
    ),
    pytest.param(
        'FROM x\nPARAMETER temperature "0.5"', Modelfile("x", {"temperature": 0.5}), id="parameter-quoted"
    ),
    pytest.param(
        'FROM x\nPARAMETER stop <a>\nPARAMETER stop "<b> "\nPARAMETER stop <a>',
        Modelfile("x", {"stop": ("<a>", "<b> ", "<a>")}),
        id="stop-accumulates-in-order",
    ),
    # last one wins for everything but stop
    pytest.param(
        "FROM x\nPARAMETER temperature 0.1\nPARAMETER temperature 0.9",
        Modelfile("x", {"temperature": 0.9}),
        id="parameter-last-wins",
    ),
    pytest.param("FROM x\nSYSTEM a\nSYSTEM b", Modelfile("x", system="b"), id="system-last-wins"),
    pytest.param("FROM x\nTEMPLATE a\nTEMPLATE b", Modelfile("x", template="b"), id="template-last-wins"),
    pytest.param(
        "FROM x\nREQUIRES 1.0.0\nREQUIRES 2.0.0", Modelfile("x", requires="2.0.0"), id="requires-last-wins"
    ),
    # order is free
    pytest.param(
        "PARAMETER top_k 4\nSYSTEM s\nFROM x", Modelfile("x", {"top_k": 4}, system="s"), id="from-last"
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse(text: str, expected: Modelfile) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_format_round_trips_the_table(text: str, expected: Modelfile) -> None:
    assert parse(format(expected)) == expected


# One line per valid name, value as Modelfile text and as the typed value it must give.
EVERY_PARAMETER = [
    ("num_keep", "4", 4),
    ("seed", "-1", -1),
    ("num_predict", "128", 128),
    ("top_k", "40", 40),
    ("top_p", "0.9", 0.9),
    ("min_p", "0.05", 0.05),
    ("typical_p", "1", 1.0),
    ("repeat_last_n", "64", 64),
    ("temperature", "0.7", 0.7),
    ("repeat_penalty", "1.1", 1.1),
    ("presence_penalty", "0.5", 0.5),
    ("frequency_penalty", "-0.5", -0.5),
    ("stop", "<end_of_turn>", ("<end_of_turn>",)),
    ("num_ctx", "8192", 8192),
    ("num_batch", "512", 512),
    ("num_gpu", "99", 99),
    ("main_gpu", "0", 0),
    ("use_mmap", "false", False),
    ("use_mlock", "true", True),
    ("num_thread", "8", 8),
    ("draft_num_predict", "4", 4),
    ("num_parallel", "2", 2),
]


@pytest.mark.parametrize(
    ("name", "text", "expected"), [pytest.param(*row, id=row[0]) for row in EVERY_PARAMETER]
)
def test_every_parameter_good(name: str, text: str, expected: object) -> None:
    m = parse(f"FROM x\nPARAMETER {name} {text}")
    assert m.parameters[name] == expected
    assert type(m.parameters[name]) is type(expected)
    assert parse(format(m)) == m


@pytest.mark.parametrize(
    "name", [pytest.param(name, id=name) for name, _, expected in EVERY_PARAMETER if name != "stop"]
)
def test_every_parameter_bad(name: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse(f"FROM x\nPARAMETER {name} not-a-value")
    error = caught.value
    assert (error.line, error.column) == (2, 12 + len(name))
    assert f"invalid value 'not-a-value' for parameter '{name}': expected " in error.message


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in sorted(DEPRECATED_PARAMETERS)])
def test_deprecated_parameter_warns_and_is_dropped(name: str) -> None:
    m = parse(f"FROM x\nPARAMETER temperature 1\n  PARAMETER {name} anything", file="dir/Modelfile")
    assert m.parameters == {"temperature": 1.0}
    assert m.warnings == (f"dir/Modelfile:3:13: parameter '{name}' is deprecated and was ignored",)


def test_warnings_do_not_take_part_in_equality() -> None:
    assert parse("FROM x\nPARAMETER mirostat 1") == only_from("x")


def test_modelfile_is_hashable_and_indexable() -> None:
    m = parse("FROM x\nPARAMETER temperature 0.5\nPARAMETER stop a")
    assert m.parameters["temperature"] == 0.5
    assert hash(m) == hash(parse("FROM x\nPARAMETER stop a\nPARAMETER temperature 0.5"))
    assert {m: 1}[Modelfile("x", {"stop": ("a",), "temperature": 0.5})] == 1


# --- parsing: errors, each with its line and column -----------------------------------------------------

ERRORS = [
    pytest.param("", 0, 0, "no FROM line", id="empty"),
    pytest.param("# only a comment\n\n", 0, 0, "no FROM line", id="only-comments"),
    pytest.param("SYSTEM hi", 0, 0, "no FROM line", id="no-from"),
    pytest.param(
        "FROM a\n\nfrom b", 3, 1, "exactly one FROM, and there is already one at line 1", id="two-froms"
    ),
    pytest.param("FROM a\r\nFROM b", 2, 1, "already one at line 1", id="two-froms-crlf"),
    pytest.param(
        "FROM\nSYSTEM x", 1, 5, "expected a space or tab after FROM, then its value", id="keyword-newline"
    ),
    pytest.param("FROM x\n  SYSTEM", 2, 9, "expected a space or tab after SYSTEM", id="keyword-at-end"),
    pytest.param("FROM; x", 1, 5, "expected a space or tab after FROM, found ';'", id="keyword-semicolon"),
    pytest.param(
        "from: x", 1, 5, "looks like the YAML form of a Modelfile: give the file a .yaml", id="yaml"
    ),
    pytest.param("FROM x\nSYSTEM   ", 2, 10, "expected a value after SYSTEM", id="no-value"),
    pytest.param('FROM ""', 1, 6, "FROM needs a model name or path", id="from-empty"),
    pytest.param('FROM x\nADAPTER """"""', 2, 9, "ADAPTER needs a path", id="adapter-empty"),
    pytest.param(
        "FROM x\nBADCOMMAND p v",
        2,
        1,
        "unknown instruction 'BADCOMMAND'; expected one of FROM,",
        id="unknown",
    ),
    pytest.param("FROM x\n  FROMAGE y", 2, 3, "unknown instruction 'FROMAGE'", id="unknown-prefix"),
    pytest.param("1FROM x", 1, 1, "unknown instruction '1FROM'", id="unknown-digit"),
    pytest.param("'FROM' x", 1, 1, "unknown instruction", id="single-quotes-mean-nothing"),
    pytest.param(
        "FROM x\nDRAFT ./d.gguf", 2, 1, "modelyard does not support DRAFT; the instructions", id="draft"
    ),
    pytest.param("FROM x\nrenderer qwen3", 2, 1, "does not support RENDERER", id="renderer"),
    pytest.param("FROM x\nPARSER qwen3", 2, 1, "does not support PARSER", id="parser"),
    # quotes
    pytest.param(
        'FROM x\n\nTEMPLATE """{{ .Prompt }}\n',
        3,
        10,
        'expected a closing """ for the TEMPLATE that starts at line 3',
        id="triple-unterminated",
    ),
    pytest.param(
        'FROM x\nSYSTEM """abc""', 2, 8, 'expected a closing """ for the SYSTEM', id="triple-two-quotes"
    ),
    pytest.param('FROM x\nSYSTEM """', 2, 8, 'expected a closing """', id="triple-alone"),
    pytest.param(
        'FROM x\nSYSTEM "abc\ndef',
        2,
        8,
        'expected a closing " for the SYSTEM that starts at line 2',
        id="double-unterminated",
    ),
    pytest.param('FROM x\nSYSTEM "', 2, 8, 'expected a closing "', id="double-alone"),
    pytest.param(
        'FROM x\nSYSTEM "a" b', 2, 8, "counts only at the end of a line", id="double-text-after-close"
    ),
    pytest.param(
        'FROM x\nMESSAGE user """hi',
        2,
        14,
        'expected a closing """ for the MESSAGE user that starts at line 2',
        id="message-unterminated",
    ),
    # PARAMETER
    pytest.param("FROM x\nPARAMETER", 2, 10, "expected a space or tab after PARAMETER", id="parameter-alone"),
    pytest.param(
        "FROM x\nPARAMETER  ", 2, 12, "expected a parameter name after PARAMETER", id="parameter-no-name"
    ),
    pytest.param(
        "FROM x\nPARAMETER temperature",
        2,
        22,
        "expected a value after PARAMETER temperature",
        id="parameter-no-value",
    ),
    pytest.param(
        "FROM x\nPARAMETER param1 \n",
        2,
        17,
        "expected a value after PARAMETER param1",
        id="parameter-blank-value",
    ),
    pytest.param(
        "FROM x\nPARAMETER Temperature 0.7",
        2,
        11,
        "unknown parameter 'Temperature' (did you mean 'temperature'?)",
        id="parameter-case-sensitive",
    ),
    pytest.param(
        "FROM x\nPARAMETER top-k 4",
        2,
        14,
        "only letters, digits and '_'; found '-' in 'top-k'",
        id="parameter-bad-name",
    ),
    pytest.param(
        "FROM x\nPARAMETER temperature 0.7 # warm",
        2,
        23,
        "invalid value '0.7 # warm' for parameter 'temperature': expected a number",
        id="parameter-hash-is-value",
    ),
    pytest.param(
        'FROM x\nPARAMETER num_ctx """4k"""',
        2,
        19,
        "invalid value '4k' for parameter 'num_ctx'",
        id="parameter-quoted-bad",
    ),
    pytest.param(
        "FROM x\nPARAMETER num_ctx -5",
        2,
        19,
        "parameter 'num_ctx' must be at least 1, got -5",
        id="parameter-below-its-minimum",  # built, every request refused it
    ),
    # MESSAGE
    pytest.param(
        "FROM x\nMESSAGE badguy hi",
        2,
        9,
        "message role must be one of system, user, assistant",
        id="role-unknown",
    ),
    pytest.param("FROM x\nMESSAGE tool hi", 2, 9, "got 'tool'", id="role-tool"),
    pytest.param("FROM x\nMESSAGE User hi", 2, 9, "got 'User'", id="role-case"),
    pytest.param("FROM x\nMESSAGE user:hi", 2, 9, "got 'user:hi'", id="role-colon"),
    pytest.param(
        "FROM x\nMESSAGE system", 2, 15, "expected a value after MESSAGE system", id="message-no-text"
    ),
    pytest.param("FROM x\nMESSAGE  ", 2, 10, "expected a message role after MESSAGE", id="message-no-role"),
    # TEMPLATE: parsed as a request will use it (Go, or Jinja for a chat template)
    pytest.param(
        'FROM x\nSYSTEM hi\nTEMPLATE "{{ .Prompt "',
        3,
        10,
        "TEMPLATE does not parse: template:1:1: unclosed action",
        id="template-go-unclosed",
    ),
    pytest.param("FROM x\nTEMPLATE {{ if .Prompt }}x", 2, 10, "unexpected EOF", id="template-go-no-end"),
    pytest.param(
        'FROM x\nTEMPLATE """{% for m in messages %}{{ m.content }}"""',
        2,
        10,
        "Jinja was looking for",
        id="template-jinja-unclosed",
    ),
    # REQUIRES
    pytest.param(
        "FROM x\nREQUIRES abc", 2, 10, "'abc' is not a valid semver version (e.g. 0.14.0)", id="requires-word"
    ),
    pytest.param("FROM x\nREQUIRES 1.2.3.4", 2, 10, "not a valid semver", id="requires-four-parts"),
    pytest.param("FROM x\nREQUIRES 01.2.3", 2, 10, "not a valid semver", id="requires-leading-zero"),
    pytest.param("FROM x\nREQUIRES vv1.0.0", 2, 10, "not a valid semver", id="requires-double-v"),
    pytest.param("FROM x\nREQUIRES 1.2-rc1", 2, 10, "not a valid semver", id="requires-short-prerelease"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), ERRORS)
def test_parse_error(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse(text, file="models/Modelfile")
    error = caught.value
    assert (error.line, error.column) == (line, column), error.message
    assert fragment in error.message
    assert error.file == "models/Modelfile"
    assert str(error).startswith(f"models/Modelfile:{line}:{column}: " if line else "models/Modelfile: ")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        pytest.param("0.14.0", "0.14.0", id="plain"),
        pytest.param("v0.14.0", "0.14.0", id="v"),
        pytest.param("1.2", "1.2", id="short"),
        pytest.param("1.0.0-alpha.1", "1.0.0-alpha.1", id="prerelease"),
        pytest.param("1.0.0+20130313144700", "1.0.0+20130313144700", id="build"),
    ],
)
def test_parse_requires(version: str, expected: str) -> None:
    assert parse_requires(version) == expected


# --- bytes ----------------------------------------------------------------------------------------------

TEXT_FOR_BYTES = 'FROM llama3\nSYSTEM """Grüße, 世界"""\n'
EXPECTED_FOR_BYTES = Modelfile("llama3", system="Grüße, 世界")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(TEXT_FOR_BYTES.encode(), id="utf-8"),
        pytest.param(codecs.BOM_UTF8 + TEXT_FOR_BYTES.encode(), id="utf-8-bom"),
        pytest.param(codecs.BOM_UTF16_LE + TEXT_FOR_BYTES.encode("utf-16-le"), id="utf-16-le-bom"),
        pytest.param(codecs.BOM_UTF16_BE + TEXT_FOR_BYTES.encode("utf-16-be"), id="utf-16-be-bom"),
    ],
)
def test_parse_bytes(data: bytes) -> None:
    assert parse_bytes(data) == EXPECTED_FOR_BYTES


@pytest.mark.parametrize(
    ("data", "line", "column"),
    [
        pytest.param(b"FROM x\nSYSTEM caf\xe9", 2, 11, id="latin-1"),
        pytest.param(b"\xff", 1, 1, id="lone-byte"),
        pytest.param(
            codecs.BOM_UTF16_LE + "FROM x".encode("utf-16-le") + b"\x00", 1, 7, id="utf-16-odd-length"
        ),
    ],
)
def test_parse_bytes_undecodable(data: bytes, line: int, column: int) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_bytes(data, file="Modelfile")
    assert (caught.value.line, caught.value.column) == (line, column)
    assert "save it as UTF-8" in caught.value.message


# --- formatting -----------------------------------------------------------------------------------------

FORMATTED = [
    pytest.param(only_from("./gemma.gguf"), "FROM ./gemma.gguf\n", id="bare"),
    pytest.param(only_from("a path"), "FROM a path\n", id="inner-space-bare"),
    pytest.param(only_from(" x"), 'FROM """ x"""\n', id="leading-space"),
    pytest.param(only_from("x\t"), 'FROM """x\t"""\n', id="trailing-tab"),
    pytest.param(Modelfile("x", system="a\nb"), 'FROM x\nSYSTEM """a\nb"""\n', id="newline"),
    pytest.param(Modelfile("x", system='say "hi"'), 'FROM x\nSYSTEM """say "hi""""\n', id="ends-in-quote"),
    pytest.param(Modelfile("x", system='"hi"'), 'FROM x\nSYSTEM """"hi""""\n', id="starts-with-quote"),
    pytest.param(Modelfile("x", system='a"""b'), 'FROM x\nSYSTEM """a"""b"""\n', id="triple-inside"),
    pytest.param(Modelfile("x", system="#1"), "FROM x\nSYSTEM #1\n", id="hash-bare"),
    pytest.param(
        Modelfile(
            "x",
            {"top_k": 4, "stop": ("b", "a"), "use_mmap": True, "temperature": 1},
            template="T",
            system="S",
            adapters=("a1", "a2"),
            licenses=("L1", "L2"),
            messages=(Message("user", "u"), Message("assistant", "a")),
            requires="v0.5.0",
        ),
        "FROM x\nTEMPLATE T\nSYSTEM S\n"
        "PARAMETER stop b\nPARAMETER stop a\nPARAMETER temperature 1.0\n"
        "PARAMETER top_k 4\nPARAMETER use_mmap true\n"
        "ADAPTER a1\nADAPTER a2\nLICENSE L1\nLICENSE L2\n"
        "MESSAGE user u\nMESSAGE assistant a\nREQUIRES 0.5.0\n",
        id="canonical-order",
    ),
]


@pytest.mark.parametrize(("m", "text"), FORMATTED)
def test_format(m: Modelfile, text: str) -> None:
    assert format(m) == text
    assert parse(text) == m


def test_an_empty_text_is_written_and_read_back_as_none_given() -> None:
    """As Ollama's create request drops it: `SYSTEM ""` keeps the base's system prompt."""
    text = format(Modelfile("x", system=""))
    assert text == 'FROM x\nSYSTEM """"""\n'
    read = parse(text, file="M")
    assert read == Modelfile("x")
    assert read.warnings == (
        "M:2:8: an empty SYSTEM is ignored, as in Ollama: the base model's system stays",
    )


@pytest.mark.parametrize(
    ("m", "fragment"),
    [
        pytest.param(
            Modelfile("x", system='a"""\nb'), "a line inside it ends with", id="line-ends-in-triple-quote"
        ),
        pytest.param(
            Modelfile("x", system='a""" \t\r\nb'), "would close the quotes early", id="blanks-after-triple"
        ),
        pytest.param(only_from(""), "FROM needs a model name or path", id="empty-from"),
        pytest.param(Modelfile("x", adapters=("",)), "ADAPTER needs a path", id="empty-adapter"),
        pytest.param(Modelfile("x", {"stop": ()}), "empty stop list", id="empty-stop"),
        pytest.param(
            Modelfile("x", {"temperature": "hot"}), "temperature: expected a number", id="bad-parameter"
        ),
        pytest.param(
            Modelfile("x", {"Temperature": 1.0}), "unknown parameter 'Temperature'", id="unknown-parameter"
        ),
        pytest.param(Modelfile("x", messages=(Message("tool", "t"),)), "message role must be", id="bad-role"),
        pytest.param(Modelfile("x", requires="1.x"), "not a valid semver", id="bad-requires"),
        pytest.param(Modelfile("x", requires="vv1.0.0"), "without a 'v'", id="requires-still-v"),
    ],
)
def test_format_refuses_what_cannot_read_back(m: Modelfile, fragment: str) -> None:
    with pytest.raises(ModelfileError, match=fragment):
        format(m)


def test_format_drops_deprecated_parameters() -> None:
    assert format(Modelfile("x", {"mirostat": 1})) == "FROM x\n"


# --- properties -----------------------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=40)  # any text, lone surrogates aside


def parses_as_template(text: str) -> bool:
    """A Modelfile's TEMPLATE must parse (Go or Jinja); random text mostly does."""
    try:
        check_template(text)
    except TemplateError:
        return False
    return True


# Ollama's float options are float32: a value past its range is refused (params._checked_float).
finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)

PARAMETER_VALUES: dict[str, st.SearchStrategy[object]] = {
    "num_keep": int64s,
    "seed": int64s,
    "num_predict": int64s,
    "top_k": int64s,
    "top_p": finite_floats,
    "min_p": finite_floats,
    "typical_p": finite_floats,
    "repeat_last_n": int64s,
    "temperature": finite_floats,
    "repeat_penalty": finite_floats,
    "presence_penalty": finite_floats,
    "frequency_penalty": finite_floats,
    "stop": st.lists(texts, min_size=1, max_size=3).map(tuple),
    "num_ctx": int64s,
    "num_batch": int64s,
    "num_gpu": int64s,
    "main_gpu": int64s,
    "use_mmap": st.booleans(),
    "use_mlock": st.booleans(),
    "num_thread": st.integers(min_value=-(2**63), max_value=512),  # params.MAXIMUMS
    "draft_num_predict": int64s,
    "num_parallel": st.integers(min_value=1, max_value=2**63 - 1),
}
# Values from each parameter's least valid one up (a build refuses a context of -5 tokens).
PARAMETER_VALUES |= {
    name: st.integers(min_value=least, max_value=2**63 - 1)
    if isinstance(least, int)
    else st.floats(min_value=least, allow_nan=False, allow_infinity=False, width=32)
    for name, least in MINIMUMS.items()
}

parameters = st.fixed_dictionaries({}, optional=PARAMETER_VALUES)
messages = st.builds(Message, st.sampled_from(MESSAGE_ROLES), texts)
versions = st.from_regex(r"(0|[1-9][0-9]{0,3})(\.(0|[1-9][0-9]{0,3})){2}(-rc\.[0-9])?", fullmatch=True)

modelfiles = st.builds(
    Modelfile,
    from_=texts.filter(bool),
    parameters=parameters,
    template=st.none() | texts.filter(bool).filter(parses_as_template),
    system=st.none() | texts.filter(bool),  # an empty one is read as none given
    adapters=st.lists(texts.filter(bool), max_size=2).map(tuple),
    licenses=st.lists(texts.filter(bool), max_size=2).map(tuple),
    messages=st.lists(messages, max_size=3).map(tuple),
    requires=st.none() | versions,
)


def formatted(m: Modelfile) -> str:
    try:
        return format(m)
    except ModelfileError as error:
        # Only a value with a line that ends in """ has no Modelfile spelling.
        assert "would close the quotes early" in error.message
        assume(False)
        raise


@BOUNDED
@given(modelfiles)
def test_parse_format_round_trip(m: Modelfile) -> None:
    assert parse(formatted(m)) == m


# Fragments of real Modelfiles, so that random text reaches past the first keyword.
FRAGMENTS = [
    "FROM ", "from ", "PARAMETER ", "TEMPLATE ", "SYSTEM ", "MESSAGE ", "ADAPTER ", "LICENSE ", "REQUIRES ",
    "DRAFT ", "user ", "tool ", "temperature ", "stop ", "num_ctx ", "mirostat ", '"', '"""', "#", " ", "\t",
    "\n", "\r\n", "\r", "0.7", "1", "true", "v1.2.3", "x", "\ufeff", "\x00",
]  # fmt: skip
soups = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=30).map("".join)


@BOUNDED
@given(st.text() | soups)
def test_parse_raises_nothing_but_modelfile_error(text: str) -> None:
    try:
        m = parse(text)
    except ModelfileError as error:
        assert error.line >= 0
        assert error.column >= 0
    else:
        assert parse(formatted(m)) == m


@BOUNDED
@given(st.binary(max_size=60) | soups.map(lambda text: text.encode("utf-16")))
def test_parse_bytes_raises_nothing_but_modelfile_error(data: bytes) -> None:
    with contextlib.suppress(ModelfileError):
        parse_bytes(data)
