"""OpenAI's Responses API (server/responses_api.py): a request read as a chat, and the events of a
streamed answer, table-driven over plain data."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from modelyard.builder.prompt import ChatMessage, ToolCall
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.protocol import Done
from modelyard.server.http_errors import HTTPError
from modelyard.server.inference import Finished
from modelyard.server.responses_api import ResponseEvents, ResponsesBody, chat_messages

CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}


@pytest.mark.parametrize(
    ("input_", "instructions", "expected"),
    [
        pytest.param("Hi", None, [ChatMessage("user", "Hi")], id="a-text"),
        pytest.param(
            "Hi",
            "Be brief.",
            [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")],
            id="instructions",
        ),
        pytest.param(
            [
                {"role": "developer", "content": "Be brief."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            ],
            None,
            [ChatMessage("system", "Be brief."), ChatMessage("user", "ab"), ChatMessage("assistant", "ok")],
            id="messages-and-parts",
        ),
        pytest.param(
            [
                {"role": "user", "content": "Weather?"},
                {"type": "reasoning", "summary": []},
                CALL,
                {**CALL, "call_id": "call_2", "arguments": ""},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
            None,
            [
                ChatMessage("user", "Weather?"),
                ChatMessage(
                    "assistant",
                    "",
                    tool_calls=(
                        ToolCall("get_weather", {"city": "Paris"}, "call_1", 0),
                        ToolCall("get_weather", {}, "call_2", 1),
                    ),
                ),
                ChatMessage("tool", "sunny", tool_name="get_weather", tool_call_id="call_1"),
            ],
            id="calls-join-one-turn-and-results-are-named",
        ),
        pytest.param(
            [{"role": "assistant", "content": "Let me look."}, CALL],
            None,
            [
                ChatMessage(
                    "assistant",
                    "Let me look.",
                    tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "call_1", 0),),
                )
            ],
            id="a-call-joins-the-text-before-it",
        ),
        pytest.param(
            [
                {"role": "user", "content": "Fix it."},
                {
                    "type": "custom_tool_call",
                    "call_id": "call_9",
                    "name": "apply_patch",
                    "input": "*** Begin",
                },
                {
                    "type": "custom_tool_call_output",
                    "call_id": "call_9",
                    "output": [{"type": "input_text", "text": "done"}],
                },
            ],
            None,
            [
                ChatMessage("user", "Fix it."),
                ChatMessage(
                    "assistant",
                    "",
                    tool_calls=(ToolCall("apply_patch", {"input": "*** Begin"}, "call_9", 0),),
                ),
                ChatMessage("tool", "done", tool_name="apply_patch", tool_call_id="call_9"),
            ],
            id="a-custom-tool-call-is-a-call-of-one-string",
        ),
    ],
)
def test_chat_messages(input_: Any, instructions: str | None, expected: list[ChatMessage]) -> None:
    assert chat_messages(input_, instructions) == expected


@pytest.mark.parametrize(
    ("input_", "said"),
    [
        pytest.param(
            [{"type": "input_image", "image_url": "x"}], "input[0].type: 'input_image'", id="an-image-item"
        ),
        pytest.param(
            [{"role": "user", "content": [{"type": "input_file"}]}],
            "input[0].content[0]: 'input_file'",
            id="a-file-part",
        ),
        pytest.param([{"role": "critic", "content": "x"}], "input[0].role: 'critic'", id="a-role"),
        pytest.param(
            [{**CALL, "arguments": "[1]"}], "input[0].arguments must be a JSON object", id="list-arguments"
        ),
        pytest.param([{"role": "user", "content": 5}], "input[0].content must be a string", id="a-number"),
        pytest.param(
            [{"role": ["user"], "content": "hi"}], "input[0].role: ['user']", id="a-role-that-is-a-list"
        ),
        pytest.param([{"type": ["message"]}], "input[0].type must be a string", id="a-type-that-is-a-list"),
    ],
)
def test_chat_messages_refuses_what_it_cannot_read(input_: Any, said: str) -> None:
    with pytest.raises(HTTPError) as refused:
        chat_messages(input_, None)
    assert refused.value.status == 400 and said in refused.value.message


def test_the_request_in_the_chat_apis_terms() -> None:
    body = ResponsesBody.model_validate(
        {
            "model": "m",
            "input": "Hi",
            "tools": [
                {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
            ],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_object"}},
            "reasoning": {"effort": "minimal"},
            "max_output_tokens": 7,
        }
    )
    assert body.chat_tools() == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}}
    ]
    assert body.chat_tool_choice() == {"type": "function", "function": {"name": "f"}}
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]}
    body = body.model_copy(update={"tool_choice": allowed})
    assert body.chat_tool_choice() == {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "name": "f"}]},
    }
    assert (body.format(), body.think(), body.options()) == ("json", "low", {"num_predict": 7})
    # Said back as given (a client review): it caps hosted tools' calls, which are refused here.
    assert body.echoed(SamplingOptions())["max_tool_calls"] is None
    capped = body.model_copy(update={"max_tool_calls": 1})
    assert capped.echoed(SamplingOptions())["max_tool_calls"] == 1
    for field, value, said in [
        ("tools", [{"type": "web_search"}], "only function and custom tools"),
        ("text", {"format": {"type": "xml"}}, "'xml' is not one of"),
        ("reasoning", {"effort": "extreme"}, "invalid reasoning.effort"),
        ("reasoning", {"effort": ["low"]}, "invalid reasoning.effort"),
        ("text", {"format": "json"}, "text.format must be an object"),
        ("previous_response_id", "resp_1", "stores no responses"),
    ]:
        bad = ResponsesBody.model_validate({"model": "m", "input": "Hi", field: value})
        with pytest.raises(HTTPError, match=said):
            bad.check_stateless()
            bad.chat_tools()
            bad.format()
            bad.think()


def _finished(reason: str, calls: tuple[ToolCall, ...] = ()) -> Finished:
    done = Done(
        reason, prompt_eval_count=5, prompt_eval_duration=0, eval_count=3, eval_duration=0, prompt_cached=2
    )
    return Finished(done, load_duration=0, total_duration=0, dropped_messages=0, tool_calls=calls)


@pytest.mark.parametrize(
    ("tokens", "finished", "kinds", "status"),
    [
        pytest.param(
            ["Hel", "lo"],
            _finished("stop"),
            [
                "output_item.added",
                "content_part.added",
                "output_text.delta",
                "output_text.delta",
                "output_text.done",
                "content_part.done",
                "output_item.done",
                "completed",
            ],
            "completed",
            id="text",
        ),
        pytest.param(
            ["Hel"],
            _finished("length"),
            [
                "output_item.added",
                "content_part.added",
                "output_text.delta",
                "output_text.done",
                "content_part.done",
                "output_item.done",
                "incomplete",
            ],
            "incomplete",
            id="cut-by-max-output-tokens",
        ),
        pytest.param(
            ["", ""],
            _finished("stop", (ToolCall("f", {"a": 1}),)),
            [
                "output_item.added",
                "function_call_arguments.delta",
                "function_call_arguments.done",
                "output_item.done",
                "completed",
            ],
            "completed",
            id="a-call",
        ),
    ],
)
def test_the_events_of_a_streamed_response(
    tokens: list[str], finished: Finished, kinds: list[str], status: str
) -> None:
    events = ResponseEvents(
        "resp_abc", "m:latest", 1_700_000_000, ResponsesBody(model="m", input="x").echoed(SamplingOptions())
    )
    sent = events.start()
    for token in tokens:
        sent += events.token(token)
    sent += events.finish(finished, ["call_xyz"] * len(finished.tool_calls))
    assert [e["type"] for e in sent] == [
        "response.created",
        "response.in_progress",
        *(f"response.{k}" for k in kinds),
    ]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    last = sent[-1]["response"]
    assert last["status"] == status
    assert last["usage"]["input_tokens_details"] == {"cached_tokens": 2, "cache_write_tokens": 3}
    openai.types.responses.Response.model_validate(last)  # every field the SDK requires
    if finished.tool_calls:
        added = next(e for e in sent if e["type"] == "response.output_item.added")
        assert added["item"]["arguments"] == "", "the deltas carry the arguments, once"
        assert last["output"] == [
            {
                "id": "fc_xyz",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_xyz",
                "name": "f",
                "arguments": '{"a": 1}',
            }
        ]
    else:
        assert last["output"][0]["content"][0]["text"] == "".join(tokens)


def test_a_response_with_the_log_probabilities_it_was_asked_to_include() -> None:
    """A conformance review: include ["message.output_text.logprobs"] answered logprobs: []."""
    body = ResponsesBody.model_validate(
        {"model": "m", "input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 1}
    )
    assert body.logprobs_top() == 1 and ResponsesBody(model="m", input="x").logprobs_top() is None
    # top_logprobs alone says how many, not whether: OpenAI answers logprobs [] without the entry.
    assert ResponsesBody(model="m", input="x", top_logprobs=5).logprobs_top() is None
    entry = {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": [72, 105],
        "top": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
        ],
    }
    events = ResponseEvents(
        "resp_abc", "m", 1_700_000_000, body.echoed(SamplingOptions()), body.logprobs_top()
    )
    sent = [*events.start(), *events.token("Hi", [entry]), *events.finish(_finished("stop"), [])]
    delta = next(e for e in sent if e["type"] == "response.output_text.delta")
    expected = [
        {
            "token": "Hi",
            "logprob": -0.5,
            "bytes": [72, 105],
            "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}],
        }
    ]
    assert delta["logprobs"] == expected
    final = openai.types.responses.Response.model_validate(sent[-1]["response"])
    assert final.top_logprobs == 1
    [part] = final.output[0].content  # type: ignore[union-attr]
    assert [p.model_dump() for p in part.logprobs] == expected  # type: ignore[union-attr]


def test_custom_tools_are_functions_of_one_string_and_their_calls_custom_items() -> None:
    """Codex's apply_patch is a custom tool (free text in): it was a 400 that failed the request."""
    grammar = {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" /.+/'}
    body = ResponsesBody.model_validate(
        {
            "model": "m",
            "input": "Fix it.",
            "tools": [
                {"type": "custom", "name": "apply_patch", "description": "Edit files.", "format": grammar},
                {"type": "function", "name": "ls", "parameters": {"type": "object"}},
            ],
            "tool_choice": {"type": "custom", "name": "apply_patch"},
        }
    )
    [patch, ls] = body.chat_tools() or []
    assert patch["function"]["parameters"] == {
        "type": "object",
        "properties": {"input": {"type": "string"}},
        "required": ["input"],
    }
    assert patch["function"]["description"].startswith("Edit files.")
    assert 'lark grammar:\nstart: "*** Begin Patch"' in patch["function"]["description"]
    assert ls["function"]["name"] == "ls" and body.custom_tools() == {"apply_patch"}
    assert body.chat_tool_choice() == {"type": "function", "function": {"name": "apply_patch"}}

    events = ResponseEvents(
        "resp_abc", "m", 1_700_000_000, body.echoed(SamplingOptions()), None, body.custom_tools()
    )
    calls = (ToolCall("apply_patch", {"input": "*** Begin Patch"}), ToolCall("ls", {}))
    sent = [*events.start(), *events.finish(_finished("stop", calls), ["call_a", "call_b"])]
    assert [e["type"] for e in sent[2:-1]] == [
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert sent[4]["input"] == "*** Begin Patch"
    final = openai.types.responses.Response.model_validate(sent[-1]["response"])
    custom, function = final.output
    assert (custom.type, custom.input, custom.call_id) == ("custom_tool_call", "*** Begin Patch", "call_a")  # type: ignore[union-attr]
    assert function.type == "function_call"


@pytest.mark.parametrize(
    ("tools", "choice", "said", "param"),
    [
        pytest.param(
            [{"type": "function", "name": "f"}, {"type": "custom", "name": "f"}],
            None,
            "another tool is named 'f'",
            "tools[1]",
            id="two-tools-of-one-name",
        ),
        pytest.param(
            [{"type": "function", "name": "f"}],
            {"type": "custom", "name": "f"},
            "names the function tool 'f' as a custom one",
            "tool_choice",
            id="choice-of-the-other-kind",
        ),
        pytest.param(
            [{"type": "function", "name": "f"}],
            {"type": "function", "name": ["f"]},
            "tool_choice.name must be a string",
            "tool_choice",
            id="choice-name-not-a-string",  # was a 500 (a review)
        ),
        pytest.param(
            [{"type": "function", "name": "f"}],
            {"type": "allowed_tools", "mode": "sometimes", "tools": [{"type": "function", "name": "f"}]},
            "mode must be auto or required",
            "tool_choice",
            id="allowed-tools-mode",
        ),
    ],
)
def test_tools_a_call_could_not_be_told_apart_by_are_refused(
    tools: list[dict[str, Any]], choice: Any, said: str, param: str
) -> None:
    """A review: a function and a custom tool of one name made a function's call a custom one; a
    bad allowed_tools mode blamed `tools`."""
    from modelyard.server.openai_api import parsed_tools

    body = ResponsesBody.model_validate({"model": "m", "input": "x", "tools": tools, "tool_choice": choice})
    with pytest.raises(HTTPError, match=said) as refused:
        parsed_tools(body.chat_tools(), body.chat_tool_choice())
    assert refused.value.param == param


def test_a_response_that_fails_under_way_ends_with_response_failed() -> None:
    """A client review: a stream whose runner died ended at the `error` event; OpenAI's streams
    end with `response.failed`, its response saying why."""
    events = ResponseEvents(
        "resp_abc", "m:latest", 1_700_000_000, ResponsesBody(model="m", input="x").echoed(SamplingOptions())
    )
    sent = [*events.start(), *events.token("Hel"), *events.failed("server_error", "the runner died")]
    assert [e["type"] for e in sent][-2:] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    openai.types.responses.ResponseErrorEvent.model_validate(sent[-2])
    failed = openai.types.responses.ResponseFailedEvent.model_validate(sent[-1]).response
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.code, failed.error.message) == ("server_error", "the runner died")
