"""Spec sources: `git+` locations, and file revisions that change with the content only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from spec_fakes import spec_text

from modelyard.errors import SpecSourceError
from modelyard.spec.sources import FileSource, GitLocation, GitSource, open_source, parse_git_location, redact


@pytest.mark.parametrize(
    ("text", "location"),
    [
        pytest.param(
            "git+https://h.io/org/repo.git", GitLocation("https://h.io/org/repo.git", "", ""), id="url"
        ),
        pytest.param(
            "git+https://h.io/org/repo.git@main#specs/team",
            GitLocation("https://h.io/org/repo.git", "main", "specs/team"),
            id="ref-and-path",
        ),
        pytest.param(
            "git+ssh://git@h.io/org/repo.git#m.yaml",
            GitLocation("ssh://git@h.io/org/repo.git", "", "m.yaml"),
            id="ssh-user-is-not-a-ref",
        ),
        pytest.param(
            "git+/srv/gitops@v2#/specs/", GitLocation("/srv/gitops", "v2", "specs"), id="local-checkout"
        ),
    ],
)
def test_git_locations(text: str, location: GitLocation) -> None:
    assert parse_git_location(text) == location


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("https://h.io/repo.git", id="no-prefix"),
        pytest.param("git+#path", id="no-url"),
        pytest.param("git+https://h.io/repo.git#../../etc", id="path-escapes"),
    ],
)
def test_bad_git_locations(text: str) -> None:
    with pytest.raises(SpecSourceError):
        parse_git_location(text)


def test_a_file_revision_follows_the_content_not_the_mtime(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(spec_text("models: [{name: a, image: x}]"))
    source = open_source(str(path), tmp_path / "cache")
    assert isinstance(source, FileSource)
    first = source.read()
    os.utime(path, (1, 1))
    assert source.read().revision == first.revision
    path.write_text(spec_text("models: [{name: a, image: y}]"))
    assert source.read().revision != first.revision
    assert isinstance(open_source("git+/srv/x#y", tmp_path / "cache"), GitSource)


def test_an_unreachable_git_source_is_a_source_error(tmp_path: Path) -> None:
    source = GitSource(parse_git_location(f"git+{tmp_path / 'nothing'}"), tmp_path / "cache")
    with pytest.raises(SpecSourceError, match="ls-remote failed"):
        source.read()


SECRET = "s3cr3t-t0ken"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param(f"https://alice:{SECRET}@h.io/r.git", "https://h.io/r.git", id="user-and-password"),
        pytest.param(f"https://{SECRET}@h.io/r.git", "https://h.io/r.git", id="token-as-user"),
        pytest.param(f"https://alice:p@{SECRET}@h.io/r.git", "https://h.io/r.git", id="at-in-password"),
        pytest.param(
            f"fatal: unable to access 'https://a:{SECRET}@h.io/r/'",
            "fatal: unable to access 'https://h.io/r/'",
            id="in-a-message",
        ),
        pytest.param("git@h.io:org/r.git", "git@h.io:org/r.git", id="scp-like-kept"),
        pytest.param("https://h.io/org/r@v2", "https://h.io/org/r@v2", id="at-in-the-path-kept"),
    ],
)
def test_redact_takes_credentials_out_of_urls(text: str, shown: str) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"git+https://alice:{SECRET}@127.0.0.1:1/org/r.git@main#specs", id="user-and-password"),
        pytest.param(f"git+https://{SECRET}@127.0.0.1:1/org/r.git", id="token-as-user"),
    ],
)
def test_git_credentials_reach_git_and_nothing_shown(tmp_path: Path, text: str) -> None:
    source = open_source(text, tmp_path / "cache")
    assert isinstance(source, GitSource)
    assert SECRET in source.location.url  # what the git commands get
    assert SECRET not in source.description and "127.0.0.1:1/org/r.git" in source.description
    with pytest.raises(SpecSourceError) as failed:
        source.read()  # nothing listens on port 1
    assert SECRET not in str(failed.value)


def test_an_invalid_git_source_is_shown_without_its_credentials() -> None:
    with pytest.raises(SpecSourceError) as failed:
        parse_git_location(f"git+https://alice:{SECRET}@h.io/r.git#../../etc")
    assert SECRET not in str(failed.value)
