"""Registry credentials, kept where `docker login` keeps them: a docker `config.json`.

Lookup follows docker's order: the host's credential helper (`credHelpers.<host>`, else
`credsStore`) through the helper protocol (`docker-credential-<name> get|store|erase`), then
`auths.<host>`: base64 `user:password` in `auth`, or an `identitytoken`. Writes follow `docker
login`: to the credential helper when one is configured for the host (leaving an empty `auths`
entry, as docker does), else base64 `user:password` in `auths`, the file rewritten atomically
with mode 0600.

An entry or a helper answer that does not have the shape the format gives is a RegistryAuthError
that says which; every check is explicit, so a bug still shows its traceback. Secrets never reach
a log line, an exception message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import CredentialHelperError, RegistryAuthError, RegistryError
from modelyard.store.atomic import atomic_write

CONFIG_NAME = "config.json"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the key docker uses for docker.io
TOKEN_USERNAME = "<token>"  # what credential helpers return as the user name of an identity token
HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT_S = 60.0
NOT_FOUND = "credentials not found"  # what helpers print when they hold nothing for a server


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token (`identitytoken`)

    def basic(self) -> str:
        """The value of an `Authorization: Basic` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class DockerConfig:
    """One docker config directory (`$DOCKER_CONFIG`, default `~/.docker`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / CONFIG_NAME

    def lookup(self, host: str) -> Credentials | None:
        """The credentials stored for `host`, or None. Runs a credential helper if one is configured."""
        raw = self._read()
        key = config_key(host)
        helper = _helper_for(raw, key)
        if helper:
            found = _helper_get(helper, host, key)
            if found is not None:
                return found
        entry = _auths_entry(raw, key)
        return None if entry is None else self._decode_entry(host, entry)

    def _decode_entry(self, host: str, entry: object) -> Credentials | None:
        """An `auths` entry: `{"auth": base64("user:password")}`, `{"identitytoken": …}`, or `{}`
        (the secret is in a helper that has none now)."""
        unreadable = f"the entry for {host} in {self.path} cannot be read"
        if not isinstance(entry, dict):
            raise RegistryAuthError(host, f"{unreadable}: not a JSON object")
        token = entry.get("identitytoken")
        if token is not None:
            if not isinstance(token, str):
                raise RegistryAuthError(host, f"{unreadable}: identitytoken is not a string")
            return Credentials(identity_token=token) if token else None
        auth = entry.get("auth")
        if auth is None or auth == "":
            return None
        if not isinstance(auth, str):
            raise RegistryAuthError(host, f"{unreadable}: auth is not a string")
        try:
            decoded = base64.b64decode(auth).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryAuthError(host, f"{unreadable}: auth is not base64 of user:password") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise RegistryAuthError(host, f"{unreadable}: auth is not base64 of user:password")
        return Credentials(username=username, password=password)

    def save(self, host: str, credentials: Credentials) -> str:
        """Store credentials for `host`; returns where they went (the file or the helper's name)."""
        host = config_key(host)
        raw = self._read()
        helper = _helper_for(raw, host)
        auths = self._auths(raw)
        if helper:
            entry = {"ServerURL": host, "Username": credentials.username, "Secret": credentials.password}
            _run_helper(helper, host, "store", json.dumps(entry).encode())
            auths[host] = {}
            where = f"docker-credential-{helper}"
        else:
            auths[host] = {"auth": credentials.basic().removeprefix("Basic ")}
            where = str(self.path)
        self._write({**raw, "auths": auths})
        return where

    def erase(self, host: str) -> bool:
        """Forget `host`'s credentials; False when there were none."""
        host = config_key(host)
        raw = self._read()
        auths = self._auths(raw)
        helper = _helper_for(raw, host)
        # Every key naming this host goes, legacy forms too (`http://host`, `https://host/v1/`):
        # lookups match those, so one left behind would keep the user logged in.
        stale = [key for key in auths if registry_host(key) == registry_host(host)]
        found = bool(stale)
        for key in stale:
            del auths[key]
        if helper:
            found = _run_helper(helper, host, "erase", host.encode()) is not None or found
        if found:
            self._write({**raw, "auths": auths})
        return found

    def _read(self) -> dict[str, Any]:
        try:
            value = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{self.path} is not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(value, dict):
            raise RegistryError(f"{self.path} is not a JSON object; fix or remove it")
        return value

    def _auths(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        auths = raw.get("auths") or {}
        if not isinstance(auths, dict):
            raise RegistryError(f"{self.path}: `auths` is not a JSON object; fix or remove it")
        return dict(auths)

    def _write(self, value: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(value, indent="\t").encode() + b"\n", mode=0o600)


def config_key(host: str) -> str:
    """The `auths` key docker uses for a registry host (or a URL naming one)."""
    name = registry_host(host)
    return DOCKER_HUB_KEY if name == "docker.io" else name


def registry_host(text: str) -> str:
    """The registry host in what `docker login` takes: `ghcr.io`, `https://ghcr.io`,
    `127.0.0.1:5000/team`, `https://index.docker.io/v1/` (docker.io): scheme and path go. In lower
    case, as references name hosts: `login LOCALHOST:5000` saved credentials that no push to that
    host found (a registry review)."""
    name = text.removeprefix("http://").removeprefix("https://").split("/", 1)[0].lower()
    return "docker.io" if name == "index.docker.io" else name


def _auths_entry(raw: Mapping[str, Any], key: str) -> object:
    """The `auths` entry for a config key: by that key, else by a legacy key naming the same host
    (`https://reg:5000/v1/`, `index.docker.io`), as docker matches them."""
    auths = raw.get("auths")
    if not isinstance(auths, dict):
        return None
    if key in auths:
        return auths[key]
    wanted = registry_host(key)
    return next((entry for name, entry in auths.items() if registry_host(name) == wanted), None)


def _helper_for(raw: Mapping[str, Any], host: str) -> str | None:
    helpers = raw.get("credHelpers")
    name = None
    if isinstance(helpers, dict):  # by the key, else by one naming the host in other letter case
        name = helpers.get(host) or next(
            (v for k, v in helpers.items() if isinstance(k, str) and registry_host(k) == registry_host(host)),
            None,
        )
    name = name or raw.get("credsStore")
    return name if isinstance(name, str) and name else None


def _helper_get(name: str, host: str, key: str) -> Credentials | None:
    """What helper `name` holds for `key` (None: nothing)."""
    out = _run_helper(name, host, "get", key.encode())
    if out is None:
        return None
    try:
        answer = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RegistryAuthError(host, f"{HELPER_PREFIX}{name} did not answer with JSON") from None
    fields = ("Username", "Secret")
    if not isinstance(answer, dict) or not all(isinstance(answer.get(k), str) for k in fields):
        raise RegistryAuthError(host, f"{HELPER_PREFIX}{name} answered without a Username and Secret")
    username, secret = answer["Username"], answer["Secret"]
    if not username and not secret:
        return None  # docker-credential-pass answers so for a server it does not know
    if username == TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


def _run_helper(name: str, host: str, verb: str, given: bytes) -> bytes | None:
    """Run `docker-credential-<name> <verb>` with `given` on stdin; its output, or None when it
    holds no credentials for the server."""
    helper = HELPER_PREFIX + name
    action = {"get": "read", "store": "store", "erase": "erase"}[verb]
    program = shutil.which(helper)
    if program is None:
        raise CredentialHelperError(
            host,
            helper,
            action,
            "is not installed (not on PATH); install it, or remove credsStore or "
            "credHelpers from Docker's config.json",
        )
    try:
        done = subprocess.run(
            [program, verb], input=given, capture_output=True, timeout=HELPER_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise CredentialHelperError(
            host, helper, action, f"gave no answer within {HELPER_TIMEOUT_S:.0f} s"
        ) from None
    except OSError as exc:
        raise CredentialHelperError(host, helper, action, f"could not run: {exc.strerror}") from None
    if done.returncode == 0:
        return done.stdout
    if NOT_FOUND in (done.stdout + done.stderr).decode("utf-8", "replace").lower():
        return None
    # Not its output: a helper that fails may echo what it was given, the credentials.
    raise CredentialHelperError(host, helper, action, f"failed (exit status {done.returncode})")
