"""`keep_alive` as Ollama reads it: how long an idle model stays loaded (pure).

- a JSON number is seconds (fractions allowed); a negative number means forever;
- a string is a Go duration (`"10m"`, `"1h30m"`, `"250ms"`, `"-1m"`); negative means forever;
  a bare number in a string is an error, as Go's `time.ParseDuration` makes it in Ollama;
- `"forever"` (our addition, used by specs) means forever; `0` means unload as soon as idle;
- a number longer than Go's `time.Duration` holds (2^63 − 1 ns, about 292 years) is forever too
  (Ollama's conversion wraps around there; an expiry date past year 9999 can't be printed); a
  string that long is an error, as `time.ParseDuration` makes it.
The result is seconds, `math.inf` for forever.
"""

from __future__ import annotations

import math
import re

from modelyard.errors import InferenceRequestError

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's 5m
FOREVER = math.inf
MAX_DURATION_S = (2**63 - 1) / 1e9  # Go's time.Duration

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_keep_alive(value: object, *, allow_bare_seconds: bool = False) -> float:
    """Seconds to keep a model loaded once idle. Raises InferenceRequestError for bad input.

    `allow_bare_seconds` accepts `"3600"` as seconds, as OLLAMA_KEEP_ALIVE does in the environment."""
    if isinstance(value, bool) or value is None:
        raise InferenceRequestError(
            f"keep_alive must be a number of seconds or a duration like '5m', got {value!r}"
        )
    if isinstance(value, int | float):
        if math.isnan(value):
            raise InferenceRequestError("keep_alive cannot be NaN")
        return _bounded(float(value))
    if not isinstance(value, str):
        raise InferenceRequestError(f"keep_alive must be a number or a string, got {type(value).__name__}")
    text = value.strip()
    if text.lower() in ("forever", "never", "inf", "infinite"):
        return FOREVER
    if allow_bare_seconds and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text):
        return _bounded(float(text))
    return _bounded(parse_go_duration(text))


def _bounded(seconds: float) -> float:
    """Negative, or past Go's range, is forever."""
    return FOREVER if seconds < 0 or seconds > MAX_DURATION_S else seconds


def parse_go_duration(text: str) -> float:
    """Go's `time.ParseDuration`, in seconds."""
    original = text
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise InferenceRequestError(f"invalid duration {original!r}")
    total = 0.0
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None or match.group(1) in ("", "."):
            hint = " (add a unit: s, m or h)" if re.fullmatch(r"[0-9.]+", text) else ""
            raise InferenceRequestError(f"invalid duration {original!r}{hint}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if total > MAX_DURATION_S:
        raise InferenceRequestError(f"invalid duration {original!r}: longer than about 292 years")
    return sign * total


def format_keep_alive(seconds: float) -> str:
    """A duration for people: `5m`, `1h30m`, `forever`."""
    if math.isinf(seconds):
        return "forever"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"
