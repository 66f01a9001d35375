"""An image in the store, read for serving: what the scheduler loads and how prompts are made.

Both the HTTP server and the reconciler start here: a reference resolves to a manifest, its
weights and adapter blobs (used in place: the runner mmaps the blob files), its parameters, its
TEMPLATE/SYSTEM/MESSAGE layers, and from the GGUF header the model's shape (for memory estimates)
and chat template. GGUF headers are read once per digest and kept.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.builder.compose import is_embedding_gguf
from modelyard.builder.gguf_info import read_gguf
from modelyard.builder.prompt import ModelPrompting
from modelyard.errors import CorruptStoreError, GGUFError, StoreError
from modelyard.reference import Reference, parse_reference
from modelyard.runtime.memory import ModelShape, shape_from_gguf
from modelyard.runtime.prompting import image_prompting
from modelyard.runtime.scheduler import ModelRequest
from modelyard.store import Store
from modelyard.store.image import ANNOTATION_CREATED, Manifest

# An adapter layer may carry its scale; Modelfiles have no syntax for it, so 1.0 unless annotated.
ANNOTATION_ADAPTER_SCALE = "io.modelyard.adapter.scale"


@dataclass(frozen=True)
class GGUFFacts:
    shape: ModelShape
    chat_template: str | None
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Servable:
    reference: Reference
    digest: str  # manifest digest
    manifest: Manifest
    weights: Path
    adapters: tuple[tuple[Path, float], ...]
    params: Mapping[str, Any]  # the image's PARAMETERs
    prompting: ModelPrompting
    gguf: GGUFFacts
    config: Mapping[str, Any] = field(default_factory=dict)  # the ModelPack config's "config" object
    alias: str = ""  # the name a spec serves this image under ("chat"), when it does

    @property
    def name(self) -> str:
        return self.alias or self.reference.short()

    @property
    def is_embedding_model(self) -> bool:
        output_types = self.config.get("capabilities", {}).get("outputTypes")
        if output_types is None:  # a converted image's config does not say: the GGUF does
            return is_embedding_gguf(self.gguf.metadata)
        return "embedding" in output_types

    @property
    def created(self) -> str:
        return self.manifest.annotations.get(ANNOTATION_CREATED, "")

    def request(
        self,
        *,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | None = None,
        pinned: bool = False,
    ) -> ModelRequest:
        """What the scheduler needs to load this image: options are the image's parameters ⊕ `options`."""
        return ModelRequest(
            name=name or self.name,
            digest=self.digest,
            weights=self.weights,
            shape=self.gguf.shape,
            adapters=self.adapters,
            options={**self.params, **(options or {})},
            keep_alive=keep_alive,
            pinned=pinned,
        )


def load_servable(store: Store, ref: Reference) -> Servable:
    record = store.resolve(ref)
    if ref.digest is None and record.name != str(ref):
        # A tag that differs from the stored one only by case (Ollama matches names so): the
        # model goes by the stored name, or `gemma3:LATEST` would load beside `gemma3:latest` and
        # escape `modelyard stop gemma3`.
        ref = parse_reference(record.name)
    with store.reading(ref.short()):
        manifest = store.read_manifest(record.digest)
        parts = store.read_parts(manifest)
        config = store.read_config(manifest).get("config", {})
    if parts.weights is None:
        raise StoreError(f"{ref.short()} has no weights layer; it cannot be served")
    weights = store.blobs.path(parts.weights.digest)
    adapters = tuple(
        (store.blobs.path(a.digest), float(a.annotations.get(ANNOTATION_ADAPTER_SCALE, "1.0")))
        for a in parts.adapters
    )
    try:
        facts = gguf_facts(weights)
    except GGUFError as exc:  # a blob the store verified when it came in: damaged since
        raise CorruptStoreError(
            weights,
            f"the weights of {ref.short()} cannot be read ({exc.reason})",
            hint="Run `modelyard verify`, then pull or build the image again.",
        ) from None
    return Servable(
        reference=ref,
        digest=record.digest,
        manifest=manifest,
        weights=weights,
        adapters=adapters,
        params=dict(parts.params),
        prompting=image_prompting(parts.template, parts.system, parts.messages, facts.chat_template),
        gguf=facts,
        config=config,
    )


@functools.lru_cache(maxsize=64)
def gguf_facts(weights: Path) -> GGUFFacts:
    """The GGUF header of a weights blob. Blobs are content-addressed, so the path is a safe key."""
    contents = read_gguf(weights)
    template = contents.metadata.get("tokenizer.chat_template")
    return GGUFFacts(
        shape=shape_from_gguf(contents.metadata, contents.tensors),
        chat_template=template if isinstance(template, str) else None,
        metadata=contents.metadata,
    )
