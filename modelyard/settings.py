"""Settings: built once in `main()` from flags and the environment, then passed down.

Nothing in modelyard reads `os.environ` at import time; tests build `Settings(home=tmp_path)`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1:11434"
OLLAMA_REGISTRY = "registry.ollama.ai"  # where Ollama's names without a host live (library/…)


def default_home(environ: Mapping[str, str]) -> Path:
    if environ.get("MODELYARD_HOME"):
        return Path(environ["MODELYARD_HOME"]).expanduser()
    data = environ.get("XDG_DATA_HOME") or str(
        Path(environ.get("HOME", "~")).expanduser() / ".local" / "share"
    )
    return Path(data) / "modelyard"


def default_docker_config(environ: Mapping[str, str]) -> Path:
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"]).expanduser()
    return Path(environ.get("HOME", "~")).expanduser() / ".docker"


@dataclass(frozen=True)
class Settings:
    home: Path
    host: str = DEFAULT_HOST
    # Tag history kept per name for `history` / `rollback` (older entries drop off and become prunable).
    history_limit: int = 20
    # SOURCE_DATE_EPOCH, when set, stamps built images; else a fixed epoch keeps digests reproducible.
    source_date_epoch: int | None = None
    # The docker config directory whose config.json holds registry logins ($DOCKER_CONFIG).
    docker_config: Path = field(default_factory=lambda: Path.home() / ".docker")
    # Blobs a pull or push moves at once.
    registry_parallel: int = 4
    # A registry's answer that brings fewer than `limit` bytes a second over `time` seconds is given
    # up and resumed, a few times, then the pull fails ($MODELYARD_REGISTRY_LOW_SPEED_LIMIT, a size
    # such as 1KiB or 0 for none; $MODELYARD_REGISTRY_LOW_SPEED_TIME, whole seconds), as git's
    # http.lowSpeedLimit and lowSpeedTime: a read timeout alone never ends a trickle.
    registry_low_speed_limit: int = 1024
    registry_low_speed_time: int = 60
    # Registries reached over plain HTTP, or over HTTPS without certificate verification, whatever
    # the command ($MODELYARD_PLAIN_HTTP_REGISTRIES, $MODELYARD_INSECURE_REGISTRIES: host[:port],
    # comma-separated), as Docker's insecure-registries: what `serve --spec` pulls from, too.
    plain_http_registries: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    # Where `pull NAME` (and /api/pull) looks for a name without a registry, as `ollama pull llama3.2`
    # does ($MODELYARD_DEFAULT_REGISTRY: a mirror of one's own; empty: such names are local only).
    default_registry: str | None = None  # from_env: Ollama's unless $MODELYARD_DEFAULT_REGISTRY says
    # Serving ($MODELYARD_API_KEY, $MODELYARD_ORIGINS, $MODELYARD_NUM_PARALLEL, $MODELYARD_KEEP_ALIVE,
    # $MODELYARD_MAX_QUEUE, $MODELYARD_RAM_BUDGET, $MODELYARD_MAX_LOADED_MODELS). The key is never
    # printed, not even in a repr.
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    num_parallel: int | None = None  # None: auto
    keep_alive: str | None = None  # a duration; None: 5m
    max_queue: int = 512
    # `serve --spec`'s default ($MODELYARD_SPEC): a git URL with a token is in every process list
    # as an argument, not so in the environment. Never shown in a repr.
    spec: str | None = field(default=None, repr=False)
    # Seconds a stopping server gives the requests in flight ($MODELYARD_SHUTDOWN_GRACE): keep it
    # below a Pod's terminationGracePeriodSeconds (30 by default).
    shutdown_grace: int = 10
    ram_budget: int | None = None  # bytes; None: what is available at start, minus a reserve
    max_loaded_models: int | None = None  # runners loaded at once; None: as many as memory holds

    @property
    def store_dir(self) -> Path:
        """The OCI image layout (oci-layout, index.json, blobs/sha256/…)."""
        return self.home / "store"

    @property
    def cache_dir(self) -> Path:
        """Rebuildable caches (the build cache of file digests); safe to delete."""
        return self.home / "cache"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "home": default_home(env),
            "host": env.get("MODELYARD_HOST") or DEFAULT_HOST,
            "source_date_epoch": _source_date_epoch(env),
            "docker_config": default_docker_config(env),
            "api_key": env.get("MODELYARD_API_KEY") or None,
            "spec": env.get("MODELYARD_SPEC") or None,
            "cors_origins": _listed(env, "MODELYARD_ORIGINS"),
            "plain_http_registries": _listed(env, "MODELYARD_PLAIN_HTTP_REGISTRIES"),
            "insecure_registries": _listed(env, "MODELYARD_INSECURE_REGISTRIES"),
            "default_registry": env.get("MODELYARD_DEFAULT_REGISTRY", OLLAMA_REGISTRY).strip() or None,
            "num_parallel": _positive_int(env, "MODELYARD_NUM_PARALLEL"),
            "keep_alive": env.get("MODELYARD_KEEP_ALIVE") or None,
            "max_queue": _positive_int(env, "MODELYARD_MAX_QUEUE") or 512,
            "shutdown_grace": _positive_int(env, "MODELYARD_SHUTDOWN_GRACE") or 10,
            "ram_budget": _bytes(env, "MODELYARD_RAM_BUDGET"),
            "max_loaded_models": _positive_int(env, "MODELYARD_MAX_LOADED_MODELS"),
        }
        low_speed = {
            "registry_low_speed_limit": _size(env, "MODELYARD_REGISTRY_LOW_SPEED_LIMIT"),
            "registry_low_speed_time": _positive_int(env, "MODELYARD_REGISTRY_LOW_SPEED_TIME"),
        }
        values.update({k: v for k, v in low_speed.items() if v is not None})  # else the defaults
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _listed(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_bytes(text: str) -> int:
    """`12GiB`, `8GB`, `512MiB`, `1073741824` → bytes. Raises ValueError with what was wrong."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 12GiB, 8GB or 512MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


# 9999-12-31T23:59:59Z, the last second an RFC 3339 timestamp (the image's "created") can name.
_LAST_EPOCH_SECOND = 253402300799


def _source_date_epoch(env: Mapping[str, str]) -> int | None:
    # reproducible-builds.org: a malformed value is an error, not a value to ignore.
    value = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not re.fullmatch(r"[0-9]+", value) or int(value) > _LAST_EPOCH_SECOND:  # not isdigit: "²" is a digit
        raise ValueError(
            f"$SOURCE_DATE_EPOCH must be whole seconds since 1970-01-01 UTC, from 0 to {_LAST_EPOCH_SECOND} "
            f"(e.g. `git log -1 --format=%ct`), got {value!r}"
        )
    return int(value)


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value or value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${name} must be a positive integer (or auto), got {value!r}")
    return int(value)


def _size(env: Mapping[str, str], name: str) -> int | None:
    """A size the variable gives (0 allowed), or None when it is unset."""
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise ValueError(f"${name}: {exc}") from None


def _bytes(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value or value == "auto":
        return None
    size = _size(env, name)
    assert size is not None
    if size <= 0:  # a budget of nothing refuses every model (a docs review: 0 was taken)
        raise ValueError(f"${name} must be more than 0 (like 12GiB, 512MiB), or auto; got {value!r}")
    return size
