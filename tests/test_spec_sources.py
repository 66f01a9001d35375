"""Spec sources: `git+` locations, and file revisions that change with the content only."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from spec_fakes import spec_text

from modelyard.errors import SpecSourceError
from modelyard.spec.sources import (
    FileSource,
    GitLocation,
    GitSource,
    git_error_line,
    local_repository,
    open_source,
    parse_git_location,
    redact,
)

SECRET = "s3cr3t-t0ken"


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
    ("text", "location"),
    [
        pytest.param(
            "git+https://host/ops.git@release/1.0#models",
            GitLocation("https://host/ops.git", "release/1.0", "models"),
            id="https",
        ),
        pytest.param(
            "git+https://host:8443/team/ops.git@env/prod",
            GitLocation("https://host:8443/team/ops.git", "env/prod", ""),
            id="https-port",
        ),
        pytest.param(
            "git+https://alice:p@ss@host/ops.git@env/prod#m.yaml",
            GitLocation("https://alice:p@ss@host/ops.git", "env/prod", "m.yaml"),
            id="at-in-the-password",
        ),
        pytest.param(
            "git+ssh://git@host/ops.git@env/prod",
            GitLocation("ssh://git@host/ops.git", "env/prod", ""),
            id="ssh-user",
        ),
        pytest.param("git+git@host:ops.git", GitLocation("git@host:ops.git", "", ""), id="scp-like"),
        pytest.param(
            "git+git@host:team/ops.git@release/1.0#specs",
            GitLocation("git@host:team/ops.git", "release/1.0", "specs"),
            id="scp-like-with-ref",
        ),
        pytest.param(
            "git+/srv/gitops@env/prod#specs", GitLocation("/srv/gitops", "env/prod", "specs"), id="local"
        ),
        pytest.param(  # a regression hunt: an `@` of the ref's own (git allows it) split the URL
            "git+https://h/r.git@v1@v2", GitLocation("https://h/r.git", "v1@v2", ""), id="at-in-ref"
        ),
    ],
)
def test_a_git_ref_may_hold_slashes(text: str, location: GitLocation) -> None:
    """Found in an audit: `@release/1.0` became part of the URL (`https://host/ops.git@release/1.0`,
    no ref), as the ref was looked for only after the URL's last `/`; branches such as `env/prod`
    could not be used. An `@` before the repository path (a user, a password) is still the URL's."""
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


def test_a_file_behind_links_that_a_configmap_update_moves_is_followed(tmp_path: Path) -> None:
    """A spec review: the path was resolved once, so a ConfigMap mount (`m.yaml -> ..data/m.yaml`,
    `..data -> ..<time>`, which the kubelet swaps and whose old folder it deletes on each update)
    was read from its first folder only, and every update after that was an error."""
    mount = tmp_path / "cm"
    mount.mkdir()

    def publish(stamp: str, body: str) -> None:
        (mount / stamp).mkdir()
        (mount / stamp / "m.yaml").write_text(spec_text(body))
        (mount / "..data_tmp").symlink_to(stamp)
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("..1", "models: [{name: a, image: x}]")
    (mount / "m.yaml").symlink_to("..data/m.yaml")
    source = open_source(str(mount / "m.yaml"), tmp_path / "cache")
    first = source.read()
    publish("..2", "models: [{name: a, image: y}]")
    (mount / "..1" / "m.yaml").unlink()
    (mount / "..1").rmdir()
    second = source.read()
    assert second.revision != first.revision and "image: y" in second.documents[0].text
    assert source.description == str(mount / "m.yaml")


def test_an_unreachable_git_source_is_a_source_error_with_gits_reason(tmp_path: Path) -> None:
    """Found in an audit: the status said `git ls-remote failed: and the repository exists.`, the
    last line of git's advice, not its `fatal:` line saying what was wrong."""
    source = GitSource(parse_git_location(f"git+{tmp_path / 'nothing'}"), tmp_path / "cache")
    with pytest.raises(SpecSourceError, match=r"ls-remote failed: fatal: .* does not appear to be a git"):
        source.read()


