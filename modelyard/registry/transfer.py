"""Moving one blob between the local store and a registry, in bounded memory.

Upload: HEAD first (a blob the repository has is never sent again); then a cross-repository mount
when we know another repository of the registry holds it; else an upload session of streamed
chunks (`PATCH` with `Content-Range`, each read from the file in 1 MiB pieces), closed by
`PUT ?digest=`. A small blob goes in the closing PUT alone. A chunk the registry refuses with 416
resumes from the offset the registry reports; a push stopped halfway leaves its session in a
journal (journal.py), and the next push of that blob goes on from what the registry holds.

Download: into `ingest/<hex>.download.partial`, a name fixed per digest so that a pull killed
halfway (even by SIGKILL) finds its bytes again and asks only for the rest (`Range: bytes=N-`).
A network error mid-body resumes the same way after a backoff, as does a body slower than the
low-speed limit (speed.py). The finished file is hashed by the store and enters it only if its
sha256 is the digest; otherwise it is deleted, and the error names both digests. A partial file
from an earlier run that turns out wrong is thrown away and the blob fetched once more from the
start.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx
from filelock import FileLock

from modelyard.errors import (
    BlobNotFoundError,
    CorruptStoreError,
    DigestMismatchError,
    RegistryError,
    RegistryProtocolError,
)
from modelyard.registry.client import (
    DigestRejectedError,
    RepositoryClient,
    UploadOffsetError,
    UploadSession,
    UploadSessionLost,
)
from modelyard.registry.journal import UploadJournal
from modelyard.registry.session import BodyTooSlow
from modelyard.store.blobs import LOCK_SUFFIX, BlobStore, hash_file

log = logging.getLogger(__name__)

READ_BYTES = 1024 * 1024
SESSION_ATTEMPTS = 3  # upload sessions a blob may lose (a registry restarting mid-push) before it fails
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
PARTIAL_SUFFIX = ".download.partial"

Progress = Callable[[int], None]  # called with the bytes done so far (absolute, not a delta)


class Cancelled(Exception):
    """Another transfer of the same operation failed; this one stopped early (its partial file stays)."""


class Cancellation(threading.Event):
    """The flag that stops the transfers of one operation, checked between reads; setting it also
    shuts down the sockets they are reading from, since a read blocked on a stalled link would
    otherwise wait out its timeout (a registry review: Ctrl-C took 60 s to end such a pull)."""

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def set(self) -> None:
        super().set()
        with self._guard:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    @contextlib.contextmanager
    def watching(self, response: httpx.Response) -> Iterator[None]:
        """While reading `response`: a cancellation wakes the read at once."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            yield
            return
        with self._guard:
            self._sockets.add(sock)
        try:
            if self.is_set():
                _shut(sock)
            yield
        finally:
            with self._guard:
                self._sockets.discard(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile
        sock.shutdown(socket.SHUT_RDWR)


class Flag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class _AnyOf:
    """Set when either flag is."""

    first: Flag | None
    second: Flag | None

    def is_set(self) -> bool:
        return any(flag is not None and flag.is_set() for flag in (self.first, self.second))


class Uploaded(enum.Enum):
    PRESENT = "present"  # the repository had it
    MOUNTED = "mounted"  # linked from another repository of the registry
    SENT = "sent"


@dataclass(frozen=True)
class UploadResult:
    outcome: Uploaded
    bytes_sent: int


class FileRange:
    """`length` bytes of a file from `offset`, read afresh each time it is iterated (a retry sends
    it again); reports the absolute position in the file as it goes."""

    def __init__(
        self,
        path: Path,
        offset: int,
        length: int,
        progress: Progress | None = None,
        cancelled: Flag | None = None,
    ) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.progress = progress
        self.cancelled = cancelled

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            left = self.length
            while left > 0:
                if self.cancelled is not None and self.cancelled.is_set():
                    raise Cancelled(str(self.path))
                chunk = f.read(min(READ_BYTES, left))
                if not chunk:
                    raise RegistryProtocolError(f"{self.path} is shorter than the store says")
                left -= len(chunk)
                yield chunk
                if self.progress is not None:
                    self.progress(self.offset + self.length - left)


class BytesRange:
    """A small blob held in memory (a config written for the push), as a replayable body."""

    def __init__(self, data: bytes, progress: Progress | None = None) -> None:
        self.data = data
        self.length = len(data)
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        if self.progress is not None:
            self.progress(self.length)


@dataclass(frozen=True)
class BlobSource:
    """Where the bytes of a blob to upload are: a file of the store, or memory."""

    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = None

    def body(
        self, offset: int, length: int, progress: Progress | None, cancelled: Flag | None
    ) -> FileRange | BytesRange:
        if self.data is not None:
            return BytesRange(self.data[offset : offset + length], progress)
        assert self.path is not None
        return FileRange(self.path, offset, length, progress, cancelled)


def upload_blob(
    repo: RepositoryClient,
    blob: BlobSource,
    *,
    mount_from: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    cancelled: threading.Event | None = None,
    journal: UploadJournal | None = None,
    stop_after_chunk: threading.Event | None = None,
) -> UploadResult:
    """Send a blob unless the repository has it or can mount it. `cancelled`: stop at the next read.
    `journal`: where a blob sent in chunks keeps its session, so that the next push after an
    interrupted one goes on from what the registry holds. `stop_after_chunk`: such a blob stops once
    the chunk in flight is in (Distribution drops a session whose chunk was cut), others at once."""
    if repo.has_blob(blob.digest):
        if journal is not None:
            journal.forget()
        return UploadResult(Uploaded.PRESENT, 0)
    journal = journal if blob.size > chunk_bytes else None  # sent whole: nothing to resume
    offered: UploadSession | None = None  # the session a registry opens instead of a mount
    if mount_from is not None:  # first: a mount sends nothing, a resumed session the rest
        mount = repo.mount_blob(blob.digest, mount_from)
        if mount.mounted:
            log.debug("mounted %s from %s", blob.digest, mount_from)
            if journal is not None:
                journal.forget()
            return UploadResult(Uploaded.MOUNTED, 0)
        offered = mount.upload
    upload, offset = _resumable(repo, journal, blob) if journal is not None else (None, 0)
    upload = upload or offered or repo.start_upload()
    resumed = offset > 0
    for attempt in range(1, SESSION_ATTEMPTS + 1):
        try:
            sent = _send(
                repo, upload, blob, chunk_bytes, progress, cancelled, offset, journal, stop_after_chunk
            )
        except DigestRejectedError:
            if journal is not None:
                journal.forget()  # that session is closed
            _check_source(blob)
            if not resumed:
                raise
            # What an earlier run left in the session was not the blob's beginning (a chunk cut
            # short that the registry kept): sent again whole, once.
            log.debug("upload of %s: the resumed session did not verify; sending it whole", blob.digest)
            upload, offset, resumed = repo.start_upload(), 0, False
            continue
        except UploadSessionLost as exc:
            if attempt == SESSION_ATTEMPTS:
                raise RegistryError(f"upload of {blob.digest}: {exc}, {attempt} times over") from None
            log.debug("upload of %s: %s; sending it again in a new session", blob.digest, exc)
            upload, offset, resumed = repo.start_upload(), 0, False
            continue
        if journal is not None:
            journal.forget()
        return UploadResult(Uploaded.SENT, sent)
    raise RegistryError(f"upload of {blob.digest}: no session took it, {SESSION_ATTEMPTS} times over")


def _check_source(blob: BlobSource) -> None:
    """After the registry found the bytes sent are not the digest: whether the store's copy is to
    blame (a push review: a damaged local blob was reported as the registry's 400)."""
    if blob.path is None:
        return
    actual, _ = hash_file(blob.path)
    if actual != blob.digest:
        raise CorruptStoreError(
            blob.path,
            f"the store's copy of {blob.digest} hashes to {actual}",
            hint="Run `modelyard verify --fix`, then build or pull the image again.",
        )


def _resumable(
    repo: RepositoryClient, journal: UploadJournal, blob: BlobSource
) -> tuple[UploadSession | None, int]:
    """The session an interrupted push of this blob left, and the bytes the registry holds of it;
    (None, 0) when there is none, or the registry no longer knows it."""
    upload = journal.recall()
    if upload is None:
        return None, 0
    try:
        offset = repo.upload_offset(upload)
    except UploadSessionLost:
        journal.forget()
        return None, 0
    if not 0 <= offset <= blob.size:
        journal.forget()
        return None, 0
    log.debug("upload of %s resumes at byte %d, where an earlier push stopped", blob.digest, offset)
    return upload, offset


def _send(
    repo: RepositoryClient,
    upload: UploadSession,
    blob: BlobSource,
    chunk_bytes: int,
    progress: Progress | None,
    cancelled: threading.Event | None,
    offset: int = 0,
    journal: UploadJournal | None = None,
    stop_after_chunk: threading.Event | None = None,
) -> int:
    """Send `blob` through `upload` from byte `offset` (what the session holds); returns the bytes
    sent. `journal` keeps the session as it stands after each chunk the registry takes."""
    chunk = max(chunk_bytes, upload.min_chunk)
    if blob.size <= chunk and not offset:
        whole = _AnyOf(cancelled, stop_after_chunk)  # nothing to resume: stops at once
        repo.finish_upload(upload, blob.digest, blob.body(0, blob.size, progress, whole))
        return blob.size
    if journal is not None:
        journal.remember(upload)
    sent = 0
    stalled = 0  # resumes in a row that moved the offset on by nothing
    while offset < blob.size:
        if stop_after_chunk is not None and stop_after_chunk.is_set():
            raise Cancelled(blob.digest)
        length = min(chunk, blob.size - offset)
        try:
            upload = repo.upload_chunk(upload, blob.body(offset, length, progress, cancelled), offset)
        except UploadOffsetError as exc:  # a chunk that half-arrived before a retry
            # A registry that says the same offset again and again: the chunk was sent for ever
            # (a registry review: 1,300 times in 30 s).
            stalled = stalled + 1 if exc.offset <= offset else 0
            if stalled >= SESSION_ATTEMPTS:
                raise RegistryProtocolError(
                    f"{repo.name}: the upload of {blob.digest} stays at byte {exc.offset:,}: the "
                    f"registry took none of the chunk after it, {stalled} times over"
                ) from None
            log.debug("upload of %s resumes at byte %d", blob.digest, exc.offset)
            offset = exc.offset
            continue
        if journal is not None:
            journal.remember(upload)
        offset += length
        sent += length
        stalled = 0
    repo.finish_upload(upload, blob.digest)
    return sent


def partial_path(blobs: BlobStore, digest: str) -> Path:
    """Where the download of `digest` collects its bytes; the same for every run."""
    return blobs.ingest_dir / (blobs.path(digest).name + PARTIAL_SUFFIX)


def download_blob(
    repo: RepositoryClient,
    blobs: BlobStore,
    digest: str,
    size: int,
    *,
    progress: Progress | None = None,
    cancelled: Cancellation | None = None,
) -> int:
    """Fetch a blob into the store unless it is there; returns the bytes received over the network."""
    if _in_store(blobs, digest, size, repo.name):
        blobs.touch(digest)
        return 0
    blobs.ingest_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_path(blobs, digest)
    lock = FileLock(str(partial.with_name(partial.name + LOCK_SUFFIX)))
    download = _Download(repo, digest, size, progress, cancelled or Cancellation())
    with lock:  # two pulls of one blob (the CLI and the daemon) must not append to the same file
        if _in_store(blobs, digest, size, repo.name):  # another pull brought it while this one waited
            with contextlib.suppress(FileNotFoundError):
                Path(lock.lock_file).unlink()  # (it made the file again to wait on it)
            return 0
        try:
            for resumed in _attempts(partial, size):
                download.into(partial, resume=resumed)
                try:
                    blobs.commit_partial(partial, digest)
                except DigestMismatchError as exc:
                    if resumed:  # the bytes from an earlier run were bad; commit_partial removed them
                        log.debug("partial file of %s did not verify; downloading it again", digest)
                        continue
                    raise DigestMismatchError(digest, exc.actual, repo.name) from None
                break
        except BaseException:
            # Bytes received stay for the next run to resume from; an empty file is only litter.
            if partial.exists() and partial.stat().st_size == 0:
                partial.unlink()
            raise
    # The blob is in: whoever waits on this lock finds it there and goes. (Never on failure: a lock
    # file removed while another waits on it would let a third pull append beside the second; a
    # failed pull's lock stays with its partial file, which prune removes with it.)
    with contextlib.suppress(FileNotFoundError):
        Path(lock.lock_file).unlink()
    return download.received


def _in_store(blobs: BlobStore, digest: str, size: int, repository: str) -> bool:
    """Whether the store holds the blob, as the manifest describes it. A descriptor whose size is
    not the blob's is refused as the network path refuses it: taken as present, a manifest naming a
    blob the store already had (any other image's, a 253 MB GGUF as a 60-byte SYSTEM) under a size
    of its choosing was kept, listed and pushed on (a registry review)."""
    try:
        held = blobs.size(digest)
    except BlobNotFoundError:
        return False
    if held != size:
        raise size_refused(repository, f"blob {digest}", held, size, " (the copy in the local store)")
    return True


def size_refused(
    repository: str, what: str, actual: int, declared: int, where: str = ""
) -> RegistryProtocolError:
    """A descriptor whose size is not its blob's, refused wherever the bytes come from: the network,
    or a copy the store already holds."""
    return RegistryProtocolError(
        f"{repository}: {what} is {actual:,} bytes{where}, but the manifest says {declared:,}; "
        "the image's manifest is wrong (push it again)"
    )


def _attempts(partial: Path, size: int) -> Iterator[bool]:
    """Yields True for a try that starts from an earlier run's bytes, then False for a fresh one.
    A partial file longer than the blob cannot be its beginning: only a fresh try is made."""
    have = partial.stat().st_size if partial.exists() else 0
    if 0 < have <= size:
        yield True
    elif have > size:
        log.debug("partial file of %s holds %d bytes of %d; downloading it again", partial.name, have, size)
    yield False


class _Download:
    """Appends the rest of one blob to its partial file, resuming after network errors."""

    def __init__(
        self,
        repo: RepositoryClient,
        digest: str,
        size: int,
        progress: Progress | None,
        cancelled: Cancellation,
    ) -> None:
        self.repo = repo
        self.digest = digest
        self.size = size
        self.progress = progress
        self.cancelled = cancelled
        self.received = 0  # bytes that came over the network, across retries

    def into(self, partial: Path, *, resume: bool) -> None:
        """Fill `partial` up to the blob's size: after the bytes it holds (`resume`), or from empty."""
        attempt = 0
        with partial.open("r+b" if resume else "wb") as out:
            out.seek(0, os.SEEK_END)
            while out.tell() < self.size:
                had = out.tell()
                enough = 1  # the bytes a try must bring for the next to count from the first again
                try:
                    self._once(out)
                    if out.tell() >= self.size:
                        break
                    error: httpx.TransportError | BodyTooSlow | None = None  # ended early: ask for the rest
                except httpx.TransportError as exc:
                    error = exc
                except BodyTooSlow as exc:
                    # A trickle brings some bytes each try: only a window's worth starts the count again.
                    error = exc
                    enough = max(1, int(exc.low.window_bytes))
                except (OSError, ValueError):
                    # A socket shut down under a TLS read can raise these raw: a cancellation.
                    if self.cancelled.is_set():
                        raise Cancelled(self.digest) from None
                    raise
                except httpx.DecodingError as exc:  # its Content-Encoding lies: no retry mends that
                    raise RegistryProtocolError(
                        f"{self.repo.name}: blob {self.digest} does not decode ({exc})"
                    ) from None
                if self.cancelled.is_set():  # Ctrl-C while the link stalled: no new request
                    raise Cancelled(self.digest)
                if out.tell() - had >= enough:
                    # Bytes came: the tries are for a registry that gives none, not for a long
                    # download over a link that drops now and then (as Ollama's parts).
                    attempt = 0
                self.repo.session.wait_to_retry(attempt, error)
                attempt += 1
            out.flush()
            os.fsync(out.fileno())

    def _once(self, out: BinaryIO) -> None:
        have = out.tell()
        response = self.repo.open_blob(self.digest, have)
        with contextlib.closing(response), self.cancelled.watching(response):
            stated = _stated_size(response)
            if stated is not None and stated != self.size:
                # Not the blob the manifest describes: its bytes cannot verify, whatever they are.
                raise size_refused(self.repo.name, f"blob {self.digest}", stated, self.size)
            if have and response.status_code == 200:  # the registry ignored the Range: start over
                log.debug("%s: no range support; downloading %s again", self.repo.name, self.digest)
                out.seek(0)
                out.truncate()
                have = 0
            elif have:
                log.debug("resuming %s at byte %d", self.digest, have)
            for chunk in self.repo.session.body(response):
                if self.cancelled.is_set():
                    raise Cancelled(self.digest)
                if have + len(chunk) > self.size:
                    raise RegistryProtocolError(
                        f"{self.repo.name}: blob {self.digest} is longer than its {self.size} bytes"
                    )
                out.write(chunk)
                have += len(chunk)
                self.received += len(chunk)
                if self.progress is not None:
                    self.progress(have)


def _stated_size(response: httpx.Response) -> int | None:
    """The whole blob's size as a blob GET's answer states it: the total of its Content-Range
    (206), or its Content-Length (200, unless encoded); None when it does not say."""
    if response.status_code == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length", "")
    if response.headers.get("Content-Encoding") or not length.isdigit():
        return None
    return int(length)
