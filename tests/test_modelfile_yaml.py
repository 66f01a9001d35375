from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_modelfile import parses_as_template  # the same TEMPLATE rule as the Modelfile syntax

from modelyard.builder.modelfile import MESSAGE_ROLES, Message, Modelfile, parse
from modelyard.builder.modelfile_yaml import format_yaml, load_modelfile, parse_yaml
from modelyard.errors import ModelfileError

BOUNDED = settings(max_examples=300, deadline=None)

SAMPLE = """\
from: ./gemma.gguf
template: |
  {{ .Prompt }}
system: You are helpful.
parameters: {temperature: 0.7, stop: ["<end_of_turn>"]}
messages: [{role: user, content: hi}, {role: assistant, content: hello}]
adapters: [./lora.gguf]
license: "MIT text"            # a string or a list of strings
requires: 0.5.0
"""

SAMPLE_MODELFILE = Modelfile(
    from_="./gemma.gguf",
    parameters={"temperature": 0.7, "stop": ("<end_of_turn>",)},
    template="{{ .Prompt }}\n",
    system="You are helpful.",
    adapters=("./lora.gguf",),
    licenses=("MIT text",),
    messages=(Message("user", "hi"), Message("assistant", "hello")),
    requires="0.5.0",
)

# The same Modelfile in Ollama's syntax.
SAMPLE_TEXT = """\
FROM ./gemma.gguf
TEMPLATE \"\"\"{{ .Prompt }}
\"\"\"
SYSTEM You are helpful.
PARAMETER temperature 0.7
PARAMETER stop <end_of_turn>
MESSAGE user hi
MESSAGE assistant hello
ADAPTER ./lora.gguf
LICENSE MIT text
REQUIRES 0.5.0
"""

