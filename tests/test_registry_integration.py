"""push and pull against the real CNCF Distribution registry (anonymous and htpasswd), checked
with skopeo; faults from Distribution itself, a counting proxy, or a tiny fake registry where
Distribution cannot misbehave. Every failing operation must leave the local store as it was."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from registry_server import CountingProxy, FakeRegistry, Registry, free_port, start_registry

from modelyard.builder.build import Builder
from modelyard.cli import main
from modelyard.errors import (
    CorruptStoreError,
    DigestMismatchError,
    RegistryError,
    RegistryUnavailableError,
    RemoteNotFoundError,
)
from modelyard.progress import ProgressEvent
from modelyard.reference import Reference, parse_reference
from modelyard.registry import PushFormat, RegistryOptions, pull, push
from modelyard.registry.client import RepositoryClient, UploadSession
from modelyard.registry.endpoint import Endpoint
from modelyard.registry.formats import (
    ANNOTATION_SOURCE_DIGEST,
    CONFIG_OLLAMA,
    LAYER_OLLAMA_MODEL,
    SourceFormat,
)
from modelyard.registry.journal import upload_journal
from modelyard.registry.retry import RetryPolicy
from modelyard.registry.session import RegistrySession
from modelyard.registry.transfer import (
    BlobSource,
    Cancelled,
    Uploaded,
    UploadResult,
    partial_path,
    upload_blob,
)
from modelyard.store import Store
from modelyard.store.image import (
    ANNOTATION_FILEPATH,
    ANNOTATION_TITLE,
    ARTIFACT_MODELPACK,
    CONFIG_MODELPACK,
    INDEX_OCI,
    LAYER_SYSTEM,
    LAYER_WEIGHT,
    MANIFEST_DOCKER,
    MANIFEST_OCI,
    Descriptor,
    Manifest,
    canonical_json,
    sha256_digest,
)

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05)
needs_registry = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="docker-registry not installed"
)
pytestmark = needs_registry


# --- helpers -------------------------------------------------------------------------------------


def new_store(root: Path) -> Store:
    store = Store(root)
    store.init()
    return store


def options(tmp_path: Path, **overrides: object) -> RegistryOptions:
    values: dict[str, object] = {
        "docker_config": tmp_path / "docker",
        "cache_dir": tmp_path / "cache",
        "chunk_bytes": 256 * 1024,  # the tiny GGUF (640 KB) then travels in three PATCH chunks
        "retry": FAST_RETRY,
    }
    values.update(overrides)
    return RegistryOptions(**values)  # type: ignore[arg-type]


def build(store: Store, tmp_path: Path, gguf: Path, name: str, system: str = "You are terse.") -> str:
    folder = tmp_path / f"build-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "Modelfile").write_text(f"FROM {gguf}\nSYSTEM {system}\nPARAMETER temperature 0.2\n")
    return (
        Builder(store, tmp_path / "build-cache")
        .build_file(folder / "Modelfile", parse_reference(name))
        .digest
    )


def remote(registry: Registry | CountingProxy | FakeRegistry, repository: str, tag: str = "v1") -> Reference:
    return parse_reference(f"{registry.host}/{repository}:{tag}")


def unique(prefix: str) -> str:
    return f"{prefix}/m{uuid.uuid4().hex[:8]}"


def skopeo_raw(ref: Reference) -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    value = json.loads(out)
    assert isinstance(value, dict)
    return value


def store_snapshot(store: Store) -> tuple[bytes, list[str], list[str]]:
    """What must not change when an operation fails: the index, the blobs, the partial files."""
    index = store.index_path.read_bytes() if store.index_path.exists() else b""
    blobs = sorted(store.blobs.digests())
    partials = (
        sorted(p.name for p in store.blobs.ingest_dir.glob("*.partial"))
        if store.blobs.ingest_dir.exists()
        else []
    )
    return index, blobs, partials


@pytest.fixture
def image(tmp_path: Path, tiny_gguf: Path) -> tuple[Store, str]:
    store = new_store(tmp_path / "store")
    return store, build(store, tmp_path, tiny_gguf, "tiny")


# --- push and pull ---------------------------------------------------------------------------------


def test_push_then_pull_keeps_the_digest_and_skopeo_reads_it(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    store, digest = image
    target = remote(registry, unique("team"))
    events: list[str] = []
    result = push(
        store,
        target,
        options(tmp_path),
        source=parse_reference("tiny"),
        progress=lambda e: events.append(e.status),
    )
    assert [m.digest for m in result.manifests] == [digest]  # the registry holds our exact bytes
    assert events[0] == "retrieving manifest" and events[-2:] == ["pushing manifest", "success"]
    assert any(e.startswith("pushing ") and len(e) == len("pushing ") + 12 for e in events)

    raw = skopeo_raw(target)
    local = json.loads(store.blobs.read_bytes(digest))
    assert raw == local
    assert (raw["mediaType"], raw["artifactType"]) == (MANIFEST_OCI, ARTIFACT_MODELPACK)
    assert raw["config"]["mediaType"] == CONFIG_MODELPACK  # type: ignore[index]
    assert [layer["mediaType"] for layer in raw["layers"]][:2] == [LAYER_WEIGHT, LAYER_SYSTEM]  # type: ignore[index, union-attr]

    other = new_store(tmp_path / "other")
    pulled_events: list[str] = []
    pulled = pull(other, target, options(tmp_path), progress=lambda e: pulled_events.append(e.status))
    assert (pulled.digest, pulled.remote_digest, pulled.source_format) == (
        digest,
        digest,
        SourceFormat.MODELPACK,
    )
    assert pulled_events[0] == "pulling manifest"
    config = store.read_manifest(digest).config.digest
    assert f"pulling {config[7:19]}" in pulled_events, "the config as a layer too, as Ollama reports it"
    assert pulled_events[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert other.read_parts(other.read_manifest(digest)) == store.read_parts(store.read_manifest(digest))
    assert other.verify().ok

    again = pull(other, target, options(tmp_path))
    assert (again.digest, again.bytes_downloaded, again.blobs_downloaded) == (digest, 0, 0)

    by_digest = pull(new_store(tmp_path / "third"), target.with_digest(digest), options(tmp_path))
    assert str(by_digest.reference) == f"{target.name}@{digest}"

    # `repo:tag@digest`: the tag is made, pointing at that digest (Docker's pull takes this form).
    tagged = parse_reference(f"{target.name}:pinned@{digest}")
    assert [
        m.digest for m in push(store, tagged, options(tmp_path), source=parse_reference("tiny")).manifests
    ] == [digest]
    assert (
        pull(
            new_store(tmp_path / "fourth"), parse_reference(f"{target.name}:pinned"), options(tmp_path)
        ).digest
        == digest
    )


def test_a_blob_removed_during_a_pull_is_fetched_again(
    registry: Registry, image: tuple[Store, str], tmp_path: Path, tiny_gguf: Path
) -> None:
    """A store review: the weights were in the store (another image's) when the pull began, that
    image was removed before the pull tagged its own, and the pull failed after its download with
    "blob … is missing from the store", exit 2, as if the store were damaged."""
    store, digest = image
    target = remote(registry, unique("shared"))
    push(store, target, options(tmp_path), source=parse_reference("tiny"))
    other = new_store(tmp_path / "other")
    build(other, tmp_path, tiny_gguf, "local", system="Another system prompt.")
    weights = store.read_parts(store.read_manifest(digest)).weights
    assert weights is not None and other.blobs.exists(weights.digest), "the pull will find them there"

    def remove_the_other_image(event: ProgressEvent) -> None:
        if event.status == "writing manifest":
            other.remove([parse_reference("local")])  # the weights go with it: nothing else holds them

    pulled = pull(other, target, options(tmp_path), progress=remove_the_other_image)
    assert pulled.digest == digest and pulled.bytes_downloaded >= weights.size
    assert other.images()[0].digest == digest and other.verify().ok


def test_push_both_formats_and_pull_the_ollama_manifest_back(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    store, digest = image
    target = remote(registry, unique("ollama"), "v2")
    result = push(store, target, options(tmp_path), source=parse_reference("tiny"), format=PushFormat.BOTH)
    assert [str(m.reference) for m in result.manifests] == [str(target), f"{target.name}:v2-ollama"]

    ollama_ref = parse_reference(f"{target.name}:v2-ollama")
    raw = skopeo_raw(ollama_ref)
    assert (raw["mediaType"], raw["config"]["mediaType"]) == (MANIFEST_DOCKER, CONFIG_OLLAMA)  # type: ignore[index]
    ours = store.read_manifest(digest)
    assert [x["digest"] for x in raw["layers"]] == [x.digest for x in ours.layers]  # type: ignore[union-attr]
    assert raw["layers"][0]["mediaType"] == LAYER_OLLAMA_MODEL  # type: ignore[index]

    first = pull(new_store(tmp_path / "a"), ollama_ref, options(tmp_path))
    second_store = new_store(tmp_path / "b" / "store")
    second = pull(second_store, ollama_ref, options(tmp_path))
    assert first.source_format is SourceFormat.OLLAMA
    assert first.digest == second.digest != first.remote_digest  # converted, and the same ID every time
    converted = second_store.read_manifest(second.digest)
    assert converted.artifact_type == ARTIFACT_MODELPACK
    assert converted.annotations[ANNOTATION_SOURCE_DIGEST] == second.remote_digest
    assert second_store.read_parts(converted).system == "You are terse."
    assert {x.digest for x in converted.layers} == {x.digest for x in ours.layers}
    # Its config does not carry the weights' facts, which `show` then reads from the GGUF.
    from modelyard.cli import main

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp_path / "b"))
        assert main(["show", str(ollama_ref), "--json"], stdout=out, stderr=io.StringIO()) == 0
    details = json.loads(out.getvalue())["details"]
    assert details["capabilities"] == "text" and details["context length"] == 256
    assert isinstance(details["embedding length"], int)

    # A pull by the registry's digest finds the converted image by that reference.
    pinned = ollama_ref.with_digest(second.remote_digest)
    pulled = pull(second_store, pinned, options(tmp_path))
    assert pulled.bytes_downloaded == 0
    assert second_store.resolve(pinned).digest == second.digest


def test_repush_and_a_derived_image_send_no_weight_bytes(
    registry: Registry, tiny_gguf: Path, tmp_path: Path
) -> None:
    store = new_store(tmp_path / "store")
    build(store, tmp_path, tiny_gguf, "base")
    build(store, tmp_path, tiny_gguf, "derived", system="You are a pirate.")
    proxy = CountingProxy(int(registry.host.rsplit(":", 1)[1]))
    try:
        repo = unique("share")
        opts = options(tmp_path)
        first = push(store, remote(proxy, repo, "base"), opts, source=parse_reference("base"))
        assert first.bytes_uploaded > tiny_gguf.stat().st_size
        assert proxy.to_server > tiny_gguf.stat().st_size

        proxy.reset()
        said: list[str] = []
        again = push(
            store,
            remote(proxy, repo, "base"),
            opts,
            source=parse_reference("base"),
            progress=lambda e: said.append(e.status),
        )
        assert again.bytes_uploaded == 0 and set(again.blobs.values()) == {Uploaded.PRESENT}
        # Each blob's last word says it was there already, not that it went over in no time.
        words = [s.split() for s in said]
        last = {w[1]: w[0] for w in words if w[0] in ("pushing", "exists") and w[1] != "manifest"}
        assert last and set(last.values()) == {"exists"}, said
        assert proxy.to_server < 20_000  # HEADs and one manifest PUT

        proxy.reset()
        derived = push(store, remote(proxy, repo, "derived"), opts, source=parse_reference("derived"))
        assert derived.count(Uploaded.PRESENT) >= 1 and derived.bytes_uploaded < 10_000
        assert proxy.to_server < 30_000

        proxy.reset()  # another repository of the same registry: the weights are mounted, not sent
        elsewhere = push(
            store, remote(proxy, unique("other"), "derived"), opts, source=parse_reference("derived")
        )
        weights = store.read_manifest(store.resolve(parse_reference("derived")).digest).layers[0].digest
        assert elsewhere.blobs[weights] is Uploaded.MOUNTED
        assert proxy.to_server < 30_000
    finally:
        proxy.stop()


def put_blob(repo: RepositoryClient, data: bytes) -> Descriptor:
    digest = sha256_digest(data)
    upload_blob(repo, BlobSource(digest, len(data), data=data))
    return Descriptor("application/octet-stream", digest, len(data))


def registry_repo(registry: Registry, repository: str) -> RepositoryClient:
    endpoint = Endpoint(registry.host, f"http://{registry.host}", verify_tls=False)
    return RepositoryClient(RegistrySession(endpoint), repository, push=True)


def test_a_push_stopped_halfway_goes_on_where_the_registry_stands(registry: Registry, tmp_path: Path) -> None:
    """Resumable transfers both ways: a push stopped (Ctrl-C) in its second chunk lets that chunk
    arrive, keeps the upload session in a journal, and the next push sends only the rest.
    Distribution signs the bytes received into the session URL's `_state`, refuses an older one,
    and drops a session whose chunk was cut: the chunk in flight must arrive whole, and the journal
    keep the URL of the last chunk taken. The blob that arrives is the one that was meant."""
    mib = 1024 * 1024
    data = os.urandom(5 * mib)
    digest = sha256_digest(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    blob = BlobSource(digest, len(data), path=path)
    repo = registry_repo(registry, unique("resume"))
    journal = upload_journal(tmp_path / "ingest", repo.session.endpoint.base_url, repo.repository, digest)
    chunk = 2 * mib  # read and reported in 1 MiB pieces
    ctrl_c = threading.Event()

    def stop_in_the_second_chunk(position: int) -> None:
        if position > chunk:
            ctrl_c.set()

    with pytest.raises(Cancelled):
        upload_blob(
            repo,
            blob,
            chunk_bytes=chunk,
            progress=stop_in_the_second_chunk,
            journal=journal,
            stop_after_chunk=ctrl_c,
        )
    assert journal.path.exists() and not repo.has_blob(digest)

    again = upload_blob(repo, blob, chunk_bytes=chunk, journal=journal)
    assert again == UploadResult(Uploaded.SENT, len(data) - 2 * chunk)
    assert not journal.path.exists(), "forgotten once the blob is in"
    with contextlib.closing(repo.open_blob(digest)) as response:
        assert response.read() == data

    # A journal whose session the registry no longer knows: the blob is sent whole, in a new one.
    other = os.urandom(3 * mib)
    (tmp_path / "other").write_bytes(other)
    lost = upload_journal(
        tmp_path / "ingest", repo.session.endpoint.base_url, repo.repository, "sha256:" + "0" * 64
    )
    lost.remember(UploadSession(f"{repo.session.endpoint.base_url}/v2/{repo.repository}/blobs/uploads/gone"))
    moved = BlobSource(sha256_digest(other), len(other), path=tmp_path / "other")
    assert upload_blob(repo, moved, chunk_bytes=chunk, journal=lost).bytes_sent == len(other)
    assert not lost.path.exists()
    repo.session.close()


def test_pull_a_docker_model_runner_manifest_keeps_unknown_layers(
    registry: Registry, tiny_gguf: Path, tmp_path: Path
) -> None:
    repository = unique("ai")
    repo = registry_repo(registry, repository)
    weights = put_blob(repo, tiny_gguf.read_bytes())
    license_ = put_blob(repo, b"Apache-2.0")
    extra = put_blob(repo, b"a layer of a type nobody knows")
    config = canonical_json(
        {
            "config": {
                "format": "gguf",
                "architecture": "llama",
                "parameters": "1.2M",
                "quantization": "F32",
                "context_size": 2048,
            },
            "descriptor": {"created": "2025-05-05T00:00:00Z"},
            "rootfs": {"type": "rootfs", "diff_ids": [weights.digest, license_.digest, extra.digest]},
        }
    )
    config_desc = put_blob(repo, config)
    dmr = Manifest(
        Descriptor("application/vnd.docker.ai.model.config.v0.1+json", config_desc.digest, config_desc.size),
        (
            Descriptor("application/vnd.docker.ai.gguf.v3", weights.digest, weights.size),
            Descriptor("application/vnd.docker.ai.license", license_.digest, license_.size),
            Descriptor("application/vnd.example.unknown", extra.digest, extra.size),
        ),
    )
    remote_digest = repo.put_manifest("v1", dmr.to_bytes(), MANIFEST_OCI)
    repo.session.close()

    store = new_store(tmp_path / "store")
    pulled = pull(store, remote(registry, repository), options(tmp_path))
    assert (pulled.source_format, pulled.remote_digest) == (SourceFormat.DOCKER, remote_digest)
    manifest = store.read_manifest(pulled.digest)
    assert [x.media_type for x in manifest.layers] == [
        LAYER_WEIGHT,
        "application/vnd.ollama.image.license",
        "application/vnd.example.unknown",
    ]
    assert manifest.annotations["io.modelyard.gguf.context-length"] == "2048"
    parts = store.read_parts(manifest)
    assert parts.weights is not None and parts.weights.digest == weights.digest
    assert parts.licenses == ("Apache-2.0",)
    assert store.blobs.exists(extra.digest)  # kept, though nothing reads it


def test_an_index_resolves_to_its_one_manifest_or_fails_clearly(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    store, digest = image
    target = remote(registry, unique("idx"))
    push(store, target, options(tmp_path), source=parse_reference("tiny"))
    size = store.blobs.size(digest)
    repo = registry_repo(registry, target.repository)
    one = {
        "mediaType": MANIFEST_OCI,
        "digest": digest,
        "size": size,
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    repo.put_manifest(
        "single", canonical_json({"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": [one]}), INDEX_OCI
    )
    two = [{"mediaType": MANIFEST_OCI, "digest": digest, "size": size}] * 2
    repo.put_manifest(
        "ambiguous", canonical_json({"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": two}), INDEX_OCI
    )
    repo.session.close()

    other = new_store(tmp_path / "other")
    assert pull(other, target.with_tag("single"), options(tmp_path)).digest == digest
    with pytest.raises(RegistryError, match="index of 2 manifests"):
        pull(other, target.with_tag("ambiguous"), options(tmp_path))


def test_a_hostile_annotation_never_becomes_a_path(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    store, digest = image
    ours = store.read_manifest(digest)
    hostile = {ANNOTATION_TITLE: "../../etc/x", ANNOTATION_FILEPATH: "../../etc/x"}
    evil = Manifest(
        ours.config,
        tuple(Descriptor(x.media_type, x.digest, x.size, hostile) for x in ours.layers),
        artifact_type=ARTIFACT_MODELPACK,
        annotations={ANNOTATION_TITLE: "/etc/passwd"},
    )
    repository = unique("evil")
    push(store, remote(registry, repository, "base"), options(tmp_path), source=parse_reference("tiny"))
    repo = registry_repo(registry, repository)
    repo.put_manifest("evil", evil.to_bytes(), MANIFEST_OCI)
    repo.session.close()

    sandbox = tmp_path / "a" / "b"
    other = new_store(sandbox / "store")
    before = {p for p in tmp_path.rglob("*")}
    pulled = pull(other, remote(registry, repository, "evil"), options(tmp_path))
    created = {p for p in tmp_path.rglob("*")} - before
    outside = [
        p
        for p in created
        if other.root not in p.parents and p != other.root and (tmp_path / "cache") not in p.parents
    ]
    assert outside == []
    assert not (tmp_path / "etc").exists() and not (sandbox.parent / "etc").exists()
    assert other.read_parts(other.read_manifest(pulled.digest)).weights is not None


# --- faults: a clear error, and the store as it was ----------------------------------------------


def test_unknown_repository_and_tag_are_not_found(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    store, _ = image
    before = store_snapshot(store)
    with pytest.raises(RemoteNotFoundError, match=r"nobody/.*: repository or tag not found in the registry"):
        pull(store, remote(registry, unique("nobody")), options(tmp_path))
    target = remote(registry, unique("known"))
    push(store, target, options(tmp_path), source=parse_reference("tiny"))
    before = store_snapshot(store)
    with pytest.raises(RemoteNotFoundError, match=":nope: repository or tag not found"):
        pull(store, target.with_tag("nope"), options(tmp_path))
    assert store_snapshot(store) == before


def test_registry_down_is_unavailable(image: tuple[Store, str], tmp_path: Path) -> None:
    store, _ = image
    before = store_snapshot(store)
    down = parse_reference(f"127.0.0.1:{free_port()}/ns/m:v1")
    with pytest.raises(RegistryUnavailableError, match="cannot connect"):
        pull(store, down, options(tmp_path))
    with pytest.raises(RegistryUnavailableError, match="cannot connect"):
        push(store, down, options(tmp_path), source=parse_reference("tiny"))
    assert store_snapshot(store) == before
    # The CLI exits 2, not 1: the network, not the input (a script may retry; a registry audit).
    from modelyard.cli import main

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODELYARD_HOME", str(tmp_path / "cli-home"))
        err = io.StringIO()
        assert main(["pull", str(down)], stdout=io.StringIO(), stderr=err) == 2, err.getvalue()
    assert "is unavailable" in err.getvalue()


def test_a_push_of_a_damaged_local_blob_blames_the_store_not_the_registry(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    """A CLI review: the registry's DIGEST_INVALID was reported as its own HTTP 400."""
    store, digest = image
    system = next(d for d in store.read_manifest(digest).layers if d.media_type == LAYER_SYSTEM)
    path = store.blobs.path(system.digest)
    path.chmod(0o644)
    path.write_bytes(b"damaged")
    with pytest.raises(CorruptStoreError, match="verify --fix") as refused:
        push(store, remote(registry, unique("damaged")), options(tmp_path), source=parse_reference("tiny"))
    assert str(path) in str(refused.value)


def test_a_corrupt_blob_in_the_registry_is_refused_and_nothing_enters(
    registry: Registry, image: tuple[Store, str], tmp_path: Path
) -> None:
    store, digest = image
    target = remote(registry, unique("corrupt"))
    push(store, target, options(tmp_path), source=parse_reference("tiny"))
    weights = store.read_manifest(digest).layers[0]
    data_file = registry.blob_data(weights.digest)
    original = data_file.read_bytes()
    try:
        data_file.write_bytes(b"\0" * len(original))  # same size, other bytes
        other = new_store(tmp_path / "other")
        before = store_snapshot(other)
        with pytest.raises(DigestMismatchError) as caught:
            pull(other, target, options(tmp_path))
        assert weights.digest in str(caught.value) and sha256_digest(b"\0" * len(original)) in str(
            caught.value
        )
        index, blobs, partials = store_snapshot(other)
        assert index == before[0] and weights.digest not in blobs
        # No bad bytes kept; other blobs' downloads, stopped early, keep what they had to resume.
        assert partial_path(other.blobs, weights.digest).name not in partials
        assert all((other.blobs.ingest_dir / name).stat().st_size > 0 for name in partials)
    finally:
        data_file.write_bytes(original)


def _one_layer_image(weights: bytes) -> tuple[Manifest, bytes]:
    """A ModelPack manifest over `weights` alone, and its config's bytes."""
    config = canonical_json(
        {"config": {"format": "gguf"}, "descriptor": {}, "modelfs": {"type": "layers", "diffIds": []}}
    )
    manifest = Manifest(
        Descriptor(CONFIG_MODELPACK, sha256_digest(config), len(config)),
        (Descriptor(LAYER_WEIGHT, sha256_digest(weights), len(weights)),),
        artifact_type=ARTIFACT_MODELPACK,
    )
    return manifest, config


def test_a_fake_registry_serving_wrong_bytes_or_a_huge_manifest(tmp_path: Path) -> None:
    weights = b"real weights" * 100
    served = b"evil weights" * 100
    manifest, config = _one_layer_image(weights)
    huge = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_OCI, "padding": "x" * (5 << 20)}).encode()
    fake = FakeRegistry(
        {"ns/m:bad": (MANIFEST_OCI, manifest.to_bytes()), "ns/m:huge": (MANIFEST_OCI, huge)},
        {sha256_digest(config): config, sha256_digest(weights): served},
    )
    try:
        store = new_store(tmp_path / "store")
        before = store_snapshot(store)
        with pytest.raises(
            DigestMismatchError, match=f"expected {sha256_digest(weights)}, got {sha256_digest(served)}"
        ):
            pull(store, remote(fake, "ns/m", "bad"), options(tmp_path))
        with pytest.raises(RegistryError, match="4 MiB"):
            pull(store, remote(fake, "ns/m", "huge"), options(tmp_path))
        after = store_snapshot(store)
        assert after[0] == before[0] and sha256_digest(weights) not in after[1] and after[2] == []
    finally:
        fake.stop()


