"""The distribution-spec calls on one repository, over a `RegistrySession`.

oras-py's `Registry` has most of these, but not in a form we can use (see the package docstring):
here a manifest is fetched and sent as exact bytes, a blob upload is a session of streamed chunks,
a blob download takes a `Range`, and a mount is one call. Each method maps the registry's answer
to modelyard's errors; nothing here touches the local store.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from modelyard.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailableError,
    RemoteNotFoundError,
)
from modelyard.registry.session import (
    Body,
    BodyTooSlow,
    RegistrySession,
    describe_error_body,
    error_for,
    read_small,
)
from modelyard.store.image import (
    INDEX_OCI,
    MANIFEST_DOCKER,
    MANIFEST_OCI,
    MAX_MANIFEST_BYTES,
    sha256_digest,
)

log = logging.getLogger(__name__)

INDEX_DOCKER = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join((MANIFEST_OCI, INDEX_OCI, MANIFEST_DOCKER, INDEX_DOCKER))


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes  # exactly as the registry sent them
    media_type: str
    digest: str  # sha256 of `data`, checked against what was asked for

    @property
    def is_index(self) -> bool:
        return self.media_type in (INDEX_OCI, INDEX_DOCKER)


@dataclass(frozen=True)
class UploadSession:
    url: str
    min_chunk: int = 0  # OCI-Chunk-Min-Length, when the registry states one


@dataclass(frozen=True)
class Mount:
    mounted: bool
    upload: UploadSession | None = None  # the upload session a registry opened instead (202)


class RepositoryClient:
    def __init__(self, session: RegistrySession, repository: str, *, push: bool = False) -> None:
        self.session = session
        self.repository = repository
        self.scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        self._prefix = f"/v2/{repository}"

    @property
    def name(self) -> str:
        return f"{self.session.host}/{self.repository}"

    # --- manifests -------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> FetchedManifest:
        """The manifest (or index) a tag or digest names, as bytes; at most 4 MiB."""
        where = f"{self.name}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        response = self.session.request(
            "GET",
            f"{self._prefix}/manifests/{reference}",
            scope=self.scope,
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
        )
        with contextlib.closing(response):
            if response.status_code == 404:
                default = "manifest" if reference.startswith("sha256:") else "repository or tag"
                raise RemoteNotFoundError(where, _not_found_what(response, default))
            if response.status_code != 200:
                raise error_for(response, f"GET manifest {where}")
            try:
                data = _read_limited(self.session.body(response), response, MAX_MANIFEST_BYTES, where)
            except BodyTooSlow as exc:
                raise RegistryUnavailableError(self.session.host, f"GET manifest {where}: {exc}") from None
        digest = sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryProtocolError(f"{where}: the registry sent a manifest whose digest is {digest}")
        header_digest = response.headers.get("Docker-Content-Digest")
        if header_digest and header_digest != digest:
            raise RegistryProtocolError(
                f"{where}: the manifest bytes hash to {digest}, but the registry says {header_digest}"
            )
        return FetchedManifest(data, _media_type(response, data), digest)

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """PUT these exact bytes; returns their digest, which the registry must confirm."""
        digest = sha256_digest(data)
        response = self.session.request(
            "PUT",
            f"{self._prefix}/manifests/{reference}",
            scope=self.scope,
            headers={"Content-Type": media_type},
            content=data,
        )
        if response.status_code not in (200, 201):
            raise error_for(response, f"PUT manifest {self.name}:{reference}")
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise RegistryProtocolError(
                f"{self.name}: we sent manifest {digest} and the registry stored {stored}"
            )
        return digest

    # --- blobs -----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        response = self.session.request("HEAD", f"{self._prefix}/blobs/{digest}", scope=self.scope)
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise error_for(response, f"HEAD blob {digest} in {self.name}")

    def mount_blob(self, digest: str, from_repository: str) -> Mount:
        """Ask for the blob to be linked from another repository of this registry.

        Where it is held is only a hint (the ledger may be stale, the token may lack pull on the
        other repository), so any refusal is a miss, not an error: the caller uploads the blob.
        A registry that does not mount may open an ordinary upload session instead (spec: 202)."""
        try:
            response = self.session.request(
                "POST",
                f"{self._prefix}/blobs/uploads/?mount={digest}&from={from_repository}",
                scope=f"{self.scope} repository:{from_repository}:pull",
            )
        except RegistryAuthError as exc:
            log.debug("no mount of %s from %s (%s); uploading it", digest, from_repository, exc)
            return Mount(mounted=False)
        if response.status_code == 201:
            response.close()
            return Mount(mounted=True)
        if response.status_code == 202 and response.headers.get("Location"):
            return Mount(mounted=False, upload=self._upload_session(response))
        detail = describe_error_body(read_small(response))
        response.close()
        log.debug(
            "no mount of %s from %s (HTTP %d%s); uploading it",
            digest,
            from_repository,
            response.status_code,
            f" {detail}" if detail else "",
        )
        return Mount(mounted=False)

    def start_upload(self) -> UploadSession:
        response = self.session.request("POST", f"{self._prefix}/blobs/uploads/", scope=self.scope)
        return self._upload_session(response)

    def upload_chunk(self, upload: UploadSession, body: Body, offset: int) -> UploadSession:
        response = self.session.request(
            "PATCH",
            upload.url,
            scope=self.scope,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + body.length - 1}",
            },
            content=body,
        )
        if response.status_code == 416:
            response.close()
            raise UploadOffsetError(self.upload_offset(upload))
        _check_upload_session(response)
        return self._upload_session(response, upload.min_chunk)

    def upload_offset(self, upload: UploadSession) -> int:
        """How many bytes the registry holds for this upload session (spec end-13)."""
        response = self.session.request("GET", upload.url, scope=self.scope)
        if response.status_code not in (200, 204):
            _check_upload_session(response)
            raise error_for(response, f"upload status in {self.name}")
        response.close()
        return _range_end(response.headers.get("Range")) + 1

    def finish_upload(self, upload: UploadSession, digest: str, body: Body | None = None) -> None:
        """Close the session with the blob's digest (and, for a small blob, all of its bytes)."""
        url = httpx.URL(upload.url).copy_merge_params({"digest": digest})
        headers = {"Content-Type": "application/octet-stream"}
        response = self.session.request(
            "PUT", str(url), scope=self.scope, headers=headers, content=body or b""
        )
        if response.status_code not in (201, 204):
            _check_upload_session(response)
            rejected = b"DIGEST_INVALID" in response.read()[:4096]
            error = error_for(response, f"upload of {digest} to {self.name}")
            raise DigestRejectedError(str(error)) if rejected else error
        response.close()

    def open_blob(self, digest: str, offset: int = 0) -> httpx.Response:
        """A streamed GET of a blob, from `offset` on (206) if the registry honours the Range; the
        caller closes it and must check `status_code` (200 means from the start)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.session.request(
            "GET", f"{self._prefix}/blobs/{digest}", scope=self.scope, headers=headers, stream=True
        )
        if response.status_code in (200, 206):
            return response
        if response.status_code == 404:
            response.close()
            raise RemoteNotFoundError(f"{self.name}@{digest}", "blob")
        raise error_for(response, f"GET blob {digest} from {self.name}")

    def _upload_session(self, response: httpx.Response, min_chunk: int = 0) -> UploadSession:
        location = response.headers.get("Location")
        if response.status_code not in (201, 202) or not location:
            if response.status_code in (201, 202):
                response.close()
                raise RegistryProtocolError(f"{self.name}: upload answer without a Location header")
            raise error_for(response, f"blob upload to {self.name}")
        response.close()
        stated = response.headers.get("OCI-Chunk-Min-Length", "")
        return UploadSession(str(response.url.join(location)), int(stated) if stated.isdigit() else min_chunk)


class UploadSessionLost(RegistryError):
    """The registry no longer knows the upload session (restarted, or it expired the session):
    the blob is sent again in a new one."""


def _check_upload_session(response: httpx.Response) -> None:
    """Raise UploadSessionLost for a 404 or a BLOB_UPLOAD_UNKNOWN / BLOB_UPLOAD_INVALID answer to
    a request on an upload session (distribution-spec end-5, end-6, end-13)."""
    if response.status_code == 404 or (
        response.status_code >= 400
        and any(code in response.read()[:4096] for code in (b"BLOB_UPLOAD_UNKNOWN", b"BLOB_UPLOAD_INVALID"))
    ):
        response.close()
        raise UploadSessionLost(f"the registry lost the upload session (HTTP {response.status_code})")


class DigestRejectedError(RegistryError):
    """The registry hashed the bytes sent and they are not the digest (DIGEST_INVALID)."""


class UploadOffsetError(RegistryError):
    """The registry holds a different number of bytes than we thought (416); resume from `offset`."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        super().__init__(f"the registry expects the upload to continue at byte {offset}")


def _read_limited(body: Iterator[bytes], response: httpx.Response, limit: int, where: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{where}: the manifest is {declared} bytes; the limit is {limit} (4 MiB)")
    data = bytearray()
    for chunk in body:
        data += chunk
        if len(data) > limit:
            raise RegistryError(f"{where}: the manifest is larger than {limit} bytes (4 MiB)")
    return bytes(data)


def _media_type(response: httpx.Response, data: bytes) -> str:
    header = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    if header and header not in ("application/json", "application/octet-stream", "text/plain"):
        return header
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return header
    return str(value.get("mediaType") or "") if isinstance(value, dict) else header


def _not_found_what(response: httpx.Response, default: str) -> str:
    """NAME_UNKNOWN names a missing repository; Distribution 2.8 says MANIFEST_UNKNOWN for both."""
    return "repository" if describe_error_body(read_small(response)).startswith("NAME_UNKNOWN") else default


def _range_end(value: str | None) -> int:
    """The last byte index in a `Range: 0-<end>` upload-status header (-1 when nothing is held)."""
    if not value:
        return -1
    _, _, end = value.removeprefix("bytes=").partition("-")
    return int(end) if end.isdigit() else -1
