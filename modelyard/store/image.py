"""The image format: media types, manifests and descriptors as plain data.

A modelyard image is one OCI manifest (CNCF ModelPack, `artifactType` model manifest), one config
blob and raw, uncompressed layers, one file each. The Modelfile parts keep Ollama's media types so
the same blobs can be listed in an Ollama (Docker schema2) manifest without copying.

Manifests come from disk and from registries, so parsing trusts nothing: digests must be
well-formed sha256, sizes non-negative integers, and no annotation is ever used as a path.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MANIFEST_OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_OCI = "application/vnd.oci.image.index.v1+json"

ARTIFACT_MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MODELPACK = "application/vnd.cncf.model.config.v1+json"
LAYER_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"

LAYER_TEMPLATE = "application/vnd.ollama.image.template"
LAYER_SYSTEM = "application/vnd.ollama.image.system"
LAYER_PARAMS = "application/vnd.ollama.image.params"
LAYER_MESSAGES = "application/vnd.ollama.image.messages"
LAYER_ADAPTER = "application/vnd.ollama.image.adapter"
LAYER_LICENSE = "application/vnd.ollama.image.license"
LAYER_MODELFILE = "application/vnd.modelyard.modelfile.v1"

ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_UNTESTED = "org.cncf.model.file.mediatype.untested"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# A manifest larger than this is refused (Distribution's own limit is 4 MiB).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Text layers (template, system, params, …) are read into memory; anything larger is not a Modelfile part.
MAX_TEXT_LAYER_BYTES = 16 * 1024 * 1024
TEXT_LAYERS = frozenset(
    {LAYER_TEMPLATE, LAYER_SYSTEM, LAYER_PARAMS, LAYER_MESSAGES, LAYER_LICENSE, LAYER_MODELFILE}
)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ManifestFormatError(ValueError):
    """A manifest that is not one we can read. Callers wrap it in their subsystem's error."""


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted, compact UTF-8 JSON: the same value always gives the same bytes (and digest)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    artifact_type: str | None = None

    @property
    def title(self) -> str:
        """A display name for the layer. Never a path: annotations come from strangers."""
        return (
            self.annotations.get(ANNOTATION_TITLE) or self.annotations.get(ANNOTATION_FILEPATH) or self.digest
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MANIFEST_OCI
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def blob_digests(self) -> list[str]:
        """Every blob this manifest needs: the config, then the layers (duplicates kept once)."""
        seen: dict[str, None] = {self.config.digest: None}
        for layer in self.layers:
            seen.setdefault(layer.digest, None)
        return list(seen)

    def layers_of(self, media_type: str) -> list[Descriptor]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


def parse_descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestFormatError(f"{where}: expected an object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestFormatError(f"{where}.mediaType: expected a non-empty string")
    if not is_digest(digest):
        raise ManifestFormatError(f"{where}.digest: expected sha256:<64 hex>, got {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestFormatError(f"{where}.size: expected a non-negative integer, got {size!r}")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ManifestFormatError(f"{where}.annotations: expected a map of strings")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestFormatError(f"{where}.artifactType: expected a string")
    return Descriptor(media_type, digest, size, annotations, artifact_type)  # type: ignore[arg-type]


def parse_manifest(data: bytes) -> Manifest:
    """Parse an image manifest (OCI or Docker schema2). Raises ManifestFormatError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestFormatError(f"manifest is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestFormatError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ManifestFormatError("manifest: expected a JSON object")
    if value.get("schemaVersion") != 2:
        raise ManifestFormatError(f"manifest.schemaVersion: expected 2, got {value.get('schemaVersion')!r}")
    media_type = value.get("mediaType") or MANIFEST_OCI
    if media_type not in (MANIFEST_OCI, MANIFEST_DOCKER):
        raise ManifestFormatError(f"manifest.mediaType {media_type!r} is not an image manifest")
    layers = value.get("layers")
    if not isinstance(layers, list):
        raise ManifestFormatError("manifest.layers: expected a list")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestFormatError("manifest.annotations: expected a map of strings")
    artifact_type = value.get("artifactType")
    return Manifest(
        config=parse_descriptor(value.get("config"), "manifest.config"),
        layers=tuple(parse_descriptor(layer, f"manifest.layers[{i}]") for i, layer in enumerate(layers)),
        media_type=media_type,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations={str(k): str(v) for k, v in annotations.items()},
    )