def _big_image(registry: Registry, tmp_path: Path, size: int) -> tuple[str, str, str]:
    """An image with one `size`-byte random layer, pushed: (repository, manifest digest, blob digest)."""
    store = new_store(tmp_path / "src")
    blob = store.blobs.put_bytes(os.urandom(size))
    config = store.blobs.put_bytes(
        canonical_json({"config": {"format": "gguf"}, "descriptor": {}, "modelfs": {}})
    )
    manifest = Manifest(
        Descriptor(CONFIG_MODELPACK, config.digest, config.size),
        (Descriptor(LAYER_WEIGHT, blob.digest, blob.size),),
        artifact_type=ARTIFACT_MODELPACK,
    )
    digest, _ = store.put_manifest(manifest)
    store.tag(parse_reference("big"), digest)
    repository = unique("big")
    push(store, remote(registry, repository), options(tmp_path), source=parse_reference("big"))
    return repository, digest, blob.digest


def _start_slow_pull(
    registry: Registry, tmp_path: Path, repository: str, blob: str
) -> tuple[subprocess.Popen[bytes], CountingProxy, Path, list[str], dict[str, str]]:
    """`modelyard pull` through a proxy at 6 MB/s, once it has written 4 MB of the blob."""
    port = int(registry.host.rsplit(":", 1)[1])
    slow = CountingProxy(port, rate=6e6)
    home = tmp_path / "home"
    env = {**os.environ, "MODELYARD_HOME": str(home), "DOCKER_CONFIG": str(tmp_path / "docker")}
    partial = partial_path(Store(home / "store").blobs, blob)
    command = [sys.executable, "-m", "modelyard.cli", "pull", "--quiet"]
    with (tmp_path / "first-run.log").open("wb") as log:
        process = subprocess.Popen([*command, str(remote(slow, repository))], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 4 << 20):
        assert process.poll() is None, (tmp_path / "first-run.log").read_text()
        assert time.monotonic() < deadline, "the pull never got going"
        time.sleep(0.02)
    return process, slow, partial, command, env


