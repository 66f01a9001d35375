"""The Go template engine against Go itself: every construct, errors, a corpus of real Ollama
templates over many conversations, and random templates from the grammar. The oracle is
tests/go_oracle/main.go, Go's own text/template with Ollama's funcs (see gooracle.py)."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

import pytest
from gooracle import GoOracle, go_oracle  # noqa: F401 - the session fixture
from gotemplate_strategies import block, data
from hypothesis import HealthCheck, given, settings
from template_corpus import CONVERSATIONS, GO_CORPUS

from modelyard.builder.gotemplate import (
    NO_VALUE,
    JSONList,
    JSONMap,
    Slice,
    StructType,
    format_float,
    marshal_json,
    parse,
    sprintf,
)
from modelyard.builder.prompt import ChatMessage, TemplateValues, execute_ollama
from modelyard.errors import TemplateError

NOW = datetime(2024, 5, 1, 12, 30)  # the oracle's currentDate is 2024-05-01 too

DATA: dict[str, Any] = {
    "A": 1,
    "B": "str",
    "F": 1.5,
    "L": [1, "a", None, {"k": True}],
    "M": {"z": 1, "a": [1, 2], "k": "v"},
    "N": None,
    "T": True,
    "E": [],
    "EM": {},
    "S": "",
    "Z": 0,
    "U": "héllo wörld",
    "BIG": 1e21,
    "SMALL": 1e-7,
    "TENTH": 0.1,
    "G": 123456789.0,
    "MILLION": 1e6,
    "HK": 100000.0,
    "NEG": -0.0,
    "JL": JSONList([1, "<a>"]),
    "JM": JSONMap({"b": 2, "a": "&"}),
    "Messages": [
        {"Role": "system", "Content": "sys"},
        {"Role": "user", "Content": "hi"},
        {"Role": "assistant", "Content": "yo"},
    ],
}


def ours(template: str, data: Any) -> tuple[str, str]:
    """("ok", output), ("parse", message) or ("exec", message)."""
    try:
        parsed = parse(template)
    except TemplateError as err:
        return "parse", str(err)
    try:
        return "ok", parsed.execute(data, now=NOW)
    except TemplateError as err:
        return "exec", str(err)


GO_1_22_RANGE_INT = re.compile(r"range can't iterate over -?\d+$")


def assert_like_go(oracle: GoOracle, template: str, data: Any = None) -> None:
    go = oracle.render(template, data)
    stage, text = ours(template, data)
    if GO_1_22_RANGE_INT.search(go.error):
        return  # Go 1.19 cannot range over an int; Ollama's Go (1.22+) can, and so do we
    if go.error:
        assert stage == go.stage, f"Go failed at {go.stage} ({go.error}); we: {stage} {text!r}"
    else:
        assert stage == "ok", f"Go rendered {go.output!r}; we failed: {text}"
        assert text == go.output


# --- every construct ----------------------------------------------------------------------------------------

CONSTRUCTS = [
    # text, fields, chains, printing of values
    pytest.param("plain text, no actions", id="text-only"),
    pytest.param("", id="empty"),
    pytest.param("{{ .A }} {{ .B }} {{ .F }} {{ .T }}", id="fields-scalars"),
    pytest.param("{{ .L }} {{ .M }} {{ .E }} {{ .EM }}", id="print-list-map"),
    pytest.param("{{ .N }}|{{ .Missing }}|{{ print .N }}|{{ print .Missing }}", id="nil-vs-no-value"),
    pytest.param("{{ .M.z }} {{ .M.missing }} {{ $.M.k }}", id="chain-map"),
    pytest.param("{{ .Missing.X }}", id="missing-then-field-is-nil-pointer"),
    pytest.param("{{ .N.X }}", id="nil-then-field"),
    pytest.param("{{ .B.X }}", id="field-of-string"),
    pytest.param("{{ .L.X }}", id="field-of-list"),
    pytest.param("{{ . }}", id="dot-whole-data"),
    pytest.param("{{ $ }}", id="dollar"),
    pytest.param(
        "{{ .BIG }} {{ .SMALL }} {{ .TENTH }} {{ .G }} {{ .MILLION }} {{ .HK }} {{ .NEG }}", id="floats"
    ),
    pytest.param("{{ .U }} {{ len .U }}", id="unicode-and-byte-length"),
    pytest.param('{{ .JL }} {{ .JM }} {{ len .JL }} {{ index .JM "a" }}', id="stringers"),
    # literals
    pytest.param(
        "{{ 3 }} {{ -7 }} {{ 1.5 }} {{ 1e3 }} {{ 0x1F }} {{ 017 }} {{ 1_000 }} {{ 0b101 }}", id="numbers"
    ),
    pytest.param("{{ .5 }} {{ 1. }} {{ 0x1p-2 }} {{ 1_000.5 }} {{ 'a' }} {{ '\\n' }}", id="numbers-odd"),
    pytest.param(
        '{{ "esc\\t\\u00e9\\x41\\101\\"" }} {{ `raw\\n"` }} {{ true }} {{ false }}', id="strings-bools"
    ),
    # trimming and comments
    pytest.param("a  {{- 1 -}}  b", id="trim-both"),
    pytest.param("a\n\n{{- 1 }}\n\nb {{ 2 -}}\n\n c", id="trim-newlines"),
    pytest.param("{{- /* c */ -}} x {{/* y */}} z", id="comments"),
    pytest.param("{{3 -}}  x{{-3}}", id="minus-number-is-not-trim"),
    pytest.param("{{ .A   -}}  y{{ .A\t-}} z", id="trim-after-spaces"),
    pytest.param("{{\n.A\n}}", id="newlines-in-action"),
    # if / else if / else
    pytest.param(
        "{{ if .E }}y{{ else }}n{{ end }}{{ if .EM }}y{{ else }}n{{ end }}{{ if .S }}y{{ end }}",
        id="if-empty",
    ),
    pytest.param(
        "{{ if .Z }}y{{ else }}n{{ end }}{{ if .N }}y{{ else }}n{{ end }}{{ if .T }}t{{ end }}", id="if-zero"
    ),
    pytest.param("{{ if .Z }}z{{ else if .N }}n{{ else if .T }}t{{ else }}e{{ end }}", id="else-if-chain"),
    pytest.param('{{ if and .A (eq .B "str") }}yes{{ end }}', id="if-and-eq"),
    pytest.param("{{ if $x := .A }}{{ $x }}{{ end }}", id="if-declares"),
    pytest.param("{{ if .Messages }}{{ .Messages }}{{ end }}", id="if-list-of-maps"),
    # range
    pytest.param("{{ range .L }}[{{ . }}]{{ end }}", id="range-list"),
    pytest.param("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", id="range-index-value"),
    pytest.param("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", id="range-map-sorted"),
    pytest.param("{{ range $v := .M }}{{ $v }};{{ end }}", id="range-map-one-var"),
    pytest.param(
        "{{ range .E }}x{{ else }}empty{{ end }}{{ range .Missing }}x{{ else }}none{{ end }}", id="range-else"
    ),
    pytest.param("{{ range .L }}{{ .X }}{{ end }}", id="range-field-of-elements"),
    pytest.param("{{ range .B }}x{{ end }}", id="range-over-string"),
    pytest.param(
        '{{ range $v := .L }}{{ if eq (print $v) "a" }}{{ break }}{{ end }}{{ $v }}{{ end }}', id="break"
    ),
    pytest.param(
        '{{ range $v := .L }}{{ if eq (print $v) "a" }}{{ continue }}{{ end }}{{ $v }}{{ end }}',
        id="continue",
    ),
    pytest.param("{{ range .L }}{{ range $.M }}{{ . }}{{ end }}|{{ end }}", id="range-nested-dollar"),
    pytest.param(
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        "{{ .Role }}{{ if $last }}!{{ end }} {{ end }}",
        id="range-last-idiom",
    ),
    # with
    pytest.param("{{ with .M }}{{ .z }}{{ end }}{{ with .E }}x{{ else }}y{{ end }}", id="with-else"),
    pytest.param("{{ with $x := .M.k }}{{ $x }}{{ . }}{{ end }}", id="with-declares"),
    # variables
    pytest.param(
        "{{ $x := 1 }}{{ $x }}{{ $x = 2 }}{{ $x }}{{ if true }}{{ $x = 3 }}{{ end }}{{ $x }}", id="assign"
    ),
    pytest.param("{{ range .L }}{{ $y := . }}{{ end }}{{ $y := 5 }}{{ $y }}", id="scoped-declare"),
    pytest.param("{{ $x := .Missing }}{{ $x }}|{{ $x.Y }}", id="variable-no-value"),
    pytest.param("{{ range $v := .L }}{{ $v.X }}{{ end }}", id="variable-nil-then-field"),
    # pipelines, parentheses
    pytest.param('{{ .A | printf "%d!" }} {{ "x" | printf "%s%s" "y" }} {{ .L | len }}', id="pipes"),
    pytest.param('{{ .A | printf "%v" | printf "<%s>" }}', id="pipe-chain"),
    pytest.param("{{ (index .L 3).k }} {{ (.M).z }} {{ (len .L) }}", id="parens-and-chains"),
    pytest.param("{{ ( $z := 3 ) }}{{ $z }}", id="declare-in-parens"),
    # functions
    pytest.param(
        '{{ eq 1 1 }} {{ eq 1 2 3 1 }} {{ eq "a" "a" }} {{ ne 1 2 }} {{ eq .Missing nil }}', id="eq"
    ),
    pytest.param('{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1.5 1.2 }} {{ ge "b" "a" }} {{ lt "a" "b" }}', id="order"),
    pytest.param("{{ eq 1 1.0 }}", id="eq-int-float-is-error"),
    pytest.param("{{ eq .L .L }}", id="eq-lists-is-error"),
    pytest.param('{{ eq .Missing "x" }} {{ eq .N .N }}', id="eq-with-nil"),
    pytest.param("{{ lt .N 1 }}", id="lt-nil-is-error"),
    pytest.param("{{ lt true false }}", id="lt-bool-is-error"),
    pytest.param("{{ len .L }} {{ len .M }} {{ len .B }} {{ len .U }}", id="len"),
    pytest.param("{{ len .Missing }}", id="len-nil"),
    pytest.param("{{ len 3 }}", id="len-int"),
    pytest.param(
        '{{ index .L 1 }} {{ index .M "z" }} {{ index .M "no" }} {{ index .L 3 "k" }} {{ index "abc" 1 }}',
        id="index",
    ),
    pytest.param("{{ index .L 4 }}", id="index-at-len"),
    pytest.param("{{ index .L -1 }}", id="index-negative"),
    pytest.param("{{ index .Missing 0 }}", id="index-nil"),
    pytest.param("{{ index .L 2 0 }}", id="index-through-nil"),
    pytest.param("{{ index .M 1 }}", id="index-map-with-int"),
    pytest.param(
        '{{ slice .L 1 }} {{ slice .L 1 2 }} {{ slice "hello" 1 3 }} {{ slice .L }} {{ slice .L 1 2 3 }}',
        id="slice",
    ),
    pytest.param("{{ slice .L 2 1 }}", id="slice-inverted"),
    pytest.param('{{ slice "ab" 0 1 2 }}', id="slice-string-3-index"),
    pytest.param("{{ slice .JL 1 }}", id="slice-keeps-stringer"),
    pytest.param("{{ slice .L .M.z }}", id="slice-index-from-map-is-interface"),
    pytest.param(
        "{{ $n := .M.z }}{{ slice .L $n }}{{ slice .L (.M.z) }}{{ .M.z | slice .L }}",
        id="slice-index-unwrapped",
    ),
    pytest.param("{{ range $v := .M.a }}{{ slice $.L $v }}{{ end }}", id="slice-index-range-element"),
    pytest.param("{{ range $i, $v := .M.a }}{{ slice $.L $i }}{{ end }}", id="slice-index-range-index"),
    pytest.param(
        '{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" }} {{ or 0 "x" 3 }} {{ and .Missing 1 }}', id="and-or"
    ),
    pytest.param("{{ 1 | and 0 }} {{ 1 | or 0 }} {{ 0 | and 1 }}", id="and-or-piped"),
    pytest.param('{{ not 0 }} {{ not .L }} {{ not .N }} {{ not "" }}', id="not"),
    pytest.param(
        '{{ print 1 2 }} {{ print "a" 1 2 "b" }} {{ print nil }} {{ print .L .M }} {{ print }}', id="print"
    ),
    pytest.param('{{ println 1 "a" }}{{ println }}', id="println"),
    pytest.param(
        '{{ printf "%d-%s-%v-%q-%5.2f|%-4d|%04d|%x|%t" 3 "s" .L "q\\n" 3.14159 7 42 255 true }}', id="printf"
    ),
    pytest.param(
        '{{ printf "%d" "x" }} {{ printf "%s" 1 }} {{ printf "%d %d" 1 }} {{ printf "%d" 1 2 }}'
        ' {{ printf "%" }}',
        id="printf-mismatches",
    ),
    pytest.param(
        '{{ printf "%5.2f|%5v|%-6d|%x|%X|%o|%b|%c|%U" "ab" .L .B 255 "hi" 8 5 65 65 }}', id="printf-verbs"
    ),
    pytest.param(
        '{{ printf "%6s|%.1s|%t|%08.3f|%+d|% d|%e|%g|%s %v" .L .L 1 -3.14159 5 5 .F .F nil nil }}',
        id="printf-flags",
    ),
    pytest.param('{{ printf "%v %s %x" .JL .JM "é" }}', id="printf-stringers"),
    pytest.param('{{ html "<a href=\'x\'>&\\"</a>" }} {{ html .Missing }} {{ html 1 2 }}', id="html"),
    pytest.param('{{ js "it\'s <b> & = \\"q\\" \\n é" }} {{ js nil }}', id="js"),
    pytest.param('{{ urlquery "a b&c=d/é~" }} {{ "é" | urlquery }}', id="urlquery"),
    pytest.param("{{ call .A }} ", id="call-non-function"),
    pytest.param("{{ call .Missing }}", id="call-nil"),
    # Ollama's funcs
    pytest.param(
        '{{ json .M }} {{ json .L }} {{ json "<>&\\u2028" }} {{ json .Missing }} {{ json 1.0 }}', id="json"
    ),
    pytest.param(
        "{{ json .BIG }} {{ json .SMALL }} {{ json .G }} {{ json .NEG }} {{ json .JL }} {{ json .U }}",
        id="json-numbers",
    ),
    pytest.param('{{ currentDate }} {{ yesterdayDate }} {{ currentDate "2006" }}', id="dates"),
    pytest.param("{{ toTypeScriptType .A }}", id="typescript-of-non-property"),
    # define, template, block
    pytest.param('{{ template "x" .M }}{{ define "x" }}<{{ .z }}>{{ end }}', id="define-template"),
    pytest.param('{{ block "b" .A }}[{{ . }}]{{ end }}', id="block"),
    pytest.param(
        '{{ define "a" }}  {{ end }}{{ define "a" }}y{{ end }}{{ template "a" }}', id="redefine-empty"
    ),
    pytest.param(
        '{{ template "a" 3 }}{{ define "a" }}{{ if gt . 0 }}{{ . }}{{ template "a" 0 }}{{ end }}{{ end }}',
        id="recursion",
    ),
    # commands that are not functions
    pytest.param("{{ nil }}", id="nil-command"),
    pytest.param("{{ .A 1 }}", id="argument-to-field"),
    pytest.param("{{ 1 2 }}", id="argument-to-number"),
    pytest.param("{{ .M.z 1 }}", id="argument-to-map-key"),
    pytest.param("{{ $.A }}{{ $ | len }}", id="dollar-piped"),
]


@pytest.mark.parametrize("template", CONSTRUCTS)
def test_constructs_render_like_go(go_oracle: GoOracle, template: str) -> None:  # noqa: F811
    assert_like_go(go_oracle, template, DATA)


# --- errors: same stage as Go, with a location --------------------------------------------------------------

ERRORS = [
    pytest.param("{{", "parse", "1:1", id="unclosed-action-eof"),
    pytest.param("{{ .A", "parse", "1:1", id="unclosed-action"),
    pytest.param("{{ .A }", "parse", "1:1", id="half-closed"),
    pytest.param("x\n {{ end }}", "parse", "2:", id="stray-end"),
    pytest.param("{{ else }}", "parse", "1:", id="stray-else"),
    pytest.param("{{ if .A }}", "parse", "1:", id="unclosed-if"),
    pytest.param("{{ if .A }}{{ else }}{{ else }}{{ end }}", "parse", "1:", id="double-else"),
    pytest.param("{{ range .L }}{{ else if .A }}{{ end }}", "parse", "1:", id="range-else-if"),
    pytest.param("a\n{{ nope }}", "parse", "2:4", id="unknown-function"),
    pytest.param("{{ $x }}", "parse", "1:4", id="undefined-variable"),
    pytest.param("{{ break }}", "parse", "1:4", id="break-outside-range"),
    pytest.param("{{ range .L }}{{ break 1 }}{{ end }}", "parse", "1:", id="break-with-argument"),
    pytest.param("{{ .A | 1 }}", "parse", "1:", id="literal-in-pipeline"),
    pytest.param("{{ ( .A }}", "parse", "1:", id="unclosed-paren"),
    pytest.param("{{ .A ) }}", "parse", "1:", id="stray-paren"),
    pytest.param('{{ "abc }}', "parse", "1:", id="unterminated-string"),
    pytest.param("{{ 'ab' }}", "parse", "1:", id="bad-char-constant"),
    pytest.param("{{ 1x }}", "parse", "1:", id="bad-number"),
    pytest.param("{{ 09 }}", "parse", "1:", id="bad-octal"),
    pytest.param("{{ 99999999999999999999 }}", "parse", "1:4", id="integer-overflow"),
    pytest.param("{{ 18446744073709551615 }}", "exec", "1:4", id="uint-overflows-int"),
    pytest.param("{{ 1.A }}", "parse", "1:", id="field-after-number"),
    pytest.param("{{ }}", "parse", "1:", id="empty-action"),
    pytest.param("{{ | .A }}", "parse", "1:", id="leading-pipe"),
    pytest.param("{{/* unclosed", "parse", "1:", id="unclosed-comment"),
    pytest.param("{{/* x */ .A }}", "parse", "1:", id="comment-with-action"),
    pytest.param("{{ range $i, $v, $w := .L }}{{ end }}", "parse", "1:", id="three-range-variables"),
    pytest.param("{{ with $x, $y := .A }}{{ end }}", "parse", "1:", id="two-with-variables"),
    pytest.param('{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}', "parse", "1:", id="redefinition"),
    pytest.param('{{ template "nope" }}', "exec", "1:", id="undefined-template"),
    pytest.param("{{ printf }}", "exec", "1:4", id="printf-without-format"),
    pytest.param("{{ printf 1 }}", "exec", "1:", id="printf-number-format"),
    pytest.param("{{ printf .Missing }}", "exec", "1:", id="printf-nil-format"),
    pytest.param("{{ len 1 2 }}", "exec", "1:4", id="len-two-args"),
    pytest.param("{{ eq 1 }}", "exec", "1:4", id="eq-one-arg"),
    pytest.param("{{ and }}", "exec", "1:4", id="and-no-args"),
    pytest.param("{{ json 1 2 }}", "exec", "1:4", id="json-two-args"),
    pytest.param("{{ currentDate 1 }}", "exec", "1:", id="currentdate-number"),
]


@pytest.mark.parametrize(("template", "stage", "where"), ERRORS)
def test_errors_fail_where_go_fails(go_oracle: GoOracle, template: str, stage: str, where: str) -> None:  # noqa: F811
    go = go_oracle.render(template, DATA)
    assert go.stage == stage, go
    ours_stage, message = ours(template, DATA)
    assert ours_stage == stage
    assert message.startswith(f"template:{where}"), message


def test_template_error_is_a_build_and_value_error() -> None:
    with pytest.raises(ValueError, match=r"template:1:4: function \"nope\" not defined"):
        parse("{{ nope }}")


def test_exec_error_names_the_action() -> None:
    with pytest.raises(
        TemplateError, match=r"template:2:4: executing at <\.A\.B>: can't evaluate field B in type int"
    ):
        parse("\n{{ .A.B }}").execute({"A": 1})


# --- real templates over real conversations, as Ollama executes them ----------------------------------------


def api_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        out["images"] = [base64.b64encode(image).decode() for image in message.images]
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "function": {"index": c.index, "name": c.name, "arguments": dict(c.arguments)}}
            for c in message.tool_calls
        ]
    for key, value in (("thinking", message.thinking), ("tool_name", message.tool_name)):
        if value:
            out[key] = value
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def go_values(values: TemplateValues) -> dict[str, Any]:
    think = values.think_values()
    return {
        "messages": [api_message(m) for m in values.messages],
        "tools": None if values.tools is None else [dict(t) for t in values.tools],
        "prompt": values.prompt,
        "suffix": values.suffix,
        "think": think["Think"],
        "think_level": think["ThinkLevel"],
        "is_think_set": think["IsThinkSet"],
    }


def assert_executes_like_ollama(oracle: GoOracle, template: str, values: TemplateValues) -> None:
    go = oracle.render_values(template, go_values(values))
    try:
        rendered = execute_ollama(template, values)
    except TemplateError as err:
        assert go.error, f"Go rendered {go.output!r}; we failed: {err}"
        return
    assert not go.error, f"Go failed ({go.error}); we rendered {rendered!r}"
    assert rendered == go.output


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(GO_CORPUS))
def test_real_templates_render_like_ollama(go_oracle: GoOracle, name: str, conversation: str) -> None:  # noqa: F811
    messages, tools = CONVERSATIONS[conversation]
    assert_executes_like_ollama(go_oracle, GO_CORPUS[name], TemplateValues(messages, tools))


THINK_TEMPLATE = (
    "{{ range .Messages }}{{ if and $.IsThinkSet .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
    "{{ .Content }}{{ end }}{{ if .Think }}<think>{{ .ThinkLevel }}{{ end }}"
)


@pytest.mark.parametrize("think", [None, True, False, "high", "low"], ids=str)
def test_think_values_like_ollama(go_oracle: GoOracle, think: bool | str | None) -> None:  # noqa: F811
    messages, _ = CONVERSATIONS["thinking"]
    assert_executes_like_ollama(go_oracle, THINK_TEMPLATE, TemplateValues(messages, think=think))


LEGACY_EDGES = [
    pytest.param(
        "{{ if .Prompt }}{{ .Prompt }}{{ .Response }} tail{{ else }}x{{ end }}", id="cut-leaves-else-bodiless"
    ),
    pytest.param(
        "{{ .System }}{{ if .Prompt }}{{ .Prompt }}{{ .Response }} t{{ end }} more {{ .Response }}",
        id="cut-in-if",
    ),
    pytest.param('{{ .Prompt }}{{ .Response | printf "%s!" }}after', id="cut-drops-piped-action"),
    pytest.param("{{ .Prompt }}{{ json .Prompt }}{{ .Response }}", id="last-turn-has-no-ollama-funcs"),
    pytest.param("{{ .Prompt }}{{ print .Response .Response }}x", id="second-response-field-kept"),
    pytest.param("{{ .Prompt }}:{{ .Missing.X }}{{ .Response }}", id="last-turn-missingkey-default"),
    pytest.param("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", id="fill-in-middle"),
]


@pytest.mark.parametrize("template", LEGACY_EDGES)
@pytest.mark.parametrize(
    ("prompt", "suffix", "conversation"),
    [("", "", "system-user-assistant-user"), ("def f(", "return 1", "empty"), ("", "", "user-assistant")],
    ids=["turns", "prompt-suffix", "assistant-last"],
)
def test_legacy_edges_like_ollama(
    go_oracle: GoOracle,  # noqa: F811
    template: str,
    prompt: str,
    suffix: str,
    conversation: str,
) -> None:
    messages, _ = CONVERSATIONS[conversation]
    assert_executes_like_ollama(go_oracle, template, TemplateValues(messages, prompt=prompt, suffix=suffix))


# Ollama's own expectations (template/template_test.go in github.com/ollama/ollama), independent of the
# oracle: legacy templates collated turn by turn, cut after .Response, an assistant prefill, a suffix.
MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_MESSAGES = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] '
    '{{ else if eq .Role "assistant" }}{{ .Content }}[INST] {{ end }}\n'
    "{{- end }}"
)
CHATML_LEGACY = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
CHATML_MESSAGES = (
    "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
FIM = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
FRIEND = (
    ChatMessage("user", "Hello friend!"),
    ChatMessage("assistant", "Hello human!"),
    ChatMessage("user", "What is your name?"),
)
HELPFUL = ChatMessage("system", "You are a helpful assistant!")
MISTRAL_OUT = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
CHATML_OUT = (
    "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
    "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
OLLAMA_EXPECTATIONS = [
    pytest.param(MISTRAL_LEGACY, TemplateValues(FRIEND), MISTRAL_OUT, id="mistral-no-response"),
    pytest.param(
        MISTRAL_LEGACY + "{{ .Response }}", TemplateValues(FRIEND), MISTRAL_OUT, id="mistral-response"
    ),
    pytest.param(MISTRAL_MESSAGES, TemplateValues(FRIEND), MISTRAL_OUT, id="mistral-messages"),
    pytest.param(
        MISTRAL_LEGACY + "{{ .Response }}",
        TemplateValues((HELPFUL, *FRIEND)),
        "[INST] You are a helpful assistant!\n\n" + MISTRAL_OUT[len("[INST] ") :],
        id="mistral-system",
    ),
    pytest.param(
        "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
        TemplateValues((*FRIEND, ChatMessage("assistant", "My name is Ollama and I"))),
        MISTRAL_OUT + "My name is Ollama and I",
        id="mistral-assistant-prefill",
    ),
    pytest.param(CHATML_LEGACY, TemplateValues((HELPFUL, *FRIEND)), CHATML_OUT, id="chatml-response"),
    pytest.param(CHATML_MESSAGES, TemplateValues((HELPFUL, *FRIEND)), CHATML_OUT, id="chatml-messages"),
    pytest.param(FIM, TemplateValues((ChatMessage("user", "hello"),)), "hello", id="suffix-template-message"),
    pytest.param(
        FIM,
        TemplateValues(prompt="def add(", suffix="return x"),
        "<PRE> def add( <SUF>return x <MID>",
        id="prompt-suffix",
    ),
]


@pytest.mark.parametrize(("template", "values", "expected"), OLLAMA_EXPECTATIONS)
def test_ollama_expectations(template: str, values: TemplateValues, expected: str) -> None:
    assert execute_ollama(template, values) == expected


@pytest.mark.parametrize(("template", "values", "expected"), OLLAMA_EXPECTATIONS)
def test_ollama_expectations_hold_in_the_oracle(
    go_oracle: GoOracle,  # noqa: F811
    template: str,
    values: TemplateValues,
    expected: str,
) -> None:
    assert go_oracle.render_values(template, go_values(values)).output == expected


# --- random templates from the grammar ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=block(), values=data())
def test_random_templates_render_like_go(go_oracle: GoOracle, template: str, values: dict[str, Any]) -> None:  # noqa: F811
    assert_like_go(go_oracle, template, values)


# --- where Ollama's Go is newer than the oracle's 1.19 ------------------------------------------------------

NEWER_GO = [
    pytest.param("{{ range 3 }}{{ . }}{{ end }}", {}, "012", id="range-int-go1.22"),
    pytest.param(
        "{{ range $i := .N }}{{ $i }}{{ else }}none{{ end }}", {"N": 0}, "none", id="range-zero-go1.22"
    ),
    pytest.param("{{ with .A }}a{{ else with .B }}{{ . }}{{ end }}", {"B": "b"}, "b", id="else-with-go1.23"),
    pytest.param('{{ json "\\b\\f" }}', {}, '"\\b\\f"', id="json-short-escapes-go1.22"),
]


@pytest.mark.parametrize(("template", "values", "expected"), NEWER_GO)
def test_newer_go_behaviour(template: str, values: dict[str, Any], expected: str) -> None:
    assert parse(template).execute(values) == expected


def test_range_int_with_two_variables_is_an_error() -> None:
    with pytest.raises(TemplateError, match="can't use 3 to iterate over more than one variable"):
        parse("{{ range $i, $v := 3 }}{{ end }}").execute({})


def test_dates_need_now() -> None:
    template = parse("{{ currentDate }}")
    assert template.execute({}, now=NOW) == "2024-05-01"
    with pytest.raises(TemplateError, match="pass now="):
        template.execute({})


def test_recursion_is_bounded() -> None:
    with pytest.raises(TemplateError, match="exceeded maximum template depth"):
        parse('{{ define "a" }}{{ template "a" }}{{ end }}{{ template "a" }}').execute({})


# --- the Template value -------------------------------------------------------------------------------------


def test_parse_is_cached_and_templates_are_immutable() -> None:
    text = "{{ .A }}"
    assert parse(text) is parse(text)
    with pytest.raises(AttributeError):
        parse(text).text = "x"  # type: ignore[misc]


IDENTIFIERS = [
    pytest.param("{{ .System }}{{ .Prompt }}", ["System", "Prompt"], id="fields"),
    pytest.param("{{ range $i, $_ := $.Messages }}{{ end }}", ["$", "Messages"], id="dollar-chain"),
    pytest.param("{{ if .Tools }}{{ else }}{{ .Response }}{{ end }}", ["Tools", "Response"], id="branches"),
    pytest.param("{{ (.A).B }}{{ len (.C) }}", ["C"], id="chain-after-parens-not-counted"),
    pytest.param('{{ define "x" }}{{ .Messages }}{{ end }}', ["Messages"], id="defined-templates"),
]


@pytest.mark.parametrize(("text", "expected"), IDENTIFIERS)
def test_identifiers(text: str, expected: list[str]) -> None:
    assert parse(text).identifiers() == expected


def test_cut_after_field_and_append() -> None:
    template = parse("{{ .Prompt }}[{{ .Response }}]tail")
    assert template.cut_after_field("Response").execute({"Prompt": "p", "Response": "r"}) == "p[r"
    appended = parse("{{ .Prompt }}").with_field_appended("Response")
    assert appended.execute({"Prompt": "p", "Response": "r"}) == "pr"


# --- values: structs, nil slices, printing and json ---------------------------------------------------------

POINT = StructType("main.Point", (("X", "x"), ("Y", "y,omitempty"), ("Hidden", "-")), stringer=False)


def test_struct_fields_and_errors() -> None:
    point = POINT(X=1, Y=0, Hidden="h")
    assert parse("{{ .X }} {{ . }} {{ json . }}").execute(point) == '1 {1 0 h} {"x":1}'
    with pytest.raises(TemplateError, match=r"can't evaluate field Z in type main\.Point"):
        parse("{{ .Z }}").execute(point)
    with pytest.raises(TypeError):
        POINT(X=1)


def test_nil_slices_marshal_to_null() -> None:
    assert (
        marshal_json({"a": Slice(nil=True), "b": Slice(), "c": JSONList(nil=True)})
        == '{"a":null,"b":[],"c":null}'
    )
    assert (
        parse("{{ .A }}|{{ .B }}|{{ len .A }}").execute({"A": Slice(nil=True), "B": JSONList(nil=True)})
        == "[]|null|0"
    )


FLOATS = [
    pytest.param(0.1, "0.1", id="tenth"),
    pytest.param(1e21, "1e+21", id="1e21"),
    pytest.param(1e6, "1e+06", id="million"),
    pytest.param(100000.0, "100000", id="hundred-thousand"),
    pytest.param(0.0001, "0.0001", id="ten-thousandth"),
    pytest.param(0.00001, "1e-05", id="hundred-thousandth"),
    pytest.param(-0.0, "-0", id="negative-zero"),
    pytest.param(float("inf"), "+Inf", id="inf"),
    pytest.param(float("nan"), "NaN", id="nan"),
]


@pytest.mark.parametrize(("value", "expected"), FLOATS)
def test_format_float_like_fmt(value: float, expected: str) -> None:
    assert format_float(value) == expected


def test_json_refuses_nan_as_ollama_does() -> None:
    assert marshal_json(float("nan")) == ""
    assert marshal_json(NO_VALUE) == "null"


def test_sprintf_extra_and_missing() -> None:
    assert sprintf("%d %s", 1) == "1 %!s(MISSING)"
    assert sprintf("%d", 1, "x", None) == "1%!(EXTRA string=x, <nil>)"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{{if 1}}" * 5000 + "{{end}}" * 5000, id="nested-ifs"),
        pytest.param("{{" + "(" * 5000 + "1" + ")" * 5000 + "}}", id="nested-parentheses"),
    ],
)
def test_a_template_nested_too_deeply_to_parse_is_a_template_error(text: str) -> None:
    """Not a RecursionError, which the server would answer 500 with a traceback."""
    with pytest.raises(TemplateError, match="nests too deeply to parse"):
        parse(text)


def test_a_render_has_a_time_and_an_output_budget() -> None:
    """A template from an image or a request cannot take the machine's time or memory: found in
    review, `{{range 10000000000}}` held the server for ever."""
    from modelyard.builder.render_limits import RenderBudget

    with pytest.raises(TemplateError, match=r"longer than 0.2 s"):
        parse("{{range 10000000000}}{{end}}").execute({}, budget=RenderBudget(timeout_s=0.2))
    with pytest.raises(TemplateError, match=r"more than 1,000 characters"):
        parse("{{range 100}}0123456789abcdef{{end}}").execute({}, budget=RenderBudget(max_chars=1000))
    with pytest.raises(TemplateError, match=r"more than 1,000 characters"):  # a called template's too
        parse('{{define "t"}}{{.}}{{end}}{{range 100}}{{template "t" "0123456789abcdef"}}{{end}}').execute(
            {}, budget=RenderBudget(max_chars=1000)
        )
    assert parse("{{range 3}}ab{{end}}").execute({}) == "ababab"
    # Found in review of the above: recursion through {{template}}, and values never printed.
    binary = (
        '{{define "f"}}{{if lt (len .) 40}}{{template "f" (printf "%sa" .)}}'
        '{{template "f" (printf "%sb" .)}}{{end}}{{end}}{{template "f" ""}}'
    )
    with pytest.raises(TemplateError, match=r"longer than 0.2 s"):
        parse(binary).execute({}, budget=RenderBudget(timeout_s=0.2))
    doubling = '{{$x := "ab"}}{{range 26}}{{$x = printf "%s%s" $x $x}}{{end}}{{len $x}}'
    with pytest.raises(TemplateError, match=r"builds a value \(printf\) too large"):
        parse(doubling).execute({})


def test_a_legacy_template_has_one_budget_for_all_its_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template without .Messages runs once per turn; the turns share one budget, not 2 s each."""
    from modelyard.builder import prompt
    from modelyard.builder.prompt import ChatMessage, TemplateValues, execute_ollama
    from modelyard.builder.render_limits import RenderBudget

    made: list[RenderBudget] = []

    class Noted(RenderBudget):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(prompt, "RenderBudget", Noted)
    turns = tuple(ChatMessage("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(8))
    text = execute_ollama(parse("[{{.Prompt}}|{{.Response}}]"), TemplateValues(messages=turns))
    assert text.count("[") == 4
    assert len(made) == 1 and made[0].chars == len(text), "every turn counted against the one budget"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        pytest.param("%050000000d", "%!(NOVERB)%!(EXTRA int=1)", id="width-past-a-million"),
        pytest.param("%.50000000f", "%!(NOVERB)%!(EXTRA int=1)", id="precision-past-a-million"),
        pytest.param("%1000000d", " " * 999999 + "1", id="a-million-is-not-too-large"),
        pytest.param("%5d|", "    1|", id="plain"),
    ],
)
def test_printf_widths_past_a_million_are_too_large_as_in_go(fmt: str, expected: str) -> None:
    """Go's fmt parses a width or precision past 1e6 as too large (tooLarge) and stops there."""
    from modelyard.builder.gotemplate import sprintf

    assert sprintf(fmt, 1) == expected


def test_a_budget_takes_its_time_from_the_context_unless_told() -> None:
    from modelyard.builder.render_limits import RENDER_TIMEOUT_S, RenderBudget, render_timeout

    assert RenderBudget().timeout_s == RENDER_TIMEOUT_S
    token = render_timeout.set(0.1)  # as the server's event loop sets it
    try:
        assert RenderBudget().timeout_s == 0.1 and RenderBudget(timeout_s=5).timeout_s == 5
    finally:
        render_timeout.reset(token)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            '{{$x := printf "%1000000s" ""}}{{$x = print $x $x}}{{$x = print $x $x}}{{$x = print $x $x}}'
            "{{$y := print" + " $x" * 200 + "}}",
            r"builds a value \(print\) too large",
            id="print-of-many-copies-sized-before",
        ),
        pytest.param("{{if .Prompt}}{{.Prompt}}{{end}}" * 10000, "characters long", id="template-too-long"),
    ],
)
def test_what_a_go_template_builds_is_sized_before(text: str, message: str) -> None:
    """Found by a red team: print of 200 copies of an 8 MB value asked for gigabytes at once."""
    with pytest.raises(TemplateError, match=message):
        parse(text).execute({})
