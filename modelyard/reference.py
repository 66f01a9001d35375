"""Image references: `[host[:port]/]namespace/…/name[:tag][@sha256:<64 hex>]`.

Rules, in Docker's spirit with Ollama's defaults:
- the first path component is a registry host when there is more than one component and it
  contains `.` or `:` or is `localhost` (Docker's rule);
- a name without a host lives in the local store; a single component gets the `library/`
  namespace (`gemma3` means `library/gemma3`);
- namespaces may nest (`team/nlp/gemma3`), which Ollama cannot express;
- repository paths follow the OCI distribution grammar and are lowercased (registries demand it,
  and Ollama matches names case-insensitively); tags keep their case;
- without a tag or a digest the tag is `latest`; `@sha256:` pins the exact manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from modelyard.errors import InvalidReferenceError

DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255  # Docker's limit on host + repository

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])"  # a bracketed IPv6 literal
    r"(?::[0-9]{1,5})?"
)


@dataclass(frozen=True, order=True)
class Reference:
    """A parsed reference. `str(ref)` is the canonical full form stored in the index."""

    repository: str  # "library/gemma3", "team/nlp/gemma3"
    host: str | None = None  # "localhost:5000", "ghcr.io"; None = the local store
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """Host and repository, without tag or digest."""
        return f"{self.host}/{self.repository}" if self.host else self.repository

    @property
    def is_remote(self) -> bool:
        return self.host is not None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def short(self) -> str:
        """The form to show users, as Ollama shows names: defaults dropped, tag kept."""
        name = self.repository
        if not self.host and name.startswith(DEFAULT_NAMESPACE + "/") and name.count("/") == 1:
            name = name[len(DEFAULT_NAMESPACE) + 1 :]
        if self.host:
            name = f"{self.host}/{name}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest[:19]}…" if self.tag else f"@{self.digest}"
        return name

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=_check_tag(tag, str(self)), digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=_check_digest(digest, str(self)))

    def without_digest(self) -> Reference:
        return replace(self, digest=None, tag=self.tag or DEFAULT_TAG)


def parse_reference(text: str) -> Reference:
    """Parse a reference, or raise InvalidReferenceError saying which part is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError(str(text), "a reference cannot be empty")
    raw = text.strip()
    if any(c.isspace() for c in raw):
        raise InvalidReferenceError(raw, "a reference cannot contain whitespace")
    if raw.startswith(("http://", "https://")):
        raise InvalidReferenceError(
            raw, "leave out the scheme (use --plain-http for a registry that speaks plain HTTP)"
        )

    rest, digest = _split_digest(raw)
    host, path = _split_host(rest, raw)
    path, tag = _split_tag(path, raw)
    repository = _check_repository(path, raw)
    if not host and "/" not in repository:
        repository = f"{DEFAULT_NAMESPACE}/{repository}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    name_length = len(repository) + (len(host) + 1 if host else 0)
    if name_length > MAX_NAME_LENGTH:
        raise InvalidReferenceError(
            raw, f"the name is {name_length} characters long; at most {MAX_NAME_LENGTH}"
        )
    return Reference(repository=repository, host=host, tag=tag, digest=digest)


def _split_digest(raw: str) -> tuple[str, str | None]:
    if "@" not in raw:
        return raw, None
    rest, _, digest = raw.partition("@")
    return rest, _check_digest(digest, raw)


def _check_digest(digest: str, raw: str) -> str:
    algorithm = digest.partition(":")[0]
    if algorithm != "sha256":
        raise InvalidReferenceError(
            raw, f"digest algorithm {algorithm!r} is not supported; use sha256:<64 hex>"
        )
    if not _DIGEST.fullmatch(digest):
        raise InvalidReferenceError(
            raw, f"digest {digest!r} must be sha256: followed by 64 lowercase hex digits"
        )
    return digest


def _split_host(rest: str, raw: str) -> tuple[str | None, str]:
    first, sep, remainder = rest.partition("/")
    looks_like_host = sep and ("." in first or ":" in first or first.lower() == "localhost" or "[" in first)
    if not looks_like_host:
        return None, rest
    if not _HOST.fullmatch(first):
        raise InvalidReferenceError(raw, f"registry host {first!r} is not a valid host[:port]")
    if ":" in first and not first.endswith("]"):
        port = first.rsplit(":", 1)[1]
        if not 0 < int(port) < 65536:
            raise InvalidReferenceError(raw, f"registry port {port} is out of range")
    if not remainder:
        raise InvalidReferenceError(raw, f"a repository name must follow the registry host {first!r}")
    return first.lower(), remainder


def _split_tag(path: str, raw: str) -> tuple[str, str | None]:
    # The tag is after the last ':' that follows the last '/'; a ':' before it would be a port.
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon <= slash:
        return path, None
    return path[:colon], _check_tag(path[colon + 1 :], raw)


def _check_tag(tag: str, raw: str) -> str:
    if not tag:
        raise InvalidReferenceError(raw, "the tag after ':' is empty")
    if not _TAG.fullmatch(tag):
        raise InvalidReferenceError(
            raw,
            f"tag {tag!r} may contain only letters, digits, '_', '.' and '-', must not start with "
            "'.' or '-', and is at most 128 characters",
        )
    return tag


def _check_repository(path: str, raw: str) -> str:
    if not path:
        raise InvalidReferenceError(raw, "the repository name is empty")
    components = path.lower().split("/")
    for component in components:
        if not component:
            raise InvalidReferenceError(
                raw, "the repository name has an empty path component ('//' or a '/' at an end)"
            )
        if not _COMPONENT.fullmatch(component):
            raise InvalidReferenceError(
                raw,
                f"repository component {component!r} may contain only lowercase letters, digits and the "
                "separators '.', '_', '__', '-', and must start and end with a letter or digit",
            )
    return "/".join(components)
