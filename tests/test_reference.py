from __future__ import annotations

import pytest

from modelyard.errors import InvalidReferenceError
from modelyard.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest"),
    [
        pytest.param("gemma3", None, "library/gemma3", "latest", None, id="bare-name"),
        pytest.param("gemma3:270m", None, "library/gemma3", "270m", None, id="name-tag"),
        pytest.param("Gemma3:Q4_K_M", None, "library/gemma3", "Q4_K_M", None, id="repo-lowercased-tag-kept"),
        pytest.param("team/gemma3", None, "team/gemma3", "latest", None, id="namespace"),
        pytest.param(
            "team/nlp/chat/gemma3:v1", None, "team/nlp/chat/gemma3", "v1", None, id="nested-namespaces"
        ),
        pytest.param("localhost/gemma3", "localhost", "gemma3", "latest", None, id="localhost-host"),
        pytest.param(
            "localhost:5000/team/gemma3:270m", "localhost:5000", "team/gemma3", "270m", None, id="host-port"
        ),
        pytest.param("ghcr.io/org/team/model", "ghcr.io", "org/team/model", "latest", None, id="dotted-host"),
        pytest.param("127.0.0.1:5000/m:t", "127.0.0.1:5000", "m", "t", None, id="ip-host"),
        pytest.param("[::1]:5000/m", "[::1]:5000", "m", "latest", None, id="ipv6-host"),
        pytest.param(f"gemma3@{D}", None, "library/gemma3", None, D, id="digest-only"),
        pytest.param(f"gemma3:270m@{D}", None, "library/gemma3", "270m", D, id="tag-and-digest"),
        pytest.param(f"reg.io:443/a/b:c@{D}", "reg.io:443", "a/b", "c", D, id="everything"),
        pytest.param("my_model.v2-x__y", None, "library/my_model.v2-x__y", "latest", None, id="separators"),
        pytest.param("  gemma3  ", None, "library/gemma3", "latest", None, id="surrounding-space-trimmed"),
    ],
)
def test_parse_valid(
    text: str, host: str | None, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repository, tag, digest)
    assert parse_reference(str(ref)) == ref, "the canonical form parses back to the same reference"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("gem ma", "whitespace", id="space"),
        pytest.param("gemma3:", "tag after ':' is empty", id="empty-tag"),
        pytest.param("gemma3:-x", "tag '-x'", id="tag-leading-dash"),
        pytest.param("gemma3:" + "t" * 129, "at most 128", id="tag-too-long"),
        pytest.param("gem$ma", "repository component 'gem$ma'", id="illegal-char"),
        pytest.param("-gemma", "repository component '-gemma'", id="leading-dash"),
        pytest.param("team//gemma", "empty path component", id="double-slash"),
        pytest.param("team/", "empty path component", id="trailing-slash"),
        pytest.param("gemma@sha256:abc", "64 lowercase hex", id="short-digest"),
        pytest.param("gemma@sha512:" + "a" * 128, "sha512", id="other-algorithm"),
        pytest.param("gemma@" + "a" * 64, "algorithm", id="digest-without-algorithm"),
        pytest.param("localhost:99999/m", "port 99999", id="port-range"),
        pytest.param("bad_host.io/m", "registry host", id="underscore-host"),
        pytest.param("localhost:5000/", "repository name must follow", id="host-only"),
        pytest.param("https://ghcr.io/a/b", "scheme", id="scheme"),
        pytest.param("a/" + "b" * 260, "characters long", id="too-long"),
    ],
)
def test_parse_invalid_says_which_part(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "short"),
    [
        pytest.param("gemma3", "gemma3:latest", id="default-namespace-dropped"),
        pytest.param("team/gemma3:v1", "team/gemma3:v1", id="namespace-kept"),
        pytest.param("library/x/y", "library/x/y:latest", id="nested-library-kept"),
        pytest.param("localhost:5000/library/gemma3:t", "localhost:5000/library/gemma3:t", id="remote-full"),
        pytest.param(f"gemma3@{D}", f"gemma3@{D}", id="digest-only-full-digest"),
    ],
)
def test_short_names(text: str, short: str) -> None:
    assert parse_reference(text).short() == short


def test_with_tag_and_digest() -> None:
    ref = parse_reference("team/m:v1")
    assert str(ref.with_tag("v2")) == "team/m:v2"
    assert str(ref.with_digest(D)) == f"team/m:v1@{D}"
    assert ref.with_digest(D).without_digest() == ref
    assert isinstance(ref, Reference)
    with pytest.raises(InvalidReferenceError):
        ref.with_tag("bad tag")
