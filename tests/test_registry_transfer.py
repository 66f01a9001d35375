"""Blob and manifest transfers at the HTTP seam (an injected httpx transport): a mount that fails is
only a miss, a download restarts or resumes from what its partial file holds, an index entry is
fetched by a checked digest, and error bodies are read only as far as a message needs."""

from __future__ import annotations

import contextlib
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from modelyard.errors import (
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailableError,
    RemoteNotFoundError,
)
from modelyard.reference import parse_reference
from modelyard.registry.client import RepositoryClient, UploadSession
from modelyard.registry.credentials import Credentials
from modelyard.registry.endpoint import resolve_endpoint
from modelyard.registry.journal import upload_journal
from modelyard.registry.options import RegistryOptions
from modelyard.registry.pull import pull
from modelyard.registry.retry import RetryPolicy
from modelyard.registry.session import RegistrySession
from modelyard.registry.speed import DEFAULT_LOW_SPEED, LowSpeed
from modelyard.registry.transfer import (
    BlobSource,
    Cancellation,
    Cancelled,
    Uploaded,
    UploadResult,
    download_blob,
    partial_path,
    upload_blob,
)
from modelyard.store import Store
from modelyard.store.blobs import BlobStore
from modelyard.store.image import (
    CONFIG_MODELPACK,
    INDEX_OCI,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MANIFEST_OCI,
    MAX_TEXT_LAYER_BYTES,
    canonical_json,
    sha256_digest,
)

FAST = RetryPolicy(attempts=2, base_s=0.0, cap_s=0.0)
BLOB = bytes(range(256)) * 40  # 10 KiB
DIGEST = sha256_digest(BLOB)


@dataclass
class FakeRegistry:
    """A registry in a dict, for one repository `ns/m` (and a token service when `bearer`)."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # reference -> (type, bytes)
    mount: int = 201  # the answer to a mount request
    ranges: bool = True  # honours `Range`
    bearer: bool = False  # mounts need a token the token service never grants
    requests: list[str] = field(default_factory=list)
    uploaded: dict[str, bytes] = field(default_factory=dict)
    lose: int = 0  # requests on an upload session answered as a restarted registry does
    session_bytes: bytes = b""  # what the open upload session holds (chunks sent with PATCH)
    drop_after: int = 0  # a blob GET's body breaks after this many bytes (a flaky link)
    trickle: int = 0  # a blob or manifest body comes in pieces of this many bytes (see Ticks)
    refuse_chunks: bool = False  # every PATCH answered 416, the session held at its first chunk
    hiccups: tuple[int, ...] = ()  # these PATCHes (1-based) answered 416 once, nothing taken
    patches: int = 0
    verify: bool = False  # the closing PUT checks the bytes against the digest, as registries do

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        line = f"{request.method} {request.url.path}"
        range_header = request.headers.get("Range")
        shown = f"{request.method} {request.url.raw_path.decode()}"
        self.requests.append(shown + (f" {range_header}" if range_header else ""))
        params = request.url.params
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "t0k3n-never-shown"})
        if line == "POST /v2/ns/m/blobs/uploads/" and "mount" in params:
            if self.bearer:
                challenge = 'Bearer realm="https://auth.example/token",service="reg",scope="x"'
                return httpx.Response(401, headers={"WWW-Authenticate": challenge})
            if self.mount == 202:
                return httpx.Response(202, headers={"Location": "/v2/ns/m/blobs/uploads/from-mount"})
            return httpx.Response(self.mount, json={"errors": [{"code": "DENIED", "message": "no"}]})
        if line == "POST /v2/ns/m/blobs/uploads/":
            self.session_bytes = b""
            return httpx.Response(202, headers={"Location": "/v2/ns/m/blobs/uploads/fresh"})
        in_session = request.url.path.startswith("/v2/ns/m/blobs/uploads/")
        if in_session and request.method in ("PATCH", "PUT") and self.lose:
            self.lose -= 1
            unknown = {"errors": [{"code": "BLOB_UPLOAD_UNKNOWN", "message": "blob upload unknown"}]}
            return httpx.Response(404, json=unknown)
        if in_session and request.method == "GET":  # the session's status: how much it holds
            return httpx.Response(204, headers={"Range": f"0-{max(len(self.session_bytes) - 1, 0)}"})
        if in_session and request.method == "PATCH" and self.refuse_chunks and self.session_bytes:
            return httpx.Response(416)
        if in_session and request.method == "PATCH":
            self.patches += 1
            if self.patches in self.hiccups:
                return httpx.Response(416)
        if in_session and request.method == "PATCH":
            self.session_bytes += request.content
            end = len(self.session_bytes) - 1
            return httpx.Response(202, headers={"Location": request.url.path, "Range": f"0-{end}"})
        if request.method == "PUT" and in_session:
            data = self.session_bytes + request.content
            if self.verify and sha256_digest(data) != params["digest"]:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID", "message": "no"}]})
            self.uploaded[params["digest"]] = data
            return httpx.Response(201)
        if request.url.path.startswith("/v2/ns/m/blobs/"):
            data = self.blobs.get(request.url.path.rsplit("/", 1)[1])
            if data is None:
                return httpx.Response(404)
            if request.method == "HEAD":
                return httpx.Response(200)
            if range_header and self.ranges:
                start = int(range_header.removeprefix("bytes=").rstrip("-"))
                headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                return httpx.Response(206, headers=headers, stream=self._body(data[start:]))
            return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=self._body(data))
        if request.url.path.startswith("/v2/ns/m/manifests/"):
            found = self.manifests.get(request.url.path.rsplit("/", 1)[1])
            if found is None:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            return httpx.Response(200, headers={"Content-Type": found[0]}, stream=self._body(found[1]))
        return httpx.Response(404)

    def _body(self, data: bytes) -> httpx.SyncByteStream:
        drop_after, trickle = self.drop_after, self.trickle

        class Body(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                if trickle:
                    yield from (data[i : i + trickle] for i in range(0, len(data), trickle))
                    return
                if not drop_after or len(data) <= drop_after:
                    yield data
                    return
                yield data[:drop_after]
                raise httpx.RemoteProtocolError("peer closed connection without a complete body")

        return Body()


class Ticks:
    """A clock a second further on at each look: a session reads it once as a body starts and once
    a piece, so a piece of a trickle takes a second."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def client(
    fake: FakeRegistry, credentials: Credentials | None = None, low_speed: LowSpeed = DEFAULT_LOW_SPEED
) -> RepositoryClient:
    session = RegistrySession(
        resolve_endpoint("reg.example"),
        lambda: credentials,
        transport=httpx.MockTransport(fake),
        retry=FAST,
        low_speed=low_speed,
        sleep=lambda _: None,
        clock=Ticks(),
    )
    return RepositoryClient(session, "ns/m", push=True)


