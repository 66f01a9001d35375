"""Settings: built once in `main()` from flags and the environment, then passed down.

Nothing in modelyard reads `os.environ` at import time; tests build `Settings(home=tmp_path)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1:11434"


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
        epoch = env.get("SOURCE_DATE_EPOCH")
        values: dict[str, object] = {
            "home": default_home(env),
            "host": env.get("MODELYARD_HOST") or DEFAULT_HOST,
            "source_date_epoch": int(epoch) if epoch and epoch.isdigit() else None,
            "docker_config": default_docker_config(env),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
