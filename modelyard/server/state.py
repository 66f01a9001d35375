"""What a running server holds: settings, the store, the scheduler, metrics, and the store-side
work behind the model-management routes (list, show, build, blob uploads, pull and push in worker
threads with their progress relayed to the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.builder import modelfile as mf
from modelyard.builder.build import Builder, created_timestamp
from modelyard.builder.compose import ANNOTATION_PARAMETER_COUNT, ANNOTATION_REQUIRES
from modelyard.builder.gguf_info import read_gguf
from modelyard.builder.normalized import for_show, image_modelfile
from modelyard.builder.prompt import takes_suffix, takes_tools
from modelyard.errors import ModelyardError, WorkAbandoned
from modelyard.progress import ProgressEvent, ProgressSink
from modelyard.reference import Reference, parse_reference
from modelyard.registry import RegistryOptions
from modelyard.runtime import procstats
from modelyard.runtime.keepalive import DEFAULT_KEEP_ALIVE_S, parse_keep_alive
from modelyard.runtime.scheduler import ModelStatus, Scheduler
from modelyard.runtime.servable import Servable
from modelyard.runtime.template_workers import TemplateWorkers
from modelyard.server import request_count, request_id
from modelyard.server.http_errors import HTTPError, classify
from modelyard.server.inference import Inference
from modelyard.server.metrics import Metrics
from modelyard.settings import Settings
from modelyard.spec.daemon import SpecDaemon
from modelyard.store import Store
from modelyard.store.index import TagRecord

log = logging.getLogger("modelyard.server")


def _listed_name(name: str) -> str:
    """A name as /api/tags lists it, to compare: `tiny` is `tiny:latest`, in any case."""
    try:
        return parse_reference(name).short().casefold()
    except ModelyardError:  # a spec name no reference reads (`llama3:8b:q4`): itself
        return name.casefold()


def _listed(name: str, record: TagRecord, servable: Servable) -> dict[str, Any]:
    """One model of /api/tags: `name`, served from the store entry `record`."""
    manifest = servable.manifest
    return {
        "name": name,
        "model": name,
        "modified_at": record.tagged_at,
        "size": record.size + manifest.config.size + sum(layer.size for layer in manifest.layers),
        "digest": record.digest.removeprefix("sha256:"),
        "details": details(servable),
        "capabilities": capabilities(servable),
    }


class ServerState:
    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.metrics = Metrics(scheduler.queue_depths)
        scheduler.load_observers.append(
            lambda name, seconds: self.metrics.load_seconds.labels(name).observe(seconds)
        )
        keep_alive = (
            parse_keep_alive(settings.keep_alive, allow_bare_seconds=True)
            if settings.keep_alive
            else DEFAULT_KEEP_ALIVE_S
        )
        # Templates come from strangers: rendered in worker processes bounded in memory and time.
        self.templates = TemplateWorkers()
        self.inference = Inference(store, scheduler, self.metrics, keep_alive, templates=self.templates)
        self.started = time.time()
        self.daemon: SpecDaemon | None = None  # the reconciler, keeping a ModelSet spec in force
        self.spec_source: str | None = None  # `serve --spec X`: the spec comes from X, not /api/apply
        self.spec_poll: float | None = None  # `serve --spec-poll`: None, the source's own default
        self._loaded_details: dict[tuple[str, str], dict[str, Any]] = {}  # (name, digest) -> details

    def attach_reconciler(
        self, daemon: SpecDaemon, source: str | None, *, poll_interval: float | None = None
    ) -> None:
        self.daemon = daemon
        self.spec_source = source
        self.spec_poll = poll_interval
        self.inference.spec_targets = daemon

    # --- errors and counts --------------------------------------------------------------------

    def error_for(self, exc: BaseException) -> HTTPError:
        known = classify(exc)
        if known is not None and isinstance(exc, OSError):  # a disk error: where, for the operator
            log.warning("request %s: %s", request_id.current.get(), exc)
        if known is None:
            request = request_id.current.get()
            log.exception("internal error in request %s", request, exc_info=exc)
            message = f"internal error (request {request}; the server's log has the details)"
            return HTTPError(500, message, kind="server_error")
        return known

    def count(self, endpoint: str, model: str, status: int) -> None:
        self.metrics.requests.labels(model, endpoint, str(status)).inc()
        request_count.mark_counted()

    def registry_options(self, *, insecure: bool = False) -> RegistryOptions:
        return RegistryOptions.from_settings(self.settings, plain_http=insecure, insecure=insecure)

    # --- model listing and details ------------------------------------------------------------

    def list_models(self) -> list[dict[str, Any]]:
        """The store's images, and first the names a spec serves (a spec review: `/v1/models` and
        /api/tags left out the very names clients were told to use)."""
        from modelyard.runtime.servable import load_servable

        models = self._spec_models()
        # One entry a name: a spec name stands for the store's image of the same name (as Ollama
        # reads `tiny` and `tiny:latest` as one; a diff review saw both listed).
        spec_names = {_listed_name(m["name"]) for m in models}
        for record in sorted(self.store.images(), key=lambda r: r.tagged_at, reverse=True):
            ref = parse_reference(record.name)
            if _listed_name(ref.short()) in spec_names:
                continue
            try:
                servable = load_servable(self.store, ref)
            except Exception:
                log.warning("cannot read %s for listing", record.name, exc_info=True)
                continue
            models.append(_listed(ref.short(), record, servable))
        return models

    def spec_models_using(self, ref: Reference) -> list[str]:
        """The names the spec serves that deleting `ref` would leave without their image: theirs
        resolves in the store now, and would not once `ref` is gone (a diff review: comparing the
        texts refused a digest-pinned image's unrelated tag, and let its own entry go). Reads the
        index: in a worker thread."""
        daemon = self.daemon
        if daemon is None:
            return []
        images = {}
        for name in daemon.served_names():
            target = daemon.reconciler.target(name)
            if target is not None:
                images[name] = [
                    parse_reference(image).with_digest(digest)
                    for image, digest in [
                        (target.image, target.digest),
                        *((a.image, a.digest) for a in target.adapters),
                    ]
                ]
        try:
            return self.store.left_without_image(images, [ref])
        except ModelyardError:  # an unreadable index: the delete says so
            return []

    def _spec_models(self) -> list[dict[str, Any]]:
        daemon = self.daemon
        models: list[dict[str, Any]] = []
        if daemon is None:
            return models
        for name in daemon.served_names():
            try:
                servable = daemon.servable_for(name)
                record = self.store.resolve(servable.reference) if servable else None
            except Exception:
                log.warning("cannot read the image of %s for listing", name, exc_info=True)
                continue
            if servable is None or record is None:  # the spec dropped it meanwhile
                continue
            models.append(_listed(name, record, servable))
        return models

    def show_model(self, servable: Servable, verbose: bool) -> dict[str, Any]:
        with self.store.reading(servable.reference.short()):
            parts = self.store.read_parts(servable.manifest)
        if dict(servable.params) != parts.params:
            # A name a spec serves: its params over the image's, in the Modelfile as in "parameters"
            # (a regression hunt: the two disagreed).
            parts = dataclasses.replace(parts, params=dict(servable.params), modelfile=None)
        normalized = image_modelfile(parts, servable.manifest.annotations)
        shown = {
            "license": "\n".join(parts.licenses),  # as Ollama joins them
            # Ending in a line end, as Ollama's (written a line at a time): a line appended to the
            # saved text was joined to its last one (a review: MESSAGE user hiPARAMETER …).
            "modelfile": for_show(servable.name, normalized) + "\n" if normalized else "",
            # The defaults requests get: for a name a spec serves, its params over the image's.
            "parameters": _parameters_text(dict(servable.params)),
            "template": parts.template or servable.gguf.chat_template or "",
            "system": parts.system or "",
            "details": details(servable),
            "messages": parts.messages,
            "model_info": _model_info(servable.gguf.metadata),
            "capabilities": capabilities(servable),
            "modified_at": self.store.resolve(servable.reference).tagged_at,
            "tensors": list(_tensors(servable.weights)),  # as Ollama's, verbose or not
        } | (_verbose_parts(servable) if verbose else {})
        if requires := servable.manifest.annotations.get(ANNOTATION_REQUIRES):
            shown["requires"] = requires  # Ollama's omitempty
        shown["model_info"] |= _parameter_count(servable)
        return shown

    async def read_loaded_details(self) -> None:
        """Read the image of each loaded model whose details no request has read (one the spec
        loaded, or loaded before a create, copy or pull renamed it), once per name and digest, so
        that `/api/ps` shows them: Ollama's clients read `details`. In a thread (a GGUF's header
        is long to read)."""
        loaded = {(status.name, status.digest) for status in self.scheduler.snapshot()}
        for key in self._loaded_details.keys() - loaded:
            del self._loaded_details[key]
        for name, digest in loaded:
            cached = self.inference._servables.get(str(parse_reference(name)))
            if (name, digest) in self._loaded_details or (cached is not None and cached.digest == digest):
                continue
            servable = await asyncio.to_thread(self._servable_of, name)
            # Gone from the store: no details, and not read again while it stays loaded.
            self._loaded_details[(name, digest)] = details(servable) if servable is not None else {}

    def _servable_of(self, name: str) -> Servable | None:
        """The image a loaded name serves: the spec's, or the store's; None once gone."""
        from modelyard.runtime.servable import load_servable

        try:
            targets = self.inference.spec_targets
            if targets is not None and targets.serves(name):
                return targets.servable_for(name)
            return load_servable(self.store, parse_reference(name))
        except Exception:  # removed from the store meanwhile: no details, as before
            log.debug("no details for loaded %s", name, exc_info=True)
            return None

    @staticmethod
    def system_memory() -> dict[str, int] | None:
        """This machine's memory, as /api/ps gives it beside the models (None off Linux)."""
        system = procstats.system_memory()
        if system is None:
            return None
        return {"total": system.total, "available": system.available, "swap_used": system.swap_used}

    def running_models(self, statuses: list[ModelStatus]) -> list[dict[str, Any]]:
        """/api/ps's models, from `statuses` (Scheduler.live_status)."""
        out = []
        for status in statuses:
            expires = status.expires_at
            if expires is None:
                expires_at = "9999-12-31T23:59:59Z"  # what `keep_alive: -1` shows in Ollama
            else:
                wall = time.time() + (expires - self.scheduler.clock())
                expires_at = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            servable = self.inference._servables.get(str(parse_reference(status.name)))
            read = self._loaded_details.get((status.name, status.digest))
            out.append(
                {
                    "name": status.name,
                    "model": status.name,
                    "size": status.size,
                    "digest": status.digest.removeprefix("sha256:"),
                    "details": read if read is not None else _details_or_empty(servable),
                    "expires_at": expires_at,
                    "size_vram": status.size_vram,
                    "context_length": status.context_effective
                    or status.context_length,  # as Ollama: effective
                    # modelyard's own, for `modelyard ps`: what Ollama users ask for
                    "processor": status.processor,
                    "state": "stopping" if status.stopping and status.state == "ready" else status.state,
                    "slots": status.slots,
                    "slots_busy": status.slots_busy,
                    "queued": status.queued,
                    "pinned": status.pinned,
                    "runner_pid": status.runner_pid,
                    "runner_rss": status.runner_rss,
                    "weights_resident": status.weights_resident,
                    "kv_bytes": status.kv_bytes,
                    "note": status.note,
                    "shares_runner_of": status.shares_runner_of,
                }
            )
        return out

    # --- work in threads, progress to the loop -------------------------------------------------

    async def in_thread(self, work: Callable[[ProgressSink], Any]) -> AsyncGenerator[ProgressEvent, None]:
        """Run `work(sink)` in a worker thread; yield its progress events; raise what it raised.
        Closed before the work ends (its client went away), the work stops at its next progress
        event with WorkAbandoned: a pull keeps what it has received, for the next one to resume."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()
        abandoned = threading.Event()

        def sink(event: ProgressEvent) -> None:
            if abandoned.is_set():
                raise WorkAbandoned("the client that asked for this went away")
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def run() -> Any:
            try:
                return work(sink)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = loop.run_in_executor(None, run)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # nobody may await it
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            if not task.done():
                abandoned.set()
        await task  # raises what the work raised

    async def build(
        self, modelfile: mf.Modelfile, target: Reference, quantize: str | None
    ) -> AsyncGenerator[ProgressEvent, None]:
        def work(sink: ProgressSink) -> None:
            builder = Builder(
                self.store,
                self.settings.cache_dir,
                created=created_timestamp(self.settings.source_date_epoch),
                progress=sink,
            )
            # An empty folder as the build context: names in FROM never resolve to server files.
            with tempfile.TemporaryDirectory(prefix="modelyard-create-") as context:
                builder.build(modelfile, target, context=Path(context), quantize=quantize)

        async with contextlib.aclosing(self.in_thread(work)) as events:  # its client gone: stop it too
            async for event in events:
                yield event

    async def receive_blob(self, digest: str, body: AsyncIterator[bytes]) -> None:
        """Stream an upload into the store, verified; nothing enters on a mismatch."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

        def chunks() -> Any:
            while (chunk := asyncio.run_coroutine_threadsafe(queue.get(), loop).result()) is not None:
                yield chunk

        task = loop.run_in_executor(
            None, lambda: self.store.blobs.put_chunks(chunks(), expected=digest, source="upload")
        )

        async def hand_over(item: bytes | None) -> bool:
            """Queue `item` for the writer; False once the writer has stopped. A writer that failed
            (a disk error) takes nothing more: waiting on a full queue alone would wait for ever
            (a build review: the upload never answered)."""
            if task.done():
                return False
            if not queue.full():
                queue.put_nowait(item)
                return True
            putting: asyncio.Future[Any] = asyncio.ensure_future(queue.put(item))
            waiting: list[asyncio.Future[Any]] = [putting, task]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if putting.done():
                return True
            putting.cancel()
            return False

        try:
            async for chunk in body:
                if chunk and not await hand_over(chunk):
                    break  # the writer failed: its error is the answer, the rest goes unread
        finally:
            await hand_over(None)
        await task