# --- mounts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "outcome", "requests"),
    [
        pytest.param(FakeRegistry(mount=201), Uploaded.MOUNTED, ["POST mount"], id="201-mounted"),
        pytest.param(
            FakeRegistry(mount=202), Uploaded.SENT, ["POST mount", "PUT from-mount"], id="202-its-own-session"
        ),
        pytest.param(
            FakeRegistry(mount=403), Uploaded.SENT, ["POST mount", "POST", "PUT fresh"], id="403-uploads"
        ),
        pytest.param(
            FakeRegistry(mount=404), Uploaded.SENT, ["POST mount", "POST", "PUT fresh"], id="404-uploads"
        ),
        pytest.param(
            FakeRegistry(bearer=True),
            Uploaded.SENT,
            ["POST mount", "GET token", "POST mount", "POST", "PUT fresh"],
            id="401-no-scope-on-the-source-uploads",
        ),
    ],
)
def test_a_mount_that_fails_is_a_miss_and_the_blob_is_uploaded(
    registry: FakeRegistry, outcome: Uploaded, requests: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelyard.registry")
    result = upload_blob(client(registry), BlobSource(DIGEST, len(BLOB), data=BLOB), mount_from="ns/other")
    assert result.outcome is outcome
    assert registry.uploaded == ({} if outcome is Uploaded.MOUNTED else {DIGEST: BLOB})
    shown = [_short(r) for r in registry.requests[1:]]  # after the HEAD
    assert shown == requests
    if len(requests) > 2:
        assert f"no mount of {DIGEST} from ns/other" in caplog.text


def _short(request: str) -> str:
    method, path = request.split()[:2]
    if "/token" in path:
        return f"{method} token"
    if "mount=" in path:
        return f"{method} mount"
    if path.endswith("/uploads/"):
        return method
    return f"{method} {path.split('?')[0].rsplit('/', 1)[1]}"


@pytest.mark.parametrize("lost", [1, 2])
def test_an_upload_session_the_registry_lost_is_opened_again(lost: int) -> None:
    """Found: a registry restarted mid-push answered BLOB_UPLOAD_UNKNOWN, and the push failed."""
    registry = FakeRegistry(lose=lost)
    result = upload_blob(client(registry), BlobSource(DIGEST, len(BLOB), data=BLOB), chunk_bytes=4096)
    assert result.outcome is Uploaded.SENT and registry.uploaded[DIGEST] == BLOB
    assert [r for r in registry.requests if r.startswith("POST")] == ["POST /v2/ns/m/blobs/uploads/"] * (
        lost + 1
    )


def test_an_upload_that_keeps_losing_its_session_fails_saying_so() -> None:
    with pytest.raises(RegistryError, match=r"lost the upload session .*3 times over"):
        upload_blob(client(FakeRegistry(lose=5)), BlobSource(DIGEST, len(BLOB), data=BLOB), chunk_bytes=4096)


def test_an_upload_the_registry_never_takes_further_fails_saying_so() -> None:
    """A registry review: one that answered every chunk 416 at the same offset had the same chunk
    sent for ever (1,300 times, 87 GB, in 30 s)."""
    registry = FakeRegistry(refuse_chunks=True)
    with pytest.raises(RegistryProtocolError, match="stays at byte 4,096: the registry took none"):
        upload_blob(client(registry), BlobSource(DIGEST, len(BLOB), data=BLOB), chunk_bytes=4096)
    assert sum(r.startswith("PATCH") for r in registry.requests) <= 5


def test_an_upload_with_a_refused_chunk_here_and_there_goes_on() -> None:
    """A diff review: the count of refusals in a row was never reset by a chunk taken, so three
    hiccups anywhere in a long push failed it."""
    registry = FakeRegistry(hiccups=(2, 4, 6))
    upload_blob(client(registry), BlobSource(DIGEST, len(BLOB), data=BLOB), chunk_bytes=1024)
    assert registry.uploaded[DIGEST] == BLOB


# --- downloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partial", "ranges", "requests", "received"),
    [
        pytest.param(None, True, ["GET"], len(BLOB), id="nothing-yet"),
        pytest.param(BLOB[:1000], True, ["GET bytes=1000-"], len(BLOB) - 1000, id="resumes-with-a-range"),
        pytest.param(BLOB[:1000], False, ["GET bytes=1000-"], len(BLOB), id="no-range-support-restarts"),
        pytest.param(BLOB + b"junk", True, ["GET"], len(BLOB), id="longer-than-the-blob-restarts"),
        pytest.param(
            b"x" * 1000, True, ["GET bytes=1000-", "GET"], 2 * len(BLOB) - 1000, id="wrong-bytes-start-over"
        ),
        pytest.param(BLOB, True, [], 0, id="complete-already"),
    ],
)
def test_a_download_resumes_or_restarts_from_its_partial_file(
    tmp_path: Path,
    partial: bytes | None,
    ranges: bool,
    requests: list[str],
    received: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelyard.registry")
    blobs = BlobStore(tmp_path)
    blobs.ingest_dir.mkdir(parents=True)
    if partial is not None:
        partial_path(blobs, DIGEST).write_bytes(partial)
    registry = FakeRegistry(blobs={DIGEST: BLOB}, ranges=ranges)
    assert download_blob(client(registry), blobs, DIGEST, len(BLOB)) == received
    assert blobs.read_bytes(DIGEST) == BLOB
    gets = [r.removeprefix(f"GET /v2/ns/m/blobs/{DIGEST}").strip() for r in registry.requests]
    assert [f"GET {g}".strip() for g in gets] == requests
    assert not partial_path(blobs, DIGEST).exists()
    assert list(blobs.ingest_dir.iterdir()) == [], "no lock file left either"
    # A partial file that cannot be the blob's beginning is known to be wrong before any hashing.
    assert ("did not verify" in caplog.text) == (partial == b"x" * 1000)


def test_a_download_over_a_link_that_drops_again_and_again_goes_on_while_bytes_come(tmp_path: Path) -> None:
    """An audit: the retries were counted over the whole download, so a model on a link that
    dropped every few MB failed after the fifth drop with most of it on disk ('unavailable').
    Tries now count only drops that brought nothing (FAST allows 2; this link drops 9 times)."""
    blobs = BlobStore(tmp_path)
    registry = FakeRegistry(blobs={DIGEST: BLOB}, drop_after=1024)
    assert download_blob(client(registry), blobs, DIGEST, len(BLOB)) == len(BLOB)
    assert blobs.read_bytes(DIGEST) == BLOB
    assert len(registry.requests) == 10


# A window must bring 500 bytes in 5 s; a trickle of 10-byte pieces brings 40 after 5 s (Ticks).
SLOW = LowSpeed(bytes_per_s=100, seconds=5)


@pytest.mark.parametrize(
    ("trickle", "low_speed"),
    [
        pytest.param(100, SLOW, id="at-the-limit-it-comes"),  # 500 bytes a window, just
        pytest.param(10, LowSpeed(bytes_per_s=0, seconds=5), id="no-limit-it-comes"),
    ],
)
def test_a_download_as_fast_as_the_low_speed_limit_asks_goes_on(
    tmp_path: Path, trickle: int, low_speed: LowSpeed
) -> None:
    blobs = BlobStore(tmp_path)
    registry = FakeRegistry(blobs={DIGEST: BLOB}, trickle=trickle)
    assert download_blob(client(registry, low_speed=low_speed), blobs, DIGEST, len(BLOB)) == len(BLOB)
    assert blobs.read_bytes(DIGEST) == BLOB
    assert len(registry.requests) == 1


def test_a_download_that_trickles_is_resumed_then_given_up_saying_why(tmp_path: Path) -> None:
    """A review: a registry sending a byte every 50 s answered every read within its 60 s timeout,
    and a pull went on for ever. A window that brings too few bytes ends the try; the next resumes
    from the bytes kept, and a trickle's few bytes do not start the count of tries again."""
    blobs = BlobStore(tmp_path)
    registry = FakeRegistry(blobs={DIGEST: BLOB}, trickle=10)
    with pytest.raises(
        RegistryUnavailableError, match=r"under 100 bytes/s for 5 s \(\$MODELYARD_REGISTRY_LOW"
    ):
        download_blob(client(registry, low_speed=SLOW), blobs, DIGEST, len(BLOB))
    assert [r.rpartition(" ")[2] for r in registry.requests] == [f"/v2/ns/m/blobs/{DIGEST}", "bytes=40-"]
    assert partial_path(blobs, DIGEST).stat().st_size == 80, "kept, to resume from"


def test_a_manifest_that_trickles_is_given_up_saying_why() -> None:
    manifest = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_OCI, "layers": []})
    registry = FakeRegistry(manifests={"v1": (MANIFEST_OCI, manifest)}, trickle=1)
    with pytest.raises(
        RegistryUnavailableError, match=r"GET manifest reg\.example/ns/m:v1: the answer came at under"
    ):
        client(registry, low_speed=SLOW).get_manifest("v1")
    registry = FakeRegistry(manifests={"v1": (MANIFEST_OCI, manifest)}, trickle=100)
    assert client(registry, low_speed=SLOW).get_manifest("v1").data == manifest


