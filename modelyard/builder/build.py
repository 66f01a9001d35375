"""`modelyard build`: a Modelfile and its inputs become an image in the local store.

The build runs in two phases so that bad input never touches the store:
1. resolve and validate everything (FROM, adapters, GGUF headers, quantization type);
2. write blobs, then config and manifest, then the tag, last, under the index lock.
If phase 2 fails, the blobs it created and nothing references are removed again.

FROM takes, in this order: `sha256:<hex>` (a weights blob already in the store — how the
normalized Modelfile of an image refers to its weights), an existing file or directory (relative
to the Modelfile's folder), or an image reference (local; or remote, fetched through the
`fetch` callback that the caller wires to the registry client).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.builder import modelfile as mf
from modelyard.builder.cache import FileDigestCache, SummaryCache
from modelyard.builder.compose import (
    ANNOTATION_REQUIRES,
    EPOCH_TIMESTAMP,
    LayerBlob,
    WeightsSummary,
    compose_config,
    compose_manifest,
    order_layers,
    text_layer_path,
)
from modelyard.builder.normalized import normalized_text
from modelyard.errors import (
    BuildError,
    GGUFError,
    ImageNotFoundError,
    InvalidReferenceError,
    ModelfileError,
    ModelyardError,
    StoreError,
)
from modelyard.progress import ProgressEvent, ProgressSink, ignore_progress
from modelyard.reference import Reference, parse_reference
from modelyard.store import Store
from modelyard.store.image import (
    LAYER_ADAPTER,
    LAYER_LICENSE,
    LAYER_MESSAGES,
    LAYER_MODELFILE,
    LAYER_PARAMS,
    LAYER_SYSTEM,
    LAYER_TEMPLATE,
    LAYER_WEIGHT,
    MAX_TEXT_LAYER_BYTES,
    canonical_json,
    is_digest,
    sha256_digest,
)

Fetch = Callable[[Reference], None]


@dataclass(frozen=True)
class BuildResult:
    reference: Reference
    digest: str  # the manifest digest
    size: int  # manifest + config + layers
    layers_created: int
    layers_reused: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Source:
    """A file that becomes a blob (weights or adapter), validated but not yet stored."""

    path: Path | None  # None when the blob is already in the store
    digest: str | None = None  # known in advance: a store blob, or a cache hit
    general_type: str = "model"
    file_type: str = ""


@dataclass
class _Plan:
    """Everything phase 1 resolved; phase 2 only writes."""

    weights: _Source
    adapters: list[_Source]
    template: str | None
    system: str | None
    params: dict[str, Any]
    messages: list[dict[str, str]]
    licenses: list[str]
    requires: str | None
    quantize: str | None = None
    warnings: list[str] = field(default_factory=list)


def created_timestamp(source_date_epoch: int | None) -> str:
    """Builds are stamped with SOURCE_DATE_EPOCH when set, else the Unix epoch, never "now":
    the same inputs must give the same digest."""
    if source_date_epoch is None:
        return EPOCH_TIMESTAMP
    return datetime.fromtimestamp(source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Builder:
    def __init__(
        self,
        store: Store,
        cache_dir: Path,
        *,
        created: str = EPOCH_TIMESTAMP,
        fetch: Fetch | None = None,
        progress: ProgressSink = ignore_progress,
    ) -> None:
        self.store = store
        self.files = FileDigestCache(cache_dir)
        self.summaries = SummaryCache(cache_dir)
        self.created = created
        self.fetch = fetch
        self.progress = progress

    # --- entry points -------------------------------------------------------------------------

    def build_file(
        self,
        modelfile_path: Path,
        target: Reference,
        *,
        context: Path | None = None,
        quantize: str | None = None,
    ) -> BuildResult:
        try:
            data = modelfile_path.read_bytes()
        except FileNotFoundError:
            raise ModelfileError("no such file", file=str(modelfile_path)) from None
        except IsADirectoryError:
            raise ModelfileError(
                "is a directory; pass the Modelfile itself with -f", file=str(modelfile_path)
            ) from None
        text = mf.decode_modelfile(data, str(modelfile_path))
        if modelfile_path.suffix.lower() in (".yaml", ".yml"):
            from modelyard.builder.modelfile_yaml import parse_yaml  # pydantic: only when needed

            modelfile = parse_yaml(text, str(modelfile_path))
        else:
            modelfile = mf.parse(text, str(modelfile_path))
        return self.build(modelfile, target, context=context or modelfile_path.parent, quantize=quantize)

    def build(
        self, modelfile: mf.Modelfile, target: Reference, *, context: Path, quantize: str | None = None
    ) -> BuildResult:
        if target.digest is not None:
            raise InvalidReferenceError(str(target), "a build target takes a tag, not a digest")
        self.store.init()
        self.progress(ProgressEvent("parsing modelfile"))
        plan = self._plan(modelfile, context, quantize)
        created_blobs: list[str] = []
        try:
            return self._write(plan, target, created_blobs)
        except BaseException:
            # Leave the store as it was: the blobs this build created and nothing references go.
            # A failure here (a disk error, a manifest nobody may read) must not hide the build's
            # own error, a Ctrl-C included (a diff review).
            with contextlib.suppress(OSError, StoreError):
                self.store.remove_unreferenced(created_blobs)
            raise

    # --- phase 1: resolve and validate ----------------------------------------------------------

    def _plan(self, modelfile: mf.Modelfile, context: Path, quantize: str | None) -> _Plan:
        with _located(modelfile.from_at):
            base = self._resolve_from(modelfile.from_, context)
        plan = base if isinstance(base, _Plan) else _Plan(base, [], None, None, {}, [], [], None)
        plan.warnings.extend(modelfile.warnings)
        if modelfile.template is not None:
            plan.template = modelfile.template
        if modelfile.system is not None:
            plan.system = modelfile.system
        plan.params = {**plan.params, **_params_json(modelfile.parameters)}
        if modelfile.messages:
            plan.messages = [{"role": m.role, "content": m.content} for m in modelfile.messages]
        # Added to the base image's, as Ollama does: a derived image keeps the model's own terms
        # (one the base has already is not added twice).
        inherited = set(plan.licenses)
        plan.licenses += [text for text in modelfile.licenses if text not in inherited]
        if modelfile.requires is not None:
            plan.requires = modelfile.requires
        for i, adapter in enumerate(modelfile.adapters):
            with _located(modelfile.adapters_at[i] if i < len(modelfile.adapters_at) else None):
                plan.adapters.append(self._resolve_adapter(adapter, context))
        # Before any weights are copied: the rest of the texts are checked as they are written.
        _check_text_sizes(_plain_texts(plan))
        if quantize:
            from modelyard.builder.quantize import check_quantization

            plan.quantize = check_quantization(quantize, plan.weights.file_type, modelfile.from_)
        return plan

    def _resolve_from(self, value: str, context: Path) -> _Source | _Plan:
        if _is_blob_reference(value):
            return self._stored_blob(value, "FROM", expect="model")
        path = _expand(value, context)
        if path.exists():
            return self._gguf_source(_single_gguf(path), expect="model")
        if _looks_like_path(value):
            raise BuildError(f"FROM {value}: no such file ({path})")
        try:
            ref = parse_reference(value)
        except InvalidReferenceError as exc:
            raise BuildError(
                f"FROM {value}: neither a file nor a valid image reference ({exc.reason})"
            ) from None
        return self._inherit(ref)

    def _inherit(self, ref: Reference) -> _Plan:
        try:
            record = self.store.resolve(ref)
        except ImageNotFoundError:
            if not ref.is_remote or self.fetch is None:
                hint = (
                    "pull it first"
                    if ref.is_remote
                    else "build it first, or check the name with `modelyard list`"
                )
                raise BuildError(f"FROM {ref.short()}: no such file or image; {hint}") from None
            self.progress(ProgressEvent(f"pulling {ref.short()}"))
            self.fetch(ref)
            record = self.store.resolve(ref)
        manifest = self.store.read_manifest(record.digest)
        parts = self.store.read_parts(manifest)
        if parts.weights is None:
            raise BuildError(f"FROM {ref.short()}: the image has no weights layer")
        weights = self._stored_blob(parts.weights.digest, "FROM", expect="model")
        adapters = [self._stored_blob(a.digest, "ADAPTER", expect="adapter") for a in parts.adapters]
        return _Plan(
            weights=weights,
            adapters=adapters,
            template=parts.template,
            system=parts.system,
            params=dict(parts.params),
            messages=[dict(m) for m in parts.messages],
            licenses=list(parts.licenses),
            requires=manifest.annotations.get(ANNOTATION_REQUIRES),  # the new Modelfile may override it
        )

    def _resolve_adapter(self, value: str, context: Path) -> _Source:
        if _is_blob_reference(value):
            return self._stored_blob(value, "ADAPTER", expect="adapter")
        path = _expand(value, context)
        if not path.exists():
            raise BuildError(f"ADAPTER {value}: no such file ({path})")
        return self._gguf_source(_single_gguf(path), expect="adapter")

    def _stored_blob(self, digest: str, instruction: str, expect: str) -> _Source:
        if not self.store.blobs.exists(digest):
            raise BuildError(f"{instruction} {digest}: no such blob in the local store")
        index = self.store.read_index()
        tagged = next((r.name for r in index.tags if r.digest == digest), None)
        earlier = next((r.name for r in index.history if r.digest == digest), None)
        if tagged is not None:  # the ID `list` shows
            name = parse_reference(tagged).short()
            raise BuildError(
                f"{instruction} {digest}: that is the image {name}, not a weights blob; "
                f"name the image instead ({instruction} {name})"
            )
        if earlier is not None:
            pinned = replace(parse_reference(earlier), tag=None, digest=digest).short()
            raise BuildError(
                f"{instruction} {digest}: that is an earlier image of {parse_reference(earlier).short()}, "
                f"not a weights blob; give it a name (modelyard tag {pinned} NAME) and build FROM that"
            )
        summary = self._summary(digest)
        _check_kind(self.store.blobs.path(digest), summary.general_type, expect, instruction)
        return _Source(path=None, digest=digest, general_type=expect, file_type=summary.file_type)

    def _gguf_source(self, path: Path, expect: str) -> _Source:
        instruction = "FROM" if expect == "model" else "ADAPTER"
        known = self.files.lookup(path)
        summary = self.summaries.get(known) if known and self.store.blobs.exists(known) else None
        if summary is not None:
            # An unchanged file we built from before: its checked header is in the cache.
            _check_kind(path, summary.general_type, expect, instruction)
            return _Source(
                path=path, digest=known, general_type=summary.general_type, file_type=summary.file_type
            )
        from modelyard.builder.gguf_info import read_gguf_info

        self.progress(ProgressEvent("parsing GGUF"))
        info = read_gguf_info(path)
        _check_kind(path, info.general_type, expect, instruction)
        if info.split_count > 1:
            # llama.cpp finds a split model's other files by the first one's name, which a blob in
            # the store does not have: an image of one file would never load.
            raise GGUFError(
                path,
                f"is one of the {info.split_count} files of a split GGUF; merge them into one with "
                "llama.cpp's `llama-gguf-split --merge FIRST-FILE MERGED.gguf` and build FROM that",
            )
        return _Source(path=path, digest=None, general_type=info.general_type, file_type=info.file_type)

    # --- phase 2: write ------------------------------------------------------------------------

    def _write(self, plan: _Plan, target: Reference, created: list[str]) -> BuildResult:
        weights_digest = self._store_weights(plan, created)
        layers = [self._layer(LAYER_WEIGHT, weights_digest)]
        # An adapter given twice (FROM an image that has it, then ADAPTER it again) is one layer,
        # as a license is: llama.cpp would apply each copy, doubling its effect (a build review).
        adapters: dict[str, _Source] = {}
        for adapter in plan.adapters:
            digest = self._store_source(adapter, created)
            if digest in adapters:
                plan.warnings.append(f"adapter {digest} is given twice; the image holds it once")
            adapters.setdefault(digest, adapter)
        adapter_digests = list(adapters)
        layers += [self._layer(LAYER_ADAPTER, d, i) for i, d in enumerate(adapter_digests)]
        normalized = mf.Modelfile(
            from_=weights_digest,
            parameters=plan.params,
            template=plan.template,
            system=plan.system,
            adapters=tuple(adapter_digests),
            licenses=tuple(plan.licenses),
            messages=tuple(mf.Message(m["role"], m["content"]) for m in plan.messages),
            requires=plan.requires,
        )
        texts = [*_plain_texts(plan), (LAYER_MODELFILE, normalized_text(normalized).encode())]
        _check_text_sizes(texts)
        license_index = 0
        for media_type, data in texts:
            info = self.store.blobs.put_bytes(data)
            self._announce(info.digest, info.created, created)
            layers.append(
                LayerBlob(media_type, info.digest, info.size, text_layer_path(media_type, license_index))
            )
            license_index += media_type == LAYER_LICENSE

        ordered = order_layers(layers)
        summary = self._summary(weights_digest)
        config = compose_config(summary, ordered, self.created, plan.template)
        config_info = self.store.blobs.put_bytes(config)
        self._announce(config_info.digest, config_info.created, created)
        manifest = compose_manifest(summary, ordered, config, self.created)
        if plan.requires:
            manifest = replace(
                manifest, annotations={**manifest.annotations, ANNOTATION_REQUIRES: plan.requires}
            )
        self.progress(ProgressEvent("writing manifest"))
        manifest_bytes = manifest.to_bytes()
        manifest_info = self.store.blobs.put_bytes(manifest_bytes)
        digest, manifest_size = manifest_info.digest, manifest_info.size
        if manifest_info.created:
            created.append(digest)
        with self.store.locked():  # rm deletes under this lock: from here on no blob of ours goes
            # One reused from another image that `rm` removed meanwhile is stored again (an audit:
            # the build failed as if the store were damaged, exit 2).
            kept = [(plan.weights if plan.quantize is None else None, weights_digest)]
            kept += [(adapter, digest) for digest, adapter in adapters.items()]
            for source, blob in kept:
                if self.store.blobs.exists(blob):
                    continue
                if source is None:  # this build's quantized weights, not in an image yet
                    raise BuildError(
                        f"{target.short()}: the quantized weights ({blob}) were removed from the store "
                        "while this build ran (`modelyard prune --grace 0`?); build again"
                    )
                if source.path is None:
                    # From an image in the store (FROM name, an @sha256 blob) that was removed
                    # since: nothing here to store it again from.
                    raise BuildError(
                        f"{target.short()}: blob {blob} ({source.general_type}) was removed from the "
                        "store while this build ran (`modelyard rm` of the image it came from?); "
                        "pull or build that image again, then this one"
                    )
                self._store_source(replace(source, digest=None), created)
            for data in (*(data for _, data in texts), config, manifest_bytes):
                if not self.store.blobs.exists(sha256_digest(data)):
                    self.store.blobs.put_bytes(data)
            self.store.tag(target, digest)
        self.progress(ProgressEvent("success", digest=digest))
        blobs = [*(layer.digest for layer in ordered), config_info.digest]  # the config counts as one
        reused = sum(1 for blob in blobs if blob not in created)
        return BuildResult(
            reference=target,
            digest=digest,
            size=manifest_size + len(config) + sum(layer.size for layer in ordered),
            layers_created=len(blobs) - reused,
            layers_reused=reused,
            warnings=tuple(plan.warnings),
        )

    def _store_weights(self, plan: _Plan, created: list[str]) -> str:
        if plan.quantize is None:
            return self._store_source(plan.weights, created)
        from modelyard.builder.quantize import quantize

        status = f"quantizing {plan.weights.file_type} model to {plan.quantize}"
        self.progress(ProgressEvent(status))
        source = self._weights_file(plan.weights)
        size = source.stat().st_size

        def tensor_done(done: int, total: int) -> None:
            # In the source's bytes, as a pull's are (a bar in the CLI; Ollama's create says
            # total and completed too): the tensors done, as a share of the file.
            self.progress(ProgressEvent(status, total=size, completed=size * done // max(total, 1)))

        # Flocked while llama.cpp writes it (prune leaves it alone): it opens the same file anew.
        with self.store.blobs.new_partial("quantize") as (out, _):
            quantize(source, out, plan.quantize, on_tensor=tensor_done)
            info = self.store.blobs.adopt(out)  # hashed in place, renamed in: no second copy
        self._announce(info.digest, info.created, created)
        return info.digest

    def _weights_file(self, source: _Source) -> Path:
        """The file the weights are read from: the source file, or the blob already in the store."""
        if source.path is not None:
            return source.path
        assert source.digest is not None
        return self.store.blobs.path(source.digest)

    def _store_source(self, source: _Source, created: list[str]) -> str:
        if source.digest is not None and self.store.blobs.exists(source.digest):
            self.store.blobs.touch(source.digest)
            self._announce(source.digest, False, created)
            return source.digest
        assert source.path is not None
        identity = FileDigestCache.identity(source.path)
        total = identity["size"]
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self.progress(ProgressEvent("copying model file", total=total, completed=done))

        info = self.store.blobs.put_file(source.path, progress=advance)
        self.files.record(source.path, info.digest, identity)
        self._announce(info.digest, info.created, created)
        return info.digest

    def _layer(self, media_type: str, digest: str, index: int = 0) -> LayerBlob:
        return LayerBlob(
            media_type, digest, self.store.blobs.size(digest), text_layer_path(media_type, index)
        )

    def _announce(self, digest: str, is_new: bool, created: list[str]) -> None:
        if is_new:
            created.append(digest)
        self.progress(ProgressEvent(f"{'creating new' if is_new else 'using existing'} layer {digest}"))

    def _summary(self, digest: str) -> WeightsSummary:
        cached = self.summaries.get(digest)
        if cached is not None:
            return cached
        from modelyard.builder.gguf_info import gguf_metadata, read_gguf_info

        path = self.store.blobs.path(digest)
        info = read_gguf_info(path)
        metadata = gguf_metadata(path)
        summary = WeightsSummary.from_metadata(
            metadata,
            file_type=info.file_type,
            parameter_count=info.parameter_count,
            parameter_size=info.parameter_size,
            general_type=info.general_type,
        )
        self.summaries.put(digest, summary)
        return summary


_TEXT_LAYER_NAMES = {
    LAYER_TEMPLATE: "the TEMPLATE",
    LAYER_SYSTEM: "the SYSTEM prompt",
    LAYER_PARAMS: "the PARAMETERs",
    LAYER_MESSAGES: "the MESSAGEs",
    LAYER_LICENSE: "a LICENSE",
    LAYER_MODELFILE: "the normalized Modelfile (every text part together)",
}


def _plain_texts(plan: _Plan) -> list[tuple[str, bytes]]:
    """The image's text layers as `plan` has them, but the Modelfile (which names the weights' digest)."""
    texts: list[tuple[str, bytes]] = []
    if plan.template is not None:
        texts.append((LAYER_TEMPLATE, plan.template.encode()))
    if plan.system is not None:
        texts.append((LAYER_SYSTEM, plan.system.encode()))
    if plan.params:
        texts.append((LAYER_PARAMS, canonical_json(plan.params)))
    if plan.messages:
        texts.append((LAYER_MESSAGES, canonical_json(plan.messages)))
    texts += [(LAYER_LICENSE, text.encode()) for text in plan.licenses]
    return texts


def _check_text_sizes(texts: list[tuple[str, bytes]]) -> None:
    # The store reads text layers whole, up to MAX_TEXT_LAYER_BYTES: a larger one would build and
    # then fail every show, FROM and load.
    for media_type, data in texts:
        if len(data) > MAX_TEXT_LAYER_BYTES:
            raise BuildError(
                f"{_TEXT_LAYER_NAMES[media_type]} is {len(data):,} bytes; an image's text parts hold at "
                f"most {MAX_TEXT_LAYER_BYTES:,} bytes each (a system prompt or template that large is "
                "not one a model can read in its context anyway)"
            )


def _check_kind(path: Path, general_type: str, expect: str, instruction: str) -> None:
    if expect == "model" and general_type == "adapter":
        raise GGUFError(path, f"is a LoRA adapter, not a base model; use it with ADAPTER, not {instruction}")
    if expect == "adapter" and general_type != "adapter":
        raise GGUFError(
            path, f"is a base model (general.type {general_type!r}), not a LoRA adapter; use it with FROM"
        )


def _params_json(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in parameters.items()}


@contextlib.contextmanager
def _located(where: mf.Location | None) -> Iterator[None]:
    """A FROM's or ADAPTER's failure to resolve, placed where the Modelfile wrote its value (a CLI
    review: "FROM ./missing.gguf: no such file" said no line, as parse errors do)."""
    try:
        yield
    except ModelyardError as exc:  # a BuildError, or a pull's RegistryError
        if where is not None and not isinstance(exc, ModelfileError):
            file, line, column = where
            exc.args = (f"{file}:{line}:{column}: {exc}",)  # its kind (a GGUF's, say) stays
        raise


def _is_blob_reference(value: str) -> bool:
    return is_digest(value)


def _expand(value: str, context: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else context / path


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~", "\\")) or value.lower().endswith(".gguf")


def _single_gguf(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise BuildError(f"{path}: neither a GGUF file nor a directory holding one")
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ggufs[0]
    if not ggufs:
        if any(path.glob("*.safetensors")):
            raise BuildError(
                f"{path}: the directory holds safetensors weights, which a build does not convert; "
                "convert them to GGUF with llama.cpp's convert_hf_to_gguf.py and build FROM its output"
            )
        raise BuildError(f"{path}: the directory holds no .gguf file")
    names = ", ".join(p.name for p in ggufs)
    if all(_SPLIT_FILE.search(p.name) for p in ggufs):
        raise BuildError(
            f"{path}: the directory holds a split GGUF ({names}); merge it into one file with llama.cpp's "
            "`llama-gguf-split --merge FIRST-FILE MERGED.gguf` and build FROM the merged file"
        )
    raise BuildError(f"{path}: the directory holds several .gguf files ({names}); name one in FROM")


# How llama.cpp's gguf-split names the files of a split model.
_SPLIT_FILE = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