def test_a_pull_killed_midway_resumes_with_a_range(registry: Registry, tmp_path: Path) -> None:
    """SIGKILL a `modelyard pull` halfway through a 24 MB blob (a proxy slows it down), run it again:
    it asks only for the missing bytes and completes."""
    size = 24 << 20
    repository, digest, blob = _big_image(registry, tmp_path, size)
    process, slow, partial, command, env = _start_slow_pull(registry, tmp_path, repository, blob)
    try:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        slow.stop()
    had = partial.stat().st_size
    assert 0 < had < size

    port = int(registry.host.rsplit(":", 1)[1])
    fast = CountingProxy(port)
    try:
        rerun = subprocess.run(
            [*command, str(remote(fast, repository))], env=env, capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stdout.strip() == digest
        assert size - had <= fast.to_client < size - had + 100_000  # only the rest came over the wire
    finally:
        fast.stop()
    assert not partial.exists()
    assert Store(tmp_path / "home" / "store").verify().ok
    assert (
        '"GET /v2/' + repository in registry.log_path.read_text() and " 206 " in registry.log_path.read_text()
    )


def test_ctrl_c_stops_a_pull_at_once_and_keeps_its_partial_blob(registry: Registry, tmp_path: Path) -> None:
    """One SIGINT mid-blob: the pull stops within a moment (not when the blob is done), exits 130,
    and leaves the partial file for the next pull to resume."""
    size = 24 << 20
    repository, _, blob = _big_image(registry, tmp_path, size)
    process, slow, partial, _, _ = _start_slow_pull(registry, tmp_path, repository, blob)
    try:
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = process.wait(timeout=30)
        stopped_after = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
        slow.stop()
    assert code == 130 and stopped_after < 2.0, (code, stopped_after)
    assert 0 < partial.stat().st_size < size


def test_ctrl_c_stops_a_pull_whose_blob_never_answers_at_once(tmp_path: Path) -> None:
    """A diff review: a link that stalled before the blob's answer (no headers) held Ctrl-C for the
    read timeout, 60 s, once per retry (5 min): the socket was not yet the download's to shut."""
    weights = os.urandom(4096)
    manifest, config = _one_layer_image(weights)
    released = threading.Event()
    fake = FakeRegistry(
        {"ns/m:v1": (MANIFEST_OCI, manifest.to_bytes())},
        {sha256_digest(config): config, sha256_digest(weights): weights},
        stall={sha256_digest(weights)},
        released=released,
    )
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(tmp_path / "docker")}
    command = [sys.executable, "-m", "modelyard", "pull", "--quiet", f"{fake.host}/ns/m:v1"]
    with (tmp_path / "pull.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not any(r.startswith("GET /v2/ns/m/blobs/") for r in fake.requests):
            assert process.poll() is None and time.monotonic() < deadline, "the pull never asked for a blob"
            time.sleep(0.02)
        time.sleep(0.3)  # its reads are blocked now
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = process.wait(timeout=30)
        assert code == 130 and time.monotonic() - started < 2.0, (code, time.monotonic() - started)
    finally:
        if process.poll() is None:
            process.kill()
        released.set()
        fake.stop()


# --- auth, TLS and the CLI ---------------------------------------------------------------------------


class Cli:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path


def cli(*args: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None) -> Cli:
    out, err = io.StringIO(), io.StringIO()
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(args), stdout=out, stderr=err)
    return Cli(code, out.getvalue(), err.getvalue())