def test_a_config_blob_that_trickles_is_given_up_saying_why(tmp_path: Path) -> None:
    """A review: the pull's config blob (up to 16 MiB) was read outside the low-speed limit."""
    from modelyard.registry.pull import _fetch_config
    from modelyard.store.image import Descriptor

    config = canonical_json({"model_format": "gguf", "pad": "x" * 2000})
    descriptor = Descriptor(CONFIG_MODELPACK, sha256_digest(config), len(config))
    store = Store(tmp_path / "store")
    slow = FakeRegistry(blobs={descriptor.digest: config}, trickle=1)
    with pytest.raises(
        RegistryUnavailableError, match=r"config blob sha256:\w+ of reg\.example/ns/m: the answer"
    ):
        _fetch_config(client(slow, low_speed=SLOW), store, descriptor, keep=True)
    assert not store.blobs.exists(descriptor.digest)
    brisk = FakeRegistry(blobs={descriptor.digest: config}, trickle=100)
    assert (
        _fetch_config(client(brisk, low_speed=SLOW), store, descriptor, keep=True)["model_format"] == "gguf"
    )


def test_a_download_stopped_while_its_link_broke_asks_for_nothing_more(tmp_path: Path) -> None:
    """A registry review: Ctrl-C on a stalled link, then the read timed out, and the download asked
    for the rest once more before it stopped."""
    blobs = BlobStore(tmp_path)
    registry = FakeRegistry(blobs={DIGEST: BLOB}, drop_after=1024)
    stop = Cancellation()
    with pytest.raises(Cancelled):
        download_blob(
            client(registry), blobs, DIGEST, len(BLOB), progress=lambda _: stop.set(), cancelled=stop
        )
    assert len(registry.requests) == 1
    assert partial_path(blobs, DIGEST).stat().st_size == 1024, "kept, to resume from"


