"""The scheduler: which runners exist. The HTTP API and the reconciler both go through it.

- Loads one model at a time (memory is decided one load at a time); concurrent requests for a
  model that is loading wait for that one load.
- Keeps a memory budget for RAM and for the GPUs (default: what is available at start, minus a
  reserve). A model that does not fit makes room by the pure policy in eviction.py (never a busy or
  pinned model); if no choice of idle models frees enough, busy ones that do are closed: they take
  no new request and unload once theirs end (as Ollama's scheduler drains the runner it chose),
  for at most `drain_wait`, then serve on. The load waits up to `memory_wait` in all, then gets
  ServerBusyError (HTTP 503 + Retry-After). A model that cannot fit even alone is refused at once
  with ModelDoesNotFitError. Never an out-of-memory crash by our own doing.
- A runner's first embeddings request makes a second context (two rows of logits a token: 1 GiB
  for 512 tokens of Gemma 3): `reserve_embeddings` counts it, making room the same way, before the
  runner allocates it.
- keep_alive with Ollama's semantics: the timer starts when the last request ends; 0 unloads at
  once; forever never; the latest request that names one sets it for the model.
- A bounded queue per model (default 512 beyond the slots): past it, ServerBusyError.
- A runner that dies marks its model failed; the next request reloads it, after a backoff that
  grows with consecutive failures.

Asyncio: call from one event loop. Runner starts and stops run in worker threads; time comes from
an injected clock, so keep_alive and backoff tests don't sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelyard.errors import ModelDoesNotFitError, ModelLoadError, RunnerError, ServerBusyError, memory_size
from modelyard.runtime import procstats
from modelyard.runtime.eviction import Resident, Shortfall, choose_drains, choose_evictions, evictable
from modelyard.runtime.gpu import Device, OffloadPlan, plan_offload, processor_split
from modelyard.runtime.keepalive import DEFAULT_KEEP_ALIVE_S
from modelyard.runtime.memory import (
    RUNNER_PROCESS_BYTES,
    MemoryEstimate,
    ModelShape,
    embedding_context_tokens,
    embedding_estimate,
    estimate,
)
from modelyard.runtime.options import DEFAULT_NUM_CTX, LoadOptions, parse_load_options
from modelyard.runtime.runner import Launcher, Runner, RunnerSpec

log = logging.getLogger(__name__)

GIB = 1024**3
AUTO_PARALLEL_CHOICES = (4, 2, 1)

Clock = Callable[[], float]
Starter = Callable[..., Runner]


@dataclass(frozen=True)
class SchedulerSettings:
    ram_budget: int | None = None  # None: MemAvailable at start minus ram_reserve
    ram_reserve: int = GIB
    # Each runner process's own memory beside its model's (the interpreter, llama.cpp's code): with
    # a dozen small models, uncounted, it was the size of the reserve.
    runner_process_bytes: int = RUNNER_PROCESS_BYTES
    gpu_reserve: int = 512 * 1024**2
    max_queue: int = 512  # requests waiting per model beyond its busy slots
    default_keep_alive: float = DEFAULT_KEEP_ALIVE_S
    num_parallel: int | None = None  # $MODELYARD_NUM_PARALLEL; None = auto
    max_loaded_models: int | None = None  # $MODELYARD_MAX_LOADED_MODELS: runners; None = memory decides
    # How long a load waits for memory before its requests get 503. Loads go one at a time: a
    # request for another model queued behind one that waits waits for that first (a concurrency
    # review measured 57 s with two in line).
    memory_wait: float = 30.0
    # How long a busy model stays closed to new requests so that another model's load gets its
    # memory; then it serves on (a stream without end must not hold its own model's requests as
    # long), and that load waits out memory_wait for it to go idle.
    drain_wait: float = 10.0
    retry_after: float = 5.0
    load_timeout: float = 300.0
    # A runner with requests that says nothing for this long (no token, no heartbeat: stopped, or
    # stuck in a C call) is killed; its requests fail, and the next request loads it again.
    hang_timeout: float = 300.0
    backoff_base: float = 2.0
    backoff_max: float = 60.0


@dataclass(frozen=True)
class ModelRequest:
    """What a caller needs loaded: resolved from the store by the server or the reconciler."""

    name: str  # the name clients use
    digest: str  # manifest digest
    weights: Path
    shape: ModelShape | None = None  # from the GGUF header, for the estimate (None: file size only)
    adapters: tuple[tuple[Path, float], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # image params ⊕ spec ⊕ request options
    keep_alive: float | None = None  # None: keep the model's current value
    pinned: bool = False
    # Names whose runners this load must not evict or drain, as if pinned: the spec's models before
    # it, so that a lower priority never displaces a higher one (the reconciler sets it).
    protects: frozenset[str] = frozenset()


class EntryState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass
class _Entry:
    name: str
    digest: str
    requested: LoadOptions  # as resolved from the request: what later requests are compared with
    options: LoadOptions  # as loaded (num_gpu decided by the offload plan)
    adapters: tuple[tuple[Path, float], ...]
    weights: Path
    estimate: MemoryEstimate
    plan: OffloadPlan
    process_bytes: int  # the runner process's own, beside the model's (SchedulerSettings)
    shape: ModelShape | None = None
    protects: frozenset[str] = frozenset()  # ModelRequest.protects: its load evicts none of them
    embedding: MemoryEstimate | None = None  # the embeddings context, once reserved
    state: EntryState = EntryState.LOADING
    runner: Runner | None = None
    loaded: asyncio.Future[None] | None = None
    refs: int = 0
    waiting: int = 0
    expires_at: float | None = None
    last_used: float = 0.0
    failures: int = 0
    failure_kind: str = ""  # "load-failed" or "crashed", for ServerBusyError's reason
    retry_at: float = 0.0
    last_error: str = ""
    load_seconds: float = 0.0
    draining: bool = False  # being replaced: no new leases
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set once unloaded
    note: str = ""  # what the scheduler is doing with it (a swap), for status
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Other names this runner serves, with their digests: images on the same weights, adapters and
    # load options (a copy, or a new SYSTEM), as Ollama shares one runner between them.
    aliases: dict[str, str] = field(default_factory=dict)
    # Each name's keep_alive and pin: the runner stays as long as the longest asks, and is pinned
    # while any name pins it (one name's keep_alive 0 must not unload another's pinned model).
    keep_by: dict[str, float] = field(default_factory=dict)
    pinned_by: set[str] = field(default_factory=set)
    # Each name's requests in flight, and when its last one ended (or it joined): a name that
    # shares the runner leaves it when its own keep_alive runs out, the others keeping it.
    # Leases are held by identity: a name that left while its request ran, and came back, must not
    # count the old request's end against its new ones.
    leases_by: dict[str, set[Lease]] = field(default_factory=dict)
    used_by: dict[str, float] = field(default_factory=dict)
    # No other name may join it: it is going (unload, expiry, keep_alive 0, a drain: never undone
    # but by a request that arrives before it goes), or a swap is replacing it (undone if it fails).
    doomed: bool = False
    swapping: bool = False
    # Loaded for requests that have not taken it yet: they resume a turn of the loop after the load
    # ends, and another load could evict it as idle in between (then they load it again, and two
    # models took turns loading for ever). Cleared when the first of them resumes.
    fresh: bool = False
    # Draining to unload (stop, keep_alive 0, a reload with other options, another model's load that
    # needs its memory): no request joins it but one that was already waiting for its load; the
    # others wait for `settled`, then load anew (or, a drain for memory called off, take it).
    closing: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set when a drain ends
    # The drain in charge: a stop takes over a drain for memory (and is never called off); only the
    # one in charge opens the model again.
    drain_owner: object | None = None
    closing_for: str = ""  # the name whose load the drain makes room for; "" for a stop
    # Draining for a stop (`unload`: keep_alive 0, `modelyard stop`, a delete), not for a reload
    # with other options: a request its runner serves calls it off (`_revive`).
    stopping: bool = False
    making_room: bool = False  # a load waiting in _make_room: drains for it go on while it does
    room_for_requests: bool = False  # ...for requests (not a swap): while one of them still waits
    # A short-gap swap's new digest, waiting for the old one to go and then for the load lock: it
    # holds nothing yet. Counted as holding, it made a load that held the lock wait for memory that
    # only it held on paper, while it waited for that lock: each for the other until memory_wait.
    queued: bool = False

    @property
    def host_bytes(self) -> int:
        info = self.runner.info if self.runner is not None else None
        loaded = self.estimate.host if info is None else max(info.total_bytes - info.device_bytes, 0)
        return loaded + self.process_bytes + (self.embedding.host if self.embedding is not None else 0)

    @property
    def device_bytes(self) -> int:
        info = self.runner.info if self.runner is not None else None
        loaded = info.device_bytes if info is not None else self.estimate.device
        return loaded + (self.embedding.device if self.embedding is not None else 0)

    @property
    def waiting_for_room(self) -> bool:
        """A load waiting for memory: no runner yet, and holding none in what status reports."""
        return self.state is EntryState.LOADING and self.making_room and self.runner is None

    @property
    def holds_memory(self) -> bool:
        if self.queued:
            return False
        return self.state in (EntryState.LOADING, EntryState.READY, EntryState.UNLOADING)

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def digest_of(self, name: str) -> str:
        return self.aliases.get(name, self.digest)

    def matches(self, request: ModelRequest, options: LoadOptions) -> bool:
        return (
            self.digest_of(request.name) == request.digest
            and self.requested == options
            and self.adapters == request.adapters
        )

    def another_image(self, request: ModelRequest) -> bool:
        """Another image under the same name: a swap, the old one serving until the new one is
        loaded, whatever the new one's load options (a soak review: a rebuild from a GGUF of
        another trained context, so another default num_ctx, waited for the old one's streams to
        end, for ever with num_predict -1)."""
        return self.digest_of(request.name) != request.digest

    def runs(self, request: ModelRequest, options: LoadOptions) -> bool:
        """Whether this runner is the one `request` would load: the same weights, adapters and load
        options. Another image can say so (a new SYSTEM, TEMPLATE or sampling PARAMETER: the
        server renders those; the runner never sees them)."""
        return (
            self.weights == request.weights
            and self.adapters == request.adapters
            and self.requested == options
        )

    def retarget(self, request: ModelRequest) -> None:
        """Serve `request`'s digest from this same runner: no load, no swap."""
        if request.name in self.aliases:
            self.aliases[request.name] = request.digest
        else:
            if self.digest != request.digest:
                self.note = ""  # an earlier swap's "replaced …" was about another digest (a spec review)
            self.digest = request.digest

    def set_lifetime(self, name: str, keep_alive: float | None, pinned: bool | None) -> None:
        """Record one name's keep_alive (None: unchanged) and pin (None: unchanged)."""
        if keep_alive is not None:
            self.keep_by[name] = keep_alive
        if pinned is True:
            self.pinned_by.add(name)
        elif pinned is False:
            self.pinned_by.discard(name)

    def forget(self, name: str) -> None:
        self.keep_by.pop(name, None)
        self.pinned_by.discard(name)
        self.leases_by.pop(name, None)
        self.used_by.pop(name, None)

    def name_expires_at(self, name: str, now: float) -> float | None:
        """When `name` would go on its own keep_alive (clock time); None: never (forever, pinned).
        While its requests run, their end is not known: now + keep_alive, as Ollama reports it."""
        keep = self.keep_by.get(name, self.keep_alive)
        if name in self.pinned_by or not math.isfinite(keep):
            return None
        if self.leases_by.get(name):
            return now + keep
        return self.used_by.get(name, self.last_used) + keep

    @property
    def keep_alive(self) -> float:
        """The runner's: the longest its names ask for."""
        return max(self.keep_by.values(), default=DEFAULT_KEEP_ALIVE_S)

    @property
    def pinned(self) -> bool:
        """The runner's: pinned while one of its names pins it."""
        return bool(self.pinned_by)