def test_cli_login_push_pull_with_htpasswd_never_shows_the_password(
    auth_registry: Registry,
    tiny_gguf: Path,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user, password = auth_registry.user or "", auth_registry.password or ""
    wrong = "not-" + password
    secrets = [
        password,
        wrong,
        base64.b64encode(f"{user}:{password}".encode()).decode(),
        base64.b64encode(f"{user}:{wrong}".encode()).decode(),
    ]
    host = auth_registry.host
    outputs: list[str] = []

    store = Store(cli_env / "home" / "store")
    store.init()
    build(store, cli_env, tiny_gguf, "tiny")
    target = f"{host}/private/tiny:v1"

    denied = cli("push", "tiny", target, "--verbose", monkeypatch=monkeypatch)
    assert denied.code == 1 and "requires a login" in denied.err and f"modelyard login {host}" in denied.err

    bad = cli(
        "login",
        host,
        "-u",
        user,
        "--password-stdin",
        "--verbose",
        stdin=wrong + "\n",
        monkeypatch=monkeypatch,
    )
    assert bad.code == 1 and "refused the credentials" in bad.err
    assert "Check the username and the password or token; nothing was stored." in bad.err
    assert "Run `modelyard login" not in bad.err, "said by login itself, that is no help"
    assert not (cli_env / "docker" / "config.json").exists()

    good = cli(
        "login",
        f"http://{host}/private",  # as docker login takes it: the scheme and path are dropped
        "-u",
        user,
        "--password-stdin",
        "--verbose",
        stdin=password + "\n",
        monkeypatch=monkeypatch,
    )
    assert good.code == 0 and "Login succeeded" in good.err
    assert json.loads((cli_env / "docker" / "config.json").read_text())["auths"][host]["auth"] == secrets[2]

    pushed = cli("push", "tiny", target, "--verbose", monkeypatch=monkeypatch)
    assert pushed.code == 0, pushed.err
    assert "PUT /v2/private/tiny/manifests/v1" in pushed.err  # --verbose shows requests…
    pulled = cli("pull", target, "--verbose", monkeypatch=monkeypatch)
    assert pulled.code == 0, pulled.err
    assert pulled.out.strip() == store.resolve(parse_reference("tiny")).digest

    assert cli("logout", host).code == 0
    assert cli("pull", target).code == 1
    # A legacy key (`http://host`, which docker once wrote) is found by lookups, so logout removes it.
    (cli_env / "docker" / "config.json").write_text(
        json.dumps({"auths": {f"http://{host}": {"auth": secrets[2]}}})
    )
    assert cli("pull", target).code == 0
    assert "Removing login credentials" in cli("logout", f"https://{host}").err
    assert json.loads((cli_env / "docker" / "config.json").read_text())["auths"] == {}
    assert cli("pull", target).code == 1

    outputs += [r.out + r.err for r in (denied, bad, good, pushed, pulled)]
    outputs.append(caplog.text)
    outputs.append(auth_registry.log_path.read_text())
    for text in outputs:  # …and never credentials
        for secret in secrets:
            assert secret not in text


def test_cli_errors_exit_1_with_a_message(registry: Registry, cli_env: Path) -> None:
    missing = cli("pull", f"{registry.host}/{unique('none')}:v1")
    assert missing.code == 1 and "not found in the registry" in missing.err
    no_host = cli("push", "tiny")
    assert no_host.code == 1 and "names no registry" in no_host.err
    local_only = cli("pull", "tiny")
    assert (
        local_only.code == 1
        and "names no registry and $MODELYARD_DEFAULT_REGISTRY is empty" in local_only.err
    )


def test_a_name_without_a_registry_is_pulled_from_the_default_one(
    registry: Registry,
    image: tuple[Store, str],
    tmp_path: Path,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As `ollama pull llama3.2` (registry.ollama.ai/library/llama3.2), from the registry
    $MODELYARD_DEFAULT_REGISTRY names: Ollama's by default, a mirror of one's own here."""
    store, digest = image
    name = unique("library")  # library/m…: where a name without a namespace lives
    push(store, remote(registry, name), options(tmp_path), source=parse_reference("tiny"))
    short = name.removeprefix("library/")
    monkeypatch.setenv("MODELYARD_DEFAULT_REGISTRY", registry.host)
    pulled = cli("pull", f"{short}:v1")
    assert pulled.code == 0 and pulled.out.strip() == digest, pulled.err
    home_store = Store(cli_env / "home" / "store")
    assert home_store.resolve(parse_reference(f"{short}:v1")).digest == digest, "stored as named"
    assert f"{short}:v1" in cli("list").out


def test_build_from_a_registry_reference_pulls_it(
    registry: Registry, image: tuple[Store, str], tmp_path: Path, cli_env: Path
) -> None:
    store, digest = image
    target = remote(registry, unique("base"))
    push(store, target, options(tmp_path), source=parse_reference("tiny"))
    (tmp_path / "Modelfile").write_text(f"FROM {target}\nSYSTEM Speak like a pirate.\n")
    result = cli("build", "-t", "pirate", "-f", str(tmp_path / "Modelfile"), "--quiet")
    assert result.code == 0, result.err
    home_store = Store(cli_env / "home" / "store")
    assert home_store.resolve(target).digest == digest
    pirate = home_store.read_manifest(home_store.resolve(parse_reference("pirate")).digest)
    assert pirate.layers[0].digest == store.read_manifest(digest).layers[0].digest


def test_tls_is_verified_by_default_and_insecure_skips_it(
    image: tuple[Store, str], tmp_path: Path, cli_env: Path
) -> None:
    cert, key = _self_signed_certificate(tmp_path)
    tls_registry = start_registry(tmp_path / "tls-registry", tls=(cert, key))
    try:
        store, digest = image
        endpoint = Endpoint(tls_registry.host, f"https://{tls_registry.host}", verify_tls=True)
        with (
            RegistrySession(endpoint, retry=FAST_RETRY) as session,
            pytest.raises(RegistryUnavailableError, match="certificate verification failed; use --insecure"),
        ):
            session.request("GET", "/v2/")
        target = remote(tls_registry, unique("tls"))
        push(store, target, options(tmp_path, insecure=True), source=parse_reference("tiny"))
        pulled = cli("pull", "--insecure", "--quiet", str(target))
        assert pulled.code == 0, pulled.err
        assert pulled.out.strip() == digest
        plain = cli("pull", "--quiet", str(target))  # loopback defaults to HTTP: a TLS port refuses it
        assert plain.code == 1 and "it speaks HTTPS" in plain.err and "Pass --insecure" in plain.err
        # A push asks first with a HEAD, whose 400 has no body to say why (a README audit).
        pushed = cli("push", "--quiet", str(target))  # the image the --insecure pull stored
        assert pushed.code == 1 and "it speaks HTTPS" in pushed.err and "Pass --insecure" in pushed.err
    finally:
        tls_registry.stop()


def _self_signed_certificate(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = cx509.Name([cx509.NameAttribute(cx509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            cx509.SubjectAlternativeName([cx509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_oras_py_pulls_what_we_push(registry: Registry, image: tuple[Store, str], tmp_path: Path) -> None:
    """An independent client (oras-py's own `pull`) reads our push and names the files by title."""
    import oras.provider

    store, digest = image
    target = remote(registry, unique("oras"))
    push(store, target, options(tmp_path), source=parse_reference("tiny"))
    client = oras.provider.Registry(hostname=registry.host, insecure=True, auth_backend="basic")
    files = client.pull(target=str(target), outdir=str(tmp_path / "out"))
    by_name = {str(Path(f).relative_to(tmp_path / "out")): Path(f).read_bytes() for f in files}
    layers = store.read_manifest(digest).layers
    assert by_name == {x.annotations[ANNOTATION_TITLE]: store.blobs.read_bytes(x.digest) for x in layers}


def test_a_pull_the_spec_stops_ends_its_download_and_keeps_the_partial(
    registry: Registry, tmp_path: Path
) -> None:
    """The reconciler cancels a pull no model waits on any more (spec/reconciler.py): its thread,
    which a cancel cannot interrupt, stops at its next chunk instead of downloading on to the end;
    the partial blob stays for the next pull to resume."""
    import asyncio
    import threading

    from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
    from modelyard.spec.host import SchedulerHost

    size = 24 << 20
    repository, digest, blob = _big_image(registry, tmp_path, size)
    slow = CountingProxy(int(registry.host.rsplit(":", 1)[1]), rate=6e6)
    store = new_store(tmp_path / "dest")
    partial = partial_path(store.blobs, blob)
    host = SchedulerHost(store, Scheduler(SchedulerSettings(ram_budget=2**34)), options(tmp_path))

    async def scenario() -> None:
        pulling = asyncio.ensure_future(host.pull(str(remote(slow, repository)), digest))
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 4 << 20):
            assert not pulling.done() and time.monotonic() < deadline, "the pull never got going"
            await asyncio.sleep(0.02)
        pulling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pulling

    try:
        asyncio.run(scenario())
        deadline = time.monotonic() + 2  # the rest of the blob would take 3 s more
        while any(t.name.startswith("pull") for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the download went on after its pull was stopped"
            time.sleep(0.02)
    finally:
        slow.stop()
    assert 0 < partial.stat().st_size < size
    assert not store.blobs.exists(blob)
