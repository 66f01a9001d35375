"""The build cache: what we already know about files and weights, so a rebuild does no heavy work.

- `FileDigestCache` maps a source file, identified by (path, size, mtime, ctime, inode, device),
  to its sha256. A rebuild of an unchanged 250 MB GGUF then costs a `stat`, not a re-hash.
- `SummaryCache` keeps the config facts read from a weights blob's GGUF metadata, keyed by digest,
  so a cached rebuild never needs to open the GGUF (or import numpy).

Both are caches: a missing or unreadable entry only means more work, never a wrong result, and
`rm -r $MODELYARD_HOME/cache` is always safe.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from modelyard.builder.compose import WeightsSummary
from modelyard.store.atomic import atomic_write
from modelyard.store.image import is_digest


def _file_identity(path: Path) -> dict[str, int]:
    st = path.stat()
    # The ctime too: a user can set the mtime back (`cp -p`, `touch -r`, `rsync -t` onto the same
    # file), never the ctime, which any write moves (a build review: a file rewritten in place with
    # its old size and mtime kept its old digest, and the image the old weights).
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, sort_keys=True).encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class FileDigestCache:
    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / "files.json"
        self._lock = FileLock(str(cache_dir / "files.json.lock"))
        self.cache_dir = cache_dir

    def lookup(self, file: Path) -> str | None:
        """The digest recorded for this exact file, or None if it may have changed."""
        entries = _read_json(self.path)
        if not isinstance(entries, dict):
            return None
        entry = entries.get(str(file.resolve()))
        if not isinstance(entry, dict):
            return None
        try:
            identity = _file_identity(file)
        except OSError:
            return None
        digest = entry.get("digest")
        if all(entry.get(k) == v for k, v in identity.items()) and is_digest(digest):
            return str(digest)
        return None

    def record(self, file: Path, digest: str, identity: dict[str, int] | None = None) -> None:
        """Remember a digest. Pass the identity taken *before* hashing, so a file modified while
        it was being read is not recorded with the old bytes' digest."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            entries = _read_json(self.path)
            if not isinstance(entries, dict):
                entries = {}
            entries[str(file.resolve())] = {**(identity or _file_identity(file)), "digest": digest}
            _write_json(self.path, entries)

    @staticmethod
    def identity(file: Path) -> dict[str, int]:
        return _file_identity(file)


class SummaryCache:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "weights"

    def _path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.dir / (digest.removeprefix("sha256:") + ".json")

    def get(self, digest: str) -> WeightsSummary | None:
        value = _read_json(self._path(digest))
        if not isinstance(value, dict):
            return None
        with contextlib.suppress(TypeError, ValueError):
            return WeightsSummary.from_json(value)
        return None

    def put(self, digest: str, summary: WeightsSummary) -> None:
        _write_json(self._path(digest), summary.to_json())
