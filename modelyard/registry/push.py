"""`modelyard push`: a local image to a registry.

    retrieving manifest → pushing <12 hex> (each blob, in parallel) → pushing manifest → success

The ModelPack manifest is sent as the exact bytes in the store, so the registry's digest is the
local one. `--format ollama` sends instead an Ollama manifest (Docker schema2) over the same blobs
plus its own small config, under the same tag; `--format both` sends the ModelPack manifest under
the tag and the Ollama one under `<tag>-ollama` (Ollama reads only the latter, and DMR, KitOps and
ramalama only the former, so they cannot share a tag).

Blobs the repository has are skipped after a HEAD; blobs we know another repository of the same
registry holds (from earlier pushes and pulls, locations.py) are mounted from there; the rest are
uploaded in streamed chunks. Manifests go last, once every blob they name is in.
"""

from __future__ import annotations

import enum
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.errors import NoRegistryError, RegistryError
from modelyard.progress import ProgressSink, ignore_progress
from modelyard.reference import Reference
from modelyard.registry.client import RepositoryClient
from modelyard.registry.formats import UnsupportedManifestError, to_ollama
from modelyard.registry.journal import UploadJournal, upload_journal
from modelyard.registry.locations import Locations, mount_source
from modelyard.registry.options import RegistryOptions
from modelyard.registry.progress import LayerProgress
from modelyard.registry.transfer import BlobSource, Uploaded, UploadResult, upload_blob
from modelyard.store import Store
from modelyard.store.image import Manifest

OLLAMA_TAG_SUFFIX = "-ollama"


class PushFormat(enum.StrEnum):
    MODELPACK = "modelpack"
    OLLAMA = "ollama"
    BOTH = "both"


@dataclass(frozen=True)
class PushedManifest:
    reference: Reference
    digest: str
    media_type: str


@dataclass(frozen=True)
class PushResult:
    manifests: tuple[PushedManifest, ...]
    bytes_uploaded: int
    blobs: dict[str, Uploaded] = field(default_factory=dict)  # digest -> what became of it

    def count(self, outcome: Uploaded) -> int:
        return sum(1 for o in self.blobs.values() if o is outcome)


@dataclass(frozen=True)
class OutgoingManifest:
    reference: Reference  # where it goes: a tag, or a digest
    manifest: Manifest
    data: bytes  # the exact bytes PUT


@dataclass(frozen=True)
class PushPlan:
    manifests: tuple[OutgoingManifest, ...]
    extra_blobs: dict[str, bytes]  # blobs made for the push (an Ollama config), not in the store


def plan_push(
    target: Reference, manifest: Manifest, data: bytes, format: PushFormat, config: dict[str, object]
) -> PushPlan:
    """Which manifests go under which references. Pure."""
    if target.digest is not None and format is not PushFormat.MODELPACK:
        raise RegistryError(
            "a push to a digest sends the ModelPack manifest only; drop --format or the digest"
        )
    outgoing: list[OutgoingManifest] = []
    extra: dict[str, bytes] = {}
    if format in (PushFormat.MODELPACK, PushFormat.BOTH):
        outgoing.append(OutgoingManifest(target, manifest, data))
    if format in (PushFormat.OLLAMA, PushFormat.BOTH):
        try:
            ollama = to_ollama(manifest, config)
        except UnsupportedManifestError as exc:
            raise RegistryError(f"{target}: {exc}") from None
        tag = target.tag or "latest"
        ref = target if format is PushFormat.OLLAMA else target.with_tag(tag + OLLAMA_TAG_SUFFIX)
        outgoing.append(OutgoingManifest(ref, ollama.manifest, ollama.manifest.to_bytes()))
        extra[ollama.manifest.config.digest] = ollama.config
    return PushPlan(tuple(outgoing), extra)