def details(servable: Servable) -> dict[str, Any]:
    """Ollama's `details` object, from the image's ModelPack config."""
    config = servable.config
    family = str(config.get("architecture", ""))
    return {
        "parent_model": "",
        "format": str(config.get("format", "gguf")),
        "family": family,
        "families": [family] if family else [],
        "parameter_size": str(config.get("paramSize", "")),
        "quantization_level": str(config.get("quantization", "")),
    }


def capabilities(servable: Servable) -> list[str]:
    if servable.is_embedding_model:
        return ["embedding"]
    caps = ["completion"]
    if takes_tools(servable.prompting):
        caps.append("tools")
    if takes_suffix(servable.prompting):
        caps.append("insert")  # fill in the middle: generate's `suffix`
    return caps


def _details_or_empty(servable: Servable | None) -> dict[str, Any]:
    return {} if servable is None else details(servable)


def _parameters_text(params: dict[str, Any]) -> str:
    lines = []
    for name in sorted(params):
        values = params[name] if isinstance(params[name], list | tuple) else [params[name]]
        for value in values:
            if isinstance(value, str):
                text = f'"{value}"'
            elif isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
                text = str(int(value))  # as Go prints a float64: temperature 1, not 1.0
            else:
                text = str(value)
            lines.append(f"{name:<30} {text}")
    return "\n".join(lines)


