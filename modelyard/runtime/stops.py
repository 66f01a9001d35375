"""Stop strings, matched across token boundaries and cut exactly.

A token's text may end with the first half of a stop string whose second half comes with the next
token, so text that could still turn into a stop is held back until it can't. `feed` returns what
is safe to send now; when a stop matches, everything from the stop on is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class StopMatcher:
    stops: Sequence[str]
    held: str = ""
    stopped: bool = False

    def feed(self, text: str) -> str:
        """Add generated text; return the part that can be emitted. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        buffer = self.held + text
        cut = _first_stop(buffer, self.stops)
        if cut is not None:
            self.stopped = True
            self.held = ""
            return buffer[:cut]
        keep = _longest_stop_prefix_suffix(buffer, self.stops)
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held-back text, once generation ended without a stop."""
        text, self.held = self.held, ""
        return "" if self.stopped else text


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(positions) if positions else None


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
