"""The three manifest formats a model travels in, and the conversions between them. Pure.

- ModelPack (CNCF; our canonical form, and what DMR, KitOps, modctl and ramalama read): stored
  and pushed byte for byte.
- Ollama: Docker schema2, config `application/vnd.docker.container.image.v1+json` (Ollama's
  ConfigV2), layers `application/vnd.ollama.image.*`.
- Docker Model Runner: OCI manifest, config `application/vnd.docker.ai.model.config.v0.1+json`,
  layers `application/vnd.docker.ai.*`.

All three list the same raw blobs; only the manifest and the config differ, so a conversion writes
a new config and manifest and never touches a layer. Layer file paths are our own fixed names
(`builder.compose.text_layer_path`), never an annotation from the source: a manifest cannot make a
file land anywhere. Layers of a type we don't know are kept, in order, and otherwise ignored.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.builder.compose import (
    ANNOTATION_CONTEXT_LENGTH,
    EPOCH_TIMESTAMP,
    LayerBlob,
    order_layers,
    text_layer_path,
)
from modelyard.errors import RegistryProtocolError
from modelyard.store.image import (
    ANNOTATION_CREATED,
    ANNOTATION_FILEPATH,
    ARTIFACT_MODELPACK,
    CONFIG_MODELPACK,
    LAYER_ADAPTER,
    LAYER_LICENSE,
    LAYER_MESSAGES,
    LAYER_PARAMS,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MANIFEST_DOCKER,
    MANIFEST_OCI,
    Descriptor,
    Manifest,
    canonical_json,
    is_digest,
    sha256_digest,
)

CONFIG_OLLAMA = "application/vnd.docker.container.image.v1+json"
OLLAMA_PREFIX = "application/vnd.ollama.image."
LAYER_OLLAMA_MODEL = OLLAMA_PREFIX + "model"
LAYER_OLLAMA_PROJECTOR = OLLAMA_PREFIX + "projector"
LAYER_OLLAMA_PROMPT = OLLAMA_PREFIX + "prompt"  # the old name of .template; read, never written

DOCKER_CONFIG_PREFIX = "application/vnd.docker.ai.model.config."
LAYER_DOCKER_GGUF = "application/vnd.docker.ai.gguf.v3"
LAYER_DOCKER_MMPROJ = "application/vnd.docker.ai.mmproj"
LAYER_DOCKER_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
LAYER_DOCKER_LICENSE = "application/vnd.docker.ai.license"
CNCF_PREFIX = "application/vnd.cncf.model."

# Where a converted image says it came from (informational; digests stay the source of truth).
ANNOTATION_SOURCE_DIGEST = "io.modelyard.source.digest"
ANNOTATION_SOURCE_FORMAT = "io.modelyard.source.format"

_MMPROJ_PATH = "model.mmproj"


class SourceFormat(enum.StrEnum):
    MODELPACK = "modelpack"
    OLLAMA = "ollama"
    DOCKER = "docker"


class UnsupportedManifestError(ValueError):
    """A manifest that is not a model in any format we read. Callers wrap it in their error."""


@dataclass(frozen=True)
class Converted:
    manifest: Manifest
    config: bytes  # the new config blob; its digest is in manifest.config


def classify(manifest: Manifest) -> SourceFormat:
    config_type = manifest.config.media_type
    layer_types = [layer.media_type for layer in manifest.layers]
    if manifest.artifact_type == ARTIFACT_MODELPACK or config_type == CONFIG_MODELPACK:
        return SourceFormat.MODELPACK
    if config_type.startswith(DOCKER_CONFIG_PREFIX):
        if LAYER_DOCKER_GGUF not in layer_types:
            raise UnsupportedManifestError(
                "a Docker model without GGUF weights (safetensors is not supported)"
            )
        return SourceFormat.DOCKER
    if any(t.startswith(OLLAMA_PREFIX) for t in layer_types):
        if LAYER_OLLAMA_MODEL not in layer_types:
            raise UnsupportedManifestError("an Ollama manifest without a model layer")
        return SourceFormat.OLLAMA
    if any(t.startswith(CNCF_PREFIX) for t in layer_types):
        return SourceFormat.MODELPACK
    raise UnsupportedManifestError(f"not a model image (config media type {config_type!r})")


def pick_from_index(index: bytes) -> str:
    """The manifest digest to use from an OCI index or Docker manifest list: its only entry, or its
    one linux/amd64 entry. Raises UnsupportedManifestError listing the choices otherwise, and
    RegistryProtocolError when the chosen entry's digest is not a sha256 digest (the manifest is
    fetched by that digest and checked against it)."""
    try:
        value = json.loads(index)
    except (json.JSONDecodeError, UnicodeDecodeError):
        value = None
    listed = value.get("manifests") if isinstance(value, dict) else None
    if not isinstance(listed, list):
        raise UnsupportedManifestError("an index without a list of manifests")
    entries: list[Mapping[str, Any]] = [e for e in listed if isinstance(e, dict)]
    linux_amd64 = [e for e in entries if _platform(e) == ("linux", "amd64")]
    if len(entries) == 1:
        chosen = entries[0]
    elif len(linux_amd64) == 1:
        chosen = linux_amd64[0]
    else:
        shown = ", ".join(str(e.get("digest"))[:19] for e in entries[:8]) or "none"
        raise UnsupportedManifestError(f"an index of {len(entries)} manifests ({shown}); pull one by digest")
    digest = chosen.get("digest")
    if not is_digest(digest):
        raise RegistryProtocolError(
            f"the index names its manifest by {str(digest)[:80]!r}, which is not a sha256 digest"
        )
    return str(digest)


def _platform(entry: Mapping[str, Any]) -> tuple[object, object]:
    platform = entry.get("platform")
    return (platform.get("os"), platform.get("architecture")) if isinstance(platform, dict) else (None, None)


# --- into ModelPack ------------------------------------------------------------------------------


def to_modelpack(
    manifest: Manifest, config: Mapping[str, Any], source: SourceFormat, source_digest: str
) -> Converted:
    """An Ollama or Docker model as a canonical ModelPack image over the same blobs."""
    if source is SourceFormat.OLLAMA:
        layers = _layers_from(manifest.layers, _OLLAMA_KINDS)
        model_config, annotations = _from_ollama_config(config), dict[str, str]()
    elif source is SourceFormat.DOCKER:
        layers = _layers_from(manifest.layers, _DOCKER_KINDS)
        model_config, annotations = _from_docker_config(config)
    else:
        raise ValueError(f"{source} needs no conversion")
    created = str(model_config["descriptor"].get("createdAt") or EPOCH_TIMESTAMP)
    model_config["modelfs"] = {"type": "layers", "diffIds": [layer.digest for layer in layers]}
    config_bytes = canonical_json(model_config)
    converted = Manifest(
        config=Descriptor(CONFIG_MODELPACK, sha256_digest(config_bytes), len(config_bytes)),
        layers=tuple(layer.descriptor() for layer in layers),
        media_type=MANIFEST_OCI,
        artifact_type=ARTIFACT_MODELPACK,
        annotations={
            ANNOTATION_CREATED: created,
            ANNOTATION_SOURCE_DIGEST: source_digest,
            ANNOTATION_SOURCE_FORMAT: str(source),
            **annotations,
        },
    )
    return Converted(converted, config_bytes)


# Source media type -> our media type; None keeps the layer as it is.
_OLLAMA_KINDS: Mapping[str, str] = {
    LAYER_OLLAMA_MODEL: LAYER_WEIGHT,
    LAYER_OLLAMA_PROJECTOR: LAYER_WEIGHT,
    LAYER_OLLAMA_PROMPT: LAYER_TEMPLATE,
}
_DOCKER_KINDS: Mapping[str, str] = {
    LAYER_DOCKER_GGUF: LAYER_WEIGHT,
    LAYER_DOCKER_MMPROJ: LAYER_WEIGHT,
    LAYER_DOCKER_TEMPLATE: LAYER_TEMPLATE,
    LAYER_DOCKER_LICENSE: LAYER_LICENSE,
}
_PROJECTORS = frozenset({LAYER_OLLAMA_PROJECTOR, LAYER_DOCKER_MMPROJ})
_KNOWN = frozenset({LAYER_ADAPTER, LAYER_TEMPLATE, LAYER_SYSTEM, LAYER_PARAMS, LAYER_MESSAGES, LAYER_LICENSE})


def _layers_from(source: Sequence[Descriptor], kinds: Mapping[str, str]) -> list[LayerBlob]:
    """Our layers, in canonical order: weights (the model, its shards, then projectors), the
    Modelfile parts, and unknown layers last, each with a fixed file path."""
    models = [
        d for d in source if kinds.get(d.media_type) == LAYER_WEIGHT and d.media_type not in _PROJECTORS
    ]
    projectors = [d for d in source if d.media_type in _PROJECTORS]
    weights = [
        LayerBlob(LAYER_WEIGHT, d.digest, d.size, _weight_path(i, len(models))) for i, d in enumerate(models)
    ]
    weights += [
        LayerBlob(LAYER_WEIGHT, d.digest, d.size, _MMPROJ_PATH if i == 0 else f"model-{i + 1}.mmproj")
        for i, d in enumerate(projectors)
    ]
    counts: dict[str, int] = {}
    others: list[LayerBlob] = []
    for d in source:
        media_type = kinds.get(d.media_type, d.media_type)
        if media_type == LAYER_WEIGHT:
            continue
        index = counts.get(media_type, 0)
        counts[media_type] = index + 1
        if media_type in _KNOWN:
            path = text_layer_path(media_type, index)
        else:
            path = f"other/{d.digest.removeprefix('sha256:')}"
        others.append(LayerBlob(media_type, d.digest, d.size, path))
    return weights + order_layers(others)


def _weight_path(index: int, count: int) -> str:
    if count == 1:
        return text_layer_path(LAYER_WEIGHT)
    return f"model-{index + 1:05d}-of-{count:05d}.gguf"


def _from_ollama_config(config: Mapping[str, Any]) -> dict[str, Any]:
    family = _text(config.get("model_family"))
    return {
        "descriptor": _drop_empty({"createdAt": EPOCH_TIMESTAMP, "family": family}),
        "config": _drop_empty(
            {
                "architecture": family,
                "format": _text(config.get("model_format")) or "gguf",
                "paramSize": _text(config.get("model_type")),
                "quantization": _text(config.get("file_type")),
            }
        ),
    }


def _from_docker_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    inner = config.get("config") if isinstance(config.get("config"), Mapping) else {}
    descriptor = config.get("descriptor") if isinstance(config.get("descriptor"), Mapping) else {}
    assert isinstance(inner, Mapping) and isinstance(descriptor, Mapping)
    architecture = _text(inner.get("architecture"))
    annotations: dict[str, str] = {}
    context = inner.get("context_size")
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        annotations[ANNOTATION_CONTEXT_LENGTH] = str(context)
    model_config = {
        "descriptor": _drop_empty(
            {"createdAt": _text(descriptor.get("created")) or EPOCH_TIMESTAMP, "family": architecture}
        ),
        "config": _drop_empty(
            {
                "architecture": architecture,
                "format": _text(inner.get("format")) or "gguf",
                "paramSize": _text(inner.get("parameters")),
                "quantization": _text(inner.get("quantization")),
            }
        ),
    }
    return model_config, annotations


# --- into Ollama ---------------------------------------------------------------------------------


def to_ollama(manifest: Manifest, config: Mapping[str, Any]) -> Converted:
    """A ModelPack image as an Ollama manifest (Docker schema2) over the same blobs."""
    weights = manifest.layers_of(LAYER_WEIGHT)
    if not weights:
        raise UnsupportedManifestError("an image without weights cannot be written for Ollama")
    model = weights[0]
    layers = []
    for layer in manifest.layers:
        media_type = layer.media_type
        if layer is model:
            media_type = LAYER_OLLAMA_MODEL
        elif media_type == LAYER_WEIGHT and "mmproj" in layer.annotations.get(ANNOTATION_FILEPATH, ""):
            media_type = LAYER_OLLAMA_PROJECTOR  # a hint only: the path itself is never used
        layers.append(Descriptor(media_type, layer.digest, layer.size))
    inner = config.get("config") if isinstance(config.get("config"), Mapping) else {}
    assert isinstance(inner, Mapping)
    family = _text(inner.get("architecture"))
    ollama_config = _drop_empty(
        {
            "model_format": _text(inner.get("format")) or "gguf",
            "model_family": family,
            "model_families": [family] if family else None,
            "model_type": _text(inner.get("paramSize")),
            "file_type": _text(inner.get("quantization")),
            "architecture": "amd64",  # Ollama's fixed values: "required by spec" of an image config
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
    )
    config_bytes = canonical_json(ollama_config)
    return Converted(
        Manifest(
            config=Descriptor(CONFIG_OLLAMA, sha256_digest(config_bytes), len(config_bytes)),
            layers=tuple(layers),
            media_type=MANIFEST_DOCKER,
        ),
        config_bytes,
    )


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _drop_empty(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in ("", None, [], {})}