@pytest.mark.parametrize(
    ("output", "secrets", "line"),
    [
        pytest.param(
            "fatal: '/x' does not appear to be a git repository\nfatal: Could not read from remote "
            "repository.\n\nPlease make sure you have the correct access rights\n"
            "and the repository exists.\n",
            (),
            "fatal: '/x' does not appear to be a git repository",
            id="first-fatal-not-the-advice",
        ),
        pytest.param(
            "warning: redirecting\nerror: RPC failed; HTTP 500\nfatal: expected flush\n",
            (),
            "error: RPC failed; HTTP 500",
            id="error-before-fatal",
        ),
        pytest.param("hint: try this\nsomething odd\n\n", (), "something odd", id="last-non-empty"),
        pytest.param("\n  \n", (), "", id="nothing"),
        pytest.param(
            f"fatal: unable to access 'https://alice:{SECRET}@h.io/r.git/': 403\n",
            (),
            "fatal: unable to access 'https://h.io/r.git/': 403",
            id="url-redacted",
        ),
        pytest.param(
            "fatal: header 'Authorization: Basic YWxpY2U6czNjcjN0' refused\n",
            ("YWxpY2U6czNjcjN0",),
            "fatal: header 'Authorization: Basic ***' refused",
            id="header-blanked",
        ),
    ],
)
def test_the_git_error_line(output: str, secrets: tuple[str, ...], line: str) -> None:
    assert git_error_line(output, secrets) == line


def _git(cwd: Path, *args: str) -> None:
    import subprocess

    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True)


def _spec_repo(tmp_path: Path) -> Path:
    """A git repository whose branch `main` holds specs/m.yaml."""
    repo = tmp_path / "ops"
    (repo / "specs").mkdir(parents=True)
    (repo / "specs" / "m.yaml").write_text(spec_text("models: [{name: a, image: 'h.io/a:1'}]"))
    _git(tmp_path, "init", "--quiet", "--initial-branch=main", str(repo))
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "specs")
    return repo


def test_a_branch_with_a_slash_is_read(tmp_path: Path) -> None:
    """Found in an audit: a branch such as `release/1.0` could not be named (see above); here a real
    git lists, fetches and checks it out."""
    repo = _spec_repo(tmp_path)
    _git(repo, "checkout", "--quiet", "-b", "release/1.0")
    (repo / "specs" / "n.yaml").write_text(spec_text("models: [{name: b, image: 'h.io/b:1'}]"))
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "release")
    _git(repo, "checkout", "--quiet", "main")
    source = open_source(f"git+{repo}@release/1.0#specs", tmp_path / "cache")
    assert [d.path for d in source.read().documents] == ["specs/m.yaml", "specs/n.yaml"]


def test_a_spec_folder_removed_in_a_commit_is_said_without_the_cache_path(tmp_path: Path) -> None:
    """Found in an audit: once a commit removed the spec folder, the error named the private
    clone's path (`…/cache/git/c2121d684c58cca6/specs: no such file or folder`), not the commit."""
    repo = _spec_repo(tmp_path)
    source = open_source(f"git+{repo}#specs", tmp_path / "cache")
    assert [d.path for d in source.read().documents] == ["specs/m.yaml"]
    _git(repo, "rm", "--quiet", "-r", "specs")
    (repo / "README").write_text("moved")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "no specs")
    with pytest.raises(SpecSourceError) as failed:
        source.read()
    message = str(failed.value)
    assert re.search(rf"`specs` is not in commit [0-9a-f]{{12}} of {re.escape(str(repo))}$", message), message
    assert str(tmp_path / "cache") not in message


def test_an_annotated_tag_is_fetched_once_while_it_stays(tmp_path: Path) -> None:
    """A GitOps review: ls-remote lists an annotated tag's tag object, never the commit checked
    out, so every poll fetched and checked out again."""
    repo = _spec_repo(tmp_path)
    _git(repo, "tag", "-a", "prod", "-m", "release")
    for ref in ("prod", "refs/tags/prod"):
        source = open_source(f"git+{repo}@{ref}#specs", tmp_path / "cache")
        first = source.read()
        fetches: list[tuple[str, ...]] = []
        git = source._git  # type: ignore[attr-defined]

        def counting(*args: str, cwd: Path | None, git: Any = git, fetches: list[Any] = fetches) -> str:
            fetches.extend([args] if args[0] == "fetch" else [])
            return git(*args, cwd=cwd)

        source._git = counting  # type: ignore[attr-defined]
        assert source.read() is first and source.read() is first and fetches == [], ref


def test_a_tag_and_a_branch_of_one_name_read_the_tag_as_git_fetch_does(tmp_path: Path) -> None:
    repo = _spec_repo(tmp_path)
    _git(repo, "tag", "same")  # at the first commit, which names only model a
    _git(repo, "checkout", "--quiet", "-b", "same")
    (repo / "specs" / "n.yaml").write_text(spec_text("models: [{name: b, image: 'h.io/b:1'}]"))
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "the branch moves on")
    source = open_source(f"git+{repo}@same#specs", tmp_path / "cache")
    first = source.read()
    assert [d.path for d in first.documents] == ["specs/m.yaml"]
    fetches: list[tuple[str, ...]] = []
    git = source._git  # type: ignore[attr-defined]

    def counting(*args: str, cwd: Path | None) -> str:
        fetches.extend([args] if args[0] == "fetch" else [])
        return git(*args, cwd=cwd)

    source._git = counting  # type: ignore[attr-defined]
    assert source.read() is first and fetches == [], "what ls-remote names is what fetch takes"


