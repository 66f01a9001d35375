"""Writing a file so that readers see the old bytes or the new ones, never half of either.

The one helper every part of modelyard uses for its small state files (index.json, caches,
credentials, reconciler state): write a temporary file beside the target, fsync it, set its mode,
rename it over the target, fsync the folder. A crash leaves at most a `.NAME.*.tmp` file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # Created with its mode, not chmod-ed after: a credentials file (0600) is never readable
        # by others, not even while it is being written.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the mode whatever the umask took from it
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
