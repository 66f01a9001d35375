"""Content-addressed blobs under `blobs/sha256/<hex>`, written so that no half-written or
mismatched blob is ever visible.

Every write streams into `ingest/<hex-or-new>.<random>.partial` (same filesystem), hashing as it
goes; then the digest is checked, the file fsynced, and `os.replace`d into place. A crash leaves at
most a partial file in `ingest/`, which `prune` removes. A blob that already exists is never
written again (its mtime is touched so a concurrent prune's grace period sees it as in use).

A partial file being written is flocked by its writer (a download: the `.lock` file beside it), so
that `prune --grace 0` removes only the files of writers gone (a store review: it took a live
pull's file, and that pull failed blaming the registry).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelyard.errors import BlobNotFoundError, CorruptStoreError, DigestMismatchError
from modelyard.store.atomic import fsync_dir
from modelyard.store.image import is_digest, sha256_digest

CHUNK_BYTES = 4 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"  # beside a partial download: who is appending to it (registry/transfer.py)
UPLOAD_JOURNAL_SUFFIX = ".upload.json"  # an interrupted push's upload session (registry/journal.py)

Progress = Callable[[int], None]  # called with the number of bytes just processed
UNREADABLE_HINT = "Check its owner and permissions (`ls -l`), or remove it and build or pull again."


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    created: bool  # False when the blob was already in the store


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"

    def path(self, digest: str) -> Path:
        """The file of a blob. The digest is validated, so no input can name a path outside the store."""
        if not is_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.dir / digest.removeprefix("sha256:")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None

    def read_bytes(self, digest: str, limit: int | None = None) -> bytes:
        path = self.path(digest)
        try:
            with path.open("rb") as f:
                data = f.read() if limit is None else f.read(limit + 1)
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None
        except OSError as exc:  # not readable (its mode), a folder in its place: said, with the file
            why = f"cannot be read ({exc.strerror or exc})"
            raise CorruptStoreError(path, why, UNREADABLE_HINT) from None
        if limit is not None and len(data) > limit:
            raise ValueError(f"blob {digest} is larger than {limit} bytes")
        # What is read whole is small (manifests, configs, a template, a SYSTEM): checked each time,
        # a few microseconds, so that a damaged store is told, never served.
        actual = sha256_digest(data)
        if actual != digest:
            raise CorruptStoreError(
                path,
                f"its bytes hash to {actual}",
                "Run `modelyard verify --fix`, then build or pull the image again.",
            )
        return data

    def head(self, digest: str, size: int) -> bytes:
        """The blob's first `size` bytes (to tell its format), or b"" when the store lacks it."""
        try:
            with self.path(digest).open("rb") as f:
                return f.read(size)
        except FileNotFoundError:
            return b""

    def touch(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest))

    def digests(self) -> Iterator[str]:
        if not self.dir.is_dir():
            return
        for entry in os.scandir(self.dir):
            name = "sha256:" + entry.name
            if entry.is_file() and is_digest(name):
                yield name

    def put_bytes(self, data: bytes, expected: str | None = None) -> BlobInfo:
        return self.put_chunks([data], expected=expected, source="bytes")

    def put_file(self, path: Path, expected: str | None = None, progress: Progress | None = None) -> BlobInfo:
        if expected is not None and self.exists(expected):
            self.touch(expected)
            return BlobInfo(expected, self.size(expected), created=False)
        with path.open("rb") as f:
            return self.put_chunks(_read_chunks(f), expected=expected, source=str(path), progress=progress)

    def put_chunks(
        self,
        chunks: Iterable[bytes],
        expected: str | None = None,
        source: str = "",
        progress: Progress | None = None,
    ) -> BlobInfo:
        """Stream chunks into the store. With `expected`, bytes that hash otherwise never enter it."""
        if expected is not None:
            self.path(expected)  # validates the digest before any work
            if self.exists(expected):
                self.touch(expected)
                return BlobInfo(expected, self.size(expected), created=False)
        stem = expected.removeprefix("sha256:") if expected else "new"
        with self.new_partial(stem) as (partial, out):
            digest, size = _write_hashed(out, chunks, progress)
            if expected is not None and digest != expected:
                raise DigestMismatchError(expected, digest, source)
            return self._commit(partial, digest, size)

    @contextlib.contextmanager
    def new_partial(self, stem: str) -> Iterator[tuple[Path, BinaryIO]]:
        """A new partial file in the ingest folder, open for writing and flocked until the block
        ends (prune leaves it alone), then removed unless committed meanwhile."""
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        partial = self.ingest_dir / f"{stem}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
        try:
            with partial.open("xb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)
                yield partial, out
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def commit_partial(self, partial: Path, expected: str) -> BlobInfo:
        """Hash a finished partial file (e.g. a resumed download) and move it into place if it matches."""
        digest, size = hash_file(partial)
        if digest != expected:
            partial.unlink(missing_ok=True)
            raise DigestMismatchError(expected, digest, str(partial.name))
        return self._commit(partial, digest, size)

    def adopt(self, partial: Path) -> BlobInfo:
        """Move a finished file of ours (in the ingest folder) into the store under its own digest,
        without copying it: for output we produced, such as quantized weights."""
        digest, size = hash_file(partial)
        with partial.open("rb+") as f:
            os.fsync(f.fileno())
        return self._commit(partial, digest, size)

    def _commit(self, partial: Path, digest: str, size: int) -> BlobInfo:
        target = self.path(digest)
        if target.exists():
            partial.unlink(missing_ok=True)  # someone stored the same bytes meanwhile: ours can go
            self.touch(digest)
            return BlobInfo(digest, size, created=False)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        fsync_dir(self.dir)
        return BlobInfo(digest, size, created=True)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def stale_partials(self, older_than_s: float, now: float | None = None) -> list[Path]:
        """Partial files untouched for `older_than_s` whose writer is gone, and the lock files of
        partial downloads whose partial file is one of them, or gone. (A lock's own time says
        nothing: holding it does not touch the file.)"""
        if not self.ingest_dir.is_dir():
            return []
        cutoff = (time.time() if now is None else now) - older_than_s
        entries = [e for e in os.scandir(self.ingest_dir) if e.is_file()]
        partials = {e.path for e in entries if e.name.endswith(PARTIAL_SUFFIX)}
        stale = {
            e.path
            for e in entries
            if e.name.endswith(PARTIAL_SUFFIX) and _mtime(e) <= cutoff and not self.in_use(Path(e.path))
        }
        locks = {
            e.path
            for e in entries
            if e.name.endswith(PARTIAL_SUFFIX + LOCK_SUFFIX)
            and _mtime(e) <= cutoff
            and ((its := e.path.removesuffix(LOCK_SUFFIX)) in stale or its not in partials)
            and not _held(e.path)
        }
        return [Path(path) for path in sorted(stale | locks)]

    def stale_upload_journals(self, older_than_s: float, now: float | None = None) -> list[Path]:
        """Upload sessions of interrupted pushes untouched for `older_than_s` (each is rewritten
        after every chunk), and temporary files of their writes."""
        if not self.ingest_dir.is_dir():
            return []
        cutoff = (time.time() if now is None else now) - older_than_s
        return sorted(
            Path(e.path)
            for e in os.scandir(self.ingest_dir)
            if e.is_file()
            and (e.name.endswith(UPLOAD_JOURNAL_SUFFIX) or f"{UPLOAD_JOURNAL_SUFFIX}." in e.name)
            and _mtime(e) <= cutoff
        )

    @staticmethod
    def in_use(path: Path) -> bool:
        """Whether a writer holds a partial file: its own flock, or its download's lock."""
        return _held(str(path)) or _held(str(path) + LOCK_SUFFIX)


def _mtime(entry: os.DirEntry[str]) -> float:
    """Its modification time; infinite for one gone since the listing (committed, or removed by
    another prune: a diff review saw prune fail on it), which no cutoff reaches."""
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return math.inf


def _held(path: str) -> bool:
    """Whether a writer holds the file's flock (a file gone is held by none)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the lock this took, if it took one
    return False


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_BYTES):
        yield chunk


def _write_hashed(out: BinaryIO, chunks: Iterable[bytes], progress: Progress | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        out.write(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
    out.flush()
    os.fsync(out.fileno())
    return "sha256:" + h.hexdigest(), size


def hash_file(path: Path, progress: Progress | None = None) -> tuple[str, int]:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in _read_chunks(f):
            h.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return "sha256:" + h.hexdigest(), size