def test_an_upload_journal_is_resumed_only_at_its_own_registry(tmp_path: Path) -> None:
    """The journal's URL gets this registry's credentials: one naming another host (a file edited,
    or copied from another store) or unreadable is dropped, and the blob goes in a new session."""
    big = bytes(range(256)) * 200  # 50 KiB: chunked at 16 KiB
    for written in (
        '{"url": "https://evil.example/v2/ns/m/blobs/uploads/fresh"}',
        "{not json",
        '{"url": "https://reg.example/v2/ns/m/blobs/uploads/fresh", "min_chunk": "many"}',
    ):
        registry = FakeRegistry()
        journal = upload_journal(tmp_path, "https://reg.example", "ns/m", sha256_digest(big))
        journal.path.write_text(written)
        source = BlobSource(sha256_digest(big), len(big), data=big)
        result = upload_blob(client(registry), source, chunk_bytes=16 * 1024, journal=journal)
        assert result == UploadResult(Uploaded.SENT, len(big)) and registry.uploaded[source.digest] == big
        assert registry.requests[1] == "POST /v2/ns/m/blobs/uploads/", registry.requests
        assert not journal.path.exists()


def test_an_upload_goes_on_from_the_session_its_journal_kept(tmp_path: Path) -> None:
    big = bytes(range(256)) * 200
    registry = FakeRegistry(session_bytes=big[: 32 * 1024])
    journal = upload_journal(tmp_path, "https://reg.example", "ns/m", sha256_digest(big))
    journal.remember(UploadSession("https://reg.example/v2/ns/m/blobs/uploads/fresh"))
    source = BlobSource(sha256_digest(big), len(big), data=big)
    result = upload_blob(client(registry), source, chunk_bytes=16 * 1024, journal=journal)
    assert result == UploadResult(Uploaded.SENT, len(big) - 32 * 1024)
    assert registry.uploaded[sha256_digest(big)] == big and not journal.path.exists()
    assert [r.split()[0] for r in registry.requests] == ["HEAD", "GET", "PATCH", "PATCH", "PUT"]


