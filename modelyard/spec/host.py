"""The reconciler's effects on this machine: the store, the registries and the scheduler.

resolve       a remote tag: a HEAD of its manifest (registry/resolve.py); a local name: the store's
              tag; a pinned reference: its own digest
local_digest  the stored image for a digest: equal to it for ModelPack images, or the image that
              was converted from it (Ollama, Docker) as its `io.modelyard.source.digest` says
pull          registry.pull
footprint     the memory estimate from the GGUF header, with the spec's options (footprint.py)
ensure        Scheduler.ensure with the image's request (parameters ⊕ the spec's options)
running       the scheduler's snapshot (no /proc reads)

Whatever reads files (the store's index, manifests, GGUF headers, templates) or the network runs
in a worker thread: the event loop also serves every request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace
from pathlib import Path

import httpx

from modelyard.errors import (
    ImageNotFoundError,
    ModelyardError,
    NotAnAdapterError,
    RegistryUnavailableError,
    StoreError,
    WorkAbandoned,
)
from modelyard.progress import ProgressEvent
from modelyard.reference import Reference, parse_reference
from modelyard.registry import RegistryOptions, pull
from modelyard.registry.formats import ANNOTATION_SOURCE_DIGEST
from modelyard.registry.resolve import resolve_remote_digest
from modelyard.registry.retry import RetryPolicy
from modelyard.runtime.scheduler import ModelRequest, ModelStatus, Scheduler
from modelyard.runtime.servable import Servable, load_servable
from modelyard.spec.footprint import footprint
from modelyard.spec.plan import LoadTarget, Running
from modelyard.store import Store

log = logging.getLogger(__name__)

# Checking a tag happens every interval: fail fast and say so, rather than hold the round up. The
# timeout too: a registry that takes connections and never answers held each check for 2 x 60 s,
# and the whole round (new specs, apply) behind it.
RESOLVE_RETRY = RetryPolicy(attempts=2, base_s=0.2, cap_s=1.0)
RESOLVE_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
# The timeout above is a read's: a registry that sends a header line every 4 s held a check (and
# the round) past a minute (a registry review). The whole check, retries included, gets this.
RESOLVE_DEADLINE_S = 15.0
CHECKS_WAITED = 3  # deadlines a later round waits on a check under way before it asks anew


class SchedulerHost:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        registry: RegistryOptions,
        *,
        resolve_retry: RetryPolicy = RESOLVE_RETRY,
        resolve_timeout: httpx.Timeout = RESOLVE_TIMEOUT,
        resolve_deadline_s: float = RESOLVE_DEADLINE_S,
    ) -> None:
        self.resolve_deadline_s = resolve_deadline_s
        self._checking: dict[str, tuple[asyncio.Future[str], float]] = {}  # under way: (check, start)
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self._resolve_options = replace(registry, retry=resolve_retry, timeout=resolve_timeout)

    async def resolve(self, image: str) -> str:
        ref = parse_reference(image)
        if ref.digest is not None:
            return ref.digest
        if not ref.is_remote:
            return (await asyncio.to_thread(self.store.resolve, ref)).digest
        loop = asyncio.get_running_loop()
        checking, began = self._checking.get(image, (None, 0.0))
        # A check still under way is waited for, not started again beside it; one stuck past a few
        # deadlines (a connection that trickles for ever) is left to its thread, and a new one asks.
        if (
            checking is None
            or checking.done()
            or loop.time() - began > CHECKS_WAITED * self.resolve_deadline_s
        ):
            asking = asyncio.to_thread(resolve_remote_digest, ref, self._resolve_options)
            checking, began = asyncio.ensure_future(asking), loop.time()
            checking.add_done_callback(lambda done: None if done.cancelled() else done.exception())
            self._checking[image] = (checking, began)
        try:
            # Shielded: its thread cannot be stopped. It goes on until the registry answers or a
            # read times out, unwaited; the next round's check waits for it rather than start
            # another thread beside it.
            return await asyncio.wait_for(asyncio.shield(checking), self.resolve_deadline_s)
        except TimeoutError:
            raise RegistryUnavailableError(
                ref.host or "", f"no answer to the tag check of {ref} within {self.resolve_deadline_s:g} s"
            ) from None

    async def local_digest(self, image: str, digest: str) -> str | None:
        return await asyncio.to_thread(self._local_digest, image, digest)

    def _local_digest(self, image: str, digest: str) -> str | None:
        """Reads the index and manifests: in a worker thread."""
        ref = parse_reference(image)
        try:
            record = self.store.resolve(ref.with_digest(digest))
            return record.digest
        except ImageNotFoundError:
            pass
        index = self.store.read_index()
        if index.holder(digest) is not None:
            return digest  # its own name is gone (`rm --force`), another holds it: servable() serves it
        if not ref.is_remote:
            return None
        # An Ollama or Docker image was converted on pull: find the image made from that digest.
        for record in (*index.tags, *index.history):
            if not record.name.startswith((f"{ref.name}:", f"{ref.name}@")):
                continue
            try:
                manifest = self.store.read_manifest(record.digest)
            except StoreError:
                continue
            if manifest.annotations.get(ANNOTATION_SOURCE_DIGEST) == digest:
                return record.digest
        return None

    async def pull(self, image: str, digest: str) -> str:
        ref = parse_reference(image)
        if not ref.is_remote:
            raise ImageNotFoundError(
                ref.short(),
                "it names no registry: build it (`modelyard build`) or name a registry in the spec",
            )
        abandoned = threading.Event()

        def progress(_event: ProgressEvent) -> None:
            if abandoned.is_set():
                raise WorkAbandoned(f"the spec no longer wants {ref.short()}@{digest[:19]}")

        try:
            result = await asyncio.to_thread(pull, self.store, ref, self.registry, progress)
        except asyncio.CancelledError:
            # The thread goes on to its next progress event, a chunk away, and stops there; what
            # it received stays for a later pull to resume.
            abandoned.set()
            raise
        return result.digest

    async def footprint(self, target: LoadTarget) -> int | None:
        """Estimated bytes with the spec's options (footprint.py); reads the image in a worker thread."""
        return await asyncio.to_thread(self._footprint, target)

    def _footprint(self, target: LoadTarget) -> int | None:
        try:
            return footprint(self.servable(target.image, target.digest), target.options)
        except ModelyardError as exc:
            log.debug("no estimate for %s: %s", target.name, exc)
            return None

    def request(self, target: LoadTarget) -> ModelRequest:
        """The scheduler request for `target`: the image's parameters ⊕ the spec's options, its
        adapters and the spec's adapter images, keep_alive, pinned."""
        servable = self.servable(target.image, target.digest)
        request = servable.request(
            name=target.name, options=target.options, keep_alive=target.keep_alive, pinned=target.pinned
        )
        request = replace(request, protects=target.protects)
        extra: tuple[tuple[Path, float], ...] = ()
        for adapter in target.adapters:
            held = self.servable(adapter.image, adapter.digest).adapters
            if not held:  # served without it, the model answered as the base did (a spec review)
                raise NotAnAdapterError(target.name, adapter.image)
            extra += tuple((path, adapter.scale) for path, _ in held)
        return replace(request, adapters=request.adapters + extra) if extra else request

    async def ensure(self, target: LoadTarget, *, side_by_side: bool = True) -> Running:
        request = await asyncio.to_thread(self.request, target)
        await self.scheduler.ensure(request, side_by_side=side_by_side)
        return next(
            (r for r in self.running() if r.name == target.name and r.digest == target.digest),
            Running(target.name, target.digest, "ready"),
        )

    async def unload(self, name: str) -> None:
        await self.scheduler.unload(name)

    def running(self) -> list[Running]:
        """The scheduler's models; during a swap the draining old runner comes after the new one.
        From its snapshot: no /proc reads, cheap enough for the glance every second."""
        statuses = self.scheduler.snapshot()
        statuses.sort(key=_draining)
        return [_running(s) for s in statuses]

    def memory_budget(self) -> int:
        return self.scheduler.ram_budget + self.scheduler.gpu_budget

    def expired(self) -> frozenset[str]:
        return self.scheduler.expired_names()

    def servable(self, image: str, digest: str) -> Servable:
        """The image `image` names at `digest`; under another name that holds the digest when that
        name is gone (`rm --force`): the model loaded from it serves on, as its status says, rather
        than fail every request with 404 (a CLI review)."""
        ref: Reference = parse_reference(image).with_digest(digest)
        try:
            return load_servable(self.store, ref)
        except ImageNotFoundError:
            holder = self.store.read_index().holder(digest)
            if holder is None:
                raise
            return load_servable(self.store, parse_reference(holder.name).with_digest(digest))


def _draining(status: ModelStatus) -> bool:
    # The scheduler notes "swapping to …" on the runner a swap replaces.
    return status.note.startswith("swapping to") or status.state == "unloading"


def _running(status: ModelStatus) -> Running:
    return Running(
        name=status.name,
        digest=status.digest,
        state=status.state,
        size=status.size,
        context_length=status.context_length,
        slots=status.slots,
        pinned=status.pinned,
        last_error=status.last_error,
        note=status.note,
        shares_runner=bool(status.shares_runner_of),
        failure_kind=status.failure_kind,
    )
