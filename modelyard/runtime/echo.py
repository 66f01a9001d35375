"""How an echoed prompt's tokens are shown (OpenAI's legacy `echo`): piece by piece, so that the
text sent back and every token's text offset agree.

A token-id prompt is shown as the model read it, control tokens as their text (`<bos>`). A text
prompt is shown as written: the tokens its tokenizer added (BOS) are shown as nothing, and so is
the space SentencePiece puts before a text, which llama.cpp's detokenizer takes off too; control
tokens written in the text are shown as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelyard.runtime import llama


@dataclass(frozen=True)
class EchoedPrompt:
    model: llama.Model
    tokens: list[int]
    tokenizer_added: int  # leading tokens the tokenizer added: not in the text
    space_prefix: bool  # the first written token's piece starts with a space that is not

    @classmethod
    def of(cls, model: llama.Model, tokens: list[int], text: str | None) -> EchoedPrompt:
        """`text`: the prompt as written, None for token ids."""
        added = 0 if text is None else _added_at_start(model, tokens, text)
        written = tokens[added:]
        space_prefix = bool(written) and _has_space_prefix(model, written[0])
        return cls(model, tokens, added, space_prefix)

    def piece(self, position: int) -> bytes:
        if position < self.tokenizer_added:
            return b""
        piece = self.model.piece(self.tokens[position], special=True)
        return piece[1:] if position == self.tokenizer_added and self.space_prefix else piece

    def text(self) -> str:
        return b"".join(self.piece(p) for p in range(len(self.tokens))).decode("utf-8", "replace")

    def shown(self, position: int, entry: dict[str, Any]) -> dict[str, Any]:
        """`entry` (a log-prob entry of the token at `position`) with its token shown so."""
        piece = self.piece(position)
        entry.update(token=piece.decode("utf-8", "replace"), bytes=list(piece))
        return entry

    def unscored(self) -> dict[str, Any]:
        """The log-prob entry of the first token, which nothing before it scores."""
        return self.shown(0, {"id": self.tokens[0], "logit": None, "logprob": None, "top": None})


def _added_at_start(model: llama.Model, tokens: list[int], text: str) -> int:
    """How many of the first tokens of `text`'s tokenization the tokenizer added."""
    written = model.tokenize(text, add_special=False, parse_special=True)
    if not written:  # an empty text: all its tokens are the tokenizer's
        return len(tokens)
    for start in range(len(tokens) - len(written) + 1):
        if tokens[start : start + len(written)] == written:
            return start
    return 0


def _has_space_prefix(model: llama.Model, token: int) -> bool:
    piece = model.piece(token, special=True)
    return piece.startswith(b" ") and not model.detokenize([token]).startswith(" ")
