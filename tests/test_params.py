from __future__ import annotations

import pytest

from modelyard.builder.params import (
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    Parameters,
    coerce_parameter,
    describe_value,
    is_deprecated,
    parameter_type,
    validate_parameter,
    validate_parameters,
)
from modelyard.errors import ModelfileError

# One good and one bad Modelfile spelling for every valid name: (name, good text, typed value, bad text).
EVERY_PARAMETER = [
    ("num_keep", "4", 4, "4.5"),
    ("seed", "-1", -1, "random"),
    ("num_predict", "128", 128, "1e3"),
    ("top_k", "40", 40, "forty"),
    ("top_p", "0.9", 0.9, "high"),
    ("min_p", "0", 0.0, "0,05"),
    ("typical_p", "1.0", 1.0, "1.0.0"),
    ("repeat_last_n", "64", 64, "-"),
    ("temperature", "0.7", 0.7, "hot"),
    ("repeat_penalty", "1.1", 1.1, "1.1 # strong"),
    ("presence_penalty", "-0.5", -0.5, "inf"),
    ("frequency_penalty", ".5", 0.5, "nan"),
    ("stop", "<|im_end|>", "<|im_end|>", None),
    ("num_ctx", "4096", 4096, "4k"),
    ("num_batch", "512", 512, "512.0"),
    ("num_gpu", "-1", -1, "all"),
    ("main_gpu", "0", 0, "gpu0"),
    ("use_mmap", "true", True, "yes"),
    ("use_mlock", "False", False, "on"),
    ("num_thread", "8", 8, "eight"),
    ("draft_num_predict", "4", 4, ""),
    ("num_parallel", "4", 4, "0"),
    ("keep_alive", "1h30m", "1h30m", "soon"),
]


def test_the_table_has_ollamas_names_plus_ours() -> None:
    ours = {"use_mlock", "num_parallel", "keep_alive"}
    ollama = {row[0] for row in EVERY_PARAMETER} - ours
    assert set(PARAMETER_TYPES) == ollama | ours
    assert not DEPRECATED_PARAMETERS & set(PARAMETER_TYPES)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [pytest.param(name, text, expected, id=name) for name, text, expected, _ in EVERY_PARAMETER],
)
def test_coerce_good_value(name: str, text: str, expected: object) -> None:
    value = coerce_parameter(name, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "text"),
    [pytest.param(name, bad, id=name) for name, _, _, bad in EVERY_PARAMETER if bad is not None],
)
def test_coerce_bad_value_says_what_was_expected(name: str, text: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        coerce_parameter(name, text)
    assert name in caught.value.message
    assert caught.value.line == 0


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param("seed", "+7", 7, id="int-plus-sign"),
        pytest.param("seed", "9223372036854775807", 2**63 - 1, id="int64-max"),
        pytest.param("temperature", "1", 1.0, id="float-from-int-text"),
        pytest.param("temperature", "1.", 1.0, id="float-trailing-dot"),
        pytest.param("temperature", "1e-3", 0.001, id="float-exponent"),
        pytest.param("temperature", "2E+1", 20.0, id="float-upper-exponent"),
        pytest.param("use_mmap", "1", True, id="bool-1"),
        pytest.param("use_mmap", "t", True, id="bool-t"),
        pytest.param("use_mmap", "TRUE", True, id="bool-TRUE"),
        pytest.param("use_mmap", "0", False, id="bool-0"),
        pytest.param("use_mmap", "F", False, id="bool-F"),
        pytest.param("stop", "", "", id="stop-empty"),
        pytest.param("stop", "  kept  ", "  kept  ", id="stop-spaces-kept"),
    ],
)
def test_coerce_spellings_go_accepts(name: str, text: str, expected: object) -> None:
    assert coerce_parameter(name, text) == expected


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        pytest.param("seed", "9223372036854775808", "64-bit", id="int64-overflow"),
        pytest.param("seed", "1_000", "expected an integer", id="int-underscore"),
        pytest.param("seed", " 7", "expected an integer", id="int-untrimmed"),
        pytest.param("seed", "٣", "expected an integer", id="int-arabic-digit"),
        pytest.param("temperature", "1e999", "finite", id="float-overflow"),
        pytest.param("temperature", "1e39", "32-bit float", id="float32-overflow"),
        pytest.param("temperature", "0x1p3", "expected a number", id="float-hex"),
        pytest.param("temperature", "Infinity", "expected a number", id="float-infinity"),
        pytest.param("use_mmap", "Yes", "true or false", id="bool-yes"),
        pytest.param("num_parallel", "-2", "at least 1", id="num-parallel-negative"),
    ],
)
def test_coerce_rejects(name: str, text: str, fragment: str) -> None:
    with pytest.raises(ModelfileError, match=fragment):
        coerce_parameter(name, text)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param(
            "Temperature", "unknown parameter 'Temperature' (did you mean 'temperature'?)", id="case"
        ),
        pytest.param("temprature", "unknown parameter 'temprature' (did you mean 'temperature'?)", id="typo"),
        pytest.param("NUM_CTX", "unknown parameter 'NUM_CTX' (did you mean 'num_ctx'?)", id="upper"),
        pytest.param("xyzzy", "unknown parameter 'xyzzy'", id="no-suggestion"),
        pytest.param(
            "mirostat", "parameter 'mirostat' is deprecated and no longer has any effect", id="deprecated"
        ),
    ],
)
def test_unknown_names(name: str, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parameter_type(name)
    assert caught.value.message == message


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in sorted(DEPRECATED_PARAMETERS)])
def test_deprecated_names(name: str) -> None:
    assert is_deprecated(name)
    assert name not in PARAMETER_TYPES


