"""Which repositories of a registry are known to hold a blob: the memory behind cross-repository
mounts. Every push and pull records the blobs it saw in its repository; a later push to another
repository of the same registry mounts them from there instead of sending them again.

A cache, not a truth: a stale entry only costs a mount that the registry answers with an ordinary
upload session. Kept in `<cache>/registry-blobs.json`, rewritten atomically under a file lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from filelock import FileLock

from modelyard.store.atomic import atomic_write

# host -> digest -> repositories, most recent first
Locations = Mapping[str, Mapping[str, tuple[str, ...]]]

REPOSITORIES_PER_BLOB = 4
EMPTY: Locations = MappingProxyType({})


def remember(locations: Locations, host: str, repository: str, digests: Iterable[str]) -> Locations:
    """The locations with `repository` first for each of `digests` on `host`."""
    blobs = dict(locations.get(host, {}))
    for digest in digests:
        known = [r for r in blobs.get(digest, ()) if r != repository]
        blobs[digest] = (repository, *known)[:REPOSITORIES_PER_BLOB]
    return {**locations, host: blobs}


def mount_source(locations: Locations, host: str, repository: str, digest: str) -> str | None:
    """Another repository on `host` that holds `digest`, if we know one."""
    return next((r for r in locations.get(host, {}).get(digest, ()) if r != repository), None)


class LocationLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path.with_name(path.name + ".lock")))

    def load(self) -> Locations:
        try:
            value = json.loads(self.path.read_bytes())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return EMPTY  # a cache: missing or damaged means empty
        if not isinstance(value, dict):
            return EMPTY
        return {
            host: {
                d: tuple(r for r in repos if isinstance(r, str))
                for d, repos in blobs.items()
                if isinstance(repos, list)
            }
            for host, blobs in value.items()
            if isinstance(blobs, dict)
        }

    def record(self, host: str, repository: str, digests: Iterable[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            updated = remember(self.load(), host, repository, digests)
            data = json.dumps({h: {d: list(r) for d, r in b.items()} for h, b in updated.items()})
            atomic_write(self.path, data.encode())