def test_a_mount_comes_before_a_session_to_resume(tmp_path: Path) -> None:
    """A diff review: a push to a repository whose earlier push was cut resumed its session and sent
    the rest, 119 MB, where a mount from another repository of the registry sends nothing."""
    big = bytes(range(256)) * 200
    registry = FakeRegistry(mount=201, session_bytes=big[: 16 * 1024])
    journal = upload_journal(tmp_path, "https://reg.example", "ns/m", sha256_digest(big))
    journal.remember(UploadSession("https://reg.example/v2/ns/m/blobs/uploads/fresh"))
    source = BlobSource(sha256_digest(big), len(big), data=big)
    result = upload_blob(
        client(registry), source, mount_from="ns/other", chunk_bytes=16 * 1024, journal=journal
    )
    assert result == UploadResult(Uploaded.MOUNTED, 0) and not journal.path.exists()
    assert [r.split()[0] for r in registry.requests] == ["HEAD", "POST"], registry.requests


def test_a_resumed_session_whose_bytes_do_not_verify_is_sent_again_whole(tmp_path: Path) -> None:
    """A session an earlier run left may hold bytes that are not the blob's beginning (a chunk cut
    short that a registry kept): its DIGEST_INVALID sends the blob again in a new session, once,
    and the journal of the closed session goes."""
    big = bytes(range(256)) * 200
    registry = FakeRegistry(session_bytes=b"\0" * (32 * 1024), verify=True)
    journal = upload_journal(tmp_path, "https://reg.example", "ns/m", sha256_digest(big))
    journal.remember(UploadSession("https://reg.example/v2/ns/m/blobs/uploads/fresh"))
    source = BlobSource(sha256_digest(big), len(big), data=big)
    result = upload_blob(client(registry), source, chunk_bytes=16 * 1024, journal=journal)
    assert result == UploadResult(Uploaded.SENT, len(big)) and registry.uploaded[source.digest] == big
    assert [r.split()[0] for r in registry.requests].count("POST") == 1 and not journal.path.exists()


