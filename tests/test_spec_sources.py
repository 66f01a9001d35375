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


@pytest.mark.parametrize(
    ("url", "bare", "pair"),
    [
        pytest.param(
            "https://alice:s3cret@h.io/r.git", "https://h.io/r.git", "alice:s3cret", id="user-password"
        ),
        pytest.param(
            "https://ghp_token@h.io:8443/r.git", "https://h.io:8443/r.git", "ghp_token:", id="token"
        ),
        pytest.param("https://a%40b:p%3Aq@h.io/r.git", "https://h.io/r.git", "a@b:p:q", id="escaped"),
        pytest.param("https://h.io/r.git", "https://h.io/r.git", None, id="none"),
        pytest.param("ssh://git@h.io/r.git", "ssh://git@h.io/r.git", None, id="ssh-user-is-no-secret"),
        pytest.param("/srv/repo", "/srv/repo", None, id="path"),
    ],
)
def test_credentials_apart(url: str, bare: str, pair: str | None) -> None:
    import base64

    from modelyard.spec.sources import credentials_apart

    without, env = credentials_apart(url)
    assert without == bare
    if pair is None:
        assert env == {}
    else:
        assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
        assert env["GIT_CONFIG_VALUE_0"] == "Authorization: Basic " + base64.b64encode(pair.encode()).decode()
        # After the user's own git configuration in the environment, not over it.
        _, after = credentials_apart(url, {"GIT_CONFIG_COUNT": "2"})
        assert after["GIT_CONFIG_COUNT"] == "3" and after["GIT_CONFIG_KEY_2"] == "http.extraHeader"


def test_git_gets_the_credentials_as_a_header_never_in_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the token was in git's argv on every poll, for `ps` to show any local user.
    A real git talks to a server here that notes what it was sent."""
    import base64
    import http.server
    import subprocess
    import threading

    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    argv: list[list[str]] = []
    real_run = subprocess.run

    def noting_run(args: list[str], **kwargs: object) -> object:
        argv.append(list(args))
        return real_run(args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", noting_run)
    try:
        source = open_source(f"git+http://alice:{SECRET}@127.0.0.1:{server.server_port}/r.git", tmp_path)
        with pytest.raises(SpecSourceError):
            source.read()
    finally:
        server.shutdown()
        server.server_close()
    assert argv and all(SECRET not in arg for args in argv for arg in args), argv
    basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert seen and seen[0][0].startswith("/r.git/info/refs") and seen[0][1] == basic, seen