def push(
    store: Store,
    target: Reference,
    options: RegistryOptions,
    *,
    source: Reference | None = None,
    format: PushFormat = PushFormat.MODELPACK,
    progress: ProgressSink = ignore_progress,
) -> PushResult:
    """Push the local image `source` (default: the one named `target`) to `target`'s registry."""
    if target.host is None:
        raise NoRegistryError(
            f"{target.short()} names no registry; push it as HOST[:PORT]/NAME[:TAG] (`modelyard push "
            "NAME HOST[:PORT]/NAME[:TAG]`), or tag the image with a registry name first"
        )
    report = LayerProgress(progress)
    report.status("retrieving manifest")
    record = store.resolve(source or target)
    data = store.blobs.read_bytes(record.digest)
    manifest = store.read_manifest(record.digest)
    if target.digest is not None and target.digest != record.digest:
        raise RegistryError(f"{target}: the local image's digest is {record.digest}")
    config = store.read_config(manifest) if format is not PushFormat.MODELPACK else {}
    plan = plan_push(target, manifest, data, format, config)
    blobs = _sources(store, plan)
    locations = options.ledger().load()
    with options.open_session(target.host) as session:
        repo = RepositoryClient(session, target.repository, push=True)
        journals = Journals(store.blobs.ingest_dir, session.endpoint.base_url, target.repository)
        uploads = _upload_all(repo, blobs, locations, options, report, journals)
        report.status("pushing manifest")
        pushed = []
        for outgoing in plan.manifests:
            # `repo:tag@digest` goes under the tag (its digest was checked against the image above);
            # `repo@digest` under the digest alone.
            where = outgoing.reference.tag or outgoing.reference.digest or "latest"
            digest = repo.put_manifest(where, outgoing.data, outgoing.manifest.media_type)
            pushed.append(PushedManifest(outgoing.reference, digest, outgoing.manifest.media_type))
    options.ledger().record(target.host, target.repository, list(blobs))
    report.status("success")
    return PushResult(
        tuple(pushed),
        sum(r.bytes_sent for r in uploads.values()),
        {digest: r.outcome for digest, r in uploads.items()},
    )


def _sources(store: Store, plan: PushPlan) -> dict[str, BlobSource]:
    """Every blob the manifests name, once, config first: from the store, or made for this push."""
    sources: dict[str, BlobSource] = {}
    for outgoing in plan.manifests:
        for digest in outgoing.manifest.blob_digests():
            if digest in sources:
                continue
            if digest in plan.extra_blobs:
                data = plan.extra_blobs[digest]
                sources[digest] = BlobSource(digest, len(data), data=data)
            else:
                sources[digest] = BlobSource(digest, store.blobs.size(digest), path=store.blobs.path(digest))
    return sources


@dataclass(frozen=True)
class Journals:
    """Where the uploads of one push keep their sessions (journal.py)."""

    folder: Path
    base_url: str
    repository: str

    def of(self, digest: str) -> UploadJournal:
        return upload_journal(self.folder, self.base_url, self.repository, digest)


def _upload_all(
    repo: RepositoryClient,
    blobs: dict[str, BlobSource],
    locations: Locations,
    options: RegistryOptions,
    report: LayerProgress,
    journals: Journals | None = None,
) -> dict[str, UploadResult]:
    """Every blob, `parallel` at a time; the first failure stops the others between reads. Ctrl-C
    lets the chunks in flight arrive first, for the next push to resume from (a second one stops
    at once)."""
    host = repo.session.host
    cancelled = threading.Event()
    stop_after_chunk = threading.Event()

    def one(blob: BlobSource) -> UploadResult:
        meter = report.meter("pushing", blob.digest, blob.size)
        result = upload_blob(
            repo,
            blob,
            mount_from=mount_source(locations, host, repo.repository, blob.digest),
            chunk_bytes=options.chunk_bytes,
            progress=meter,
            cancelled=cancelled,
            journal=journals.of(blob.digest) if journals is not None else None,
            stop_after_chunk=stop_after_chunk,
        )
        if result.outcome is Uploaded.SENT:
            meter(blob.size)
        else:  # nothing went over the wire: said so, not as a transfer done in no time
            verb = "exists" if result.outcome is Uploaded.PRESENT else "mounted"
            report.layer(verb, blob.digest, blob.size, blob.size)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, options.parallel), thread_name_prefix="push")
    futures = {digest: pool.submit(one, blob) for digest, blob in blobs.items()}
    try:
        results = {digest: future.result() for digest, future in futures.items()}
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.py)
        stop_after_chunk.set()
        for future in futures.values():
            future.cancel()
        sending = [blobs[d] for d, f in futures.items() if f.running()]
        if any(blob.size > options.chunk_bytes for blob in sending):
            report.status("stopping once the chunk in flight is in, to resume from; Ctrl-C again stops now")
            try:
                wait(futures.values())
            finally:
                cancelled.set()
        # Not waited for: a second Ctrl-C leaves a write blocked on a stalled link to the exit.
        pool.shutdown(wait=False)
        raise
    except BaseException:
        cancelled.set()
        for future in futures.values():
            future.cancel()
        pool.shutdown()  # the others stop at their next read
        raise
    pool.shutdown()
    return results
