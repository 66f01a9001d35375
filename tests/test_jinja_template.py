# ruff: noqa: E501 - expected prompts are quoted a line of the model's format at a time
"""Hugging Face chat templates in the sandbox: real templates render as their models expect, and the
classic template injections fail with a TemplateError."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from template_corpus import GEMMA3_JINJA, LLAMA32_JINJA, QWEN25_JINJA, WEATHER_TOOL

from modelyard.builder.jinja_template import (
    SANDBOX_MESSAGE,
    compile_chat_template,
    is_valid_jinja,
    render_chat_template,
)
from modelyard.errors import TemplateError

NOW = datetime(2024, 5, 1, 9, 0)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "Hello, how are you?"}
ASSISTANT = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
USER2 = {"role": "user", "content": "I'd like to show off how chat templating works!"}
WEATHER = {"role": "user", "content": "What's the weather like today in Paris?"}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "type": "function",
            "function": {"name": "get_current_weather", "arguments": {"location": "Paris, France"}},
        }
    ],
}
RESULT = {"role": "tool", "content": "22 degrees celsius", "name": "get_current_weather"}

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_TOOLS_PREAMBLE = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
QWEN_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
LLAMA_HEADER = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 01 May 2024\n\n"
)

REAL_TEMPLATES = [
    pytest.param(
        GEMMA3_JINJA,
        [SYSTEM, USER, ASSISTANT, USER2],
        None,
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello, how are you?<end_of_turn>\n"
        "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
        "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n<start_of_turn>model\n",
        id="gemma3-system-user-assistant-user",
    ),
    pytest.param(
        GEMMA3_JINJA,
        [{"role": "user", "content": "  padded  "}],
        None,
        "<bos><start_of_turn>user\npadded<end_of_turn>\n<start_of_turn>model\n",
        id="gemma3-trims-content",
    ),
    pytest.param(
        LLAMA32_JINJA,
        [SYSTEM, USER],
        None,
        LLAMA_HEADER + "You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Hello, how are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        id="llama3.2-system-user",
    ),
    pytest.param(
        LLAMA32_JINJA,
        [WEATHER, CALL, RESULT],
        [WEATHER_TOOL],
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 01 May 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON "
        "for a function call with its proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        "value}.Do not use variables.\n\n" + json.dumps(WEATHER_TOOL, indent=4, ensure_ascii=False) + "\n\n"
        "What's the weather like today in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_current_weather", "parameters": {"location": "Paris, France"}}<|eot_id|>'
        # a string is iterable to Jinja, so Llama's template JSON-quotes tool output (as in transformers)
        '<|start_header_id|>ipython<|end_header_id|>\n\n"22 degrees celsius"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        id="llama3.2-tools-in-user-message",
    ),
    pytest.param(
        QWEN25_JINJA,
        [USER],
        None,
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n"
        "<|im_start|>assistant\n",
        id="qwen2.5-default-system",
    ),
    pytest.param(
        QWEN25_JINJA,
        [SYSTEM, USER, ASSISTANT, USER2],
        None,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n"
        "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n<|im_start|>user\n"
        "I'd like to show off how chat templating works!<|im_end|>\n<|im_start|>assistant\n",
        id="qwen2.5-conversation",
    ),
    pytest.param(
        QWEN25_JINJA,
        [WEATHER, CALL, RESULT],
        [WEATHER_TOOL],
        f"<|im_start|>system\n{QWEN_SYSTEM}{QWEN_TOOLS_PREAMBLE}\n{json.dumps(WEATHER_TOOL, ensure_ascii=False)}"
        f"{QWEN_TOOLS_FOOTER}<|im_start|>user\nWhat's the weather like today in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_current_weather", "arguments": '
        '{"location": "Paris, France"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n22 degrees celsius\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        id="qwen2.5-tools",
    ),
]


@pytest.mark.parametrize(("template", "messages", "tools", "expected"), REAL_TEMPLATES)
def test_real_templates(template: str, messages: list[dict[str, Any]], tools: Any, expected: str) -> None:
    bos = "<|begin_of_text|>" if template is LLAMA32_JINJA else "<bos>"
    rendered = render_chat_template(
        template, messages, tools=tools, bos_token=bos, eos_token="<eos>", now=NOW
    )
    assert rendered == expected


def test_raise_exception_message_is_the_error() -> None:
    with pytest.raises(
        TemplateError, match=r"^Conversation roles must alternate user/assistant/user/assistant/\.\.\.$"
    ):
        render_chat_template(GEMMA3_JINJA, [USER, USER2])


def test_llama_needs_the_date() -> None:
    with pytest.raises(TemplateError, match="strftime_now"):
        render_chat_template(LLAMA32_JINJA, [USER])


def test_no_generation_prompt() -> None:
    assert render_chat_template(GEMMA3_JINJA, [USER], add_generation_prompt=False, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nHello, how are you?<end_of_turn>\n"
    )


# --- the environment transformers builds --------------------------------------------------------------------

ENVIRONMENT = [
    pytest.param(
        "{{ messages | tojson }}", '[{"role": "user", "content": "é <b> & \'"}]', id="tojson-like-hf"
    ),
    pytest.param(
        "{{ messages[0] | tojson(indent=2) }}",
        '{\n  "role": "user",\n  "content": "é <b> & \'"\n}',
        id="tojson-indent",
    ),
    pytest.param(
        "{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}", '{"a": 2, "b": 1}', id="tojson-sort-keys"
    ),
    pytest.param("{{ 'é' | tojson(ensure_ascii=true) }}", '"\\u00e9"', id="tojson-ascii"),
    pytest.param(
        "{% for m in messages %}\n  {{ m.role }}\n{% endfor %}", "  user\n", id="trim-and-lstrip-blocks"
    ),
    pytest.param(
        "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}",
        "01",
        id="loopcontrols",
    ),
    pytest.param(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
        "1",
        id="namespace",
    ),
    pytest.param("{{ undefined_thing }}|{{ enable_thinking is defined }}", "|False", id="lenient-undefined"),
    pytest.param("{% generation %}kept{% endgeneration %}", "kept", id="generation-block"),
    pytest.param(
        "{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}{{ tools }}",
        "<s></s>TrueNone",
        id="variables",
    ),
    pytest.param("{{ strftime_now('%Y-%m-%d') }}", "2024-05-01", id="strftime-now"),
    pytest.param("{{ 'ab' * 3 }}{{ 2 ** 10 }}", "ababab1024", id="small-repeat-and-power"),
]


@pytest.mark.parametrize(("template", "expected"), ENVIRONMENT)
def test_environment(template: str, expected: str) -> None:
    messages = [{"role": "user", "content": "é <b> & '"}]
    assert render_chat_template(template, messages, bos_token="<s>", eos_token="</s>", now=NOW) == expected


def test_extra_variables() -> None:
    text = "{% if enable_thinking is defined and not enable_thinking %}no-think{% endif %}"
    assert render_chat_template(text, [USER], extra={"enable_thinking": False}) == "no-think"


# --- the sandbox --------------------------------------------------------------------------------------------

ESCAPES = [
    pytest.param("{{ ''.__class__ }}", id="class"),
    pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="mro-subclasses"),
    pytest.param("{{ ().__class__.__base__.__subclasses__() }}", id="tuple-base"),
    pytest.param("{{ cycler.__init__.__globals__.os.popen('id').read() }}", id="cycler-globals"),
    pytest.param("{{ joiner.__init__.__globals__ }}", id="joiner-globals"),
    pytest.param("{{ namespace.__init__.__globals__ }}", id="namespace-globals"),
    pytest.param("{{ self.__init__.__globals__ }}", id="self-globals"),
    pytest.param("{{ ''|attr('__class__') }}", id="attr-filter"),
    pytest.param("{{ '{0.__class__}'.format(1) }}", id="format-string"),
    pytest.param("{{ messages.__class__.__mro__ }}", id="input-class"),
    pytest.param("{% if ''.__class__ %}x{% endif %}", id="silent-test"),
    pytest.param("{% set x = [] %}{{ x.append(1) }}", id="list-append"),
    pytest.param("{{ messages.pop() }}", id="input-pop"),
    pytest.param("{% set d = {} %}{{ d.update(a=1) }}", id="dict-update"),
    pytest.param("{{ messages[0].clear() }}", id="message-clear"),
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_fail(template: str) -> None:
    with pytest.raises(TemplateError, match=SANDBOX_MESSAGE):
        render_chat_template(template, [dict(USER)])


RESOURCE_LIMITS = [
    pytest.param("{{ 'a' * 100000000 }}", "too large", id="string-repeat"),
    pytest.param("{{ [1] * 100000000 }}", "too large", id="list-repeat"),
    pytest.param("{{ 9 ** 9999999 }}", "too large", id="power"),
    pytest.param("{% for i in range(10000000) %}{% endfor %}", "Range too big", id="range"),
    # Found in review: each built 50 MB in milliseconds, or ran for hours.
    pytest.param("{{ 'a'.ljust(50000000) }}", "too large", id="ljust"),
    pytest.param("{{ 'a'|center(50000000) }}", "too large", id="center-filter"),
    pytest.param("{{ '%050000000d' % 1 }}", "too large", id="percent-width"),
    pytest.param("{{ '%.50000000f' % 1 }}", "too large", id="percent-precision"),
    pytest.param("{{ '{:>50000000}'.format(1) }}", "too large", id="format-width"),
    pytest.param("{{ 'a'|indent(50000000) }}", "too large", id="indent"),
    pytest.param("{{ {'a': 1}|tojson(indent=50000000) }}", "too large", id="tojson-indent"),
    pytest.param("{{ '%050000000d'|format(1) }}", "too large", id="format-filter-is-percent"),
    pytest.param("{{ ('a' * 1000000)|replace('', 'b' * 100) }}", "too large", id="replace-filter"),
    pytest.param("{{ ('a' * 1000000).replace('', 'b' * 100) }}", "too large", id="replace-method"),
    pytest.param("{{ range(100000)|join('x' * 1000) }}", "too large", id="join-filter"),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "longer than 2 s",
        id="nested-loops",
    ),
    pytest.param("{% for i in range(100000) %}{{ 'x' * 999 }}{% endfor %}", "more than", id="output"),
    pytest.param("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses", id="recursion"),
    # Found in the review of the above: loops over anything, capture blocks, doubling, `*` widths.
    pytest.param(
        "{% set r = range(20000)|list %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
        "longer than 2 s",
        id="loops-over-a-list",
    ),
    pytest.param(
        "{% for i in 'x' * 20000 %}{% for j in 'x' * 20000 %}{% endfor %}{% endfor %}",
        "longer than 2 s",
        id="loops-over-a-string",
    ),
    pytest.param(
        "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
        "longer than 2 s",
        id="binary-recursion",
    ),
    pytest.param(
        "{% set x %}ab{% endset %}" + "{% set x %}{{ x }}{{ x }}{% endset %}" * 30,
        "too large",
        id="doubling-capture-blocks",
    ),
    pytest.param(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "too large",
        id="doubling-tilde",
    ),
    pytest.param(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "too large",
        id="doubling-plus",
    ),
    pytest.param("{{ '%*d' % (100000000, 1) }}", "too large", id="star-width"),
    pytest.param("{{ '%(k)0100000000d' % {'k': 1} }}", "too large", id="mapping-key-width"),
    pytest.param("{{ '{:>{}}'.format('a', 100000000) }}", "too large", id="nested-format-width"),
    pytest.param("{{ (['x' * 1000000] * 100)|join }}", "too large", id="join-of-long-items"),
    # Found by a red team of the above.
    pytest.param(
        "{% set ns = namespace(x=1) %}{% for i in range(10000) %}"
        "{% set ns.x = ((((((((((((((((((((ns.x,),),),),),),),),),),),),),),),),),),),) %}{% endfor %}"
        "{{ {ns.x: 1}|length }}",
        "nested more than 100 deep",
        id="deep-tuple-would-crash-the-hash",
    ),
    pytest.param(
        "{% set _budget_step = dict %}{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
        "{% endmacro %}{{ f(40) }}",
        "longer than 2 s",
        id="the-step-cannot-be-rebound",
    ),
    pytest.param("{{ lipsum(100000000) }}", "'lipsum' is undefined", id="lipsum-gone"),
    pytest.param("{{ [1]|slice(100000000)|list }}", "too large", id="slice-count"),
    pytest.param("{{ [1]|batch(1000000000, 'x')|list }}", "too large", id="batch-size"),
    pytest.param(
        "{% set a = 3 ** 1000 %}" + "{% set a = a * a %}" * 16 + "{{ a % 7 }}",
        "too large",
        id="int-times-int",
    ),
    pytest.param("{% if a %}{{ b }}{% endif %}" * 20000, "characters long", id="template-too-long"),
    pytest.param("{% for a in b %}" * 21 + "{% endfor %}" * 21, "too deeply nested", id="python-nesting"),
    pytest.param("{{ " + "(" * 300 + "1" + ")" * 300 + " }}", "too deeply nested", id="parentheses"),
    pytest.param("{% set b = 'x' * 1000000 %}{{ [b] * 1000000 }}", "too large", id="output-of-a-container"),
    pytest.param(
        "{% set b = 'x' * 1000000 %}{{ ([b] * 1000000) ~ '' }}", "too large", id="concat-of-a-container"
    ),
    pytest.param(
        "{% set b = 'x' * 1000000 %}{{ ('{0}' * 300000).format(b) }}", "too large", id="format-fields"
    ),
    pytest.param(
        "{% set b = 'x' * 1000000 %}{{ ('%(a)s' * 200000) % {'a': b} }}", "too large", id="percent-fields"
    ),
    pytest.param("{{ '%*s'|format(3 * 10 ** 9, 'a') }}", "too large", id="format-filter-star"),
    pytest.param("{{ '{0:{1[0]}}'.format('a', [3 * 10 ** 9]) }}", "too large", id="nested-width-in-a-list"),
    pytest.param("{{ 'x'.translate({120: 'yy'}) }}", "may not use str.translate", id="translate"),
]


@pytest.mark.parametrize(("template", "message"), RESOURCE_LIMITS)
def test_resource_limits(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_chat_template(template, [USER])


TEMPLATE_MISTAKES = [
    pytest.param("{% for m in messages %}", "chat template:1:", id="syntax-error-line"),
    pytest.param("line one\n{{ messages[0].content + 1 }}", "TypeError", id="type-error"),
    pytest.param("{{ x.y }}", "'x' is undefined", id="undefined-attribute"),
    pytest.param("{{ 1 / 0 }}", "ZeroDivisionError", id="division"),
]


@pytest.mark.parametrize(("template", "message"), TEMPLATE_MISTAKES)
def test_template_mistakes_are_template_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_chat_template(template, [USER])


def test_inputs_are_not_mutated_and_compiles_are_cached() -> None:
    messages = [dict(USER)]
    render_chat_template("{% set m = messages %}{{ m[0].content }}", messages)
    assert messages == [USER]
    assert compile_chat_template(GEMMA3_JINJA) is compile_chat_template(GEMMA3_JINJA)


def test_is_valid_jinja() -> None:
    assert is_valid_jinja(QWEN25_JINJA)
    assert not is_valid_jinja("{{ .Prompt }}")
    assert not is_valid_jinja("{% if x %}")


def test_compiling_runs_nothing_of_the_template() -> None:
    """Jinja folds a `{{ … }}` of constants while compiling, through a `finalize` that takes no
    context, outside any render's budget, in the process that checks the template (the server's,
    at /api/create): `center|wordwrap` took 45 s, `center|list|batch` 456 MiB. Compiling is
    parsing now; rendering (in a worker, in the server) is what runs it, under its budget."""
    import resource
    import time

    slow = '{{ "ab "|center(600000)|wordwrap(3)|length }}'  # 4 s of compiling when folded
    large = '{{ "x"|center(4000000)|list|batch(1)|list|length }}'  # 456 MiB when folded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    compile_chat_template(slow)
    compile_chat_template(large)
    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB
    folding = '{{ ("x" * 100)|list|tojson(indent=2000000) }}'
    with pytest.raises(TemplateError, match="JSON text too large"):
        render_chat_template(folding, [])


def test_indented_json_of_many_tools_renders() -> None:
    """`tools|tojson(indent=4)` (Granite's and Llama 3.2's templates) on a hundred tools: the
    size bound is a little over the real size, not its square."""
    properties = {f"p{j}": {"type": "string", "description": "a parameter"} for j in range(10)}
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "parameters": {"properties": properties}}}
        for i in range(100)
    ]
    rendered = render_chat_template("{{ tools|tojson(indent=4) }}", [], tools=tools)
    assert rendered == json.dumps(tools, indent=4, ensure_ascii=False)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{{ cycler() }}", id="cycler-of-nothing"),  # Jinja's RuntimeError
        pytest.param('{{ "x"|truncate(-1) }}', id="truncate-below-its-end"),  # Jinja's AssertionError
        pytest.param("{{ [1]|pprint }}", id="pprint-is-gone"),  # its output is not sized
    ],
)
def test_a_templates_own_misuse_of_jinja_is_a_template_error(text: str) -> None:
    with pytest.raises(TemplateError):
        render_chat_template(text, [])