class _StalledBlob(http.server.BaseHTTPRequestHandler):
    """Sends the first KiB of BLOB, then nothing more until the test ends: a link that stalled."""

    released = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB[:1024])
        self.wfile.flush()
        self.released.wait(30)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_cancellation_wakes_a_read_blocked_on_a_stalled_link(tmp_path: Path) -> None:
    """A registry review: Ctrl-C on a pull whose link had stalled waited out the 60 s read timeout
    (the blocked read checked the flag only once a chunk came). Setting it shuts the socket down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StalledBlob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    session = RegistrySession(
        resolve_endpoint(f"127.0.0.1:{server.server_port}"), lambda: None, retry=FAST, sleep=lambda _: None
    )
    blobs = BlobStore(tmp_path)
    stop, started = Cancellation(), threading.Event()
    outcome: list[BaseException | int] = []

    def pull_it() -> None:
        try:
            outcome.append(
                download_blob(
                    RepositoryClient(session, "ns/m"),
                    blobs,
                    DIGEST,
                    len(BLOB),
                    progress=lambda _: started.set(),
                    cancelled=stop,
                )
            )
        except BaseException as exc:  # what the thread ended with is the result
            outcome.append(exc)

    puller = threading.Thread(target=pull_it)
    try:
        puller.start()
        assert started.wait(10), "the first KiB never came"
        time.sleep(0.2)  # the read is blocked on the stalled link now
        stop.set()
        puller.join(5)
        assert not puller.is_alive(), "the read still waits for its timeout"
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
        assert partial_path(blobs, DIGEST).stat().st_size == 1024, "kept, to resume from"
    finally:
        _StalledBlob.released.set()
        server.shutdown()
        server.server_close()
        session.close()


class _TrickledBlob(http.server.BaseHTTPRequestHandler):
    """A blob GET answered at once, then ten bytes every 20 ms (500 bytes/s), each read in time."""

    ranges: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        start = int((self.headers.get("Range") or "bytes=0-").removeprefix("bytes=").rstrip("-"))
        self.ranges.append(self.headers.get("Range") or "")
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(BLOB) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up
            for i in range(start, len(BLOB), 10):
                self.wfile.write(BLOB[i : i + 10])
                self.wfile.flush()
                time.sleep(0.02)

    def log_message(self, *_args: object) -> None:
        pass


def test_a_real_link_that_trickles_ends_in_an_error_not_a_pull_for_ever(tmp_path: Path) -> None:
    """Over a socket, with real time: 500 bytes/s against a limit of 1,000 over half a second."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TrickledBlob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    session = RegistrySession(
        resolve_endpoint(f"127.0.0.1:{server.server_port}"),
        retry=FAST,
        sleep=lambda _: None,
        low_speed=LowSpeed(bytes_per_s=1000, seconds=0.5),
    )
    blobs = BlobStore(tmp_path)
    began = time.monotonic()
    try:
        with pytest.raises(RegistryUnavailableError, match=r"under 1,000 bytes/s for 0\.5 s"):
            download_blob(RepositoryClient(session, "ns/m"), blobs, DIGEST, len(BLOB))
        assert time.monotonic() - began < 5
        kept = partial_path(blobs, DIGEST).stat().st_size
        assert 200 <= kept < len(BLOB), kept
        assert _TrickledBlob.ranges[0] == "" and _TrickledBlob.ranges[1].startswith("bytes=")
    finally:
        server.shutdown()
        server.server_close()
        session.close()


def test_a_blob_of_another_size_than_its_descriptor_is_refused_at_its_first_answer(tmp_path: Path) -> None:
    """An audit: a manifest that overstated a layer's size (Distribution takes one) downloaded the
    whole blob, asked for bytes past its end and failed with a bare 'HTTP 416'; a registry that
    ignores Range downloaded it again on every try."""
    blobs = BlobStore(tmp_path)
    for ranges in (True, False):
        registry = FakeRegistry(blobs={DIGEST: BLOB}, ranges=ranges)
        with pytest.raises(RegistryProtocolError, match="is 10,240 bytes, but the manifest says 10,240,000"):
            download_blob(client(registry), blobs, DIGEST, len(BLOB) * 1000)
        assert len(registry.requests) == 1
        assert not blobs.exists(DIGEST)


