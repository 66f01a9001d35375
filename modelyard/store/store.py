"""The local store: an OCI image layout that the CLI and the daemon share.

    <root>/oci-layout          {"imageLayoutVersion": "1.0.0"}
    <root>/index.json          tags (ref.name annotations) and their history
    <root>/index.json.lock     held while index.json is rewritten
    <root>/blobs/sha256/<hex>  manifests, configs, layers
    <root>/ingest/*.partial    writes in progress (removed by prune once stale)
    <root>/ingest/*.upload.json   upload sessions of interrupted pushes (prune: the same)

Invariant: an index entry never names a manifest whose blobs are missing. Tagging checks the
blobs under the index lock; rm and prune delete blobs under the same lock, after the index no
longer needs them.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from modelyard.errors import (
    BlobNotFoundError,
    CorruptStoreError,
    ImageNotFoundError,
    StoreError,
)
from modelyard.reference import Reference, parse_reference
from modelyard.store.atomic import atomic_write, fsync_dir
from modelyard.store.blobs import LOCK_SUFFIX, UNREADABLE_HINT, BlobStore, hash_file
from modelyard.store.image import (
    LAYER_ADAPTER,
    LAYER_LICENSE,
    LAYER_MESSAGES,
    LAYER_MODELFILE,
    LAYER_PARAMS,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MAX_MANIFEST_BYTES,
    MAX_TEXT_LAYER_BYTES,
    Descriptor,
    Manifest,
    ManifestFormatError,
    is_digest,
    parse_manifest,
)
from modelyard.store.index import (
    Index,
    TagRecord,
    parse_index,
    remove_tag,
    render_index,
    rollback_target,
    set_tag,
    without_history,
)

LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
# Unreferenced blobs and partial files younger than this are left alone by prune: a build or a
# pull may be about to reference them.
DEFAULT_PRUNE_GRACE_S = 3600.0
_NAMED_DIGEST = re.compile(rb"sha256:[0-9a-f]{64}")  # what a damaged manifest still names

Clock = Callable[[], float]


@dataclass(frozen=True)
class ModelParts:
    """What an image holds, read back from its layers."""

    weights: Descriptor | None
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    adapters: tuple[Descriptor, ...] = ()
    licenses: tuple[str, ...] = ()
    modelfile: str | None = None


@dataclass(frozen=True)
class PrunePlan:
    blobs: tuple[str, ...]  # digests to delete
    partials: tuple[Path, ...]
    bytes_freed: int


@dataclass(frozen=True)
class CorruptBlob:
    digest: str  # what its name says
    actual: str  # what its bytes hash to
    needed_by: tuple[str, ...]  # the images (stored names) whose manifest, config or layer it is


@dataclass(frozen=True)
class VerifyReport:
    blobs_checked: int
    corrupt: tuple[CorruptBlob, ...]
    # (image name, missing digest); an image name is NAME@DIGEST for an earlier image of a tag
    missing: tuple[tuple[str, str], ...]
    unreadable: tuple[tuple[str, str], ...]  # (image name, reason)
    removed: bool = False  # the corrupt blobs were deleted, for a build or pull to bring again
    index_problem: str | None = None  # index.json itself cannot be read
    unreadable_blobs: tuple[tuple[str, str], ...] = ()  # (digest, why): not hashed
    earlier_images: frozenset[str] = frozenset()  # the names above that are a tag's earlier image

    @property
    def ok(self) -> bool:
        return not (
            self.corrupt or self.missing or self.unreadable or self.index_problem or self.unreadable_blobs
        )


def utc_timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, root: Path, *, history_limit: int = 20, clock: Clock = time.time) -> None:
        self.root = root
        self.history_limit = history_limit
        self.clock = clock
        self.blobs = BlobStore(root)
        self.index_path = root / "index.json"
        self._lock = FileLock(str(root / "index.json.lock"))
        # The bytes of index.json last parsed, and what they parsed to: every request a server
        # takes resolves its model's name through the index, and parsing is what costs (50 images
        # with 20 earlier digests each: 17 ms to parse, 25 µs to read). Keyed by the bytes
        # themselves, not the file's times, which a filesystem may keep to a clock tick.
        self._parsed: tuple[bytes, Index] | None = None

    # --- layout and index -------------------------------------------------------------------

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs.dir.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            atomic_write(layout, LAYOUT_VERSION)
        if not self.index_path.exists():
            with self._lock:
                if not self.index_path.exists():
                    atomic_write(self.index_path, render_index(Index()))

    def read_index(self) -> Index:
        raw = self._index_bytes()
        if raw is None:
            return Index()
        parsed = self._parsed
        if parsed is not None and parsed[0] == raw:
            return parsed[1]
        try:
            index = parse_index(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ManifestFormatError) as exc:
            raise CorruptStoreError(
                self.index_path,
                f"cannot read the index: {exc}",
                "It names every image in the store: repair its JSON or restore it from a backup "
                "(the blobs are untouched; do not prune meanwhile, as nothing would look referenced).",
            ) from None
        self._parsed = (raw, index)  # one assignment: threads that read meanwhile see either pair
        return index

    def parsed_index(self) -> Index | None:
        """The index if the file holds the bytes last parsed, else None: one read of the file and no
        parsing (which takes milliseconds for a large store), for callers that must not wait on it."""
        parsed = self._parsed
        if parsed is not None and parsed[0] == self._index_bytes():
            return parsed[1]
        return None

    def _index_bytes(self) -> bytes | None:
        """The index file's bytes; None when there is none (a store with no image yet)."""
        try:
            return self.index_path.read_bytes()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.init()
        with self._lock:
            yield

    # --- manifests and tags -------------------------------------------------------------------

    def put_manifest(self, manifest: Manifest | bytes) -> tuple[str, int]:
        data = manifest.to_bytes() if isinstance(manifest, Manifest) else manifest
        info = self.blobs.put_bytes(data)
        return info.digest, info.size

    def read_manifest(self, digest: str) -> Manifest:
        try:
            # Bounded: an index.json edited to name a 4 GB weights blob was read whole by `list`.
            data = self.blobs.read_bytes(digest, MAX_MANIFEST_BYTES)
        except ValueError as exc:
            raise CorruptStoreError(self.blobs.path(digest), f"not a manifest: {exc}") from None
        try:
            return parse_manifest(data)
        except ManifestFormatError as exc:
            raise CorruptStoreError(self.blobs.path(digest), str(exc)) from None

    def tag(self, ref: Reference, digest: str) -> TagRecord:
        """Point `ref` at a stored manifest. Its blobs must all be present."""
        with self.locked():
            manifest = self.read_manifest(digest)
            for blob in manifest.blob_digests():
                if not self.blobs.exists(blob):
                    raise BlobNotFoundError(blob, str(ref))
            index = self.read_index()
            record = TagRecord(
                # A name that differs from a tag only by case is that tag (Ollama's
                # getExistingName): a second spelling made both ambiguous to every command.
                name=_tag_in(index, str(ref)),
                digest=digest,
                size=self.blobs.size(digest),
                tagged_at=utc_timestamp(self.clock()),
                media_type=manifest.media_type,
                artifact_type=manifest.artifact_type,
            )
            new = set_tag(index, record, self.history_limit)
            atomic_write(self.index_path, render_index(new))
            return record

    def resolve(self, ref: Reference, index: Index | None = None) -> TagRecord:
        """The index entry a reference names: by tag, or by digest when one is given; in `index`
        when the caller has read it (parsed_index), else in the index as it is now."""
        index = self.read_index() if index is None else index
        if ref.digest is not None:
            # A pull by digest tags `name@sha256:…`; the image it stored may have another digest
            # (an Ollama or Docker manifest converted to ModelPack), yet that reference finds it.
            pinned = index.get(str(replace(ref, tag=None)))
            if pinned is not None:
                return pinned
            for record in (*index.tags, *index.history):
                if record.digest == ref.digest and _repository_name(record.name) == ref.name:
                    return record
            raise ImageNotFoundError(str(ref), "no image of that name has this digest")
        tagged = index.get(_tag_in(index, str(ref)))
        if tagged is None:
            raise ImageNotFoundError(ref.short(), _did_you_mean(index, ref))
        if not tagged.is_image_manifest:
            raise ImageNotFoundError(
                ref.short(),
                f"that name holds another tool's {tagged.media_type}, not a model image "
                f"(`modelyard rm {ref.short()}` removes it)",
            )
        return tagged

    def images(self) -> list[TagRecord]:
        return list(self.read_index().tags)

    def history(self, ref: Reference) -> list[TagRecord]:
        index = self.read_index()
        name = _tag_in(index, str(ref))  # as resolve and tag match it: whatever its case
        current = index.get(name)
        if current is None and not index.history_of(name):
            raise ImageNotFoundError(ref.short())
        return ([current] if current else []) + index.history_of(name)

    def rollback(self, ref: Reference, to_digest: str | None = None) -> TagRecord:
        with self.locked():
            index = self.read_index()
            name = _tag_in(index, str(ref))
            if index.get(name) is None:
                raise ImageNotFoundError(ref.short())
            try:
                target = rollback_target(index, name, to_digest)
            except LookupError as exc:
                raise StoreError(str(exc.args[0])) from None
            return self.tag(ref, target.digest)  # the lock is reentrant

    # --- reading an image -------------------------------------------------------------------

    @staticmethod
    @contextlib.contextmanager
    def reading(ref: str) -> Iterator[None]:
        """Reads of the image `ref` inside: a blob found missing names it, and says what to do (a
        README review: `show`, `run` and /api/generate said only which digest was gone)."""
        try:
            yield
        except BlobNotFoundError as exc:
            if exc.ref:
                raise
            hint = "the store is damaged: `modelyard verify` says what is wrong and how to repair it"
            raise BlobNotFoundError(exc.digest, ref, hint) from None

    def read_config(self, manifest: Manifest) -> dict[str, Any]:
        try:
            value = json.loads(self.blobs.read_bytes(manifest.config.digest, MAX_TEXT_LAYER_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise CorruptStoreError(self.blobs.path(manifest.config.digest), f"bad config: {exc}") from None
        return value if isinstance(value, dict) else {}

    def read_text(self, layer: Descriptor) -> str:
        try:
            return self.blobs.read_bytes(layer.digest, MAX_TEXT_LAYER_BYTES).decode("utf-8")
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptStoreError(self.blobs.path(layer.digest), f"{layer.media_type}: {exc}") from None

    def read_parts(self, manifest: Manifest) -> ModelParts:
        def text(media_type: str) -> str | None:
            layers = manifest.layers_of(media_type)
            return self.read_text(layers[-1]) if layers else None

        def loaded(media_type: str, kind: type) -> Any:
            raw = text(media_type)
            if raw is None:
                return kind()
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CorruptStoreError(self.root, f"{media_type} layer is not JSON: {exc}") from None
            if not isinstance(value, kind):
                raise CorruptStoreError(self.root, f"{media_type} layer is not a JSON {kind.__name__}")
            return value

        weights = manifest.layers_of(LAYER_WEIGHT)
        return ModelParts(
            weights=weights[0] if weights else None,
            template=text(LAYER_TEMPLATE),
            system=text(LAYER_SYSTEM),
            params=loaded(LAYER_PARAMS, dict),
            messages=loaded(LAYER_MESSAGES, list),
            adapters=tuple(manifest.layers_of(LAYER_ADAPTER)),
            licenses=tuple(self.read_text(layer) for layer in manifest.layers_of(LAYER_LICENSE)),
            modelfile=text(LAYER_MODELFILE),
        )

    # --- removal, prune, verify ---------------------------------------------------------------

    def remove(self, refs: Sequence[Reference], *, dry_run: bool = False) -> list[PrunePlan]:
        """Untag images, in order, and delete the blobs nothing else needs: all of them or, when one
        is not here, none. Returns what each removal frees (or would), given the ones before it.
        `name@sha256:…` removes the tag `name` only while it points at that digest. A dry run
        takes no lock: it reads only, and works on a store it may not write (a CLI review)."""
        with self.locked() if not dry_run else contextlib.nullcontext():
            index = original = self.read_index()
            plans = []
            removed: set[str] = set()
            for ref in refs:
                # Named as the index spells it before any removal, so that one entry named twice
                # (`rm a a:latest`, `rm m:latest m:LATEST`) is removed once.
                tag = self._removable_tag(original, ref)
                if tag in removed:
                    plans.append(PrunePlan((), (), 0))
                    continue
                remaining = remove_tag(index, tag)
                plans.append(self._unreferenced(index, remaining))
                removed.add(tag)
                index = remaining
            if not dry_run:
                atomic_write(self.index_path, render_index(index))
                for plan in plans:
                    self._delete(plan)
            return plans

    def names_to_remove(self, refs: Sequence[Reference]) -> list[str]:
        """The index entries `remove(refs)` would remove, as the index spells them (what a server
        lists them as), once each; raises as remove does for a name not here."""
        index = self.read_index()
        return list(dict.fromkeys(self._removable_tag(index, ref) for ref in refs))

    def left_without_image(
        self, images: Mapping[str, Sequence[Reference]], removing: Sequence[Reference]
    ) -> list[str]:
        """Of `images` (a name → the images it serves from, each at a digest: a model and its
        adapters), the names one of whose images is in the store now and would not be once
        `removing` are removed: under its own name or another (a copy keeps it). Refs not here
        count as nothing removed: `remove` says so."""
        before = self.read_index()
        try:
            after = before
            for tag in [self._removable_tag(before, ref) for ref in removing]:
                after = remove_tag(after, tag)
        except ImageNotFoundError:
            return []
        digests = {name: [image.digest or "" for image in needed] for name, needed in images.items()}
        return [
            name
            for name, held in digests.items()
            if any(before.holder(d) and not after.holder(d) for d in held)
        ]

    @staticmethod
    def _removable_tag(index: Index, ref: Reference) -> str:
        if ref.digest is not None and ref.tag is None and index.get(str(ref)) is not None:
            return str(ref)  # what a pull by digest tagged: `name@sha256:…` itself
        tag = _tag_in(index, str(ref.without_digest()))
        record = index.get(tag)
        if record is None and not index.history_of(tag):
            raise ImageNotFoundError(ref.short(), _did_you_mean(index, ref))
        if ref.digest is not None and (record is None or record.digest != ref.digest):
            now = f"it points at {record.digest}" if record else "it points at nothing now"
            raise ImageNotFoundError(ref.short(), f"{ref.without_digest().short()} is not that image ({now})")
        return tag

    def _unreferenced(self, before: Index, after: Index) -> PrunePlan:
        """Blobs that `before` needs and `after` does not (no grace: the caller just released them)."""
        needed_after = self._live_blobs(after)
        candidates = self._live_blobs(before) - needed_after
        present = [d for d in sorted(candidates) if self.blobs.exists(d)]
        return PrunePlan(tuple(present), (), sum(self.blobs.size(d) for d in present))

    def remove_unreferenced(self, digests: list[str]) -> None:
        """Delete the given blobs that no image needs (a failed build's leftovers)."""
        with self.locked():
            live = self._live_blobs(self.read_index())
            for digest in digests:
                if digest not in live:
                    self.blobs.remove(digest)

    def _live_blobs(self, index: Index) -> set[str]:
        live: set[str] = set()
        for record in (*index.tags, *index.history):
            if not record.is_image_manifest:  # a named image index (`skopeo copy --all`)
                live |= self._foreign_closure(record.digest)
                continue
            live.add(record.digest)
            if self.blobs.path(record.digest).exists():  # a folder in its place too: read, refused
                try:
                    live.update(self.read_manifest(record.digest).blob_digests())
                except CorruptStoreError:
                    # Read, but damaged (verify reports it): it must not block every rm and prune,
                    # and whatever it still names stays. One that cannot be read at all raises:
                    # nothing may be deleted on a guess.
                    live |= self._digests_named_in(record.digest)
        for entry in index.foreign:
            live |= self._foreign_closure(entry["digest"])
        return live

    def _digests_named_in(self, digest: str) -> set[str]:
        path = self.blobs.path(digest)
        try:
            with path.open("rb") as f:  # a damaged one may be any size: its start
                return {m.decode() for m in _NAMED_DIGEST.findall(f.read(MAX_MANIFEST_BYTES))}
        except OSError as exc:
            raise CorruptStoreError(
                path,
                f"an image's manifest cannot be read ({exc.strerror or exc}), so what it needs is "
                "unknown and nothing was deleted",
                UNREADABLE_HINT,
            ) from None

    def _foreign_closure(self, digest: str) -> set[str]:
        """What another tool's entry keeps alive: its manifest and what it refers to, through image
        indexes too (`skopeo copy --all`). Read leniently: their formats are not ours to judge."""
        live: set[str] = set()
        pending = [digest]
        while pending:
            current = pending.pop()
            if current in live or not is_digest(current):
                continue
            live.add(current)
            try:
                value = json.loads(self.blobs.read_bytes(current, MAX_MANIFEST_BYTES))
            except (OSError, ValueError, StoreError):
                continue  # absent, large or not JSON: a blob, kept, with nothing below it
            if not isinstance(value, dict):
                continue
            layers, children = value.get("layers"), value.get("manifests")
            descriptors = [
                value.get("config"),
                *(layers if isinstance(layers, list) else []),
                *(children if isinstance(children, list) else []),
            ]
            pending += [
                d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)
            ]
        return live

    def plan_prune(self, grace_s: float = DEFAULT_PRUNE_GRACE_S, *, history: bool = False) -> PrunePlan:
        """What prune would remove; with `history`, as if every name's earlier digests were
        forgotten too."""
        index = self.read_index()
        if history:
            index = without_history(index)
        live = self._live_blobs(index)
        cutoff = self.clock() - grace_s
        stale: list[str] = []
        for digest in self.blobs.digests():
            if digest in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                if self.blobs.path(digest).stat().st_mtime <= cutoff:
                    stale.append(digest)
        partials = [
            *self.blobs.stale_partials(grace_s, now=self.clock()),
            *self.blobs.stale_upload_journals(grace_s, now=self.clock()),
            *self.index_leftovers(),
        ]
        freed = sum(self.blobs.size(d) for d in stale) + sum(p.stat().st_size for p in partials if p.exists())
        return PrunePlan(tuple(sorted(stale)), tuple(partials), freed)

    def index_leftovers(self) -> list[Path]:
        """Temporary files of index.json that a process killed mid-write left (atomic_write). It is
        written under the lock only: under the lock, any there is a dead writer's."""
        return sorted(self.root.glob(f".{self.index_path.name}.*.tmp"))

    def prune(
        self, grace_s: float = DEFAULT_PRUNE_GRACE_S, *, dry_run: bool = False, history: bool = False
    ) -> PrunePlan:
        """Delete the blobs nothing needs and stale partial files; with `history`, forget every
        name's earlier digests first (rollback can no longer return to them), so that blobs only
        they need go too. A dry run takes no lock: it reads only (a store it may not write too)."""
        with self.locked() if not dry_run else contextlib.nullcontext():
            # Planned under the lock: no tag can start needing a blob while we decide.
            plan = self.plan_prune(grace_s, history=history)
            if not dry_run:
                if history:  # the index first: it never names a blob that is gone
                    atomic_write(self.index_path, render_index(without_history(self.read_index())))
                self._delete(plan)
            return plan

    def _delete(self, plan: PrunePlan) -> None:
        for digest in plan.blobs:
            self.blobs.remove(digest)
        for partial in plan.partials:
            # Checked again just before: a pull may have resumed it since the plan (and holds the
            # lock file beside it: a lock file is checked with its partial).
            if not self.blobs.in_use(Path(str(partial).removesuffix(LOCK_SUFFIX))):
                partial.unlink(missing_ok=True)
        if plan.blobs:
            fsync_dir(self.blobs.dir)

    def verify(
        self, progress: Callable[[str], None] | None = None, *, remove_corrupt: bool = False
    ) -> VerifyReport:
        """Re-hash every blob and check every image (tags and history) is complete. With
        `remove_corrupt`, delete the blobs whose bytes are not what their name says: their bytes
        are lost already, and while the blob is there a build or pull would take it as present."""
        hashed: list[tuple[str, str]] = []
        unreadable_blobs: list[tuple[str, str]] = []
        checked = 0
        for digest in sorted(self.blobs.digests()):
            if progress is not None:
                progress(digest)
            try:
                actual, _ = hash_file(self.blobs.path(digest))
            except OSError as exc:  # one file not readable stopped the whole check (a store review)
                unreadable_blobs.append((digest, f"cannot be read ({exc.strerror or exc})"))
                continue
            checked += 1
            if actual != digest:
                hashed.append((digest, actual))
        missing: list[tuple[str, str]] = []
        unreadable: list[tuple[str, str]] = []
        needed_by: dict[str, list[str]] = {}
        index_problem = None
        try:
            index = self.read_index()
        except CorruptStoreError as exc:
            index, index_problem = Index(), str(exc)
        tagged = [(record, False) for record in index.tags] + [(record, True) for record in index.history]
        for record, earlier in tagged:
            # An earlier image of a tag (rollback's) is named by its digest: named by the tag, its
            # damage was blamed on the current image, which a pull could not mend (a README review).
            name = f"{record.name}@{record.digest}" if earlier else record.name
            needed_by.setdefault(record.digest, []).append(name)
            if not record.is_image_manifest:  # another tool's image index: what it names must be here
                needed = sorted(self._foreign_closure(record.digest))
            else:
                try:
                    manifest = self.read_manifest(record.digest)
                except BlobNotFoundError as exc:
                    unreadable.append((name, str(exc)))
                    continue
                except CorruptStoreError as exc:  # without its hint, "Run `modelyard verify`"
                    unreadable.append((name, f"{exc.path}: {exc.reason}"))
                    continue
                needed = manifest.blob_digests()
                misdescribed = self._misdescribed(manifest)
                if misdescribed is not None:
                    remedy = (
                        "forget it (`modelyard prune --history`)"
                        if earlier
                        else "remove the image (`modelyard rm`)"
                    )
                    unreadable.append((name, f"{misdescribed}; {remedy}"))
            for digest in needed:
                needed_by.setdefault(digest, []).append(name)
                if not self.blobs.exists(digest):
                    missing.append((name, digest))
        corrupt = tuple(
            CorruptBlob(digest, actual, tuple(dict.fromkeys(needed_by.get(digest, ()))))
            for digest, actual in hashed
        )
        if remove_corrupt and corrupt and index_problem is None:
            with self.locked():
                for blob in corrupt:
                    # Hashed again under the lock: a pull or build may have replaced it meanwhile.
                    path = self.blobs.path(blob.digest)
                    if path.exists() and hash_file(path)[0] != blob.digest:
                        self.blobs.remove(blob.digest)
                fsync_dir(self.blobs.dir)
        return VerifyReport(
            checked,
            corrupt,
            tuple(missing),
            tuple(unreadable),
            removed=remove_corrupt and bool(corrupt) and index_problem is None,
            index_problem=index_problem,
            unreadable_blobs=tuple(unreadable_blobs),
            earlier_images=frozenset(f"{r.name}@{r.digest}" for r in index.history),
        )

    def _misdescribed(self, manifest: Manifest) -> str | None:
        """A descriptor whose size is not its blob's: pulls kept such manifests before they checked
        the blobs the store already had (a registry review); readers and pushes trust the sizes."""
        for descriptor in (manifest.config, *manifest.layers):
            try:
                held = self.blobs.size(descriptor.digest)
            except BlobNotFoundError:
                continue  # said as missing
            if held != descriptor.size:
                size = f"{descriptor.size:,}"
                return f"its manifest says blob {descriptor.digest} is {size} bytes, but it is {held:,}"
        return None


def _repository_name(stored_name: str) -> str:
    return parse_reference(stored_name).name


def _did_you_mean(index: Index, ref: Reference) -> str:
    same_repo = [t.name for t in index.tags if _repository_name(t.name) == ref.name]
    if same_repo:
        return "tags of that name: " + ", ".join(sorted(same_repo))
    # The ID column of `list` (a digest's first 12 hex digits): images go by name, as in Ollama
    # (a CLI review: Docker users try the ID).
    short = ref.name.rsplit("/", 1)[-1]
    if ref.tag in (None, "latest") and ref.digest is None and re.fullmatch(r"[0-9a-f]{6,64}", short):
        named = sorted(
            parse_reference(t.name).short()
            for t in index.tags
            if t.digest.removeprefix("sha256:").startswith(short)
        )
        if named:
            return f"{short} is the ID of {', '.join(named)}; images go by name here"
    return "see `modelyard list`"


def _tag_in(index: Index, name: str) -> str:
    """`name` as the index spells it: the same, or, as Ollama matches names, the one tag that
    differs from it only by case; else `name` itself (not found)."""
    if index.get(name) is not None:
        return name
    folded = name.casefold()
    alike = [r.name for r in index.tags if r.name.casefold() == folded]
    return alike[0] if len(alike) == 1 else name
