"""The local store against a real filesystem: atomic blobs, locked index, prune, verify, rm."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.errors import (
    BlobNotFoundError,
    CorruptStoreError,
    DigestMismatchError,
    ImageNotFoundError,
    StoreError,
)
from modelyard.reference import parse_reference
from modelyard.store import Store
from modelyard.store import store as store_module
from modelyard.store.atomic import atomic_write
from modelyard.store.image import CONFIG_MODELPACK, LAYER_SYSTEM, LAYER_WEIGHT, Descriptor, Manifest
from modelyard.store.index import render_index, set_tag
from modelyard.store.store import CorruptBlob


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.init()
    return s


def put_image(store: Store, name: str, *layers: bytes) -> str:
    """A minimal manifest over the given layer bytes, tagged `name`; returns the manifest digest."""
    config = store.blobs.put_bytes(b'{"config":{}}')
    descriptors = []
    for i, data in enumerate(layers):
        info = store.blobs.put_bytes(data)
        descriptors.append(Descriptor(LAYER_WEIGHT if i == 0 else LAYER_SYSTEM, info.digest, info.size))
    manifest = Manifest(Descriptor(CONFIG_MODELPACK, config.digest, config.size), tuple(descriptors))
    digest, _ = store.put_manifest(manifest)
    store.tag(parse_reference(name), digest)
    return digest


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# --- blobs ---------------------------------------------------------------------------------------


def test_layout_files(store: Store) -> None:
    assert (store.root / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    assert (store.root / "index.json").is_file()
    assert (store.root / "blobs" / "sha256").is_dir()


def test_blob_is_content_addressed_and_written_once(store: Store) -> None:
    first = store.blobs.put_bytes(b"hello")
    assert first.digest == sha(b"hello") and first.created and first.size == 5
    inode = store.blobs.path(first.digest).stat().st_ino
    second = store.blobs.put_bytes(b"hello")
    assert not second.created
    assert store.blobs.path(first.digest).stat().st_ino == inode, "an existing blob is never rewritten"
    assert store.blobs.read_bytes(first.digest) == b"hello"


def test_mismatched_bytes_never_enter(store: Store) -> None:
    wrong = sha(b"other")
    with pytest.raises(DigestMismatchError) as info:
        store.blobs.put_bytes(b"hello", expected=wrong)
    assert info.value.expected == wrong and info.value.actual == sha(b"hello")
    assert not store.blobs.exists(wrong) and not store.blobs.exists(sha(b"hello"))
    assert list(store.blobs.ingest_dir.iterdir()) == [], "no partial file is left behind"


def test_failed_stream_leaves_nothing(store: Store) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        raise ConnectionError("network went away")

    with pytest.raises(ConnectionError):
        store.blobs.put_chunks(chunks())
    assert list(store.blobs.digests()) == []
    assert list(store.blobs.ingest_dir.iterdir()) == []


def test_put_file_streams_and_hashes(store: Store, tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)  # spans several read chunks
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    seen: list[int] = []
    info = store.blobs.put_file(src, progress=seen.append)
    assert info.digest == sha(data) and sum(seen) == len(data) and len(seen) > 1
    assert store.blobs.put_file(src, expected=info.digest).created is False


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "sha256:../../x", "sha256:" + "A" * 64, "md5:abc", "sha256:" + "0" * 63]
)
def test_blob_paths_cannot_escape(store: Store, bad: str) -> None:
    with pytest.raises(ValueError):
        store.blobs.path(bad)


# --- tags, history, rollback -------------------------------------------------------------------


def test_tag_resolve_history_rollback(store: Store) -> None:
    d1 = put_image(store, "m", b"w1")
    d2 = put_image(store, "m", b"w2")
    ref = parse_reference("m")
    assert store.resolve(ref).digest == d2
    assert [r.digest for r in store.history(ref)] == [d2, d1]
    assert store.rollback(ref).digest == d1
    assert store.resolve(ref).digest == d1
    assert [r.digest for r in store.history(ref)] == [d1, d2]
    assert store.rollback(ref, to_digest=d2).digest == d2
    assert store.resolve(ref.with_digest(d1)).digest == d1, "an earlier digest stays addressable"


def test_an_unchanged_index_is_parsed_once_and_any_change_is_seen(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_image(store, "m", b"w1")
    parses = []
    real_parse = store_module.parse_index
    monkeypatch.setattr(store_module, "parse_index", lambda value: parses.append(1) or real_parse(value))
    first = store.read_index()  # the bytes put_image's tag wrote: not parsed yet
    assert store.read_index() is first and len(parses) == 1, "the same bytes are parsed once"

    d2 = put_image(Store(store.root), "n", b"w2")  # another process's write
    assert store.resolve(parse_reference("n")).digest == d2

    # An edit in place that keeps the length (an editor, another tool): the file's size is the
    # same, and within one tick of the filesystem's clock its times can be too.
    raw = store.index_path.read_bytes()
    stamp = store.resolve(parse_reference("m")).tagged_at
    edited = stamp.replace(stamp[:4], "1999", 1)
    with store.index_path.open("r+b") as f:
        f.write(raw.replace(stamp.encode(), edited.encode(), 1))
    assert store.resolve(parse_reference("m")).tagged_at == edited


def test_parsed_index_answers_only_for_the_bytes_last_parsed(store: Store) -> None:
    """What a server reads on its event loop: the index without parsing it, or None when it must
    be parsed (elsewhere); never an index older than the file."""
    d1 = put_image(store, "m", b"w1")
    fresh = Store(store.root)
    assert fresh.parsed_index() is None, "nothing parsed yet"
    index = fresh.read_index()
    assert fresh.parsed_index() is index
    assert fresh.resolve(parse_reference("m"), fresh.parsed_index()).digest == d1

    put_image(store, "n", b"w2")  # another process's write
    assert fresh.parsed_index() is None, "the file changed: parse it again"
    assert fresh.read_index().get("library/n:latest") is not None
    assert fresh.parsed_index() is not None

    store.index_path.write_bytes(b"")  # a truncated index is not an empty one
    assert fresh.parsed_index() is None
    with pytest.raises(CorruptStoreError):
        fresh.read_index()


def test_resolve_unknown_says_what_exists(store: Store) -> None:
    put_image(store, "m:v1", b"w")
    with pytest.raises(ImageNotFoundError, match="library/m:v1"):
        store.resolve(parse_reference("m:v2"))
    with pytest.raises(ImageNotFoundError):
        store.resolve(parse_reference("m@sha256:" + "1" * 64))
    # The ID `list` shows, as a Docker user types it (a CLI review): named, not guessed.
    image_id = put_image(store, "other", b"o").removeprefix("sha256:")[:12]
    with pytest.raises(ImageNotFoundError, match=f"{image_id} is the ID of other:latest; images go by name"):
        store.resolve(parse_reference(image_id))
    with pytest.raises(ImageNotFoundError, match="see `modelyard list`"):
        store.resolve(parse_reference("0" * 12 if not image_id.startswith("0") else "f" * 12))


@pytest.mark.parametrize(
    ("removing", "copy", "losing"),
    [
        pytest.param(["base"], False, ["chat", "other"], id="the-base-image"),
        pytest.param(["tone"], False, ["chat"], id="an-adapter-image"),
        pytest.param(["base"], True, [], id="a-copy-keeps-the-digest"),
        pytest.param(["unrelated"], False, [], id="another-image"),
        pytest.param(["never-built"], False, [], id="not-here-remove-says-so"),
    ],
)
def test_the_names_a_removal_leaves_without_an_image(
    store: Store, removing: list[str], copy: bool, losing: list[str]
) -> None:
    """What `rm` and DELETE /api/delete refuse for a spec: a model served from its image and its
    adapters' (a diff review: an adapter image was removed from under its model)."""
    base = put_image(store, "base", b"w")
    tone = put_image(store, "tone", b"w", b"adapter")
    put_image(store, "unrelated", b"u")
    if copy:
        store.tag(parse_reference("copy"), base)
    images = {
        "chat": [parse_reference("base").with_digest(base), parse_reference("tone").with_digest(tone)],
        "other": [parse_reference("base").with_digest(base)],
    }
    assert store.left_without_image(images, [parse_reference(r) for r in removing]) == losing


