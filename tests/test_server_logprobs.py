"""The shapes of token log-probabilities in the two APIs (server/logprobs.py), from runner entries."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.server.logprobs import completion_logprobs, runner_top_logprobs, token_logprobs


def entry(token: str, logprob: float, *top: tuple[str, float]) -> dict[str, Any]:
    def one(text: str, lp: float) -> dict[str, Any]:
        return {"id": 0, "token": text, "bytes": list(text.encode()), "logit": 0.0, "logprob": lp}

    return {**one(token, logprob), "top": [one(t, lp) for t, lp in top]}


ENTRIES = [entry("Hel", -0.1, ("Hel", -0.1), ("Hi", -2.5)), entry("lo", -0.5, ("lo", -0.5), ("p", -1.0))]


@pytest.mark.parametrize(
    ("wanted", "top", "expected"),
    [
        pytest.param(False, 5, 0, id="not-wanted"),
        pytest.param(True, None, 1, id="chosen-token-only"),
        pytest.param(True, 0, 1, id="zero-candidates"),
        pytest.param(True, 3, 3, id="candidates"),
    ],
)
def test_runner_top_logprobs(wanted: bool, top: int | None, expected: int) -> None:
    assert runner_top_logprobs(wanted, top) == expected


@pytest.mark.parametrize(
    ("top", "candidates"), [(0, [[], []]), (1, [["Hel"], ["lo"]]), (2, [["Hel", "Hi"], ["lo", "p"]])]
)
def test_token_logprobs_shape_of_ollama_and_openai_chat(top: int, candidates: list[list[str]]) -> None:
    shaped = token_logprobs(ENTRIES, top)
    assert [s["token"] for s in shaped] == ["Hel", "lo"]
    assert [s["logprob"] for s in shaped] == [-0.1, -0.5]
    assert shaped[0]["bytes"] == [72, 101, 108]
    assert [[c["token"] for c in s["top_logprobs"]] for s in shaped] == candidates
    assert set(shaped[0]) == {"token", "logprob", "bytes", "top_logprobs"}


def test_completion_logprobs_shape_with_offsets() -> None:
    assert completion_logprobs(ENTRIES, 1, offset=10) == {
        "tokens": ["Hel", "lo"],
        "token_logprobs": [-0.1, -0.5],
        "top_logprobs": [{"Hel": -0.1}, {"lo": -0.5}],
        "text_offset": [10, 13],
    }


def test_completion_offsets_count_characters_not_tokens_of_a_split_character() -> None:
    """ "é" split over two byte tokens: one character, so the token after it starts at offset 1."""
    e_acute = "é".encode()
    halves = [
        {"token": "\ufffd", "bytes": [e_acute[0]], "logprob": -0.1, "top": []},
        {"token": "\ufffd", "bytes": [e_acute[1]], "logprob": -0.2, "top": []},
        {"token": "t", "bytes": [ord("t")], "logprob": -0.3, "top": []},
    ]
    assert completion_logprobs(halves, 0, offset=0)["text_offset"] == [0, 0, 1]


def test_a_token_that_is_part_of_a_character_shows_its_bytes_as_openai_did() -> None:
    """Pieces of characters all read U+FFFD: as tokens they looked alike, as candidates of one step
    they shared one key of top_logprobs (so one's log-prob was lost)."""
    first, second = "é".encode(), "😀".encode()
    pieces = [
        {
            "token": "\ufffd",
            "bytes": [first[0]],
            "logprob": -0.1,
            "top": [
                {"token": "\ufffd", "bytes": [first[0]], "logprob": -0.1},
                {"token": "\ufffd", "bytes": list(second[:2]), "logprob": -2.0},
                {"token": "é", "bytes": list(first), "logprob": -3.0},
            ],
        },
    ]
    shown = completion_logprobs(pieces, 3, offset=0)
    assert shown["tokens"] == ["bytes:\\xc3"]
    assert shown["top_logprobs"] == [{"bytes:\\xc3": -0.1, "bytes:\\xf0\\x9f": -2.0, "é": -3.0}]


def test_completion_offsets_of_an_echoed_prompt_then_its_answer() -> None:
    """A prompt's tokens are its text piece by piece (the first unscored: null); an answer's tokens
    say where they start in the answer, which `offset` (the prompt's length) is added to."""
    prompt = [
        {"token": "", "bytes": [], "logprob": None, "top": None},  # BOS: not in the text
        {"token": "Hi", "bytes": list(b"Hi"), "logprob": -1.0, "top": [{"token": "Hi", "logprob": -1.0}]},
        {"token": " you", "bytes": list(b" you"), "logprob": -2.0, "top": [{"token": " a", "logprob": -0.5}]},
    ]
    answer = [
        {"token": "x", "bytes": list(b"x"), "logprob": -0.1, "offset": 0, "top": []},
        {"token": "y", "bytes": list(b"y"), "logprob": -0.2, "offset": 2, "top": []},  # after held text
    ]
    assert completion_logprobs(prompt, 1, offset=0) == {
        "tokens": ["", "Hi", " you"],
        "token_logprobs": [None, -1.0, -2.0],
        "top_logprobs": [None, {"Hi": -1.0}, {" a": -0.5}],
        "text_offset": [0, 0, 2],
    }
    assert completion_logprobs(answer, 0, offset=6)["text_offset"] == [6, 8]