def test_a_symlink_out_of_the_repository_is_not_read(tmp_path: Path) -> None:
    """A GitOps review: a committed link to a host file was read, and the rejected spec's status
    showed its keys and values (Argo CD refuses such links too)."""
    secret = tmp_path / "host-secret.yaml"
    secret.write_text("db_password: hunter2\n")
    repo = _spec_repo(tmp_path)
    (repo / "specs" / "leak.yaml").symlink_to(secret)
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "a link")
    with pytest.raises(
        SpecSourceError, match=r"leak\.yaml.*a symbolic link out of the repository"
    ) as refused:
        open_source(f"git+{repo}#specs", tmp_path / "cache").read()
    assert "hunter2" not in str(refused.value) and "db_password" not in str(refused.value)
    (repo / "inside.yaml").symlink_to("specs/m.yaml")  # a link that stays inside is followed
    _git(repo, "add", ".")
    _git(repo, "rm", "--quiet", "specs/leak.yaml")
    _git(repo, "commit", "--quiet", "-m", "a link inside")
    read = open_source(f"git+{repo}", tmp_path / "cache2").read()
    assert sorted(d.path for d in read.documents) == ["./inside.yaml", "./specs/m.yaml"]


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
        pytest.param(f"https://alice:p'{SECRET}@h.io/r.git", "https://h.io/r.git", id="quote-in-password"),
        pytest.param("https://h.io/r?at=a@b 'x@y'", "https://h.io/r?at=a@b 'x@y'", id="at-in-a-query-kept"),
        pytest.param(
            "https://example.com?email=a@b.com", "https://example.com?email=a@b.com", id="query-no-path"
        ),
        pytest.param(
            "http://localhost:8080#user@host", "http://localhost:8080#user@host", id="fragment-kept"
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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/srv/ops", "/srv/ops"),
        ("/srv/ops/", "/srv/ops"),
        ("file:///srv/ops", "/srv/ops"),
        ("file://localhost/srv/ops", "/srv/ops"),
        ("file:///srv/my%20ops", "/srv/my ops"),
        ("ops", "/work/ops"),
        ("./team/../ops", "/work/ops"),
        ("file://fileserver/srv/ops", "file://fileserver/srv/ops"),
        ("https://h.io/ops.git", "https://h.io/ops.git"),
        ("git@h.io:team/ops.git", "git@h.io:team/ops.git"),
        ("ssh://git@h.io/team/ops.git", "ssh://git@h.io/team/ops.git"),
    ],
)
def test_a_local_repository_is_named_by_its_absolute_path(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    monkeypatch.setattr("os.getcwd", lambda: "/work")
    assert local_repository(url) == expected


def test_spellings_of_one_local_repository_are_one_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GitOps review: `git+/srv/ops` after `git+file:///srv/ops` forgot the saved spec (the
    saved source is compared by its description), and each spelling had a clone of its own."""
    monkeypatch.chdir(tmp_path)
    spellings = [f"git+{tmp_path}/ops@main#m", f"git+file://{tmp_path}/ops@main#m", "git+./ops/@main#m"]
    sources = [GitSource(parse_git_location(text), tmp_path / "cache") for text in spellings]
    assert {s.description for s in sources} == {f"git+{tmp_path}/ops@main#m"}
    assert len({s.clone_dir for s in sources}) == 1


def test_a_repository_given_by_a_relative_path_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git fetch` ran in the private clone, where `./ops` named nothing (`ls-remote` found it)."""
    repo = _spec_repo(tmp_path)
    monkeypatch.chdir(repo.parent)
    read = open_source(f"git+./{repo.name}#specs", tmp_path / "cache").read()
    assert [d.path for d in read.documents] == ["specs/m.yaml"]


def test_a_blank_in_a_git_sources_path_is_a_path_and_in_its_url_an_error() -> None:
    assert parse_git_location("git+https://h.io/r.git#my specs").path == "my specs"
    assert parse_git_location("git+file:///srv/my ops#m").url == "file:///srv/my ops"
    with pytest.raises(SpecSourceError, match="its host part holds a blank") as refused:
        parse_git_location(f"git+https://u:p {SECRET}@h.io/r.git#m")
    assert SECRET not in str(refused.value)
