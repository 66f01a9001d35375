"""Where specs come from: a file or folder (watched), or a git repository (polled for new commits).

    models.yaml | specs/                 FileSource: read every poll (0.5 s); the revision is a hash
                                         of the contents, so an edit shows within a second
    git+URL[@REF][#PATH]                 GitSource: `git ls-remote` every poll (30 s); on a new commit,
    git+/path/to/checkout[@REF][#PATH]   fetch it into $MODELYARD_HOME/cache/git/… and read PATH there.
                                         A local checkout is cloned from, never written to: only its
                                         commits count, not edits in its working tree.

Both return a SpecSnapshot (documents + revision); the reconciler validates it.

A git URL may carry credentials (`https://user:token@host/repo.git`): they go to the git commands
in their environment, as an HTTP Authorization header (`http.extraHeader`), never in their
arguments, which any local user reads with `ps`; nowhere else. Every URL shown (the description in
/api/status, errors, logs, git's own messages) passes through `redact` first.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from modelyard.errors import SpecSourceError
from modelyard.registry.credentials import Credentials
from modelyard.spec.reconciler import SpecSnapshot
from modelyard.spec.schema import SpecDocument, read_documents

GIT_PREFIX = "git+"
FILE_POLL_S = 0.5
GIT_POLL_S = 30.0
GIT_TIMEOUT_S = 120.0
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")  # up to the authority's last @
# A URL's start up to the last @ before its path, `?` and `#` included: a password typed with an
# unencoded # or ? (an invalid URL) ends the authority there by the URL's rules, which showed the
# rest of it. Only for a --spec source's own text, whose URL is at its start: in other text an @
# in a query or a fragment is not a password's.
_TYPED_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s]*@")


def redact(text: str) -> str:
    """`text` with the user and password taken out of every URL in it (`https://u:p@h/r` →
    `https://h/r`). scp-like `git@host:path` has no password to hide and stays as it is."""
    return _USERINFO.sub(r"\1", text)


class FileSource:
    """A spec file, or a folder of them (recursively)."""

    def __init__(self, path: Path | str, *, poll_interval: float = FILE_POLL_S) -> None:
        # Absolute, its links kept: a Kubernetes ConfigMap's file is a link through `..data` to a
        # folder that each update replaces, and a path resolved once went with the first of them
        # (a spec review: updates stopped applying after the first).
        self.path = Path(path).expanduser().absolute()
        self.poll_interval = poll_interval
        self.description = str(self.path)
        self.former_descriptions: tuple[str, ...] = ()

    def read(self) -> SpecSnapshot:
        documents = tuple(read_documents(self.path, watched=True))
        return SpecSnapshot(documents, content_revision(documents))


@dataclass(frozen=True)
class GitLocation:
    url: str  # anything `git clone` takes: https://…, ssh://…, file://…, /a/local/checkout
    ref: str  # branch, tag or commit; "" = the remote's HEAD
    path: str  # file or folder inside the repository; "" = its root

    def __str__(self) -> str:
        """As shown to people: without credentials in the URL."""
        return (
            f"{GIT_PREFIX}{redact(self.url)}"
            + (f"@{self.ref}" if self.ref else "")
            + (f"#{self.path}" if self.path else "")
        )


def parse_git_location(text: str) -> GitLocation:
    """`git+URL[@REF][#PATH]`. REF follows the first `@` in the URL's repository path, so it may hold
    slashes (`@release/1.0`) and `@`s of its own (git allows them), and an `@` before the path
    (`ssh://git@host/…`, `git@host:…`, a user and password) is the URL's own. An `@` in the
    repository path itself starts a REF."""
    shown = redact(text)
    if not text.startswith(GIT_PREFIX):
        raise SpecSourceError(shown, "a git source starts with git+ (git+https://host/repo.git#path)")
    typed = _TYPED_USERINFO.match(text, len(GIT_PREFIX))
    if typed is not None and any(c in typed.group(0) for c in "#?"):
        # Else `#` starts the PATH inside the password, and git gets a URL cut there.
        shown = GIT_PREFIX + typed.group(1) + text[typed.end() :]
        raise SpecSourceError(shown, "the user or password holds a # or ?: percent-encode it (%23, %3F)")
    rest, _, path = text[len(GIT_PREFIX) :].partition("#")
    at = rest.find("@", _repository_path_start(rest))
    url, ref = (rest[:at], rest[at + 1 :]) if at >= 0 else (rest, "")
    if not url:
        raise SpecSourceError(shown, "no repository URL")
    if "://" in url:
        # Checked before anything else is said with the text in it: a password typed with an
        # unencoded / or a blank in it is past what redact can tell from a path (and a URL
        # cannot hold a blank). Neither the URL nor urlsplit's message (which quotes the "port")
        # is shown.
        scheme = url.partition("://")[0]
        masked = f"{GIT_PREFIX}{scheme}://…"
        hint = "; a user or password holding / ? # @ or blanks must be percent-encoded"
        authority = url.partition("://")[2].partition("/")[0]
        if any(c.isspace() for c in authority):  # a blank in a path (file:///srv/my ops) is git's to read
            raise SpecSourceError(masked, f"not a valid URL (its host part holds a blank{hint})")
        try:
            urllib.parse.urlsplit(url).port  # noqa: B018 - the checks urlsplit makes, here, not at start-up
        except ValueError as exc:
            said = str(exc)
            why = (
                "its port is not a number"
                if "could not be cast" in said
                else "its port is out of range"
                if "out of range" in said
                else said
            )
            raise SpecSourceError(masked, f"not a valid URL ({why}{hint})") from None
    path = path.strip("/")
    if ".." in Path(path).parts:
        raise SpecSourceError(shown, f"the path {path!r} must stay inside the repository")
    return GitLocation(url, ref, path)


def _repository_path_start(url: str) -> int:
    """Where the repository path starts, after any user, password and host (git's rules): after the
    authority of `scheme://authority/path`; after the colon of scp-like `user@host:path` (a colon
    before any slash); else the whole of it is a path."""
    scheme = re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", url)
    if scheme:
        slash = url.find("/", scheme.end())
        return len(url) if slash < 0 else slash
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        return colon + 1
    return 0


def local_repository(url: str) -> str:
    """A repository on this machine as an absolute path (`./ops`, `~/ops`, `file:///srv/ops` →
    `/srv/ops`); any other URL as it is (pure but for the working folder and home)."""
    if url.startswith("file://"):
        parts = urllib.parse.urlsplit(url)
        if parts.netloc in ("", "localhost"):
            return os.path.normpath(urllib.parse.unquote(parts.path))
        return url
    if "://" in url or _repository_path_start(url) > 0:  # a URL, or scp-like user@host:path
        return url
    return os.path.abspath(os.path.expanduser(url))


def credentials_apart(url: str, environ: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """An http(s) URL without the user and password it carries, and the environment entries that
    give git them as an Authorization header instead, after any git configuration `environ`
    already passes (GIT_CONFIG_COUNT) (pure). Other URLs (ssh, paths) come back as they are."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    login = Credentials(urllib.parse.unquote(user), urllib.parse.unquote(password))
    header = f"Authorization: {login.basic()}"
    given = (environ or {}).get("GIT_CONFIG_COUNT", "0")
    n = int(given) if given.isdigit() else 0
    env = {
        "GIT_CONFIG_COUNT": str(n + 1),
        f"GIT_CONFIG_KEY_{n}": "http.extraHeader",
        f"GIT_CONFIG_VALUE_{n}": header,
    }
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), env