@dataclass(frozen=True)
class ModelStatus:
    """One loaded model, as `ps` and /api/ps show it."""

    name: str
    digest: str
    state: str
    size: int
    size_vram: int
    processor: str
    context_length: int  # num_ctx as loaded (the reconciler compares it with the spec's)
    slots: int
    slots_busy: int
    queued: int
    expires_at: float | None  # clock time; None = never
    pinned: bool
    runner_pid: int
    runner_rss: int | None
    weights_resident: int | None
    kv_bytes: int
    load_seconds: float
    last_error: str
    note: str = ""
    failure_kind: str = ""  # for a failed one: "crashed" (it ran) or "load-failed" (it never did)
    shares_runner_of: str = ""  # served by that name's runner, whose row carries the memory
    # Tokens a slot really holds: llama.cpp rounds a context up (to a multiple of 256), so a
    # num_ctx of 100 holds 256. 0 until the runner has loaded.
    context_effective: int = 0
    stopping: bool = False  # taking no new request: it unloads once its requests end (a stop, a drain)
    waiting: bool = False  # a load waiting for memory: no runner yet, and holding none


class Lease:
    """A claim on a loaded model for one request. Release it when the request ends."""

    def __init__(self, scheduler: Scheduler, entry: _Entry, name: str) -> None:
        self._scheduler = scheduler
        self._entry = entry
        self.name = name
        self.runner: Runner = entry.runner  # type: ignore[assignment]
        self.released = False

    def release(self, *, served: bool = False) -> None:
        """`served`: a request ran to completion on this runner (which resets the crash count)."""
        if not self.released:
            self.released = True
            self._scheduler._release(self._entry, self, served)


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        starter: Starter = Runner.start,
        devices: list[Device] | None = None,
        available_ram: int | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self.settings = settings or SchedulerSettings()
        self.clock = clock
        self._starter = starter
        self._launcher = launcher
        self.devices = devices if devices is not None else []
        if self.settings.ram_budget is not None:
            self.ram_budget = self.settings.ram_budget
        else:
            if available_ram is None:
                system = procstats.system_memory()
                available_ram = system.available if system else 8 * GIB
            self.ram_budget = max(available_ram - self.settings.ram_reserve, 0)
        self.gpu_budget = sum(max(d.free - self.settings.gpu_reserve, 0) for d in self.devices)
        self._entries: dict[str, _Entry] = {}
        self._swaps: dict[str, tuple[str, asyncio.Task[None]]] = {}  # name -> (new digest, task)
        self._retiring: list[_Entry] = []  # replaced by a swap, draining: still holding memory
        # Names unloaded after their keep_alive, until they load again: the reconciler tells a
        # model that went so (Standby: it loads on the next request) from one unloaded by a client
        # or a stop, which selfHeal loads again (a spec review: it took every one for the first).
        self._expired: set[str] = set()
        self._load_lock = asyncio.Lock()
        self._starting: Counter[str] = Counter()  # requests per name waiting for a load they began
        # Requests per name not holding a lease yet, whatever they wait for: a load, memory for
        # it, another name's load, an unload or a swap. With the leases beyond the slots, the queue.
        self._acquiring: Counter[str] = Counter()
        self._crashes: dict[str, int] = {}  # crashes of names whose failed entry left the list
        self._capacity = asyncio.Condition()
        self._expiry_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()  # referenced, or asyncio may collect them
        self.loads = 0  # runners started, for tests and metrics
        # Called with (name, seconds) as each runner is ready: the server's load-time histogram,
        # one observation a load, whoever asked for it (requests or the reconciler).
        self.load_observers: list[Callable[[str, float], None]] = []
        # Told of each runner that died while it served (name, why), on the loop: a crash the next
        # request mends at once is otherwise seen by nobody but the log.
        self.crash_observers: list[Callable[[str, str], None]] = []

    # --- public API ------------------------------------------------------------------------

    async def acquire(self, request: ModelRequest) -> Lease:
        """Wait until the model is loaded and return a lease on it."""
        self._check_waiting(request)
        self._acquiring[request.name] += 1
        try:
            return await self._acquire(request)
        finally:
            self._acquiring[request.name] -= 1
            if not self._acquiring[request.name]:
                del self._acquiring[request.name]
                entry = self._entries.get(request.name)
                if entry is not None and entry.making_room:
                    self._spawn(self._notify_capacity())  # its load, waiting for memory, gives up now
                if entry is not None:
                    self._settle_fresh(entry, request.name)

    async def _acquire(self, request: ModelRequest) -> Lease:
        options = self._resolve_options(request)
        in_line: _Entry | None = None  # the entry whose load this request waited for
        while True:
            entry = self._entries.get(request.name)
            if entry is not None:
                if self._revivable(entry, request, options):
                    # Stopped, its streams still running, and asked for again: it serves on, as
                    # Ollama's loaded runner takes the request (a concurrency review: requests
                    # waited for streams without end, then got a 503).
                    self._revive(entry, request)
                    continue
                if entry is not in_line and self._retirable(entry, request):
                    # The name's new digest loads beside the one on its way out, whose streams are
                    # not its queue (a diff review: they could refuse it with a 503).
                    self._retire(entry, request.name)
                    continue
                self._check_queue(entry)
                if entry.closing and entry is not in_line:
                    # Going away: a new request would hold it up; it loads anew afterwards. One that
                    # waited for its load is served by it first.
                    await self._wait_for_drain(entry, request.name)
                    continue
                if entry.state is EntryState.READY and entry.matches(request, options):
                    return self._lease(entry, request)
                if entry.state is EntryState.LOADING and entry.matches(request, options):
                    await self._wait_for_load(entry)
                    in_line = entry
                    continue
                if entry.state is EntryState.LOADING:
                    # Loading with other options or another digest: let that load finish, then decide.
                    with contextlib.suppress(Exception):
                        await self._wait_for_load(entry)
                    continue
                if entry.state is EntryState.FAILED and self.clock() < entry.retry_at:
                    what = "crashed" if entry.failure_kind == "crashed" else "failed to load"
                    raise ServerBusyError(
                        f"{request.name} {what} ({entry.last_error}); retrying after "
                        f"{entry.retry_at - self.clock():.0f} s",
                        retry_after=max(entry.retry_at - self.clock(), 1.0),
                        reason=entry.failure_kind,
                    )
                if entry.state is EntryState.READY and not entry.draining and entry.runs(request, options):
                    entry.retarget(request)  # another digest, the same runner: nothing to load
                    return self._lease(entry, request)
                if entry.state is EntryState.READY and entry.aliases:
                    # A runner other names share: this name leaves it (they keep it) and loads anew.
                    self._detach(entry, request.name)
                    continue
                if entry.state is EntryState.READY and not entry.draining and entry.another_image(request):
                    # The name now points at another digest: load it beside this one and keep
                    # serving this one until the new one is ready (no downtime), from its free
                    # slots: queued behind its streams, a request waited for them with the new
                    # runner ready and idle (a concurrency review).
                    swap = self._start_swap(request, options, entry)
                    if entry.refs < entry.options.num_parallel:
                        return self._lease(entry, request)
                    await self._wait_for_switch(entry, request.name)
                    if swap.done() and self._entries.get(request.name) is entry:
                        # It failed: the old digest serves on, this request in its queue (a diff
                        # review: looping back, requests started a failing load every 20 ms).
                        return self._lease(entry, request)
                    continue
                if entry.state is EntryState.READY and entry.draining:
                    await self._wait_for_swap(request.name)
                    continue
                if entry.state is EntryState.UNLOADING:
                    await entry.gone.wait()  # then load it again
                    continue
                if entry.state is EntryState.READY:
                    # Other load options (num_ctx, adapters…): Ollama reloads; wait for the old one to drain.
                    if entry.refs == 0 and (entry.waiting or self._starting[request.name]):
                        # Just loaded for requests that have not taken it yet (they wake after this
                        # one, or after a load of another model that holds the lock): they are
                        # served first, or each reload would be undone before it served anyone, for
                        # as long as requests of both kinds keep coming. Polled: nothing signals it.
                        await asyncio.sleep(0.02)
                        continue
                    self._check_fits_alone(request, options)  # before the runner serving others goes
                    await self._drain_for_reload(entry, request.name)
                    continue
            # The load is a task of its own: a request whose client leaves must not take down the
            # load others wait for, nor leave a runner starting that nothing accounts for.
            loading = self._spawn(self._load(request, options, entry))
            loading.add_done_callback(_consume_task_exception)
            self._starting[request.name] += 1
            try:
                await asyncio.shield(loading)
            finally:
                self._starting[request.name] -= 1
                in_line = self._entries.get(request.name)
                if in_line is not None:
                    in_line.fresh = False  # taken now (no await before the lease), or given up

    @contextlib.asynccontextmanager
    async def lease(self, request: ModelRequest) -> AsyncIterator[Lease]:
        held = await self.acquire(request)
        served = False
        try:
            yield held
            served = True
        finally:
            held.release(served=served)

    async def preload(self, request: ModelRequest) -> None:
        """Load without a request (Ollama's empty prompt); keep_alive starts at once."""
        (await self.acquire(request)).release()

    async def reserve_embeddings(self, lease: Lease) -> None:
        """Count the embeddings context that the leased runner makes on its first embeddings
        request, making room for it first (evicting idle models, or waiting, or refusing).

        Not under the load lock: this request holds a lease, and a load waiting for this model to
        go idle would wait on us while we waited on it. The last check and the counting run with no
        await between them, so two first requests count the context once."""
        entry = lease._entry
        if entry.embedding is not None or entry.shape is None:
            return
        n_ctx = embedding_context_tokens(entry.options.num_ctx, entry.shape.n_ctx_train, entry.shape.pooled)
        need = embedding_estimate(entry.shape, n_ctx=n_ctx, n_gpu_layers=entry.options.num_gpu)
        await self._make_room(
            entry,
            entry.host_bytes + need.host,
            entry.device_bytes + need.device,
            what=f"{entry.name} with its embeddings context of {n_ctx} tokens",
            hint="unload other models or raise the memory budget ($MODELYARD_RAM_BUDGET)",
        )
        if entry.embedding is None and entry.runner is lease.runner and entry.state is EntryState.READY:
            entry.embedding = need

    async def unload(self, name: str) -> bool:
        """Unload a model once its requests end. False if it was not loaded. A runner other names
        share goes on serving them; only this name leaves it."""
        entry = self._entries.get(name)
        if entry is None:
            return False
        while entry.state is EntryState.LOADING:
            # The requests waiting for this load are served first; then it goes like any other. (A
            # load again: a swap's new digest began meanwhile, whose runner is not started yet.)
            with contextlib.suppress(Exception):
                await self._wait_for_load(entry)
            # They resume within a turn or two of the loop, each taking its lease as it does; the
            # bound only keeps a new load of the same name from holding this back.
            for _ in range(100):
                if not (entry.waiting or self._starting[name]):
                    break
                await asyncio.sleep(0)
            entry = self._entries.get(name)
            if entry is None:
                return True
        if entry.aliases:
            self._detach(entry, name)
            return True
        entry.doomed = True  # before the drain: nobody joins a runner on its way out
        entry.stopping = True  # until the drain ends (`_reopen`) or is called off (`_revive`)
        await self._drain_and_unload(entry)
        return True

    async def expire_idle(self) -> list[str]:
        """Unload models past their keep_alive; returns their names."""
        now = self.clock()
        for crashed in [
            e
            for e in self._every_entry()
            if e.state is EntryState.FAILED
            and e.refs == 0
            and e.expires_at is not None
            and e.expires_at <= now
        ]:
            for name in crashed.names:  # nothing to unload: its runner is gone
                if self._entries.get(name) is crashed:
                    del self._entries[name]
                    self._crashes[name] = crashed.failures  # the next crash backs off from there
        left = self._names_past_their_keep_alive(now)
        expired = [
            e
            for e in self._every_entry()
            if e.state is EntryState.READY
            and e.refs == 0
            and e.expires_at is not None
            and e.expires_at <= now
        ]
        for entry in expired:
            entry.doomed = True  # all of them, before the first await: nobody joins them now
        names = [name for e in expired for name in e.names]
        self._expired.update(left + names)
        for entry in expired:
            await self._unload(entry)
        return left + names

    def expired_names(self) -> frozenset[str]:
        """Names unloaded after their keep_alive and not loaded since (one loading again for a
        request is still among them until its load ends)."""
        return frozenset(self._expired)

    def _names_past_their_keep_alive(self, now: float) -> list[str]:
        """Names whose own keep_alive ran out on a runner other names still keep: they leave it (as
        unloading them would), and /api/ps stops listing them. The runner's own expiry, when every
        name is past its keep_alive, unloads it with its names."""
        left = []
        for entry in self._every_entry():
            if entry.state is not EntryState.READY or len(entry.names) < 2:
                continue
            lapsed = [
                name
                for name in entry.names
                if (until := entry.name_expires_at(name, now)) is not None and until <= now
            ]
            if len(lapsed) < len(entry.names):
                for name in lapsed:
                    self._detach(entry, name)
                left += lapsed
        return left

    def start(self) -> None:
        """Run keep_alive expiry in the background (the server calls this; tests drive expire_idle)."""
        if self._expiry_task is None:
            self._expiry_task = asyncio.get_running_loop().create_task(self._expiry_loop())

    async def close(self) -> None:
        """Stop everything: background work first (so nothing starts a runner after), then every
        runner, active or draining after a swap."""
        pending = [t for t in (self._expiry_task, *self._background) if t is not None]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for entry in self._every_entry():
            if entry.runner is not None:
                await asyncio.to_thread(entry.runner.stop)
        self._entries.clear()
        self._retiring.clear()
        self._swaps.clear()

    def snapshot(self) -> list[ModelStatus]:
        """`status()` without the live figures that read /proc (cheap enough to poll often)."""
        return self.status(live=False)

    def status(self, *, live: bool = True) -> list[ModelStatus]:
        return self._status(_read_memory(self._memory_targets()) if live else {})

    async def live_status(self) -> list[ModelStatus]:
        """`status()`, its /proc figures read in a thread: a runner's smaps is thousands of lines
        (more on a GPU), milliseconds a read on the event loop would stall every stream for, at
        each scrape of /metrics or /api/ps (a metrics review)."""
        memory = await asyncio.to_thread(_read_memory, self._memory_targets())
        return self._status(memory)

    def _memory_targets(self) -> list[tuple[int, Path]]:
        return [
            (e.runner.pid, e.weights) for e in self._every_entry() if e.runner is not None and e.runner.alive
        ]

    def _status(self, memory_by_pid: Mapping[int, procstats.ProcessMemory | None]) -> list[ModelStatus]:
        out = []
        for entry in self._every_entry():
            runner = entry.runner
            info = runner.info if runner is not None else None
            memory = memory_by_pid.get(runner.pid) if runner is not None else None
            # A crash frees its memory; a load still waiting for room holds none yet (a metrics
            # review: its estimate was counted, past the budget, for all of its wait).
            waiting = entry.waiting_for_room
            size = entry.host_bytes + entry.device_bytes if entry.holds_memory and not waiting else 0
            out.append(
                ModelStatus(
                    name=entry.name,
                    digest=entry.digest,
                    state=entry.state.value,
                    size=size,
                    size_vram=entry.device_bytes if size else 0,
                    processor=processor_split(size, entry.device_bytes),
                    context_length=entry.options.num_ctx,
                    slots=entry.options.num_parallel,
                    slots_busy=min(entry.refs, entry.options.num_parallel),
                    queued=self._queued(entry),
                    expires_at=self._name_expires_at(entry, entry.name),
                    pinned=entry.name in entry.pinned_by,
                    runner_pid=runner.pid if runner is not None else -1,
                    runner_rss=memory.rss if memory else None,
                    weights_resident=memory.weights_resident if memory else None,
                    kv_bytes=info.kv_bytes if info else entry.estimate.kv,
                    load_seconds=entry.load_seconds,
                    last_error=entry.last_error,
                    note=_note(entry) if entry.closing else entry.note or _note(entry),
                    failure_kind=entry.failure_kind if entry.state is EntryState.FAILED else "",
                    context_effective=info.n_ctx_per_slot if info else 0,
                    stopping=entry.closing,
                    waiting=waiting,
                )
            )
            # The names sharing the runner: listed (clients and the reconciler look for them), its
            # memory counted once, with the first name.
            out += [
                replace(
                    out[-1],
                    name=alias,
                    digest=digest,
                    size=0,
                    size_vram=0,
                    slots_busy=0,
                    queued=0,
                    pinned=alias in entry.pinned_by,
                    expires_at=self._name_expires_at(entry, alias),
                    runner_rss=None,
                    weights_resident=None,
                    kv_bytes=0,
                    note=f"shares the runner of {entry.name}",
                    shares_runner_of=entry.name,
                )
                for alias, digest in entry.aliases.items()
            ]
        return sorted(out, key=lambda s: math.inf if s.expires_at is None else s.expires_at, reverse=True)

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting, by name: for a slot of a loaded model, or for a model not loaded yet
        (its load, memory for it, its turn at loading), which `status` does not list."""
        depths = {name: self._queued(entry) for name, entry in self._entries.items() if entry.name == name}
        for name, waiting in self._acquiring.items():
            depths.setdefault(name, waiting)
        return depths

    def _queued(self, entry: _Entry) -> int:
        waiting = self._acquiring[entry.name] if self._entries.get(entry.name) is entry else 0
        return max(entry.refs - entry.options.num_parallel, 0) + waiting

    def is_loaded(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.state is EntryState.READY

    def holds(self, name: str) -> bool:
        """Whether `name` has an entry: loaded, loading, or failed (listed by `ps` all the same)."""
        return name in self._entries

    # --- leases and release ----------------------------------------------------------------

    def _lease(self, entry: _Entry, request: ModelRequest) -> Lease:
        entry.refs += 1
        entry.fresh = False
        entry.idle.clear()
        entry.expires_at = None
        # A request pins (never unpins: the reconciler's ensure does) and sets its name's keep_alive.
        keep_alive = request.keep_alive
        if keep_alive is None and entry.keep_by.get(request.name, 1.0) <= 0:
            # The last request said 0, and its runner stayed for other names: on its own, this name
            # would have unloaded and loaded again with the default.
            keep_alive = self.settings.default_keep_alive
        entry.set_lifetime(request.name, keep_alive, True if request.pinned else None)
        lease = Lease(self, entry, request.name)
        entry.leases_by.setdefault(request.name, set()).add(lease)
        return lease

    def _release(self, entry: _Entry, lease: Lease, served: bool) -> None:
        entry.refs -= 1
        entry.last_used = self.clock()
        entry.leases_by.get(lease.name, set()).discard(lease)
        if lease.name in entry.names:  # a name that left the runner meanwhile has nothing to time
            entry.used_by[lease.name] = entry.last_used
        if served:
            entry.failures = 0
        if entry.refs > 0 or entry.state is not EntryState.READY:
            return
        entry.idle.set()
        leaving = [
            name for name in entry.names if entry.keep_by.get(name, 1.0) <= 0 and name not in entry.pinned_by
        ]
        if leaving and len(leaving) < len(entry.names):
            # Names that asked for 0 leave a runner other names keep, as unloading them would: the
            # runner stays on the others' keep_alive (Ollama, keyed by the weights, would unload it
            # under them), and /api/ps no longer lists the names that asked to go.
            for name in leaving:
                self._detach(entry, name)
        elif entry.keep_alive <= 0:  # every name sharing it asked for 0
            entry.expires_at = entry.last_used
            entry.doomed = True
            self._spawn(self._unload(entry))
        elif math.isfinite(entry.keep_alive):
            entry.expires_at = entry.last_used + entry.keep_alive
        self._spawn(self._notify_capacity())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _check_waiting(self, request: ModelRequest) -> None:
        """The queue bound for requests that find their model not ready: waiting for its load, for
        the load lock, for a swap or a drain, they are queued as much as those waiting for a slot
        (before, a burst during a long load all waited, and got its 503s only once it ended).
        Before a load the slots are not known yet: as many as it may get."""
        name = request.name
        entry = self._entries.get(name)
        if entry is not None and self._retirable(entry, request):
            entry = None  # its streams are not this digest's queue: it loads beside them
        if entry is not None:
            slots = entry.options.num_parallel
        elif "num_parallel" in request.options:
            slots = self._resolve_options(request).num_parallel
        else:
            slots = self.settings.num_parallel or max(AUTO_PARALLEL_CHOICES)
        in_flight = entry.refs if entry is not None else 0
        self._refuse_past_the_queue(name, in_flight + self._acquiring[name], slots)

    def _check_queue(self, entry: _Entry) -> None:
        self._refuse_past_the_queue(entry.name, entry.refs + entry.waiting, entry.options.num_parallel)

    def _refuse_past_the_queue(self, name: str, requests: int, slots: int) -> None:
        """503 for a request that finds `requests` in flight or queued for `name`, at the bound."""
        if requests >= self.settings.max_queue + slots:
            raise ServerBusyError(
                f"server busy: {name} has {requests} requests in flight or queued "
                f"(the limit is {self.settings.max_queue} beyond its {slots} slots)",
                retry_after=self.settings.retry_after,
            )

    @staticmethod
    def _retirable(entry: _Entry, request: ModelRequest) -> bool:
        """A name stopped (deleted, or `modelyard stop`) and built again from other weights: its
        old runner, finishing its streams, no longer stands for the name, whose new digest loads
        beside it like a swap's (a serving review: requests for the new model waited for the old
        one's streams to end, for ever with num_predict -1). Not for a drain that makes room for
        another load, nor for a runner other names share."""
        return (
            entry.closing
            and not entry.closing_for
            and not entry.aliases
            and entry.state is EntryState.READY
            and request.digest != entry.digest_of(request.name)
        )

    def _revivable(self, entry: _Entry, request: ModelRequest, options: LoadOptions) -> bool:
        """A stop (not a drain for memory, not a swap's old side) whose runner is the one the
        request would load: the same weights, adapters and load options, whatever its digest.
        (`stopping` holds only while the stop's drain is in charge: closing, for no load.)"""
        return (
            entry.stopping
            and not entry.aliases
            and not entry.swapping
            and entry.state is EntryState.READY
            and entry not in self._retiring
            and self._entries.get(request.name) is entry
            and entry.runs(request, options)
        )

    @staticmethod
    def _revive(entry: _Entry, request: ModelRequest) -> None:
        """Call off `entry`'s stop: its drain ends without the unload (`_drain_and_unload`)."""
        entry.retarget(request)
        entry.drain_owner = None
        entry.closing = False
        entry.stopping = False
        entry.doomed = False
        entry.settled.set()

    def _retire(self, entry: _Entry, name: str) -> None:
        """`entry` no longer stands for `name`: it holds its memory until its drain unloads it; no
        eviction takes it (`draining`), whose unload by name would find the new entry (a diff
        review). A swap may have retired it first."""
        entry.draining = True
        if entry not in self._retiring:
            self._retiring.append(entry)
        del self._entries[name]

    async def _wait_for_drain(self, entry: _Entry, name: str) -> None:
        """Wait for `entry`'s drain to end. A stop's that outlasts memory_wait (a stream without
        end) answers 503, not a request that hangs as long; a drain for another model's memory ends
        within drain_wait (called off, it serves on), so its waiters wait it out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.memory_wait
        while not entry.settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.settled.wait(), max(min(deadline - loop.time(), 0.25), 0.01))
            if not entry.settled.is_set() and not entry.closing_for and loop.time() >= deadline:
                raise ServerBusyError(
                    f"{name} is {_stopping(entry)}; try again then",
                    retry_after=self.settings.retry_after,
                    reason="stopping",
                )

    async def _wait_for_switch(self, old: _Entry, name: str) -> None:
        """Until `name`'s new digest takes its requests, `old` has a slot free, or the swap ended
        (failed: `old` serves on). Polled: a release signals nothing short of idle."""
        while self._entries.get(name) is old and old.refs >= old.options.num_parallel:
            running = self._swaps.get(name)
            if running is None or running[1].done():
                return
            await asyncio.sleep(0.02)

    async def _wait_for_swap(self, name: str) -> None:
        running = self._swaps.get(name)
        if running is None or running[1].done():
            await asyncio.sleep(0.05)
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(running[1])

    def _restart_idle_timer(self, entry: _Entry) -> None:
        if entry.refs == 0:
            entry.expires_at = self.clock() + entry.keep_alive if math.isfinite(entry.keep_alive) else None

    async def _wait_for_load(self, entry: _Entry) -> None:
        assert entry.loaded is not None
        entry.waiting += 1
        try:
            await asyncio.shield(entry.loaded)
        finally:
            entry.waiting -= 1

    # --- loading ---------------------------------------------------------------------------

    def _resolve_options(self, request: ModelRequest) -> LoadOptions:
        """The load options a request asks for, the same every time for the same request: what
        later requests are compared with. Choices that depend on the moment (how many slots fit
        now) are made only when loading (`_loaded_options`), or an identical request could find
        the model "different" and reload it."""
        options = parse_load_options(request.options)
        shape = request.shape
        if shape is not None and shape.n_ctx_train:
            wanted = options.num_ctx if "num_ctx" in request.options else DEFAULT_NUM_CTX
            options = replace(options, num_ctx=min(wanted, shape.n_ctx_train))
        return options

    def _loaded_options(self, request: ModelRequest, options: LoadOptions) -> LoadOptions:
        if "num_parallel" in request.options:
            return options
        return replace(
            options, num_parallel=self.settings.num_parallel or self._auto_parallel(request, options)
        )

    def _auto_parallel(self, request: ModelRequest, options: LoadOptions) -> int:
        """4 slots when their KV cache fits the budget (beside what cannot be evicted), else fewer."""
        if request.shape is None:
            return 1
        now = self.clock()
        fixed = sum(
            e.host_bytes
            for e in self._holding()
            if e.name != request.name and not evictable(self._resident(e, now))
        )
        room = self.ram_budget - fixed
        for slots in AUTO_PARALLEL_CHOICES:
            need = estimate(request.shape, n_ctx=options.num_ctx, slots=slots, n_batch=options.n_batch).host
            if need + self.settings.runner_process_bytes <= room:
                return slots
        return 1

    def _check_fits_alone(self, request: ModelRequest, options: LoadOptions) -> None:
        """Raise ModelDoesNotFitError if the model, with these options, is larger than the whole
        budget (as _make_room would once its turn came). Only without GPUs: with them, the layers
        offloaded depend on what the runner being replaced holds now, and the estimate made beside
        it would put on the host what would go on the GPU once it has gone."""
        if self.devices:
            return
        need, _ = self._estimate(request, self._loaded_options(request, options))
        host = need.host + self.settings.runner_process_bytes
        if host > self.ram_budget:
            raise ModelDoesNotFitError(request.name, host, self.ram_budget)

    def _estimate(self, request: ModelRequest, options: LoadOptions) -> tuple[MemoryEstimate, OffloadPlan]:
        if request.shape is None:
            size = request.weights.stat().st_size
            return MemoryEstimate(size, 0, 0, size, 0, 0), OffloadPlan(0, (), (), True, "no GGUF shape")
        free = [replace(d, free=self._device_free(d)) for d in self.devices]
        plan = plan_offload(
            request.shape,
            free,
            n_ctx=options.num_ctx,
            slots=options.num_parallel,
            n_batch=options.n_batch,
            reserve=self.settings.gpu_reserve,
            num_gpu=options.num_gpu,
        )
        return estimate(
            request.shape,
            n_ctx=options.num_ctx,
            slots=options.num_parallel,
            n_batch=options.n_batch,
            n_gpu_layers=plan.n_gpu_layers,
        ), plan

    def _device_free(self, device: Device) -> int:
        # Without per-device accounting of other runners, the devices share what our loads used.
        used = sum(e.device_bytes for e in self._holding())
        share = used * device.free // max(sum(d.free for d in self.devices), 1)
        return max(device.free - share, 0)

    async def _load(self, request: ModelRequest, options: LoadOptions, previous: _Entry | None) -> None:
        async with self._load_lock:
            current = self._entries.get(request.name)
            if current is not None and (current is not previous or current.state is not EntryState.FAILED):
                return  # someone else started (or finished) a load meanwhile: re-check
            if current is not None:
                self._detach(current, request.name)  # a failed runner: this name tries anew
            host = self._runner_for(request, options)
            if host is not None:
                # Another name's runner is this one's: the same weights, adapters and options.
                host.aliases[request.name] = request.digest
                host.used_by[request.name] = self.clock()  # its keep_alive counts from joining
                host.set_lifetime(
                    request.name,
                    request.keep_alive
                    if request.keep_alive is not None
                    else self.settings.default_keep_alive,
                    request.pinned,
                )
                self._entries[request.name] = host
                self._expired.discard(request.name)
                return
            entry = self._new_entry(request, options, previous)
            self._entries[request.name] = entry
            try:
                await self._make_room(entry, entry.host_bytes, entry.device_bytes, for_requests=True)
                await self._start_runner(entry, request)
            except BaseException as exc:
                self._load_failed(entry, exc)
                raise
            self._expired.discard(request.name)
            entry.fresh = True  # until the requests that asked for it resume (_acquire)
            self._settle_fresh(entry, request.name)  # unless every one of them left meanwhile
            await self._fit_as_measured(entry)

    def _settle_fresh(self, entry: _Entry, name: str) -> None:
        """A model loaded for requests that all left before they took it times out as idle (a
        scheduler review: it counted as wanted for ever, and never expired)."""
        if entry.fresh and entry.refs == 0 and not self._acquiring[name]:
            entry.fresh = False
            self._restart_idle_timer(entry)

    async def _fit_as_measured(self, entry: _Entry) -> None:
        """Room was made for the estimate; the runner may measure a few MiB more (a scheduler
        audit: 614 MB loaded under a 612 MB budget). Idle models make up the difference; if none
        can, it is said, and the next load makes room against what was measured."""
        shortfall = self._shortfall(entry, entry.host_bytes, entry.device_bytes)
        if shortfall.none:
            return
        victims = choose_evictions(self._residents(exclude=entry), shortfall)
        if victims is None:
            log.warning(
                "%s measures %s more than its estimate, past the memory budget beside busy models",
                entry.name,
                memory_size(max(shortfall.host, shortfall.device)),
            )
            return
        for name in victims:
            await self._unload_if_present(name)

    def _new_entry(self, request: ModelRequest, options: LoadOptions, previous: _Entry | None) -> _Entry:
        loaded = self._loaded_options(request, options)
        estimate_, plan = self._estimate(request, loaded)
        entry = _Entry(
            name=request.name,
            digest=request.digest,
            requested=options,
            options=replace(loaded, num_gpu=plan.n_gpu_layers),
            adapters=request.adapters,
            weights=request.weights,
            estimate=estimate_,
            plan=plan,
            process_bytes=self.settings.runner_process_bytes,
            shape=request.shape,
            protects=request.protects,
            last_used=self.clock(),
            failures=previous.failures if previous is not None else self._crashes.pop(request.name, 0),
        )
        keep_alive = request.keep_alive
        entry.set_lifetime(
            request.name,
            keep_alive if keep_alive is not None else self.settings.default_keep_alive,
            request.pinned,
        )
        entry.loaded = asyncio.get_running_loop().create_future()
        entry.loaded.add_done_callback(_consume_exception)
        return entry

    async def _start_runner(self, entry: _Entry, request: ModelRequest) -> None:
        spec = RunnerSpec(request.name, request.weights, request.adapters, entry.options)
        started = time.perf_counter()
        extra = {"launcher": self._launcher} if self._launcher is not None else {}
        starting = asyncio.ensure_future(
            asyncio.to_thread(
                self._starter,
                spec,
                timeout=self.settings.load_timeout,
                on_exit=self._exit_callback(entry),
                **extra,
            )
        )
        try:
            runner = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The start goes on in its thread whatever we do: stop the runner it brings, or it
            # would run on with no entry to account for it.
            starting.add_done_callback(_stop_started_runner)
            raise
        entry.load_seconds = time.perf_counter() - started
        self.loads += 1
        for observe in self.load_observers:
            observe(entry.name, entry.load_seconds)
        entry.runner = runner
        entry.state = EntryState.READY
        assert entry.loaded is not None
        entry.loaded.set_result(None)

    # --- swapping to a new digest ------------------------------------------------------------

    def _start_swap(
        self, request: ModelRequest, options: LoadOptions, old: _Entry, *, side_by_side: bool = True
    ) -> asyncio.Task[None]:
        """Load `request`'s digest beside `old` in the background (once per digest)."""
        running = self._swaps.get(request.name)
        if running is not None and running[0] == request.digest and not running[1].done():
            return running[1]
        old.swapping = True  # now, not when the swap gets the load lock: nobody joins it meanwhile
        task = self._spawn(self._swap(request, options, old, side_by_side))
        task.add_done_callback(_consume_task_exception)
        self._swaps[request.name] = (request.digest, task)
        return task

    async def _swap(
        self, request: ModelRequest, options: LoadOptions, old: _Entry, side_by_side: bool = True
    ) -> None:
        """Load the new digest beside the old one, switch traffic, then drain and unload the old.
        If memory holds only one of them, unload the old first: the shortest gap there can be.
        Draining happens outside the load lock: a long answer on the old model must not hold up
        loads of other models."""
        try:
            await self._swap_locked(request, options, old, side_by_side)
        finally:
            if self._entries.get(old.name) is old and old not in self._retiring:
                old.swapping = False  # the swap did not happen: it goes on serving, and may be shared

    async def _swap_locked(
        self, request: ModelRequest, options: LoadOptions, old: _Entry, side_by_side: bool
    ) -> None:
        async with self._load_lock:
            if self._entries.get(request.name) is not old or old.state is not EntryState.READY:
                return
            if old.aliases:
                # Joins stop when the swap begins, so none should be here; if one is, it keeps the
                # runner, and this name leaves it to load its own on its next request.
                self._detach(old, request.name)
                return
            new = self._new_entry(request, options, None)
            shortfall = self._shortfall(new, new.host_bytes, new.device_bytes)
            victims = choose_evictions(self._residents(exclude=new, also=old), shortfall)
            short_gap = victims is None or not side_by_side
            if not short_gap:
                for name in victims or ():
                    await self._unload_if_present(name)
                # A victim that a request took meanwhile stays (a scheduler review's stress run: the
                # new runner started beside it, over the budget): then memory holds only one.
                short_gap = not self._shortfall(new, new.host_bytes, new.device_bytes).none
            if short_gap:
                old.note = f"swapping to {request.digest[:19]}: memory holds only one; unloading this first"
                new.note = f"replaced {old.digest[:19]} after unloading it: memory holds only one (short gap)"
            else:
                old.note = f"swapping to {request.digest[:19]}"
                new.note = f"replaced {old.digest[:19]} without downtime"
                try:
                    await self._start_runner(new, request)
                except BaseException as exc:
                    self._swap_failed(old, new, exc)
                    raise
                if old.stopping or self._entries.get(request.name) is not old:
                    # Stopped while the new digest loaded: the stop stands for the name (a diff
                    # review: the new runner stayed loaded after `modelyard stop`).
                    await self._unload(new, force=True)
                    return
            old.draining = True
            if old not in self._retiring:  # a stop then a rebuild may have retired it already
                self._retiring.append(old)
            new.queued = short_gap
            self._entries[request.name] = new  # requests go to the new one (or wait for its load)
            if not short_gap:
                self._restart_idle_timer(new)  # unused until a request comes, it still expires
        await self._drain_and_unload(old, force=True)
        if not short_gap:
            return
        async with self._load_lock:
            new.queued = False  # from here it makes room like any load
            try:
                await self._make_room(new, new.host_bytes, new.device_bytes)
                await self._start_runner(new, request)
            except BaseException as exc:
                self._swap_failed(old, new, exc)
                raise
            self._restart_idle_timer(new)

    def _swap_failed(self, old: _Entry, new: _Entry, exc: BaseException) -> None:
        old.note = f"swap to {new.digest[:19]} failed: {exc}"
        if self._entries.get(new.name) is new:
            self._load_failed(new, exc)  # the old one is gone: the name is failed, with backoff
        elif new.loaded is not None and not new.loaded.done():
            new.loaded.set_exception(exc if isinstance(exc, Exception) else RunnerError(str(exc)))

    async def ensure(self, request: ModelRequest, *, side_by_side: bool = True) -> None:
        """Make `request`'s digest and options the loaded one, swapping without downtime when only the
        digest changed (unless not `side_by_side`: a budget of the caller's holds only one of them);
        returns once it serves. The reconciler's way in."""
        options = self._resolve_options(request)
        while True:
            entry = self._entries.get(request.name)
            if entry is not None and entry.state is EntryState.READY and not entry.draining:
                if not entry.matches(request, options) and entry.runs(request, options):
                    entry.retarget(request)  # another digest, the same runner: nothing to load
                if entry.matches(request, options):
                    swap = self._swaps.get(request.name)
                    if swap is not None and swap[0] == request.digest and not swap[1].done():
                        await self._wait_for_swap(request.name)  # let the old one finish draining
                        continue
                    entry.set_lifetime(request.name, request.keep_alive, request.pinned)
                    self._restart_idle_timer(entry)
                    return
                if entry.aliases:
                    self._detach(entry, request.name)  # the others keep the runner; this name loads anew
                    continue
                if entry.another_image(request):
                    # Shielded: a caller that stops waiting (a timeout) must not cancel the swap
                    # between its phases, which left the name loading for ever (a scheduler review).
                    await asyncio.shield(self._start_swap(request, options, entry, side_by_side=side_by_side))
                    continue
            await self.preload(request)
            return

    def _load_failed(self, entry: _Entry, exc: BaseException) -> None:
        entry.failures += 1
        entry.last_error = str(exc)
        entry.failure_kind = "load-failed"
        # Does not fit: nothing is wrong with the model, and a request of other options may fit.
        if isinstance(exc, ModelLoadError | RunnerError) and not isinstance(
            exc, ServerBusyError | ModelDoesNotFitError
        ):
            entry.state = EntryState.FAILED
            entry.retry_at = self.clock() + self._backoff(entry.failures)
        else:
            # Busy, too large or cancelled: nothing is wrong with the model; forget the attempt.
            self._entries.pop(entry.name, None)
        assert entry.loaded is not None
        if not entry.loaded.done():
            # Not an Exception: the load's task was cancelled, which only stopping the server does.
            error = (
                exc
                if isinstance(exc, Exception)
                else RunnerError("the load was cancelled: the server is stopping")
            )
            entry.loaded.set_exception(error)

    def _backoff(self, failures: int) -> float:
        if failures <= 1:
            return 0.0
        return min(self.settings.backoff_base * 2 ** (failures - 2), self.settings.backoff_max)

    async def _make_room(
        self,
        entry: _Entry,
        need_host: int,
        need_device: int,
        *,
        what: str = "",
        hint: str = ModelDoesNotFitError.LOAD_HINT,
        for_requests: bool = False,
    ) -> None:
        """Make `entry` able to hold `need_host` and `need_device` bytes in all: evict what the
        policy allows, or wait for memory, or refuse. `for_requests`: a load that requests made
        (not a swap's), given up once none of them waits for it."""
        if need_host > self.ram_budget:
            raise ModelDoesNotFitError(entry.name, need_host, self.ram_budget, what=what, hint=hint)
        if need_device > self.gpu_budget and self.devices:
            raise ModelDoesNotFitError(
                entry.name, need_device, self.gpu_budget, "GPU memory", what=what, hint=hint
            )
        what = what or entry.name
        deadline = self.clock() + self.settings.memory_wait
        spared: set[str] = set()  # busy models whose drain for this load was called off
        entry.making_room = True  # drains for it go on while it waits here
        entry.room_for_requests = for_requests
        try:
            while True:
                if for_requests and not self._acquiring[entry.name]:
                    # Every request for it left while it waited for memory (their clients went): a
                    # load now would evict a model in use for nobody (a scheduler audit).
                    raise ServerBusyError(
                        f"nobody waits for {entry.name} any more",
                        retry_after=self.settings.retry_after,
                        reason="abandoned",
                    )
                shortfall = self._shortfall(entry, need_host, need_device)
                residents = self._residents(exclude=entry)
                may_stay = self._may_stay(entry)
                if shortfall.none and (may_stay is None or len(residents) <= may_stay):
                    return
                victims = choose_evictions(residents, shortfall, may_stay=may_stay)
                if victims is not None:
                    for name in victims:
                        # Said, as drains for memory are (a soak review: idle models went unnoticed).
                        log.info("%s unloads to make room for %s", name, what)
                        await self._unload_if_present(name)
                    continue
                if entry.state is EntryState.LOADING:
                    self._drain_busy_for(entry, shortfall, spared)
                remaining = deadline - self.clock()
                if remaining <= 0 and shortfall.none:  # the cap on loaded models, not memory
                    raise ServerBusyError(
                        f"{what} waits for one of the {self.settings.max_loaded_models} models loaded at "
                        "most ($MODELYARD_MAX_LOADED_MODELS) to go, and they are busy or pinned",
                        retry_after=self.settings.retry_after,
                        reason="memory",
                    )
                if remaining <= 0:
                    gpu = f" and {memory_size(shortfall.device)} of GPU memory"
                    gpu = gpu if shortfall.device > 0 else ""
                    kept = ", pinned or before it in the spec" if entry.protects else " or pinned"
                    raise ServerBusyError(
                        f"not enough memory for {what} while the loaded models are busy{kept}; "
                        f"short by {memory_size(max(shortfall.host, 0))} of RAM{gpu}",
                        retry_after=self.settings.retry_after,
                        reason="memory",
                    )
                async with self._capacity:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._capacity.wait(), timeout=min(remaining, 1.0))
        finally:
            entry.making_room = False

    def _may_stay(self, entry: _Entry) -> int | None:
        """How many other runners may stay loaded beside `entry`'s (max_loaded_models); None: any."""
        cap = self.settings.max_loaded_models
        if cap is None or entry.state is not EntryState.LOADING:  # a loaded one counts already
            return None
        return max(cap - 1, 0)

    def _holding(self) -> list[_Entry]:
        """Every entry that holds (or is about to hold) memory: active, loading, or draining after a swap."""
        return [e for e in self._every_entry() if e.holds_memory]

    def _every_entry(self) -> list[_Entry]:
        """Each entry once, active and retiring (several names may map to one)."""
        return list({id(e): e for e in [*self._entries.values(), *self._retiring]}.values())

    def _runner_for(self, request: ModelRequest, options: LoadOptions) -> _Entry | None:
        """A ready runner, not on its way out, that is the one `request` would load."""
        return next(
            (
                e
                for e in self._every_entry()
                if e.state is EntryState.READY
                and not e.draining
                and not e.doomed
                and not e.swapping
                and e not in self._retiring
                and e.runs(request, options)
            ),
            None,
        )

    def _detach(self, entry: _Entry, name: str) -> None:
        """`name` stops using `entry`'s runner; the runner stays for its other names."""
        if self._entries.get(name) is entry:
            del self._entries[name]
        entry.forget(name)
        if name in entry.aliases:
            del entry.aliases[name]
        elif name == entry.name and entry.aliases:
            entry.name, entry.digest = next(iter(entry.aliases.items()))  # the next name leads
            del entry.aliases[entry.name]
        if entry.state is EntryState.READY and entry.refs == 0:
            # The names left may keep it for less time than the one that went.
            if entry.keep_alive <= 0:
                entry.doomed = True
                self._spawn(self._unload(entry))
            elif math.isfinite(entry.keep_alive):
                entry.expires_at = entry.last_used + entry.keep_alive

    def _shortfall(self, entry: _Entry, need_host: int, need_device: int) -> Shortfall:
        # For a loaded model (its embeddings context), a load still waiting for memory holds none:
        # the loaded model's request comes first, or each waited for the other (a scheduler review).
        loaded = entry.state is EntryState.READY
        others = [e for e in self._holding() if e is not entry and not (loaded and e.making_room)]
        used_host = sum(e.host_bytes for e in others)
        used_device = sum(e.device_bytes for e in others)
        return Shortfall(
            host=used_host + need_host - self.ram_budget,
            device=used_device + need_device - self.gpu_budget if self.devices else 0,
        )

    def _residents(self, exclude: _Entry, also: _Entry | None = None) -> list[Resident]:
        """The models that `exclude`'s load may evict or drain, if not pinned; those it protects
        count as pinned."""
        now = self.clock()
        residents = []
        for e in self._holding():
            if e is exclude or e is also or e.draining:
                continue
            resident = self._resident(e, now)
            if exclude.protects.intersection(e.names):
                resident = replace(resident, pinned=True)
            residents.append(resident)
        return residents

    @staticmethod
    def _resident(entry: _Entry, now: float) -> Resident:
        return Resident(
            key=entry.name,
            host_bytes=entry.host_bytes,
            device_bytes=entry.device_bytes,
            busy=entry.refs > 0 or entry.waiting > 0 or entry.fresh,
            pinned=entry.pinned,
            loading=entry.state is not EntryState.READY,
            last_used=entry.last_used,
            expired=entry.expires_at is not None and entry.expires_at <= now,
            closing=entry.closing,
        )

    # --- unloading and crashes --------------------------------------------------------------

    async def _drain_for_reload(self, entry: _Entry, name: str) -> None:
        """Unload `entry` once its requests end, for a request of `name` with other load options
        (Ollama reloads so too). Its streams have drain_wait to end; one that does not (num_predict
        -1) keeps it: the drain is called off, it serves on, and the request that asked for other
        options gets a 503. (A soak review: that request waited for ever, and every other request
        for the name was told after memory_wait that it was "stopping".)"""
        token = self._close(entry, for_load=name)
        until = self.clock() + self.settings.drain_wait
        try:
            while entry.refs > 0 and entry.drain_owner is token and self.clock() < until:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(entry.idle.wait(), timeout=0.25)
                if entry.idle.is_set() and entry.refs > 0:
                    await asyncio.sleep(0.01)  # crashed: its requests are failing and leaving
            if entry.drain_owner is not token:
                return  # a stop took it over
            if entry.refs == 0:
                await self._unload(entry)
                return
        finally:
            self._reopen(entry, token)
        log.info(
            "%s serves on: its streams did not end within %.0f s of a reload", name, self.settings.drain_wait
        )
        raise ServerBusyError(
            f"{name} is loaded with other options and serves {entry.refs} request(s) that did not end "
            f"within {self.settings.drain_wait:.0f} s; try again once they end, or without the "
            "options that differ (num_ctx, num_gpu, …)",
            retry_after=self.settings.retry_after,
            reason="busy",
        )

    async def _drain_and_unload(self, entry: _Entry, *, force: bool = False) -> None:
        """Wait for the entry's requests to end, then unload it. `force`: even if it is no longer
        the active entry for its name (the old side of a swap). Takes over a drain for memory: a
        stop is never called off."""
        token = self._close(entry, for_load="")
        try:
            while entry.refs > 0:
                if entry.idle.is_set():
                    # Its runner crashed (idle is set at once): its requests are failing and will
                    # release their leases; wait for that without spinning the event loop.
                    await asyncio.sleep(0.01)
                else:
                    await entry.idle.wait()
            if entry.drain_owner is token:  # not called off (`_revive`) meanwhile
                await self._unload(entry, force=force)
        finally:
            self._reopen(entry, token)

    def _close(self, entry: _Entry, *, for_load: str) -> object:
        """Take charge of draining `entry`: no new request joins it. Returns the drain's token."""
        token = object()
        entry.drain_owner = token
        entry.closing_for = for_load
        entry.doomed = True
        entry.closing = True
        entry.settled.clear()
        return token

    def _reopen(self, entry: _Entry, token: object) -> None:
        """End the drain of `token`, if still in charge (a stop may have taken it over): its
        waiters go on, to a model unloaded (they load it anew) or called off (they take it)."""
        if entry.drain_owner is token:
            entry.drain_owner = None
            entry.closing_for = ""
            entry.closing = False
            entry.stopping = False
            entry.settled.set()

    def _drain_busy_for(self, load: _Entry, shortfall: Shortfall, spared: set[str]) -> None:
        """Close the busy models that free enough for `load` when no idle ones do (eviction.py's
        choose_drains). Closing is all: once their requests end they are idle, and `_make_room`
        unloads them with the rest of its choice, only when that choice suffices (one of two
        victims done first must not go for a load that the other keeps waiting). `spared`: those
        whose drain for this load was called off: they serve on, and it waits for them to go idle."""
        now = self.clock()
        residents = [replace(r, pinned=True) if r.key in spared else r for r in self._residents(exclude=load)]
        # The old sides of swaps go once their requests end: count them as going.
        residents += [replace(self._resident(e, now), closing=True) for e in self._retiring if e.holds_memory]
        for name in choose_drains(residents, shortfall, may_stay=self._may_stay(load)) or ():
            victim = self._entries.get(name)
            if victim is not None and victim.state is EntryState.READY and not victim.closing:
                log.info("%s takes no new request: %s needs its memory once they end", name, load.name)
                token = self._close(victim, for_load=load.name)  # now: a stop after this takes over
                drain = self._spawn(self._drain_for_load(victim, load, token, spared))
                drain.add_done_callback(_consume_task_exception)

    async def _drain_for_load(self, victim: _Entry, load: _Entry, token: object, spared: set[str]) -> None:
        """Keep `victim` closed while `load` waits for its memory, until `_make_room` unloads it;
        called off (it serves on) once `load` stops waiting (it got room elsewhere, its requests
        left, or memory_wait ran out), once the victim is pinned, or after drain_wait."""
        until = self.clock() + self.settings.drain_wait
        try:
            while victim.drain_owner is token and victim.state is EntryState.READY:
                # (Not READY: unloaded for the load, or crashed, its crash on record.)
                called_off = ""
                if not self._waits_for_room(load):
                    called_off = "nobody needs its memory now"
                elif victim.pinned:
                    called_off = "pinned meanwhile"
                elif self.clock() >= until:
                    called_off = f"{load.name} waited {self.settings.drain_wait:.0f} s for it"
                if called_off:
                    log.info("%s serves on: %s", victim.name, called_off)
                    spared.add(victim.name)
                    victim.doomed = False
                    self._spawn(self._notify_capacity())  # the load chooses again, without it
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(victim.gone.wait(), timeout=0.25)
        finally:
            self._reopen(victim, token)

    def _waits_for_room(self, load: _Entry) -> bool:
        """Whether `load` still waits in `_make_room`: for requests, only while one of them does."""
        if not load.making_room or self._entries.get(load.name) is not load:
            return False
        return not load.room_for_requests or self._acquiring[load.name] > 0

    async def _unload_if_present(self, name: str) -> None:
        """Unload an eviction victim, unless it went meanwhile (expired, or unloaded by another task)."""
        entry = self._entries.get(name)
        if entry is not None:
            await self._unload(entry)

    async def _unload(self, entry: _Entry, *, force: bool = False) -> None:
        if entry.state in (EntryState.UNLOADING, EntryState.LOADING):
            # Loading: its runner is not there to stop yet, and the load would start one that
            # nothing accounts for (a scheduler review). Whoever waits for it unloads it after.
            return
        if self._entries.get(entry.name) is not entry and entry not in self._retiring and not force:
            return
        if entry.refs > 0:
            # A request came in since it was chosen (an expiry, a keep_alive 0, an eviction that
            # awaited another unload first): it keeps the runner. Drains call this at refs 0.
            entry.doomed = False
            return
        entry.state = EntryState.UNLOADING
        runner = entry.runner
        if runner is not None:
            await asyncio.to_thread(runner.stop)
        for name in entry.names:
            if self._entries.get(name) is entry:
                del self._entries[name]
        self._retiring = [e for e in self._retiring if e is not entry]
        entry.gone.set()
        await self._notify_capacity()

    def _exit_callback(self, entry: _Entry) -> Callable[[Runner], None]:
        loop = asyncio.get_running_loop()

        def on_exit(runner: Runner) -> None:  # on the runner's reader thread
            loop.call_soon_threadsafe(self._runner_died, entry, runner)

        return on_exit

    def _runner_died(self, entry: _Entry, runner: Runner) -> None:
        if entry.runner is not runner or entry.state is not EntryState.READY:
            return
        entry.state = EntryState.FAILED
        entry.failures += 1
        entry.failure_kind = "crashed"
        entry.note = ""  # a swap's "replaced … without downtime" said nothing of the crash
        entry.last_error = f"runner crashed ({runner.exit_detail})"
        for name in entry.names:
            for observe in self.crash_observers:
                observe(name, entry.last_error)
        entry.retry_at = self.clock() + self._backoff(entry.failures)
        entry.runner = None
        entry.idle.set()
        # Listed as failed, holding nothing, until its keep_alive would have run out and its backoff
        # too (then it goes from the list; the count of its crashes stays for its next load), or
        # until a request loads it again after the backoff.
        if math.isfinite(entry.keep_alive):
            entry.expires_at = max(self.clock() + max(entry.keep_alive, 0.0), entry.retry_at)
        wait = entry.retry_at - self.clock()
        log.warning(
            "%s: %s; the next request%s loads it again",
            ", ".join(entry.names),
            entry.last_error,
            f" after {wait:.0f} s" if wait >= 0.5 else "",  # a first crash waits for none ("-0 s")
        )
        self._spawn(self._notify_capacity())

    async def _notify_capacity(self) -> None:
        async with self._capacity:
            self._capacity.notify_all()

    def kill_hung_runners(self) -> list[str]:
        """Kill the runners that have requests and said nothing for hang_timeout; returns their
        names. Their exit is a crash (_runner_died): listed as failed, loaded again on demand."""
        hung = []
        for entry in self._every_entry():
            runner = entry.runner
            if entry.state is not EntryState.READY or runner is None:
                continue
            silent = runner.silent_while_working()
            if silent > self.settings.hang_timeout:
                why = f"it said nothing for {silent:.0f} s with requests in hand (stopped or hung); killed"
                log.error("%s: %s", entry.name, why)
                runner.kill_unresponsive(why)
                hung.append(entry.name)
        return hung

    async def _expiry_loop(self) -> None:
        while True:
            self.kill_hung_runners()
            await self.expire_idle()
            deadlines = [
                e.expires_at for e in self._every_entry() if e.expires_at is not None and e.refs == 0
            ]
            delay = min((d - self.clock() for d in deadlines), default=1.0)
            await asyncio.sleep(min(max(delay, 0.05), 1.0))

    def _name_expires_at(self, entry: _Entry, name: str) -> float | None:
        """When one of a runner's names goes: its own keep_alive if it shares the runner, never
        later than the runner itself."""
        if not entry.aliases:
            return self._expires_at(entry)
        own = entry.name_expires_at(name, self.clock())
        whole = entry.expires_at
        return whole if whole is not None and (own is None or whole < own) else own

    def _expires_at(self, entry: _Entry) -> float | None:
        if entry.expires_at is not None:
            return entry.expires_at
        if not math.isfinite(entry.keep_alive):
            return None
        return self.clock() + entry.keep_alive  # busy or loading: as Ollama reports it


def _stop_started_runner(starting: asyncio.Future[Runner]) -> None:
    if not starting.cancelled() and starting.exception() is None:
        threading.Thread(target=starting.result().stop, name="orphan-runner-stop", daemon=True).start()


def _consume_task_exception(task: asyncio.Task[None]) -> None:
    # A failed swap is recorded in the old entry's note; the requests it served went on.
    if not task.cancelled():
        task.exception()


def _consume_exception(future: asyncio.Future[None]) -> None:
    # A load's failure is raised to the request that started it; waiters see it too. Nobody
    # waiting is fine: don't let asyncio log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _stopping(entry: _Entry) -> str:
    if entry.closing_for and entry.closing_for in entry.names:
        return (
            f"reloading with other load options: it takes no new request, and loads again once "
            f"its {entry.refs} request(s) end"
        )
    if entry.closing_for:
        return (
            f"stopping to make room for {entry.closing_for}: it takes no new request, and unloads "
            f"once its {entry.refs} request(s) end if that frees enough"
        )
    return f"stopping: it unloads once its {entry.refs} request(s) end"


def _read_memory(targets: list[tuple[int, Path]]) -> dict[int, procstats.ProcessMemory | None]:
    return {pid: procstats.process_memory(pid, weights) for pid, weights in targets}


def _note(entry: _Entry) -> str:
    if entry.closing:
        return _stopping(entry)
    if entry.state is EntryState.FAILED:
        return entry.last_error
    if entry.waiting_for_room:
        return "waiting for memory"
    return ""