def test_a_tag_is_found_whatever_its_case_when_only_one_matches(store: Store) -> None:
    """As Ollama matches names (`gemma:Latest` finds `gemma:latest`); tags stay case-sensitive in
    the store, as OCI has them, so two that differ only by case (another tool may write both) are
    both kept and neither guessed."""
    only = put_image(store, "m:latest", b"w")
    assert store.resolve(parse_reference("m:Latest")).digest == only
    put_image(store, "elsewhere", b"other")
    record = replace(store.resolve(parse_reference("elsewhere")), name="library/m:LATEST")
    atomic_write(store.index_path, render_index(set_tag(store.read_index(), record, 20)))
    assert store.resolve(parse_reference("m:LATEST")).digest != only  # exact first
    with pytest.raises(ImageNotFoundError):
        store.resolve(parse_reference("m:Latest"))  # two match: none is guessed
    store.remove([parse_reference("m:LATEST")])
    [plan] = store.remove([parse_reference("m:Latest")])  # rm finds what resolve finds
    assert only in plan.blobs


def test_tagging_a_name_that_differs_from_a_tag_only_by_case_moves_that_tag(store: Store) -> None:
    """An audit: `tag x x:TAG_Upper` beside x:tag_upper made a second spelling, and every command
    then found the name ambiguous. As Ollama's create (getExistingName): the tag as it is spelled."""
    first = put_image(store, "m:tag_upper", b"w")
    second = put_image(store, "m:TAG_Upper", b"other")
    assert [r.name for r in store.images()] == ["library/m:tag_upper"]
    assert store.resolve(parse_reference("m:TAG_UPPER")).digest == second
    assert [r.digest for r in store.history(parse_reference("m:tag_upper"))] == [second, first]
    # history and rollback match the name as tag and resolve do (found in review: exactly only).
    assert [r.digest for r in store.history(parse_reference("m:TAG_UPPER"))] == [second, first]
    assert store.rollback(parse_reference("m:Tag_Upper")).digest == first
    assert [r.name for r in store.images()] == ["library/m:tag_upper"]