class GitSource:
    """A path in a git repository, fetched into a private clone under `cache_dir`."""

    def __init__(self, location: GitLocation, cache_dir: Path, *, poll_interval: float = GIT_POLL_S) -> None:
        self.location = location
        self.poll_interval = poll_interval
        # Named as one repository is, however it was spelled (`git+./ops`, `git+/srv/ops`,
        # `git+file:///srv/ops`): the saved spec stays in force across spellings (a GitOps review:
        # another spelling of the same source forgot it), and one repository has one clone.
        same = replace(location, url=local_repository(location.url))
        self.description = str(same)
        # As it was named before, when spelled otherwise: an upgrade keeps its saved spec.
        self.former_descriptions: tuple[str, ...] = (
            (str(location),) if str(location) != self.description else ()
        )
        key = hashlib.sha256(f"{same.url}\n{location.ref}".encode()).hexdigest()[:16]
        self.clone_dir = cache_dir / "git" / key
        # The absolute path to git too: a relative one was taken from the clone's folder by `fetch`.
        self._url, self._credentials_env = credentials_apart(same.url, os.environ)
        # What git gets of them (the header's base64), blanked in its messages should it echo it.
        headers = [v for k, v in self._credentials_env.items() if k.startswith("GIT_CONFIG_VALUE_")]
        self._secrets = tuple(header.rpartition(" ")[2] for header in headers)
        self._commit = ""
        self._snapshot: SpecSnapshot | None = None

    def read(self) -> SpecSnapshot:
        commit = self._remote_commit()
        if commit == self._commit and self._snapshot is not None:
            return self._snapshot
        commit = self._checkout(commit)
        root = self.clone_dir / self.location.path if self.location.path else self.clone_dir
        # read_documents names paths in the private clone under the cache, which mean nothing to
        # whoever wrote the spec URL: say where in which commit instead.
        where = f"commit {commit[:12]} of {redact(self.location.url)}"
        if not root.exists():
            raise SpecSourceError(self.description, f"`{self.location.path}` is not in {where}")
        try:
            # Confined to the clone: a committed symlink to a host file put its keys and values in
            # the status of a rejected spec (a GitOps review; Argo CD refuses such links too).
            found = read_documents(root, within=self.clone_dir)
        except SpecSourceError as exc:
            inside = Path(os.path.relpath(exc.source, self.clone_dir)).as_posix()
            raise SpecSourceError(self.description, f"`{inside}` in {where}: {exc.reason}") from None
        documents = tuple(
            SpecDocument(f"{self.location.path or '.'}/{d.path}" if root.is_dir() else d.path, d.text)
            for d in found
        )
        self._commit = commit
        self._snapshot = SpecSnapshot(documents, f"git:{commit}")
        return self._snapshot

    def _remote_commit(self) -> str:
        ref = self.location.ref or "HEAD"
        # An annotated tag lists its tag object, then (asked for `ref^{}`) the commit it points at:
        # the commit is what the checkout compares with (a GitOps review: every poll of an
        # annotated tag fetched and checked out again).
        out = self._git("ls-remote", "--", self._url, ref, f"{ref}^{{}}", cwd=None)
        found: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            found[name] = sha
        # As `git fetch REF` chooses: a tag before a branch of the same name; an annotated tag by
        # its commit, named short or in full (a review).
        peeled = (f"refs/tags/{ref}^{{}}", f"{ref}^{{}}")
        for name in (*peeled, ref, f"refs/tags/{ref}", f"refs/heads/{ref}"):
            if name in found:
                return found[name]
        if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
            return ref  # a commit: ls-remote does not list it
        raise SpecSourceError(self.description, f"no branch or tag {ref!r} in {redact(self.location.url)}")

    def _checkout(self, commit: str) -> str:
        """Fetch the ref (a commit only when one was asked for: not every server hands out commits by
        id) and check it out in the private clone; returns the commit checked out."""
        if not (self.clone_dir / ".git").is_dir():
            shutil.rmtree(self.clone_dir, ignore_errors=True)
            self.clone_dir.parent.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet", str(self.clone_dir), cwd=None)
        wanted = commit if self.location.ref == commit else self.location.ref or "HEAD"
        self._git("fetch", "--quiet", "--depth=1", "--", self._url, wanted, cwd=self.clone_dir)
        self._git("checkout", "--quiet", "--force", "--detach", "FETCH_HEAD", cwd=self.clone_dir)
        return self._git("rev-parse", "HEAD", cwd=self.clone_dir).strip()

    def _git(self, *args: str, cwd: Path | None) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", **self._credentials_env}
        try:
            done = subprocess.run(
                ["git", "-c", "protocol.file.allow=always", *args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise SpecSourceError(self.description, "git is not installed") from None
        except subprocess.TimeoutExpired:
            raise SpecSourceError(
                self.description, f"git {args[0]} took over {GIT_TIMEOUT_S:.0f} s"
            ) from None
        if done.returncode != 0:
            detail = git_error_line(done.stderr or done.stdout, self._secrets)
            raise SpecSourceError(self.description, f"git {args[0]} failed: {detail or done.returncode}")
        return done.stdout


def git_error_line(output: str, secrets: Iterable[str] = ()) -> str:
    """The line of git's output that says what went wrong, as shown to people (pure): the first
    `fatal:` or `error:` line (git ends with advice such as "…and the repository exists."), else
    the last non-empty one; "" when there is none. URLs lose their credentials (redact), and each
    of `secrets` (the Authorization header git gets in its environment) is blanked, should git
    ever echo it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    line = next((x for x in lines if x.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
    line = redact(line)
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    return line


def open_source(text: str, cache_dir: Path, *, poll_interval: float | None = None) -> FileSource | GitSource:
    """`--spec` / `-f` as given: `git+…` is a git source, anything else a file or folder."""
    if text.startswith(GIT_PREFIX):
        interval = GIT_POLL_S if poll_interval is None else poll_interval
        return GitSource(parse_git_location(text), cache_dir, poll_interval=interval)
    return FileSource(text, poll_interval=FILE_POLL_S if poll_interval is None else poll_interval)


def content_revision(documents: tuple[SpecDocument, ...]) -> str:
    digest = hashlib.sha256()
    for document in documents:
        digest.update(f"{document.path}\0{len(document.text)}\0{document.text}".encode())
    return "sha256:" + digest.hexdigest()[:16]