# --- manifests ------------------------------------------------------------------------------------


REAL = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_OCI, "layers": []})
SERVED = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_OCI, "layers": [], "x": 1})


@pytest.mark.parametrize(
    ("entry", "error", "fetched"),
    [
        pytest.param(sha256_digest(REAL), f"digest is {sha256_digest(SERVED)}", True, id="other-bytes"),
        pytest.param("sha256:../../v2/other", "not a sha256 digest", False, id="not-a-digest"),
        pytest.param("latest", "not a sha256 digest", False, id="a-tag"),
        pytest.param("sha256:" + "A" * 64, "not a sha256 digest", False, id="upper-case"),
    ],
)
def test_an_index_entry_is_fetched_by_a_checked_digest(
    tmp_path: Path, entry: str, error: str, fetched: bool
) -> None:
    index = canonical_json({"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": [{"digest": entry}]})
    registry = FakeRegistry(manifests={"v1": (INDEX_OCI, index), entry: (MANIFEST_OCI, SERVED)})
    transport = httpx.MockTransport(registry)
    options = RegistryOptions(tmp_path / "docker", tmp_path / "cache", retry=FAST, transport=transport)
    with pytest.raises(RegistryProtocolError, match=f"reg.example/ns/m[:@].*{error}"):
        pull(Store(tmp_path / "store"), parse_reference("reg.example/ns/m:v1"), options)
    by_digest = [f"GET /v2/ns/m/manifests/{entry}"] if fetched else []
    assert registry.requests == ["GET /v2/ns/m/manifests/v1", *by_digest]


def test_a_not_found_body_is_read_only_as_far_as_a_message_needs() -> None:
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while len(sent) < 1000:  # 64 MiB, were it all read
            sent.append(1)
            yield b" " * 65536

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=endless())

    session = RegistrySession(
        resolve_endpoint("reg.example"), transport=httpx.MockTransport(handle), retry=FAST
    )
    with pytest.raises(RemoteNotFoundError):
        RepositoryClient(session, "ns/m").get_manifest("v1")
    assert len(sent) <= 2


def test_an_error_body_that_trickles_is_read_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: an error's body was read for its message under no limit of time."""
    monkeypatch.setattr("modelyard.registry.session.READ_SMALL_S", 0.2)

    def trickle() -> Iterator[bytes]:
        for _ in range(100):  # 10 s, were it all read
            time.sleep(0.1)
            yield b"x"

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=trickle())

    session = RegistrySession(
        resolve_endpoint("reg.example"), transport=httpx.MockTransport(handle), retry=FAST
    )
    began = time.monotonic()
    with pytest.raises(RegistryError):
        RepositoryClient(session, "ns/m").get_manifest("v1")
    assert time.monotonic() - began < 2


# --- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenge", "secret"),
    [
        pytest.param(
            'Bearer realm="https://auth.example/token",service="reg"', "t0k3n-never-shown", id="bearer"
        ),
        pytest.param('Basic realm="reg"', "hunter2-Sup3rSecret", id="basic"),
    ],
)
def test_no_repr_of_the_session_state_shows_a_secret(challenge: str, secret: str) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, json={"token": "t0k3n-never-shown"})
        if "Authorization" in request.headers:
            return httpx.Response(200)
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    session = RegistrySession(
        resolve_endpoint("reg.example"),
        lambda: Credentials("alice", "hunter2-Sup3rSecret"),
        transport=httpx.MockTransport(handle),
    )
    assert session.request("GET", "/v2/ns/m/manifests/v1", scope="repository:ns/m:pull").status_code == 200
    state = {name: value for name, value in vars(session).items() if name != "http"}
    assert secret not in repr(state) and secret not in repr(session)
    assert "alice" in repr(state)  # the user name is no secret: the repr did show the credentials


# --- descriptors a pull must not trust ----------------------------------------------------------


def _image(config: bytes, config_size: int, *layers: tuple[str, bytes, int]) -> FakeRegistry:
    """A registry holding `ns/m:v1`, a ModelPack manifest with these blobs and declared sizes."""
    blobs = {sha256_digest(config): config} | {sha256_digest(data): data for _, data, _ in layers}
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_OCI,
            "config": {"mediaType": CONFIG_MODELPACK, "digest": sha256_digest(config), "size": config_size},
            "layers": [
                {"mediaType": kind, "digest": sha256_digest(data), "size": size}
                for kind, data, size in layers
            ],
        }
    )
    return FakeRegistry(blobs=blobs, manifests={"v1": (MANIFEST_OCI, manifest)})


