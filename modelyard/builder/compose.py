"""Compose an image's config and manifest from its layers: pure, so a build is reproducible.

The same layers, summary and timestamp always give the same bytes, hence the same manifest digest.
The config follows the CNCF ModelPack schema (which forbids extra fields); facts the schema has no
place for (context length, chat template presence) go in `io.modelyard.*` manifest annotations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.builder.gguf_info import POOLING_NONE
from modelyard.store.image import (
    ANNOTATION_CREATED,
    ANNOTATION_FILEPATH,
    ANNOTATION_TITLE,
    ARTIFACT_MODELPACK,
    CONFIG_MODELPACK,
    LAYER_ADAPTER,
    LAYER_LICENSE,
    LAYER_MESSAGES,
    LAYER_MODELFILE,
    LAYER_PARAMS,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MANIFEST_OCI,
    Descriptor,
    Manifest,
    canonical_json,
    sha256_digest,
)

ANNOTATION_CONTEXT_LENGTH = "io.modelyard.gguf.context-length"
ANNOTATION_CHAT_TEMPLATE = "io.modelyard.gguf.chat-template"
ANNOTATION_PARAMETER_COUNT = "io.modelyard.gguf.parameter-count"
ANNOTATION_REQUIRES = "io.modelyard.requires"  # the Modelfile's REQUIRES (the Ollama version it asks for)

EPOCH_TIMESTAMP = "1970-01-01T00:00:00Z"

# The order layers appear in: weights first (ModelPack readers take the first weight layer as the
# model), then the Modelfile parts, then the normalized Modelfile itself.
_LAYER_ORDER = {
    LAYER_WEIGHT: 0,
    LAYER_ADAPTER: 1,
    LAYER_TEMPLATE: 2,
    LAYER_SYSTEM: 3,
    LAYER_PARAMS: 4,
    LAYER_MESSAGES: 5,
    LAYER_LICENSE: 6,
    LAYER_MODELFILE: 7,
}

_EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"})


@dataclass(frozen=True)
class WeightsSummary:
    """What the config says about the weights; read from GGUF metadata once, then cached."""

    architecture: str
    file_type: str
    parameter_count: int
    parameter_size: str
    context_length: int | None = None
    has_chat_template: bool = False
    block_count: int | None = None
    embedding_length: int | None = None
    feed_forward_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    expert_count: int | None = None
    pooling: bool = False  # the GGUF declares a pooling type other than none: an embedding model
    general_type: str = "model"  # "adapter" for a LoRA

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        *,
        file_type: str,
        parameter_count: int,
        parameter_size: str,
        general_type: str = "model",
    ) -> WeightsSummary:
        arch = str(metadata.get("general.architecture", "unknown"))

        def number(key: str) -> int | None:
            value = metadata.get(f"{arch}.{key}")
            if isinstance(value, list):  # per-layer values (e.g. OpenELM): report the largest
                value = max((v for v in value if isinstance(v, int)), default=None)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

        return cls(
            architecture=arch,
            file_type=file_type,
            parameter_count=parameter_count,
            parameter_size=parameter_size,
            context_length=number("context_length"),
            has_chat_template=bool(metadata.get("tokenizer.chat_template")),
            block_count=number("block_count"),
            embedding_length=number("embedding_length"),
            feed_forward_length=number("feed_forward_length"),
            head_count=number("attention.head_count"),
            head_count_kv=number("attention.head_count_kv"),
            expert_count=number("expert_count"),
            pooling=metadata.get(f"{arch}.pooling_type", POOLING_NONE) != POOLING_NONE,
            general_type=general_type,
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> WeightsSummary:
        return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})


@dataclass(frozen=True)
class LayerBlob:
    media_type: str
    digest: str
    size: int
    filepath: str

    def descriptor(self) -> Descriptor:
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            {ANNOTATION_FILEPATH: self.filepath, ANNOTATION_TITLE: self.filepath},
        )


def text_layer_path(media_type: str, index: int = 0) -> str:
    """The file name a layer unpacks to (ModelPack `filepath`); fixed, never taken from user input."""
    paths = {
        LAYER_WEIGHT: "model.gguf",
        LAYER_TEMPLATE: "modelfile/template",
        LAYER_SYSTEM: "modelfile/system.txt",
        LAYER_PARAMS: "modelfile/params.json",
        LAYER_MESSAGES: "modelfile/messages.json",
        LAYER_MODELFILE: "Modelfile",
    }
    if media_type == LAYER_ADAPTER:
        return f"adapters/adapter-{index + 1}.gguf"
    if media_type == LAYER_LICENSE:
        return "LICENSE" if index == 0 else f"LICENSE-{index + 1}"
    return paths[media_type]


def order_layers(layers: Sequence[LayerBlob]) -> list[LayerBlob]:
    """Layers in canonical order; within a kind, the order given (adapters and licenses are lists)."""
    return sorted(layers, key=lambda layer: _LAYER_ORDER.get(layer.media_type, len(_LAYER_ORDER)))


def compose_config(
    summary: WeightsSummary, layers: Sequence[LayerBlob], created: str, template: str | None
) -> bytes:
    capabilities: dict[str, Any] = {
        "inputTypes": ["text"],
        "outputTypes": ["embedding"] if _is_embedding_model(summary) else ["text"],
    }
    if template and (".Tools" in template or "tools" in template):
        capabilities["toolUsage"] = True
    config: dict[str, Any] = {
        "architecture": summary.architecture,
        "format": "gguf",
        "paramSize": summary.parameter_size,
        "quantization": summary.file_type,
        "capabilities": capabilities,
    }
    transformer = _transformer_config(summary)
    if transformer:
        config["transformerConfig"] = transformer
    if summary.file_type in ("F32", "F16", "BF16"):
        config["precision"] = summary.file_type.lower()
    return canonical_json(
        {
            "descriptor": {"createdAt": created, "family": summary.architecture},
            "config": config,
            "modelfs": {"type": "layers", "diffIds": [layer.digest for layer in layers]},
        }
    )


def compose_manifest(
    summary: WeightsSummary, layers: Sequence[LayerBlob], config: bytes, created: str
) -> Manifest:
    annotations = {
        ANNOTATION_CREATED: created,
        ANNOTATION_CHAT_TEMPLATE: "true" if summary.has_chat_template else "false",
        ANNOTATION_PARAMETER_COUNT: str(summary.parameter_count),
    }
    if summary.context_length:
        annotations[ANNOTATION_CONTEXT_LENGTH] = str(summary.context_length)
    return Manifest(
        config=Descriptor(CONFIG_MODELPACK, sha256_digest(config), len(config)),
        layers=tuple(layer.descriptor() for layer in layers),
        media_type=MANIFEST_OCI,
        artifact_type=ARTIFACT_MODELPACK,
        annotations=annotations,
    )


def _is_embedding_model(summary: WeightsSummary) -> bool:
    return summary.architecture in _EMBEDDING_ARCHITECTURES or summary.pooling


def is_embedding_gguf(metadata: Mapping[str, Any]) -> bool:
    """What a build records as the `embedding` output type, from a GGUF's metadata alone (for an
    image whose config does not say: one converted from Ollama's or Docker's format)."""
    arch = str(metadata.get("general.architecture", "unknown"))
    return (
        arch in _EMBEDDING_ARCHITECTURES or metadata.get(f"{arch}.pooling_type", POOLING_NONE) != POOLING_NONE
    )


def _transformer_config(summary: WeightsSummary) -> dict[str, Any]:
    fields = {
        "numLayers": summary.block_count,
        "numAttentionHeads": summary.head_count,
        "numKVHeads": summary.head_count_kv,
        "hiddenSize": summary.embedding_length,
        "intermediateSize": summary.feed_forward_length,
    }
    out: dict[str, Any] = {k: v for k, v in fields.items() if v}
    if summary.head_count and summary.head_count_kv:
        out["attentionType"] = "gqa" if summary.head_count_kv < summary.head_count else "mha"
    out["mlpType"] = "moe" if summary.expert_count else "dense"
    return out
