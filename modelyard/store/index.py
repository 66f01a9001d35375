"""The store's `index.json` as a value, and the pure transitions on it.

Current tags are index entries annotated with `org.opencontainers.image.ref.name`, exactly as the
OCI image layout wants, so `skopeo inspect oci:<store>:<name>` finds them. Earlier digests of a tag
are entries annotated `io.modelyard.history.of` instead: they keep their manifests (and so their
blobs) alive for `rollback`, and standard tools ignore them. Entries other tools wrote that no
reference can name (no ref.name, or one that is not a valid reference) are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from modelyard.errors import InvalidReferenceError
from modelyard.reference import parse_reference
from modelyard.store.image import (
    ANNOTATION_REF_NAME,
    INDEX_OCI,
    MANIFEST_DOCKER,
    MANIFEST_OCI,
    ManifestFormatError,
    canonical_json,
    is_digest,
)

ANNOTATION_HISTORY_OF = "io.modelyard.history.of"
ANNOTATION_TAGGED_AT = "io.modelyard.tagged-at"


@dataclass(frozen=True)
class TagRecord:
    """One index entry: a name pointing at a manifest, and when it started to."""

    name: str  # canonical reference text, e.g. "library/gemma3:latest"
    digest: str
    size: int
    tagged_at: str  # RFC 3339, UTC
    media_type: str = MANIFEST_OCI
    artifact_type: str | None = None
    written: str = ""  # another tool's spelling of `name` ("Foo", "v1.0"), written back as it was

    @property
    def is_image_manifest(self) -> bool:
        """Whether the name points at an image manifest (ours, or a pulled one) rather than at
        something another tool wrote there, such as a multi-platform image index."""
        return self.media_type in (MANIFEST_OCI, MANIFEST_DOCKER)


@dataclass(frozen=True)
class Index:
    tags: tuple[TagRecord, ...] = ()
    # Earlier digests per name, newest first within a name.
    history: tuple[TagRecord, ...] = ()
    # Other tools' entries that no reference names, written back unchanged.
    foreign: tuple[dict[str, Any], ...] = ()

    def get(self, name: str) -> TagRecord | None:
        return next((t for t in self.tags if t.name == name), None)

    def history_of(self, name: str) -> list[TagRecord]:
        return [h for h in self.history if h.name == name]

    def holder(self, digest: str) -> TagRecord | None:
        """An entry, current or earlier, of any name that points at `digest`."""
        return next((r for r in (*self.tags, *self.history) if r.digest == digest), None)


def set_tag(index: Index, record: TagRecord, history_limit: int) -> Index:
    """Point `record.name` at `record.digest`; the digest it pointed at before joins its history."""
    current = index.get(record.name)
    tags = [t for t in index.tags if t.name != record.name] + [record]
    history = list(index.history)
    if current is not None and current.digest != record.digest:
        history = _push_history(history, current, record.digest, history_limit)
    return replace(index, tags=tuple(sorted(tags, key=lambda t: t.name)), history=tuple(history))


def _push_history(
    history: list[TagRecord], previous: TagRecord, new_digest: str, limit: int
) -> list[TagRecord]:
    mine = [h for h in history if h.name == previous.name and h.digest not in (previous.digest, new_digest)]
    others = [h for h in history if h.name != previous.name]
    return others + ([previous, *mine][: max(limit, 0)])


def without_history(index: Index) -> Index:
    """Every name's earlier digests forgotten (what `rollback` could return to)."""
    return replace(index, history=())


def remove_tag(index: Index, name: str) -> Index:
    """Forget a name and its history."""
    return replace(
        index,
        tags=tuple(t for t in index.tags if t.name != name),
        history=tuple(h for h in index.history if h.name != name),
    )


def parse_index(value: Any) -> Index:
    if not isinstance(value, dict) or not isinstance(value.get("manifests", []), list):
        raise ManifestFormatError("index.json: expected an object with a 'manifests' list")
    tags: list[TagRecord] = []
    history: list[TagRecord] = []
    foreign: list[dict[str, Any]] = []
    for i, entry in enumerate(value.get("manifests", [])):
        record, is_history = _parse_entry(entry, f"index.json manifests[{i}]")
        if record is None or (not is_history and any(t.name == record.name for t in tags)):
            foreign.append(entry)  # no name we can address, or a second spelling of one ("Foo", "foo")
        else:
            (history if is_history else tags).append(record)
    return Index(tags=tuple(tags), history=tuple(history), foreign=tuple(foreign))


def _parse_entry(entry: Any, where: str) -> tuple[TagRecord | None, bool]:
    if not isinstance(entry, dict):
        raise ManifestFormatError(f"{where}: expected an object")
    annotations = entry.get("annotations") or {}
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or not is_digest(digest) or not isinstance(size, int) or size < 0:
        raise ManifestFormatError(f"{where}: bad digest or size")
    name = annotations.get(ANNOTATION_REF_NAME) or annotations.get(ANNOTATION_HISTORY_OF)
    if not isinstance(name, str):
        return None, False  # another tool's entry without a name
    try:
        # Ours are written canonical (`library/foo:latest`); another tool's (`skopeo copy …
        # oci:STORE:Foo`) may say `Foo`: read as `library/foo:latest`, which users type and `list`
        # shows, and written back as `Foo`, which that tool looks for.
        canonical = str(parse_reference(name))
    except InvalidReferenceError:
        return None, False
    record = TagRecord(
        name=canonical,
        written="" if canonical == name else name,
        digest=digest,
        size=size,
        tagged_at=str(annotations.get(ANNOTATION_TAGGED_AT, "")),
        media_type=str(entry.get("mediaType") or MANIFEST_OCI),
        artifact_type=entry.get("artifactType") if isinstance(entry.get("artifactType"), str) else None,
    )
    return record, ANNOTATION_REF_NAME not in annotations


def render_index(index: Index) -> bytes:
    entries = [_entry(t, ANNOTATION_REF_NAME) for t in index.tags]
    entries += [_entry(h, ANNOTATION_HISTORY_OF) for h in index.history]
    entries += index.foreign
    return canonical_json({"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": entries})


def _entry(record: TagRecord, name_key: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": record.media_type,
        "digest": record.digest,
        "size": record.size,
        "annotations": {name_key: record.written or record.name, ANNOTATION_TAGGED_AT: record.tagged_at},
    }
    if record.artifact_type:
        entry["artifactType"] = record.artifact_type
    return entry


def rollback_target(index: Index, name: str, to_digest: str | None = None) -> TagRecord:
    """The history entry `rollback` returns `name` to: the newest one, or the one with `to_digest`.

    Raises LookupError with a message that lists what is possible.
    """
    history = index.history_of(name)
    if to_digest is None:
        if not history:
            raise LookupError(f"{name} has no earlier digest to roll back to")
        return history[0]
    prefix = to_digest.removeprefix("sha256:")
    if not prefix:
        raise LookupError(
            f"--to needs a digest or the start of one (earlier digests of {name}: {_short_digests(history)})"
        )
    matches = [h for h in history if h.digest.removeprefix("sha256:").startswith(prefix)]
    current = index.get(name)
    if not matches and current is not None and current.digest.removeprefix("sha256:").startswith(prefix):
        raise LookupError(f"{name} already points at {current.digest[:19]}: nothing to roll back")
    if len(matches) != 1:
        problem = "is ambiguous" if matches else "is not in its history"
        raise LookupError(
            f"digest {to_digest} {problem} for {name} (earlier digests: {_short_digests(history)})"
        )
    return matches[0]


def _short_digests(history: list[TagRecord]) -> str:
    return ", ".join(h.digest[7:19] for h in history) or "none"