def _model_info(metadata: Mapping[str, Any], *, whole: bool = False) -> dict[str, Any]:
    """The GGUF's metadata as Ollama's /api/show gives it: without the chat template (that is
    `template`), arrays of more than 5 elements as [] unless `whole` (verbose)."""
    info = {}
    for key, value in metadata.items():
        if key in ("tokenizer.chat_template", "general.name"):  # what Ollama leaves out
            continue
        if not whole and (
            (isinstance(value, str) and _SUMMARISED_ARRAY.fullmatch(value))
            or (isinstance(value, list) and len(value) > 5)
        ):
            value = []
        elif isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        info[key] = value
    return info


def _parameter_count(servable: Servable) -> dict[str, Any]:
    """Ollama's `general.parameter_count`, which it counts from the tensors: the build counted it
    too (an image pulled from another tool may not say)."""
    count = servable.manifest.annotations.get(ANNOTATION_PARAMETER_COUNT, "")
    return {"general.parameter_count": int(count)} if count.isdigit() else {}


_SUMMARISED_ARRAY = re.compile(r"\[\d+ items\]")  # how gguf_info summarises a long array


def _verbose_parts(servable: Servable) -> dict[str, Any]:
    """`verbose`: every metadata array whole, as Ollama."""
    contents = read_gguf(servable.weights, whole_arrays=True)
    return {"model_info": _model_info(contents.metadata, whole=True)}


@functools.lru_cache(maxsize=32)
def _tensors(weights: Path) -> tuple[dict[str, Any], ...]:
    """The tensors of a weights blob (name, type, shape): read once, since a blob's bytes never
    change under its digest (~80 ms for Gemma 3 270M's 236, arrays left unread)."""
    contents = read_gguf(weights)
    return tuple({"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape)} for t in contents.tensors)


__all__ = ["ServerState", "capabilities", "details"]
