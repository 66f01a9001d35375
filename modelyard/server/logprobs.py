"""Token log-probabilities in the shapes the two APIs return (pure).

The runner sends, per generated token, `{id, token, bytes, logit, logprob, top: [...]}` with the top
candidates from the raw logits (runtime/llama.top_logprobs). Ollama's `logprobs` and OpenAI's chat
`logprobs.content` are one list of `{token, logprob, bytes, top_logprobs}`; OpenAI's legacy
completions use parallel lists with the candidates as `{token: logprob}` maps.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs, and Ollama's


def runner_top_logprobs(wanted: bool, top: int | None) -> int:
    """How many candidates to ask the runner for: 0 for none; at least 1 when log-probs are wanted
    at all (the runner sends the chosen token's only alongside its candidates)."""
    return max(top or 0, 1) if wanted else 0


def token_logprobs(entries: Sequence[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Ollama's `logprobs`, and OpenAI's chat `logprobs.content`."""
    return [
        {
            **_one(entry),
            "top_logprobs": [_one(candidate) for candidate in entry.get("top", ())[:top]],
        }
        for entry in entries
    ]


def completion_logprobs(entries: Sequence[dict[str, Any]], top: int, offset: int) -> dict[str, Any]:
    """OpenAI's legacy completions `logprobs`; `offset`: where the answer's text starts (after an
    echoed prompt), or for a prompt's own entries, where the prompt does (0)."""
    tokens = [legacy_token(entry) for entry in entries]
    # An answer's token says where its text starts in the answer. A prompt's tokens are its text
    # piece by piece: offsets count its characters, which a token holding part of a UTF-8
    # character does not add to (its `token` shows U+FFFD), so from the bytes, decoded as they join.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    offsets = []
    for entry in entries:
        if "offset" in entry:
            offsets.append(offset + int(entry["offset"]))
            continue
        offsets.append(offset)
        offset += len(decoder.decode(bytes(entry["bytes"])))
    # An echoed prompt's first token has no log-prob, nor candidates: null, as OpenAI had them.
    return {
        "tokens": tokens,
        "token_logprobs": [_float_or_none(entry["logprob"]) for entry in entries],
        "top_logprobs": [
            None
            if entry.get("top") is None
            else {legacy_token(c): float(c["logprob"]) for c in entry["top"][:top]}
            for entry in entries
        ],
        "text_offset": offsets,
    }


def legacy_token(entry: dict[str, Any]) -> str:
    """A token as the legacy completions show it: its text; or, for one that holds part of a UTF-8
    character (its text would be U+FFFD, as any other such piece's: candidates of the same step
    would share one key of `top_logprobs`), its bytes as OpenAI wrote them, `bytes:\\xf0\\x9f`."""
    raw = bytes(entry.get("bytes") or entry["token"].encode())
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    return str(entry["token"])


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _one(entry: dict[str, Any]) -> dict[str, Any]:
    return {"token": str(entry["token"]), "logprob": float(entry["logprob"]), "bytes": list(entry["bytes"])}
