"""`WWW-Authenticate` challenges (RFC 7235), parsed without trusting their shape. Pure.

A registry answers 401 with one or more challenges: `Basic realm="…"` (htpasswd registries) or
`Bearer realm="https://auth…/token",service="…",scope="repository:ns/name:pull"` (Docker Hub,
GHCR, Harbor). oras-py's parser ignores the scheme, which is how it mistakes a Basic realm for a
token server; this one keeps it, handles quoted strings with escapes and commas, bare tokens, and
several challenges in one header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN}=*)\s*(?:,|$)")
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercased: "basic", "bearer"
    params: Mapping[str, str] = field(default_factory=dict)  # keys lowercased

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """Every challenge in a `WWW-Authenticate` value, in order; malformed parts are skipped."""
    challenges: list[Challenge] = []
    pos = 0
    text = header or ""
    while pos < len(text):
        scheme = _SCHEME.match(text, pos)
        if scheme is None:  # garbage (a stray comma, a lone quote): skip to the next comma
            comma = text.find(",", pos)
            pos = len(text) if comma < 0 else comma + 1
            continue
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(text, pos)) is not None:
            params[param.group(1).lower()] = _unquote(param.group(2))
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return tuple(challenges)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value
