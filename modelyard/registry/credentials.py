"""Registry credentials, kept where `docker login` keeps them: a docker `config.json`.

Lookup goes through the `docker` package (`docker.auth.AuthConfig`): inline `auths.<host>.auth`,
`identitytoken`, `credHelpers.<host>` and `credsStore` (`docker-credential-<name> get`). Writes
follow `docker login`: to the credential helper when one is configured for the host (leaving an
empty `auths` entry, as docker does), else base64 `user:password` in `auths`, the file rewritten
atomically with mode 0600.

Secrets never reach a log line, an exception message or a repr.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import RegistryAuthError, RegistryError

CONFIG_NAME = "config.json"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the key docker uses for docker.io
TOKEN_USERNAME = "<token>"  # what credential helpers return as the user name of an identity token


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
        if not raw.get("auths") and not raw.get("credsStore") and not raw.get("credHelpers"):
            return None
        from docker import auth as docker_auth
        from docker.errors import DockerException

        try:
            # config_dict, never a path: docker would fall back to $DOCKER_CONFIG and ~/.docker itself.
            config = docker_auth.AuthConfig.load_config(None, config_dict=dict(raw))
            with warnings.catch_warnings():
                # docker.credentials warns when a helper is missing; the StoreError that follows says it.
                warnings.simplefilter("ignore")
                entry = config.resolve_authconfig(host)
        except DockerException as exc:
            raise RegistryAuthError(host, _helper_failure(raw, host, exc)) from None
        except (ValueError, KeyError):
            raise RegistryAuthError(host, f"the entry for {host} in {self.path} cannot be read") from None
        return _credentials(entry)

    def save(self, host: str, credentials: Credentials) -> str:
        """Store credentials for `host`; returns where they went (the file or the helper's name)."""
        host = config_key(host)
        raw = self._read()
        helper = _helper_for(raw, host)
        auths = dict(raw.get("auths") or {})
        if helper:
            _run_helper(
                helper, host, lambda store: store.store(host, credentials.username, credentials.password)
            )
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
        auths = dict(raw.get("auths") or {})
        helper = _helper_for(raw, host)
        found = auths.pop(host, None) is not None
        if helper:
            from docker.credentials import CredentialsNotFound

            try:
                _run_helper(helper, host, lambda store: store.erase(host))
                found = True
            except RegistryAuthError as exc:
                if not isinstance(exc.__cause__, CredentialsNotFound):
                    raise
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

    def _write(self, value: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.directory / f".{CONFIG_NAME}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(value, indent="\t").encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def config_key(host: str) -> str:
    """The `auths` key docker uses for a registry host."""
    return DOCKER_HUB_KEY if host in ("docker.io", "index.docker.io") else host


def _credentials(entry: dict[str, Any] | None) -> Credentials | None:
    if not entry:
        return None
    token = entry.get("IdentityToken") or ""
    username = entry.get("Username") or entry.get("username") or ""
    password = entry.get("Password") or entry.get("password") or ""
    if not (token or username or password):
        return None  # an empty `auths` entry: the credentials were in a helper that has none now
    return Credentials(username=username, password=password, identity_token=token)


def _helper_for(raw: dict[str, Any], host: str) -> str | None:
    helpers = raw.get("credHelpers") or {}
    name = helpers.get(host) if isinstance(helpers, dict) else None
    return name or raw.get("credsStore") or None


def _run_helper(name: str, host: str, action: Any) -> None:
    from docker.credentials import Store, StoreError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = Store(name)
    try:
        action(store)
    except StoreError as exc:
        raise RegistryAuthError(host, f"credential helper docker-credential-{name} failed") from exc


def _helper_failure(raw: dict[str, Any], host: str, exc: Exception) -> str:
    helper = _helper_for(raw, host)
    if helper:
        return f"credential helper docker-credential-{helper} failed (is it installed and on PATH?)"
    return f"cannot read credentials: {type(exc).__name__}"