def test_tag_refuses_manifest_with_missing_blob(store: Store) -> None:
    missing = Descriptor(LAYER_WEIGHT, sha(b"never stored"), 12)
    config = store.blobs.put_bytes(b"{}")
    digest, _ = store.put_manifest(Manifest(Descriptor(CONFIG_MODELPACK, config.digest, 2), (missing,)))
    with pytest.raises(BlobNotFoundError):
        store.tag(parse_reference("broken"), digest)
    assert store.images() == []


def test_rollback_without_history_is_a_clear_error(store: Store) -> None:
    put_image(store, "m", b"w")
    with pytest.raises(StoreError, match="no earlier digest"):
        store.rollback(parse_reference("m"))


def _tag_many(root: str, worker: int, count: int) -> None:
    s = Store(Path(root))
    for i in range(count):
        data = f"{worker}-{i}".encode()
        info = s.blobs.put_bytes(data)
        config = s.blobs.put_bytes(b"{}")
        digest, _ = s.put_manifest(
            Manifest(
                Descriptor(CONFIG_MODELPACK, config.digest, 2),
                (Descriptor(LAYER_WEIGHT, info.digest, info.size),),
            )
        )
        s.tag(parse_reference(f"w{worker}/m{i}"), digest)


def test_concurrent_tagging_from_processes_loses_nothing(store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_tag_many, args=(str(store.root), w, 15)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    names = {r.name for r in store.images()}
    assert names == {f"w{w}/m{i}:latest" for w in range(4) for i in range(15)}


# --- rm, prune, verify -------------------------------------------------------------------------


def test_rm_deletes_only_unshared_blobs(store: Store) -> None:
    put_image(store, "a", b"shared-weights", b"system a")
    put_image(store, "b", b"shared-weights", b"system b")
    [plan] = store.remove([parse_reference("a")])
    assert sha(b"system a") in plan.blobs
    assert sha(b"shared-weights") not in plan.blobs
    assert store.blobs.exists(sha(b"shared-weights")) and not store.blobs.exists(sha(b"system a"))
    assert store.verify().ok
    with pytest.raises(ImageNotFoundError):
        store.remove([parse_reference("a")])


def test_a_damaged_manifest_blocks_neither_rm_nor_prune(store: Store) -> None:
    """Found: one manifest that no longer parsed made every rm and every prune fail."""
    damaged = put_image(store, "damaged", b"its weights")
    put_image(store, "other", b"other weights")
    put_image(store, "gone", b"gone weights")
    path = store.blobs.path(damaged)
    path.chmod(0o644)
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])  # cut: no longer JSON, still naming some blobs
    named = {d for d in (sha(b"its weights"),) if d.encode() in text[: len(text) // 2]}
    [plan] = store.remove([parse_reference("gone")])
    assert sha(b"gone weights") in plan.blobs and store.blobs.exists(sha(b"other weights"))
    assert all(store.blobs.exists(d) for d in named), "what the damaged manifest still names stays"
    store.prune(grace_s=0)
    [plan] = store.remove([parse_reference("damaged")])  # the damaged image itself can go too
    assert damaged in plan.blobs


def test_a_manifest_that_cannot_be_read_deletes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike a damaged one: a disk error says nothing of what the image needs, so no guess."""
    unreadable = put_image(store, "unreadable", b"its weights")
    put_image(store, "gone", b"gone weights")
    read = store.blobs.read_bytes

    def failing(digest: str, *args: object) -> bytes:
        if digest == unreadable:
            raise OSError(errno.EIO, "Input/output error")
        return read(digest, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store.blobs, "read_bytes", failing)
    with pytest.raises(OSError):
        store.prune(grace_s=0)
    with pytest.raises(OSError):
        store.remove([parse_reference("gone")])
    assert store.blobs.exists(sha(b"its weights")) and store.blobs.exists(sha(b"gone weights"))


def test_an_image_pulled_by_digest_is_removed_by_that_reference(store: Store) -> None:
    """A pull by digest tags `name@sha256:…`; rm of that very reference removed nothing."""
    digest = put_image(store, "team/m:v1", b"w")
    pinned = parse_reference(f"team/m@{digest}")
    store.tag(pinned, digest)
    store.remove([parse_reference("team/m:v1")])
    [plan] = store.remove([pinned])
    assert digest in plan.blobs and not store.images()
    # Beside its tag in one rm: both go. `name:tag@sha256:…` is the tag, while it points there.
    digest = put_image(store, "team/m:v1", b"w")
    store.tag(pinned, digest)
    store.remove([parse_reference(f"team/m:v1@{digest}"), pinned])
    assert not store.images(), "both entries went"
    # One entry named twice, in two cases: removed once, and the rm succeeds.
    put_image(store, "gemma:latest", b"g")
    store.remove([parse_reference("gemma:latest"), parse_reference("gemma:LATEST")])
    assert not store.images()


def test_the_names_rm_would_remove_are_those_it_removes(store: Store) -> None:
    """What rm tells a running server to unload: found in review, rm of `m@sha256:X` unloaded another
    tag of X that stayed, and kept the removed one loaded."""
    digest = put_image(store, "team/m:a1", b"w")
    store.tag(parse_reference("team/m:latest"), digest)
    by_digest = parse_reference(f"team/m@{digest}")
    assert store.names_to_remove([by_digest]) == ["team/m:latest"]
    [plan] = store.remove([by_digest], dry_run=True)
    assert not plan.blobs, "team/m:a1 still needs them"


def test_rm_dry_run_changes_nothing(store: Store) -> None:
    put_image(store, "a", b"w")
    before = files_under(store.root)
    [plan] = store.remove([parse_reference("a")], dry_run=True)
    assert plan.blobs and files_under(store.root) == before


def test_dry_runs_take_no_lock(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """They only read, so they work on a store this user may not write (a CLI review: the lock
    file's creation failed on a read-only one)."""
    put_image(store, "a", b"w")

    def no_lock() -> None:
        raise AssertionError("a dry run took the store's write lock")

    monkeypatch.setattr(store, "locked", no_lock)
    [plan] = store.remove([parse_reference("a")], dry_run=True)
    assert plan.blobs
    assert store.prune(grace_s=0, dry_run=True).blobs == ()
    with pytest.raises(AssertionError, match="write lock"):
        store.prune(grace_s=0)


def test_rm_of_several_names_plans_each_after_the_ones_before() -> None:
    """Two names sharing weights: removing both frees the weights with the second, dry run or not."""
    for dry_run in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "s")
            put_image(store, "a", b"shared-weights", b"system a")
            put_image(store, "b", b"shared-weights", b"system b")
            before = files_under(store.root)
            first, second = store.remove([parse_reference("a"), parse_reference("b")], dry_run=dry_run)
            assert sha(b"shared-weights") not in first.blobs and sha(b"shared-weights") in second.blobs
            assert (files_under(store.root) == before) is dry_run
            assert store.blobs.exists(sha(b"shared-weights")) is dry_run


def test_rm_is_all_or_nothing_and_takes_a_digest_only_while_the_tag_points_at_it(store: Store) -> None:
    put_image(store, "a", b"w", b"system a")
    put_image(store, "b", b"w", b"system b")
    before = files_under(store.root)
    with pytest.raises(ImageNotFoundError):
        store.remove([parse_reference("a"), parse_reference("missing")])
    b = store.resolve(parse_reference("b")).digest
    with pytest.raises(ImageNotFoundError, match="is not that image"):
        store.remove([parse_reference(f"a@{b}")])
    assert files_under(store.root) == before
    store.remove([parse_reference(f"b@{b}")])
    assert {r.name for r in store.images()} == {"library/a:latest"}
    first, again = store.remove([parse_reference("a"), parse_reference("a:latest")])  # named twice
    assert first.blobs and again.blobs == () and store.images() == []


def test_prune_respects_references_and_grace(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "s", clock=clock)
    put_image(store, "keep", b"live")
    orphan = store.blobs.put_bytes(b"orphan").digest
    os.utime(store.blobs.path(orphan), (clock.now - 7200, clock.now - 7200))
    young = store.blobs.put_bytes(b"young").digest
    os.utime(store.blobs.path(young), (clock.now - 60, clock.now - 60))
    store.blobs.ingest_dir.mkdir(exist_ok=True)
    stale = store.blobs.ingest_dir / "abc.123.partial"
    stale.write_bytes(b"half")
    os.utime(stale, (clock.now - 7200, clock.now - 7200))
    lock = store.blobs.ingest_dir / "def.download.partial.lock"  # left by a pull that was killed
    lock.touch()
    os.utime(lock, (clock.now - 7200, clock.now - 7200))
    # A download under way: its lock is old (holding a lock does not touch it), its partial is not.
    busy = store.blobs.ingest_dir / "ghi.download.partial"
    busy.write_bytes(b"receiving")
    busy_lock = store.blobs.ingest_dir / "ghi.download.partial.lock"
    busy_lock.touch()
    os.utime(busy_lock, (clock.now - 7200, clock.now - 7200))
    os.utime(busy, (clock.now - 10, clock.now - 10))

    assert store.prune(grace_s=3600, dry_run=True).blobs == (orphan,)
    plan = store.prune(grace_s=3600)
    assert plan.blobs == (orphan,) and set(plan.partials) == {stale, lock}
    assert not store.blobs.exists(orphan) and store.blobs.exists(young) and not stale.exists()
    assert not lock.exists() and busy.exists() and busy_lock.exists()
    assert store.blobs.exists(sha(b"live"))
    assert store.verify().ok


def test_prune_with_no_grace_leaves_the_files_of_writers_at_work(store: Store) -> None:
    """A store review: `prune --grace 0`, which verify suggested for "interrupted" partial files,
    removed a live pull's file and lock (it failed, blaming the registry) and live builds' files.
    A writer at work holds its flock; only what writers left behind goes."""
    from filelock import FileLock

    store.blobs.ingest_dir.mkdir(exist_ok=True)
    left = store.blobs.ingest_dir / "abc.123.partial"  # a killed build's
    left.write_bytes(b"half")
    downloading = store.blobs.ingest_dir / "def.download.partial"
    downloading.write_bytes(b"receiving")
    download_lock = FileLock(str(downloading) + ".lock")
    with download_lock, store.blobs.new_partial("new") as (building, out):
        out.write(b"being written")
        plan = store.prune(grace_s=0)
        assert plan.partials == (left,)
        assert building.exists() and downloading.exists() and Path(download_lock.lock_file).exists()
    assert set(store.prune(grace_s=0).partials) == {downloading, Path(download_lock.lock_file)}
    assert not building.exists(), "a partial not committed goes with its block"
    assert list(store.blobs.ingest_dir.iterdir()) == []


def test_prune_removes_what_a_process_killed_while_writing_the_index_left(store: Store) -> None:
    """A store review: a kill just before the rename left `.index.json.*.tmp` for ever."""
    put_image(store, "keep", b"live")
    left = store.root / ".index.json.0123456789ab.tmp"
    left.write_bytes(b'{"half": ')
    assert store.prune(grace_s=3600, dry_run=True).partials == (left,) and left.exists()
    assert store.prune(grace_s=3600).partials == (left,)
    assert not left.exists() and store.images()[0].name == "library/keep:latest" and store.verify().ok


def test_prune_removes_the_upload_sessions_of_pushes_left_past_the_grace(tmp_path: Path) -> None:
    """An interrupted push keeps its session for the next push to resume (registry/journal.py);
    one untouched past the grace, and a write of one cut short, go with the other leftovers."""
    clock = Clock()
    store = Store(tmp_path / "s", clock=clock)
    store.blobs.ingest_dir.mkdir(parents=True)
    old = store.blobs.ingest_dir / "0123abcd.upload.json"
    cut = store.blobs.ingest_dir / "4567abcd.upload.json.4242.tmp"
    recent = store.blobs.ingest_dir / "89abcdef.upload.json"
    for path, age in ((old, 7200), (cut, 7200), (recent, 60)):
        path.write_text('{"url": "http://127.0.0.1:5000/v2/m/blobs/uploads/x"}')
        os.utime(path, (clock.now - age, clock.now - age))
    assert set(store.prune(grace_s=3600).partials) == {old, cut}
    assert not old.exists() and not cut.exists() and recent.exists()


def test_a_folder_in_place_of_a_manifest_deletes_nothing_it_may_need(store: Store) -> None:
    """A diff review: read as absent, such a manifest kept none of its blobs, and `rm` of another
    image deleted the weights it shared."""
    one = put_image(store, "one", b"shared weights", b"one")
    put_image(store, "two", b"shared weights", b"two")
    manifest = store.blobs.path(one)
    manifest.unlink()
    manifest.mkdir()
    with pytest.raises(CorruptStoreError, match="nothing was deleted"):
        store.remove([parse_reference("two")])
    with pytest.raises(CorruptStoreError):
        store.prune(grace_s=0)
    assert store.blobs.exists(sha(b"shared weights")) and len(store.images()) == 2


def test_prune_keeps_history_for_rollback(store: Store) -> None:
    put_image(store, "m", b"old")
    put_image(store, "m", b"new")
    store.prune(grace_s=0)
    assert store.blobs.exists(sha(b"old"))
    store.rollback(parse_reference("m"))
    assert store.verify().ok


def test_verify_reports_corrupt_and_missing(store: Store) -> None:
    put_image(store, "m", b"weights", b"system")
    path = store.blobs.path(sha(b"weights"))
    path.write_bytes(b"weightz")
    store.blobs.path(sha(b"system")).unlink()
    report = store.verify()
    assert report.corrupt == (CorruptBlob(sha(b"weights"), sha(b"weightz"), ("library/m:latest",)),)
    assert report.missing == (("library/m:latest", sha(b"system")),)
    assert not report.ok


def test_verify_reports_a_manifest_that_misstates_a_blobs_size(store: Store) -> None:
    """A registry review: pulls kept manifests that named a blob the store already had under
    another size (fixed there); verify said ok on such a store, while `show` refused the image."""
    config = store.blobs.put_bytes(b'{"config":{}}')
    weights = store.blobs.put_bytes(b"weights")
    manifest = Manifest(
        Descriptor(CONFIG_MODELPACK, config.digest, config.size),
        (Descriptor(LAYER_WEIGHT, weights.digest, 2**62),),
    )
    store.tag(parse_reference("m"), store.put_manifest(manifest)[0])
    report = store.verify()
    assert not report.ok and not report.corrupt and not report.missing
    assert report.unreadable == (
        (
            "library/m:latest",
            f"its manifest says blob {weights.digest} is 4,611,686,018,427,387,904 bytes, but it is 7; "
            "remove the image (`modelyard rm`)",
        ),
    )


@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
def test_another_tools_image_index_keeps_its_manifests_and_blobs_and_breaks_nothing(
    store: Store, named: bool
) -> None:
    """`skopeo copy --all` leaves an entry pointing at an OCI image index, with or without a name:
    rm, prune and verify must work beside it and keep what it refers to; named, it is no model
    image, and rm removes it with what only it refers to."""
    put_image(store, "ours", b"our-weights")
    layer = store.blobs.put_bytes(b"their layer").digest
    config = store.blobs.put_bytes(b"{}").digest
    child = store.blobs.put_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config,
                    "size": 2,
                },
                "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 11}],
            }
        ).encode()
    ).digest
    image_index = store.blobs.put_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child, "size": 1}
                ],
            }
        ).encode()
    )
    raw = json.loads(store.index_path.read_bytes())
    entry = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": image_index.digest,
        "size": image_index.size,
    }
    if named:
        entry["annotations"] = {"org.opencontainers.image.ref.name": "multi"}
    raw["manifests"].append(entry)
    store.index_path.write_bytes(json.dumps(raw).encode())

    put_image(store, "gone", b"gone-weights")
    store.remove([parse_reference("gone")])
    store.prune(grace_s=0)
    theirs = (image_index.digest, child, config, layer)
    for digest in theirs:
        assert store.blobs.exists(digest), digest
    assert store.verify().ok and image_index.digest in store.index_path.read_text()
    if named:
        with pytest.raises(ImageNotFoundError, match="not a model image"):
            store.resolve(parse_reference("multi"))
        store.remove([parse_reference("multi")])
        assert not any(store.blobs.exists(digest) for digest in theirs)
        assert store.resolve(parse_reference("ours")) and store.verify().ok


def test_a_private_file_is_never_readable_by_others_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the temporary file of a credentials file was 0644 until renamed."""
    from modelyard.store import atomic

    modes: list[int] = []
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        modes.append(os.fstat(fd).st_mode & 0o777)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", noting_fsync)
    atomic.atomic_write(tmp_path / "config.json", b'{"auths": {}}', mode=0o600)
    assert modes and modes[0] == 0o600, [oct(m) for m in modes]
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o600
