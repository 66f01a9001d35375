"""`modelyard pull`: a model from a registry into the local store.

    pulling manifest → pulling <12 hex> (each blob, in parallel) → verifying sha256 digest
      → writing manifest → success

The manifest is fetched as bytes (an index is resolved to its single or linux/amd64 entry) and
classified (formats.py). A ModelPack manifest is stored byte for byte, so the local digest is the
registry's. An Ollama or Docker Model Runner manifest is converted to canonical ModelPack over the
same blobs: the local digest is that of the converted manifest, a pure function of the remote
bytes (so `list` shows the same ID on every pull), and the remote digest is kept in its
`io.modelyard.source.digest` annotation. A pull by digest tags the image `name@sha256:…`, which
finds it again by that reference whatever the local digest.

Every blob is verified before it enters the store; the tag moves only after all of them are in, so
a failed pull leaves the store's images as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from modelyard.errors import (
    BlobNotFoundError,
    DigestMismatchError,
    NoRegistryError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailableError,
)
from modelyard.progress import ProgressSink, ignore_progress
from modelyard.reference import Reference
from modelyard.registry.client import FetchedManifest, RepositoryClient
from modelyard.registry.formats import (
    SourceFormat,
    UnsupportedManifestError,
    classify,
    pick_from_index,
    to_modelpack,
)
from modelyard.registry.options import RegistryOptions
from modelyard.registry.progress import LayerProgress
from modelyard.registry.session import BodyTooSlow
from modelyard.registry.transfer import Cancellation, download_blob, size_refused
from modelyard.store import Store
from modelyard.store.image import (
    LAYER_WEIGHT,
    MAX_TEXT_LAYER_BYTES,
    TEXT_LAYERS,
    Descriptor,
    Manifest,
    ManifestFormatError,
    parse_manifest,
    sha256_digest,
)

log = logging.getLogger(__name__)

# Tries at tagging a pulled image whose blobs another command keeps removing (rm, prune).
_TAG_ATTEMPTS = 3


@dataclass(frozen=True)
class PullResult:
    reference: Reference  # the name the image is tagged with in the local store
    digest: str  # the local manifest digest
    remote_digest: str  # the registry's manifest digest (equal to `digest` for ModelPack)
    source_format: SourceFormat
    bytes_downloaded: int
    blobs_downloaded: int


def pull(
    store: Store, ref: Reference, options: RegistryOptions, progress: ProgressSink = ignore_progress
) -> PullResult:
    local_name = replace(ref, tag=None) if ref.digest else ref
    host = ref.host
    if host is None:
        # As `ollama pull llama3.2`: the default registry's library/llama3.2, stored under the
        # name as given, so that `run llama3.2` finds it.
        if options.default_registry is None:
            raise NoRegistryError(
                f"{ref.short()} names no registry and $MODELYARD_DEFAULT_REGISTRY is empty; pull "
                f"HOST[:PORT]/NAME[:TAG], e.g. localhost:5000/{ref.repository}"
            )
        host = options.default_registry
        ref = replace(ref, host=host)
    report = LayerProgress(progress)
    store.init()
    report.status("pulling manifest")
    with options.open_session(host) as session:
        repo = RepositoryClient(session, ref.repository)
        fetched = _fetch_image_manifest(repo, ref)
        manifest = _parse(fetched, repo.name)
        try:
            source = classify(manifest)
        except UnsupportedManifestError as exc:
            raise RegistryError(f"{ref}: {exc}") from None
        # Reported as a layer, as Ollama's pull reports its config (progress bars count every blob).
        config_meter = report.meter("pulling", manifest.config.digest, manifest.config.size)
        config = _fetch_config(repo, store, manifest.config, keep=source is SourceFormat.MODELPACK)
        config_meter(manifest.config.size)
        converted = None
        if source is not SourceFormat.MODELPACK:
            converted = to_modelpack(manifest, config, source, fetched.digest)
        stored = converted.manifest if converted else manifest  # its layers as the store reads them
        _check_one_size_a_blob(manifest, repo.name)
        _check_text_layer_sizes(stored, repo.name)
        if not stored.layers_of(LAYER_WEIGHT):
            # Before any download: such an image would be stored, listed, and never serve.
            raise RegistryError(f"{ref}: the image has no weights layer (no GGUF): not a model to serve")
        received, fetched_count = _download_layers(repo, store, manifest.layers, options.parallel, report)
        report.status("verifying sha256 digest")  # each blob was verified as it entered the store
        report.status("writing manifest")
        for attempt in range(1, _TAG_ATTEMPTS + 1):
            if converted is None:
                digest, _ = store.put_manifest(fetched.data)
            else:
                store.blobs.put_bytes(converted.config, expected=converted.manifest.config.digest)
                digest, _ = store.put_manifest(converted.manifest)
            try:
                store.tag(local_name, digest)
                break
            except BlobNotFoundError:
                if attempt == _TAG_ATTEMPTS:
                    raise
            # A blob this pull found in the store was removed since (`rm` of an image sharing it,
            # or of this very name): fetched again. It failed after the whole download, as if the
            # store were damaged, its blobs left for prune (a store review).
            log.info("a blob of %s was removed from the store during the pull; fetching it again", ref)
            if source is SourceFormat.MODELPACK:
                _fetch_config(repo, store, manifest.config, keep=True)
            again, _ = _download_layers(repo, store, manifest.layers, options.parallel, report)
            received += again
    options.ledger().record(host, ref.repository, manifest.blob_digests())
    report.status("success")
    return PullResult(local_name, digest, fetched.digest, source, received, fetched_count)


def _check_one_size_a_blob(manifest: Manifest, where: str) -> None:
    """One blob named twice must be one size: the download checks the last descriptor of a digest
    (a registry review: weights named first at 12 GB, then at their true size, were pulled, listed
    at 12.3 GB and pushed on)."""
    sizes: dict[str, int] = {}
    for descriptor in (manifest.config, *manifest.layers):
        size = sizes.setdefault(descriptor.digest, descriptor.size)
        if size != descriptor.size:
            raise RegistryProtocolError(
                f"{where}: the manifest gives blob {descriptor.digest} two sizes ({size:,} and "
                f"{descriptor.size:,} bytes); the image's manifest is wrong (push it again)"
            )


def _check_text_layer_sizes(manifest: Manifest, where: str) -> None:
    """Before any download: a template, system prompt or other text layer is read whole, up to
    MAX_TEXT_LAYER_BYTES; a larger one would be pulled and then refused by every reader."""
    for layer in manifest.layers:
        if layer.media_type in TEXT_LAYERS and layer.size > MAX_TEXT_LAYER_BYTES:
            raise RegistryError(
                f"{where}: its {layer.media_type} layer {layer.digest} is {layer.size:,} bytes; text "
                f"layers (template, system prompt, parameters, …) are at most {MAX_TEXT_LAYER_BYTES:,}"
            )


def _fetch_image_manifest(repo: RepositoryClient, ref: Reference) -> FetchedManifest:
    fetched = repo.get_manifest(ref.digest or ref.tag or "latest")
    if not fetched.is_index:
        return fetched
    try:
        chosen = pick_from_index(fetched.data)
    except UnsupportedManifestError as exc:
        raise RegistryError(f"{ref}: {exc}") from None
    except RegistryProtocolError as exc:
        raise RegistryProtocolError(f"{ref}: {exc}") from None
    log.debug("%s is an index; using %s", ref, chosen)
    child = repo.get_manifest(chosen)  # by digest: the bytes are checked against it
    if child.is_index:
        raise RegistryError(f"{ref}: an index inside an index; pull a manifest by digest")
    return child


def _parse(fetched: FetchedManifest, where: str) -> Manifest:
    try:
        return parse_manifest(fetched.data)
    except ManifestFormatError as exc:
        raise RegistryProtocolError(f"{where}: unreadable manifest {fetched.digest}: {exc}") from None


def _fetch_config(repo: RepositoryClient, store: Store, config: Descriptor, *, keep: bool) -> dict[str, Any]:
    """The config blob as JSON, verified; into the store when the image keeps it (ModelPack)."""
    if store.blobs.exists(config.digest):
        data = store.blobs.read_bytes(config.digest, MAX_TEXT_LAYER_BYTES)
        _check_size(repo, config, len(data))
    else:
        if config.size > MAX_TEXT_LAYER_BYTES:
            raise RegistryProtocolError(f"{repo.name}: config blob {config.digest} is {config.size} bytes")
        with contextlib.closing(repo.open_blob(config.digest)) as response:
            data = b""
            try:
                for chunk in repo.session.body(response):  # a trickle of 16 MiB held the pull for ever
                    data += chunk
                    if len(data) > config.size:
                        break
            except BodyTooSlow as exc:
                what = f"config blob {config.digest} of {repo.name}: {exc}"
                raise RegistryUnavailableError(repo.session.host, what) from None
        actual = sha256_digest(data)
        if actual != config.digest:
            raise DigestMismatchError(config.digest, actual, repo.name)
        _check_size(repo, config, len(data))  # the right bytes, but maybe a descriptor to refuse
        if keep:
            store.blobs.put_bytes(data, expected=config.digest)
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        value = None
    return value if isinstance(value, dict) else {}


def _check_size(repo: RepositoryClient, config: Descriptor, actual: int) -> None:
    """Refuse a config descriptor the store must not keep, whether the bytes came now or were
    there already (another image's config under a size of this manifest's choosing)."""
    if actual != config.size:
        raise size_refused(repo.name, f"config blob {config.digest}", actual, config.size)


def _download_layers(
    repo: RepositoryClient,
    store: Store,
    layers: tuple[Descriptor, ...],
    parallel: int,
    report: LayerProgress,
) -> tuple[int, int]:
    """Every layer blob into the store, `parallel` at a time; the first failure stops the rest."""
    unique = list({layer.digest: layer for layer in layers}.values())
    cancelled = Cancellation()

    def one(layer: Descriptor) -> int:
        meter = report.meter("pulling", layer.digest, layer.size)
        received = download_blob(
            repo, store.blobs, layer.digest, layer.size, progress=meter, cancelled=cancelled
        )
        meter(layer.size)
        return received

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pull")
    futures = [pool.submit(one, layer) for layer in unique]

    def stop_all() -> None:  # running downloads stop at their next read, keeping their partials
        cancelled.set()
        for future in futures:
            future.cancel()

    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        # Ctrl-C (KeyboardInterrupt arrives here, on the main thread): the downloads stop, and are
        # not waited for (a read blocked before its answer's headers waited out its timeout).
        stop_all()
        pool.shutdown(wait=False)
        raise
    failed = next((f for f in done if f.exception() is not None), None)
    if failed is not None:
        stop_all()
        wait(futures)
    pool.shutdown()
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]
    received = [f.result() for f in futures]
    return sum(received), sum(1 for r in received if r)