@pytest.mark.parametrize(
    "name",
    [pytest.param("use_mlock", id="use-mlock-kept"), pytest.param("num_parallel", id="num-parallel-ours")],
)
def test_our_additions_are_not_deprecated(name: str) -> None:
    assert not is_deprecated(name)
    assert name in PARAMETER_TYPES


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("num_ctx", 4096, 4096, id="int"),
        pytest.param("seed", -1, -1, id="negative-int"),
        pytest.param("temperature", 0.5, 0.5, id="float"),
        pytest.param("temperature", 1, 1.0, id="int-for-float"),
        # JSON has one number type: a whole float is an int, as Ollama's Go takes it (a build review).
        pytest.param("num_ctx", 4096.0, 4096, id="whole-float-for-int"),
        pytest.param("temperature", 3.4e38, 3.4e38, id="float32-largest"),
        pytest.param("use_mmap", False, False, id="bool"),
        pytest.param("stop", "</s>", ("</s>",), id="stop-string"),
        pytest.param("stop", ["a", "b"], ("a", "b"), id="stop-list"),
        pytest.param("stop", ("a",), ("a",), id="stop-tuple"),
        pytest.param("stop", [], (), id="stop-empty-list"),
        pytest.param("keep_alive", 300, "300", id="seconds"),
        pytest.param("keep_alive", "+5m", "+5m", id="signed-duration"),  # Go's ParseDuration takes these
        pytest.param("keep_alive", ".5h", ".5h", id="fraction-without-a-leading-digit"),
        pytest.param("keep_alive", "1.5h30m", "1.5h30m", id="fraction-and-parts"),
        pytest.param("keep_alive", "90.5", "90.5", id="bare-seconds"),
        pytest.param("keep_alive", 1e-05, "0.00001", id="small-seconds-without-exponent"),
        pytest.param("keep_alive", 1.0e20, "100000000000000000000", id="large-seconds-without-exponent"),
    ],
)
def test_validate_typed_value(name: str, value: object, expected: object) -> None:
    validated = validate_parameter(name, value)
    assert validated == expected
    assert type(validated) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        pytest.param("num_ctx", True, "expected an integer, got true", id="bool-for-int"),
        pytest.param("num_ctx", 4096.5, "expected an integer, got 4096.5", id="fraction-for-int"),
        pytest.param("temperature", 1e39, "1e+39 does not fit in a 32-bit float", id="float32-overflow"),
        # Not its 301 digits, as a whole float taken for an int printed it (a build review).
        pytest.param(
            "num_ctx", 1e300, "'num_ctx': 1e+300 does not fit in a 64-bit integer", id="int64-overflow"
        ),
        pytest.param(
            "temperature", -3.5e38, "does not fit in a 32-bit float", id="float32-negative-overflow"
        ),
        pytest.param("num_ctx", "4096", "expected an integer, got '4096'", id="string-for-int"),
        pytest.param("temperature", "hot", "expected a number, got 'hot'", id="string-for-float"),
        pytest.param("min_p", "1e-10", "write 1.0e-10", id="yaml-exponent-without-dot"),
        pytest.param("temperature", False, "expected a number, got false", id="bool-for-float"),
        pytest.param("temperature", None, "expected a number, got null", id="null-for-float"),
        pytest.param("temperature", float("nan"), "must be a finite number", id="nan"),
        pytest.param("use_mmap", 1, "expected true or false, got 1", id="int-for-bool"),
        pytest.param("use_mmap", "true", "expected true or false, got 'true'", id="string-for-bool"),
        pytest.param("stop", ["a", 1], "expected a string or a list of strings, got a list", id="stop-mixed"),
        pytest.param(
            "stop", {"a": 1}, "expected a string or a list of strings, got a mapping", id="stop-map"
        ),
        pytest.param("num_parallel", 0, "must be at least 1", id="num-parallel-zero"),
        pytest.param("num_ctx", -5, "parameter 'num_ctx' must be at least 1, got -5", id="num-ctx-negative"),
        pytest.param("repeat_penalty", -0.5, "must be at least 0.0, got -0.5", id="repeat-penalty"),
        # ggml's most threads: more aborted the runner as it loaded (a serving review).
        pytest.param("num_thread", 100_000, "must be at most 512, got 100000", id="num-thread-too-many"),
    ],
)
def test_validate_rejects(name: str, value: object, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        validate_parameter(name, value)
    assert message in caught.value.message


def test_validate_parameters_drops_deprecated_and_types_the_rest() -> None:
    validated = validate_parameters({"temperature": 1, "mirostat": 2, "stop": "x"})
    assert validated == {"temperature": 1.0, "stop": ("x",)}


def test_validate_parameters_reports_every_problem_at_once() -> None:
    with pytest.raises(ModelfileError) as caught:
        validate_parameters({"temperature": "hot", "top_k": True, "Seed": 1, "num_ctx": 8})
    message = caught.value.message
    assert "temperature: expected a number, got 'hot'" in message
    assert "top_k: expected an integer, got true" in message
    assert "unknown parameter 'Seed' (did you mean 'seed'?)" in message
    assert "num_ctx" not in message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param("hot", "'hot'", id="string"),
        pytest.param(None, "null", id="null"),
        pytest.param(True, "true", id="true"),
        pytest.param(3, "3", id="int"),
        pytest.param(0.5, "0.5", id="float"),
        pytest.param([1], "a list", id="list"),
        pytest.param({"a": 1}, "a mapping", id="mapping"),
        pytest.param({1}, "a set", id="other"),
    ],
)
def test_describe_value(value: object, text: str) -> None:
    assert describe_value(value) == text


def test_parameters_is_an_immutable_hashable_mapping() -> None:
    parameters = Parameters({"top_k": 4, "stop": ["b", "a"]})
    assert parameters["stop"] == ("b", "a")  # lists become tuples, order kept
    assert list(parameters) == ["stop", "top_k"]
    assert len(parameters) == 2
    assert parameters == {"top_k": 4, "stop": ("b", "a")}
    assert hash(parameters) == hash(Parameters([("stop", ("b", "a")), ("top_k", 4)]))
    assert parameters != Parameters({"top_k": 5, "stop": ("b", "a")})
    assert parameters != 3
    with pytest.raises(KeyError):
        parameters["seed"]