GOOD = [
    pytest.param(SAMPLE, SAMPLE_MODELFILE, id="sample"),
    pytest.param("from: llama3", Modelfile("llama3"), id="minimal"),
    pytest.param("from: llama3\ntemplate: null\nsystem: null", Modelfile("llama3"), id="nulls"),
    pytest.param(
        "from: x\nparameters: {}\nmessages: []\nadapters: []\nlicense: []", Modelfile("x"), id="empty-lists"
    ),
    pytest.param("from: x\nlicense: [A, B]", Modelfile("x", licenses=("A", "B")), id="license-list"),
    pytest.param(
        "from: x\nparameters: {temperature: 1}", Modelfile("x", {"temperature": 1.0}), id="int-for-float"
    ),
    pytest.param("from: x\nparameters: {stop: </s>}", Modelfile("x", {"stop": ("</s>",)}), id="stop-string"),
    pytest.param("from: x\nparameters: {stop: []}", Modelfile("x", {"stop": ()}), id="stop-empty"),
    pytest.param("from: x\nrequires: v1.2.3", Modelfile("x", requires="1.2.3"), id="requires-v"),
    pytest.param("from: x\nrequires: '1.0'", Modelfile("x", requires="1.0"), id="requires-quoted"),
    pytest.param("from: x\nsystem: '  kept  '", Modelfile("x", system="  kept  "), id="spaces-kept"),
    pytest.param('from: "\\N"', Modelfile("\x85"), id="next-line-character"),
    pytest.param(
        "from: x\nparameters: {use_mmap: false, use_mlock: true, num_parallel: 4, num_ctx: 8192}",
        Modelfile("x", {"use_mmap": False, "use_mlock": True, "num_parallel": 4, "num_ctx": 8192}),
        id="runner-parameters",
    ),
    pytest.param(
        "from: x\nsystem: &s hi\nlicense: *s", Modelfile("x", system="hi", licenses=("hi",)), id="alias"
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse_yaml(text: str, expected: Modelfile) -> None:
    assert parse_yaml(text) == expected


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_format_yaml_round_trips_the_table(text: str, expected: Modelfile) -> None:
    assert parse_yaml(format_yaml(expected)) == expected


def test_both_syntaxes_give_the_same_value() -> None:
    assert parse_yaml(SAMPLE) == parse(SAMPLE_TEXT)


def test_int_for_a_float_becomes_a_float() -> None:
    assert type(parse_yaml("from: x\nparameters: {temperature: 1}").parameters["temperature"]) is float


def test_deprecated_parameter_warns_with_its_position_and_is_dropped() -> None:
    m = parse_yaml("from: x\nparameters:\n  temperature: 0.5\n  mirostat: 2\n", file="m/Modelfile.yaml")
    assert m.parameters == {"temperature": 0.5}
    assert m.warnings == ("m/Modelfile.yaml:4:3: parameter 'mirostat' is deprecated and was ignored",)


def test_format_yaml_looks_like_the_documented_form() -> None:
    assert format_yaml(SAMPLE_MODELFILE) == (
        "from: ./gemma.gguf\n"
        "template: |\n"
        "  {{ .Prompt }}\n"
        "system: You are helpful.\n"
        "parameters:\n"
        "  stop:\n"
        "  - <end_of_turn>\n"
        "  temperature: 0.7\n"
        "messages:\n"
        "- role: user\n"
        "  content: hi\n"
        "- role: assistant\n"
        "  content: hello\n"
        "adapters:\n"
        "- ./lora.gguf\n"
        "license: MIT text\n"
        "requires: 0.5.0\n"
    )


# --- errors ---------------------------------------------------------------------------------------------

ERRORS = [
    pytest.param("", 0, 0, ["expected a mapping with 'from'", "got null"], id="empty"),
    pytest.param("- a\n- b", 1, 1, ["expected a mapping", "got a list"], id="top-level-list"),
    pytest.param("just text", 1, 1, ["got 'just text'"], id="top-level-string"),
    pytest.param("from: [x", 1, 9, ["invalid YAML"], id="syntax-unclosed"),
    pytest.param(
        "from: x\n  bad: indent", 2, 6, ["invalid YAML", "mapping values are not allowed"], id="syntax-indent"
    ),
    pytest.param("from: x\n---\nfrom: y", 2, 1, ["invalid YAML", "single document"], id="two-documents"),
    pytest.param(
        "from: !!bool maybe", 0, 0, ["invalid YAML: a tagged value it cannot read"], id="bad-tag-bool"
    ),
    pytest.param("from: !!float ''", 0, 0, ["invalid YAML"], id="bad-tag-float"),
    pytest.param("from: 2001-02-30", 0, 0, ["invalid YAML"], id="bad-date"),
    pytest.param("from: !!python/object:os.system x", 1, 7, ["invalid YAML"], id="unsafe-tag"),
    pytest.param("system: hi", 1, 1, ["from: required, and missing"], id="from-missing"),
    pytest.param("from: ''", 1, 7, ["from: must not be empty"], id="from-empty"),
    pytest.param("from: 3", 1, 7, ["from: expected a string, got 3 (put it in quotes"], id="from-number"),
    pytest.param("from: x\nsystem: yes", 2, 9, ["system: expected a string, got true"], id="system-bool"),
    pytest.param(
        "from: x\ntemplate: [a]", 2, 11, ["template: expected a string, got a list"], id="template-list"
    ),
    pytest.param(
        "from: x\nparamters: {}",
        2,
        1,
        ["paramters: unknown field (did you mean 'parameters'?); expected one of from, template,"],
        id="unknown-field",
    ),
    pytest.param("from: x\nFROM: y", 2, 1, ["FROM: unknown field (did you mean 'from'?)"], id="field-case"),
    pytest.param("from: x\nsystem: a\nsystem: b", 3, 1, ["system: duplicate key"], id="duplicate-key"),
    pytest.param(
        "from: x\nparameters: [1]",
        2,
        13,
        ["parameters: expected a mapping, got a list"],
        id="parameters-list",
    ),
    pytest.param(
        "from: x\nparameters:\n  temperature: hot",
        3,
        16,
        ["parameters.temperature: expected a number, got 'hot'"],
        id="parameter-string-for-float",
    ),
    pytest.param(
        "from: x\nparameters: {num_ctx: true}",
        2,
        23,
        ["parameters.num_ctx: expected an integer, got true"],
        id="bool-for-int",
    ),
    pytest.param(
        "from: x\nparameters: {num_ctx: '4096'}",
        2,
        23,
        ["parameters.num_ctx: expected an integer, got '4096'"],
        id="string-for-int",
    ),
    pytest.param(
        "from: x\nparameters: {use_mmap: 1}",
        2,
        24,
        ["parameters.use_mmap: expected true or false, got 1"],
        id="int-for-bool",
    ),
    pytest.param(
        "from: x\nparameters: {stop: [1]}",
        2,
        20,
        ["parameters.stop: expected a string or a list of strings"],
        id="stop-int",
    ),
    pytest.param(
        "from: x\nparameters:\n  Temperature: 1",
        3,
        16,
        ["parameters.Temperature: unknown parameter 'Temperature' (did you mean 'temperature'?)"],
        id="parameter-case",
    ),
    pytest.param(
        "from: x\nparameters: {1: 2}",
        2,
        14,
        ["parameters.1: YAML reads the key 1 as the number 1, not as a name: put it in quotes"],
        id="parameter-int-name",
    ),
    # YAML 1.1 reads on/no/null as a boolean and null: reported at the key, not at the file's start
    # under pydantic's "[1]: Keys should be strings" (a build review).
    pytest.param(
        "from: x\non: 1",
        2,
        1,
        ['on: YAML reads the key on as true (a boolean), not as a name: put it in quotes ("on")'],
        id="top-level-bool-key",
    ),
    pytest.param(
        "from: x\nnull: 3", 2, 1, ["null: YAML reads the key null as null, not as a name"], id="null-key"
    ),
    pytest.param(
        "from: x\nmessages:\n- role: user\n  content: hi\n  no: 3",
        5,
        3,
        ["messages[0].no: YAML reads the key no as false (a boolean)"],
        id="message-bool-key",
    ),
    pytest.param(
        "from: x\n2026-01-01: 1",
        2,
        1,
        ["2026-01-01: YAML reads the key 2026-01-01 as a timestamp"],
        id="date-key",
    ),
    pytest.param(
        "from: x\nmessages: {role: user}", 2, 11, ["messages: expected a list"], id="messages-mapping"
    ),
    pytest.param(
        "from: x\nmessages:\n- {role: tool, content: hi}",
        3,
        10,
        ["messages[0].role: must be one of system, user, assistant, got 'tool'"],
        id="role-tool",
    ),
    pytest.param(
        "from: x\nmessages:\n- {role: user}",
        3,
        3,
        ["messages[0].content: required, and missing"],
        id="no-content",
    ),
    pytest.param(
        "from: x\nmessages:\n- {role: user, content: hi, text: hi}",
        3,
        29,
        ["messages[0].text: unknown field; expected one of role, content"],
        id="message-unknown-field",
    ),
    pytest.param(
        "from: x\nmessages: [hi]",
        2,
        12,
        ["messages[0]: expected a mapping with role and content, got 'hi'"],
        id="message-string",
    ),
    pytest.param("from: x\nadapters: ['']", 2, 12, ["adapters[0]: must not be empty"], id="adapter-empty"),
    pytest.param(
        "from: x\nadapters: ./a.gguf",
        2,
        11,
        ["adapters: expected a list, got './a.gguf'"],
        id="adapters-string",
    ),
    pytest.param(
        "from: x\nlicense: 3",
        2,
        10,
        ["license: expected a string or a list of strings, got 3"],
        id="license-number",
    ),
    pytest.param(
        "from: x\nrequires: abc", 2, 11, ["requires: 'abc' is not a valid semver version"], id="requires-bad"
    ),
    pytest.param(
        "from: x\nrequires: 1.0",
        2,
        11,
        ["requires: expected a string, got 1.0 (put it in quotes"],
        id="requires-float",
    ),
    pytest.param(
        'from: x\ntemplate: "{{ .Prompt "',
        2,
        11,
        ["template: TEMPLATE does not parse: template:1:1"],
        id="template-unparsable",
    ),
    pytest.param("from: &a [*a]", 1, 7, ["from: expected a string, got a list"], id="recursive-alias"),
    pytest.param("[" * 5000 + "]" * 5000, 0, 0, ["nested too deeply"], id="deep-nesting"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragments"), ERRORS)
def test_parse_yaml_error(text: str, line: int, column: int, fragments: list[str]) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_yaml(text, file="m/Modelfile.yaml")
    error = caught.value
    assert (error.line, error.column) == (line, column), error.message
    for fragment in fragments:
        assert fragment in error.message
    assert error.file == "m/Modelfile.yaml"


def test_every_problem_is_reported_at_once_in_document_order() -> None:
    text = (
        "from: 3\n"
        "parameters: {temperature: hot, top_k: 1.5}\n"
        "messages: [{role: tool, content: hi}]\n"
        "colour: blue\n"
    )
    with pytest.raises(ModelfileError) as caught:
        parse_yaml(text)
    error = caught.value
    assert (error.line, error.column) == (1, 7)
    assert error.message.splitlines() == [
        "5 problems:",
        "  from (line 1, column 7): expected a string, got 3 (put it in quotes to make it a string)",
        "  parameters.temperature (line 2, column 27): expected a number, got 'hot'",
        "  parameters.top_k (line 2, column 39): expected an integer, got 1.5",
        "  messages[0].role (line 3, column 19): must be one of system, user, assistant, got 'tool'",
        "  colour (line 4, column 1): unknown field; expected one of from, template, system, parameters, "
        "messages, adapters, license, requires",
    ]


# --- load_modelfile -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "text"),
    [
        pytest.param("Modelfile.yaml", "from: x", id="yaml"),
        pytest.param("dir/model.yml", "from: x", id="yml"),
        pytest.param("Modelfile.YAML", "from: x", id="upper-case-suffix"),
        pytest.param("Modelfile", "FROM x", id="ollama"),
        pytest.param("model.yaml.txt", "FROM x", id="yaml-not-last"),
        pytest.param("yaml", "FROM x", id="named-yaml"),
    ],
)
def test_load_modelfile_picks_the_syntax_by_name(file: str, text: str) -> None:
    assert load_modelfile(text, file) == Modelfile("x")


def test_load_modelfile_names_the_file_in_errors() -> None:
    with pytest.raises(ModelfileError) as caught:
        load_modelfile("from: [", "conf/Modelfile.yml")
    assert str(caught.value).startswith("conf/Modelfile.yml:1:8: invalid YAML")


# --- properties -----------------------------------------------------------------------------------------

# Any text a YAML file can hold: no lone surrogates (not encodable), which YAML cannot carry.
texts = st.text(st.characters(codec="utf-8"), max_size=40)


# Ollama's float options are float32: a value past its range is refused (params._checked_float).
finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
parameters = st.fixed_dictionaries(
    {},
    optional={
        "temperature": finite_floats,
        "top_p": finite_floats,
        "num_ctx": st.integers(min_value=1, max_value=2**63 - 1),
        "seed": ints,
        "num_parallel": st.integers(min_value=1, max_value=64),
        "use_mmap": st.booleans(),
        "stop": st.lists(texts, max_size=3).map(tuple),
    },
)
modelfiles = st.builds(
    Modelfile,
    from_=texts.filter(bool),
    parameters=parameters,
    template=st.none() | texts.filter(bool).filter(parses_as_template),
    system=st.none() | texts.filter(bool),  # an empty one is read as none given, as in the Modelfile form
    adapters=st.lists(texts.filter(bool), max_size=2).map(tuple),
    licenses=st.lists(texts.filter(bool), max_size=2).map(tuple),
    messages=st.lists(st.builds(Message, st.sampled_from(MESSAGE_ROLES), texts), max_size=3).map(tuple),
    requires=st.none() | st.sampled_from(["0.5.0", "1.0", "1", "2.0.0-rc.1+b.7"]),
)


@BOUNDED
@given(modelfiles)
def test_parse_format_yaml_round_trip(m: Modelfile) -> None:
    assert parse_yaml(format_yaml(m)) == m


FRAGMENTS = [
    "from: ", "parameters: ", "messages: ", "license: ", "requires: ", "temperature: ", "stop: ", "role: ",
    "- ", "{", "}", "[", "]", ", ", "\n", "  ", "&a ", "*a", "!!bool ", "!!float ", "!!timestamp ", "'", '"',
    "|", ">", "#", "? ", "<<: ", "0.7", "1.0", "true", "null", "user", "x",
]  # fmt: skip
soups = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=30).map("".join)


@BOUNDED
@given(st.text() | soups)
def test_parse_yaml_raises_nothing_but_modelfile_error(text: str) -> None:
    try:
        parse_yaml(text)
    except ModelfileError as error:
        assert error.line >= 0
        assert error.column >= 0