CONFIG = b'{"config": {}, "descriptor": {}}'
# Refused whether the config comes over the network or the store holds it already.
CONFIG_SIZE_UNDERSTATED = pytest.param(
    _image(CONFIG, 10, (LAYER_WEIGHT, BLOB, len(BLOB))),
    "config blob sha256:.* is 32 bytes, but the manifest says 10",
    id="config-size-understated",
)


@pytest.mark.parametrize(
    ("registry", "error"),
    [
        CONFIG_SIZE_UNDERSTATED,
        pytest.param(
            _image(b"{}", 2, (LAYER_TEMPLATE, b"{{ .Prompt }}", 13)),
            "the image has no weights layer",
            id="no-weights",
        ),
        pytest.param(
            _image(
                b"{}", 2, (LAYER_WEIGHT, BLOB, len(BLOB)), (LAYER_TEMPLATE, b"t", MAX_TEXT_LAYER_BYTES + 1)
            ),
            "template layer sha256:.* is 16,777,217 bytes; text layers .* are at most 16,777,216",
            id="text-layer-too-large",
        ),
        pytest.param(
            # A registry review: only the last descriptor of a digest was checked; listed at 12 GB.
            _image(b"{}", 2, (LAYER_WEIGHT, BLOB, 12_345_678_901), (LAYER_WEIGHT, BLOB, len(BLOB))),
            "gives blob sha256:.* two sizes \\(12,345,678,901 and 10,240 bytes\\)",
            id="one-blob-two-sizes",
        ),
    ],
)
def test_a_pull_refuses_a_descriptor_the_store_could_not_keep(
    tmp_path: Path, registry: FakeRegistry, error: str
) -> None:
    """An audit: a config of 102 bytes declared as 10 was stored under that descriptor (verify saw
    nothing wrong); a 20 MiB template layer was pulled, then refused by every reader of the image;
    an image without weights was pulled and listed, and could never serve."""
    options = RegistryOptions(
        tmp_path / "docker", tmp_path / "cache", retry=FAST, transport=httpx.MockTransport(registry)
    )
    store = Store(tmp_path / "store")
    with pytest.raises(RegistryError, match=error):
        pull(store, parse_reference("reg.example/ns/m:v1"), options)
    assert store.images() == []
    assert not store.blobs.exists(sha256_digest(BLOB)), "refused before the weights were downloaded"


@pytest.mark.parametrize(
    ("registry", "error"),
    [
        CONFIG_SIZE_UNDERSTATED,
        pytest.param(
            _image(b"{}", 2, (LAYER_WEIGHT, BLOB, 2**62)),
            r"blob sha256:.* is 10,240 bytes \(the copy in the local store\), but the manifest says "
            "4,611,686,018,427,387,904",
            id="weights-size-overstated",
        ),
        pytest.param(
            _image(b"{}", 2, (LAYER_WEIGHT, b"w" * 64, 64), (LAYER_SYSTEM, BLOB, 60)),
            r"blob sha256:.* is 10,240 bytes \(the copy in the local store\), but the manifest says 60",
            id="weights-named-as-a-small-system-layer",
        ),
    ],
)
def test_a_pull_refuses_a_descriptor_whose_blob_the_store_already_holds_at_another_size(
    tmp_path: Path, registry: FakeRegistry, error: str
) -> None:
    """A registry review: sizes were checked only on blobs that came over the network. Once an
    honest pull had brought a blob, a manifest naming it under any size was taken as is: listed at
    4.6 EB, pushed on to other registries as is, or a 10 KiB weights blob declared a 60-byte SYSTEM
    layer, past the text-layer limit, which every reader then refused while verify said ok."""
    options = RegistryOptions(
        tmp_path / "docker", tmp_path / "cache", retry=FAST, transport=httpx.MockTransport(registry)
    )
    store = Store(tmp_path / "store")
    store.init()
    for data in (BLOB, CONFIG):
        store.blobs.put_bytes(data, expected=sha256_digest(data))  # an earlier, honest pull's
    with pytest.raises(RegistryProtocolError, match=error):
        pull(store, parse_reference("reg.example/ns/m:v1"), options)
    assert store.images() == []
