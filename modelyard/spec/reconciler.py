"""The reconciler: keeps what is loaded in line with the spec, level-triggered, GitOps style.

On every change (a new spec, a runner that died or unloaded) and every `interval` it observes (what
the scheduler holds; what each image reference points to now; what is in the store), plans (a pure
function, plan.py), and executes the plan through `Effects`, re-planning after each pass until there
is nothing left to do (a pull is followed by the load it made possible; in the daemon's own loop a
pull goes on after its round, which a later round takes up, so that a long one holds no spec change
from a watched source up; an apply waits for the pulls its own plan needs). Nothing
here touches the store, the registry or runners directly: `Effects` is the seam (host.py is the real
one; tests use a recording fake).

- A new spec is validated whole (`submit`); an invalid one is rejected with every problem listed and
  the last good one stays in force. Status never writes into the user's YAML.
- Failures retry with capped, jittered exponential backoff per model; permanent ones (a digest
  mismatch, a model that does not fit even alone, an unusable image) wait for a change to that model
  in the spec, or for its tag to move.
- Swaps to a new digest go through `Scheduler.ensure`, which loads the new runner beside the old,
  switches traffic and drains the old (or, when memory holds one, unloads first: the status says so).
- Everything it needs after a restart (the last good spec, its generation, the inventory that prune
  relies on, last resolved digests, failures, condition times, events) is saved under
  $MODELYARD_HOME (state.py).

Asyncio: one event loop; `run` is the daemon, `reconcile` one round, `submit` takes a new spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from modelyard.errors import (
    BuildError,
    DigestMismatchError,
    InvalidReferenceError,
    ModelDoesNotFitError,
    ModelyardError,
    NotAnAdapterError,
    RegistryError,
    RunnerCrashedError,
    RunnerError,
    ServerBusyError,
    SpecSourceError,
    SpecValidationError,
    StoreError,
)
from modelyard.spec.plan import (
    Action,
    ActionKind,
    Applied,
    Failure,
    ImageState,
    LoadTarget,
    Memory,
    ModelPlan,
    Observed,
    Phase,
    Plan,
    Reason,
    Running,
    plan,
    target_for,
)
from modelyard.spec.schema import Spec, SpecDocument, parse_spec
from modelyard.spec.state import (
    MAX_EVENTS,
    Event,
    Rejection,
    SavedState,
    ShelvedSpec,
    encode_state,
    load_state,
    write_state,
)
from modelyard.spec.status import Condition, ModelReport, report_model, source_condition, timestamp

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_SHELVED_SPECS = 8  # other sources' last good specs kept (see _take_up_this_sources_spec)


class Effects(Protocol):
    """What the reconciler does to the world. host.SchedulerHost is the real one. Whatever reads
    files or the network is a coroutine (the real one runs it in a worker thread): the event loop
    the reconciler runs on also serves the HTTP requests."""

    async def resolve(self, image: str) -> str:
        """The digest `image` points to now: the registry's for a remote tag, the store's for a local
        name, the reference's own when it pins one."""
        ...

    async def local_digest(self, image: str, digest: str) -> str | None:
        """The stored image `image` resolved to `digest` gives, or None when it must be pulled."""
        ...

    async def pull(self, image: str, digest: str) -> str:
        """Bring `image` at `digest` into the store; returns the local digest."""
        ...

    async def footprint(self, target: LoadTarget) -> int | None:
        """Estimated bytes `target` takes once loaded (None: unknown)."""
        ...

    async def ensure(self, target: LoadTarget, *, side_by_side: bool = True) -> Running:
        """Make `target` the loaded one for its name (load, reload, swap or update in place).
        `side_by_side` False: a swap unloads the old digest before loading the new."""
        ...

    async def unload(self, name: str) -> None: ...

    def running(self) -> list[Running]:
        """What the scheduler holds now; cheap (no file reads): it is glanced at every second."""
        ...

    def memory_budget(self) -> int:
        """Bytes the scheduler may hold (RAM and GPU budgets together)."""
        ...

    def expired(self) -> frozenset[str]:
        """Names unloaded after their keepAlive and not loaded since; cheap, like `running`."""
        ...


class SpecSource(Protocol):
    """Where specs come from (sources.py): read it again every `poll_interval` seconds."""

    description: str
    poll_interval: float
    # What earlier versions named this source (a saved spec from them is this source's).
    former_descriptions: tuple[str, ...]

    def read(self) -> SpecSnapshot: ...


# A registry's answer per tag in one round: its digest, or why there is none.
Answers = dict[str, str | ModelyardError]


@dataclass(frozen=True)
class SpecSnapshot:
    documents: tuple[SpecDocument, ...]
    revision: str  # a content hash, or a commit


@dataclass(frozen=True)
class ReconcilerSettings:
    state_path: Path  # $MODELYARD_HOME/reconciler/state.json
    interval: float | None = None  # None: the spec's own `interval` (30 s by default)
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    heal_poll: float = 1.0  # how often the scheduler is glanced at for crashed or unloaded models
    debounce: float = 0.25  # a changed source must read the same twice this far apart
    max_passes: int = 6  # re-plans per round (pull, then load, then …)
    # How long a restart waits for its source's first read before it reconciles the saved spec: a
    # git source answers in a second or two; a host that hangs takes git's 120 s.
    first_read_head_start: float = 10.0


@dataclass(frozen=True)
class SubmitResult:
    accepted: bool
    generation: int
    changed: bool  # a new generation (the spec's content changed)
    error: SpecValidationError | None = None


class Reconciler:
    def __init__(
        self,
        effects: Effects,
        settings: ReconcilerSettings,
        *,
        clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.effects = effects
        self.settings = settings
        self.clock = clock
        self._rand = rand
        self._session = uuid.uuid4().hex
        saved = load_state(settings.state_path)
        self._generation = saved.generation
        self._revision = saved.revision
        self._spec: Spec | None = _restore_spec(saved.spec)
        self._inventory = saved.inventory
        self._reports: dict[str, ModelReport] = dict(saved.reports)
        self._events: list[Event] = list(saved.events)
        self._rejected = saved.rejected
        self._saved_source = saved.source
        self._shelved: dict[str, ShelvedSpec] = dict(saved.shelved)
        self._observed_generation = 0
        self._last_round: float | None = None
        self._first_read_done = True  # run() with a source: not until its first read ended
        self._in_progress: dict[str, Action] = {}
        self._serving: dict[str, LoadTarget] = {}
        self._resolved: dict[str, str] = {}
        self._source = ""
        self._source_error: str | None = None
        self._source_condition: Condition | None = None  # SourceReady, for a followed source
        self._round_lock = asyncio.Lock()
        # Pulls outlive the round that starts them: a long one must not hold back other changes to
        # the spec (a model added, a tag rolled back). Each wakes the loop when it ends, and the
        # next round records its outcome for the models that waited on it.
        self._pulls: dict[str, _PullJob] = {}  # by image reference: one pull of each at a time
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._fingerprint: tuple[tuple[str, str, str], ...] = ()
        self._saved_bytes = b""  # what the state file was last written with

    # --- the spec ---------------------------------------------------------------------------------

    @property
    def spec(self) -> Spec | None:
        """The spec in force (the last good one)."""
        return self._spec

    @property
    def generation(self) -> int:
        return self._generation

    def submit(self, documents: Sequence[SpecDocument], revision: str = "") -> SubmitResult:
        """Validate a new spec and put it in force, or reject it whole (the last good one stays)."""
        try:
            spec = parse_spec(documents)
        except SpecValidationError as exc:
            return self._reject(exc, revision)
        return self.accept(spec, revision)

    def _reject(self, exc: SpecValidationError, revision: str) -> SubmitResult:
        """Keep the last good spec in force; say why this one is not."""
        self._rejected = Rejection(revision, self.clock(), tuple(exc.issues))
        self._event(
            "", "rejected", f"revision {revision or '?'}: {len(exc.issues)} problem(s): {exc.issues[0]}"
        )
        if len(exc.issues) > 1:  # the event names the first; the log has room for them all
            log.warning(
                "every problem of revision %s:\n  %s", revision or "?", "\n  ".join(map(str, exc.issues))
            )
        self._save()
        return SubmitResult(False, self._generation, False, exc)

    def accept(self, spec: Spec, revision: str = "") -> SubmitResult:
        """Put an already valid spec in force."""
        self._rejected = None
        self._revision = revision
        changed = self._spec is None or spec.digest != self._spec.digest
        if changed:
            self._generation += 1
            self._forget_failures_of_changed_models(self._spec, spec)
            self._spec = spec
            self._event(
                "", "accepted", f"generation {self._generation} ({len(spec.models)} models) {revision}"
            )
        self._save()
        self._wake.set()
        return SubmitResult(True, self._generation, changed)

    def _forget_failures_of_changed_models(self, old: Spec | None, new: Spec) -> None:
        """A model whose entry (or the memory budget) changed is tried again at once: its backoff
        and blocks are cleared."""
        models = dict(self._inventory.models)
        budget_changed = old is None or old.body.memory != new.body.memory
        for model in new.models:
            before = old.model(model.name) if old is not None else None
            if (budget_changed or before != model) and model.name in models:
                models[model.name] = replace(models[model.name], failure=None, failures=0, retry_at=0.0)
        self._inventory = replace(self._inventory, models=models)

    # --- one round --------------------------------------------------------------------------------

    async def reconcile(self, *, wait_for_pulls: bool = True) -> Plan | None:
        """Observe, plan, act; again until nothing is left to do. Returns the last plan (None: no spec).
        `wait_for_pulls` false: pulls go on after the round (the daemon's loop takes them up when
        they end), so that a spec change is not held up by a long one."""
        async with self._round_lock:
            spec = self._spec
            if spec is None:
                return None
            generation = self._generation
            current: Plan | None = None
            acted = True
            # Each tag is asked of its registry once a round, not once a pass: a slow registry
            # held the round (and the next spec, and apply) for every pass over again.
            asked: Answers = {}
            for attempt in range(self.settings.max_passes + 1):
                observed = await self._observe(spec, asked)
                current = plan(spec, observed, self._inventory)
                if await self._take_up_pulls(spec, current):  # those that ended since: theirs first
                    observed = await self._observe(spec, asked)
                    current = plan(spec, observed, self._inventory)
                self._publish(spec, current, observed, generation)
                if current.empty or not acted or attempt == self.settings.max_passes:
                    break
                if self._generation != generation:
                    break  # a new spec came in: the next round acts on it, not this pass
                acted = await self._execute(spec, current, wait_for_pulls=wait_for_pulls)
            assert current is not None
            self._drop_unwanted_pulls(spec)
            self._inventory = replace(
                self._inventory,
                models={n: m for n, m in self._inventory.models.items() if n not in current.forget},
            )
            self._last_round = self.clock()
            self._observed_generation = generation
            self._fingerprint = self._glance()
            self._save()
            await self._notify()
            return current

    async def submit_and_preview(
        self, documents: Sequence[SpecDocument], revision: str = ""
    ) -> tuple[SubmitResult, Plan | None]:
        """`submit`, and the plan it makes, taken before any round acts on it (a round under way
        ends first): taken after, it saw a world half changed, and `apply` printed "nothing to do"
        while its round unloaded a model (a spec review)."""
        async with self._round_lock:
            result = self.submit(documents, revision)
            planned = await self.preview() if result.error is None else None
        return result, planned

    async def preview(self, spec: Spec | None = None) -> Plan | None:
        """The plan `spec` (default: the one in force) would make now, without acting (dry run, diff)."""
        spec = spec or self._spec
        if spec is None:
            return None
        return plan(spec, await self._observe(spec), self._inventory)

    async def _observe(self, spec: Spec, asked: Answers | None = None) -> Observed:
        """What the spec's images and the running models are now. `asked`: the registries' answers
        for tags so far this round, used again and added to."""
        references = sorted({r for m in spec.models if not m.suspend for r in m.reference_texts})
        results = await asyncio.gather(*(self._resolve(r, asked) for r in references))
        images = dict(zip(references, results, strict=True))
        targets = []
        for model in spec.models:
            # The stored image, or the one before it a model nothing serves serves meanwhile (plan).
            stored = {
                r: images[r].local_digest or images[r].fallback for r in model.reference_texts if r in images
            }
            if len(stored) == len(model.reference_texts) and all(stored.values()):
                targets.append(target_for(model, {r: d for r, d in stored.items() if d}))
        estimates = await asyncio.gather(*(self.effects.footprint(t) for t in targets))
        footprints = {t.name: e for t, e in zip(targets, estimates, strict=True) if e is not None}
        return Observed(
            running=_by_name(self.effects.running()),
            images=images,
            footprints=footprints,
            budget=self.effects.memory_budget(),
            now=self.clock(),
            session=self._session,
            expired=self.effects.expired(),
        )

    async def _resolve(self, reference: str, asked: Answers | None = None) -> ImageState:
        try:
            digest = await self._ask(reference, asked)
        except ModelyardError as exc:
            failure = classify(exc, ActionKind.PULL)
            last = self._inventory.known_digests.get(reference)
            local = await self.effects.local_digest(reference, last) if last else None
            if last and local is not None:
                failure = replace(failure, message=f"{failure.message}; going on with {last[:19]}")
            return ImageState(reference, None, local, failure)
        self._resolved[reference] = digest
        local = await self.effects.local_digest(reference, digest)
        last = self._inventory.known_digests.get(reference)
        if local is not None and last != digest:
            # Known once stored: taken from the registry's answer before the pull, it left a
            # restarted daemon nothing to serve when the pull failed (a spec review).
            known = {**self._inventory.known_digests, reference: digest}
            self._inventory = replace(self._inventory, known_digests=known)
        fallback = None
        if local is None and last and last != digest:
            fallback = await self.effects.local_digest(reference, last)
        return ImageState(reference, digest, local, fallback=fallback)

    async def _ask(self, reference: str, asked: Answers | None) -> str:
        """The digest `reference` resolves to, from `asked` when the round has its answer."""
        answer = asked.get(reference) if asked is not None else None
        if answer is None:
            try:
                answer = await self.effects.resolve(reference)
            except ModelyardError as exc:
                answer = exc
            except Exception as exc:  # a bug of ours: this model's failure, not the whole round's
                log.exception("resolving %s", reference)
                answer = RegistryError(f"{reference}: cannot be resolved ({type(exc).__name__}: {exc})")
            if asked is not None:
                asked[reference] = answer
        if isinstance(answer, ModelyardError):
            raise answer.with_traceback(None)  # raised once a pass: its traceback would only grow
        return answer

    async def _execute(self, spec: Spec, current: Plan, *, wait_for_pulls: bool = True) -> bool:
        """Run the plan: unloads, then pulls (together, in the background), then loads in priority
        order. True when any action succeeded (so a new plan may have more to do)."""
        actions = current.actions
        progress = False
        for action in (a for a in actions if a.kind is ActionKind.UNLOAD):
            progress |= await self._run(spec, current, action)
        # One pull per image: the models on it wait on it (or on the pull of another digest of
        # it, whose end lets theirs start in a later pass).
        joined = [self._start_pull(group) for group in current.pulls]
        if wait_for_pulls and joined:  # this plan's pulls only: none the daemon runs for others
            await asyncio.wait({job.task for job in joined})
        progress |= await self._take_up_pulls(spec, current)
        for action in actions:
            if action.kind not in (ActionKind.UNLOAD, ActionKind.PULL):
                progress |= await self._run(spec, current, action)
        return progress

    def _start_pull(self, group: Sequence[Action]) -> _PullJob:
        """The pull the group's models wait on: theirs, or the one of another digest of the same
        image still running (the tag moved during it), after which theirs starts."""
        image, digest = group[0].image, group[0].digest
        assert image is not None and digest is not None
        job = self._pulls.get(image)
        if job is None:
            task = asyncio.ensure_future(self.effects.pull(image, digest))
            task.add_done_callback(lambda _: self._wake.set())
            job = self._pulls[image] = _PullJob(digest, task)
        if job.digest == digest:
            for action in group:
                job.waiting[action.model] = action
        return job

    async def _take_up_pulls(self, spec: Spec, current: Plan) -> bool:
        """Record the outcome of every pull that has ended, for each model that waited on it and
        still wants that digest (a pull the spec moved away from is over for nobody). True when
        any pull was taken up."""
        ended = [(image, job) for image, job in self._pulls.items() if job.task.done()]
        for image, job in ended:
            del self._pulls[image]
            for action in job.waiting.values():
                if self._wants(spec, action.model, image, job.digest):
                    await self._run(spec, current, action, job.task)
            _retrieve(job.task)
        return bool(ended)

    def _wants(self, spec: Spec, name: str, image: str, digest: str) -> bool:
        model = spec.model(name)
        return (
            model is not None
            and not (spec.body.suspend or _suspended(spec, name))
            and image in model.reference_texts
            and self._resolved.get(image, digest) == digest
        )

    def _drop_unwanted_pulls(self, spec: Spec) -> None:
        """Pulls no model of the spec waits on any more (removed from it, suspended, or its tag
        moved on): stopped, their outcome let go. A pull's work stops at its next chunk and keeps
        what it received, which a later pull of the same blobs resumes (waiting for its lock)."""
        for image, job in list(self._pulls.items()):
            job.waiting = {
                name: action
                for name, action in job.waiting.items()
                if self._wants(spec, name, image, job.digest)
            }
            if not job.waiting:
                job.task.cancel()  # no-op once done
                _retrieve(job.task)
                del self._pulls[image]

    def _cancel_pulls(self) -> None:
        for job in self._pulls.values():
            job.task.cancel()
            _retrieve(job.task)
        self._pulls.clear()

    async def _run(
        self, spec: Spec, current: Plan, action: Action, pulled: Awaitable[str] | None = None
    ) -> bool:
        """Run one action and record its outcome for its model (a pull: await `pulled`, shared)."""
        name = action.model
        planned = current.model(name)
        self._in_progress[name] = action
        if planned is not None:
            self._report(spec, planned, _by_name(self.effects.running()).get(name), self._generation)
        await self._notify()
        try:
            if action.kind is ActionKind.PULL:
                assert pulled is not None
                local = await pulled
                self._event(name, "pulled", f"{action.image} {action.digest[:19]} (stored as {local[:19]})")
            elif action.kind is ActionKind.UNLOAD:
                await self.effects.unload(name)
                self._serving.pop(name, None)
                measured = _measured_refusal(planned)
                self._remember(name, lambda m: replace(m, applied=None, measured=measured or m.measured))
                self._event(name, "unloaded", action.reason)
            else:
                target = action.target
                assert target is not None
                # Requests follow the new target at once (a request for the old digest during a
                # swap would swap it back), and go back to what served before if it fails.
                serving = self._serving.get(name)
                self._serving[name] = target
                try:
                    running = await self.effects.ensure(target, side_by_side=action.side_by_side)
                except BaseException:
                    _restore(self._serving, name, serving)
                    raise
                applied = _applied(target, running, self._session)
                self._remember(name, lambda m: replace(m, applied=applied))
                # The scheduler's note says how a swap went; an entry keeps it after (a reload
                # logged the swap before it as its own).
                note = f"; {running.note}" if running.note and action.kind is ActionKind.SWAP else ""
                self._event(name, _PAST[action.kind], f"{action.reason}{note}")
        except ModelyardError as exc:
            failure = classify(exc, action.kind)
            self._fail(name, failure, planned.key if planned is not None and failure.permanent else "")
            self._event(name, "failed", f"{action.kind.value}: {failure.message}")
            return False
        finally:
            self._in_progress.pop(name, None)
        self._remember(name, lambda m: replace(m, failure=None, failures=0, retry_at=0.0, blocked_on=""))
        return True

    def _fail(self, name: str, failure: Failure, blocked_on: str) -> None:
        memory = self._inventory.memory(name)
        failures = memory.failures + 1
        delay = max(self._backoff(failures), failure.retry_after)
        self._remember(
            name,
            lambda m: replace(
                m, failure=failure, failures=failures, retry_at=self.clock() + delay, blocked_on=blocked_on
            ),
        )

    def _backoff(self, failures: int) -> float:
        """base × 2^(n-1), capped, with ±20 % jitter so that many models don't retry in step."""
        raw = min(self.settings.backoff_base * 2 ** (failures - 1), self.settings.backoff_max)
        return raw * (0.8 + 0.4 * self._rand())

    def _remember(self, name: str, change: Callable[[Memory], Memory]) -> None:
        models = dict(self._inventory.models)
        models[name] = change(models.get(name, Memory()))
        self._inventory = replace(self._inventory, models=models)

    # --- status -----------------------------------------------------------------------------------

    def _publish(self, spec: Spec, current: Plan, observed: Observed, generation: int) -> None:
        for planned in current.models:
            self._report(spec, planned, observed.running.get(planned.name), generation)
            if planned.target is not None and planned.phase in (Phase.READY, Phase.STANDBY):
                self._serving[planned.name] = planned.target
        listed = {m.name for m in spec.models}
        for name in [n for n in self._reports if n not in listed]:
            del self._reports[name]
        for name in [n for n in self._serving if n not in listed]:
            del self._serving[name]

    def _report(self, spec: Spec, planned: ModelPlan, running: Running | None, generation: int) -> None:
        model = spec.model(planned.name)
        self._reports[planned.name] = report_model(
            self._reports.get(planned.name),
            planned,
            image=model.image if model is not None else "",
            resolved_digest=self._resolved.get(model.image, "") if model is not None else "",
            running=running,
            memory=self._inventory.memory(planned.name),
            generation=generation,
            now=self.clock(),
            in_progress=self._in_progress.get(planned.name),
        )

    def target(self, name: str) -> LoadTarget | None:
        """What a request for the served `name` should load: the spec's image, digest and options
        (None: the spec does not serve that name). The HTTP server resolves names through this first."""
        return self._serving.get(name)

    def runner_crashed(self, name: str, why: str) -> None:
        """The scheduler's word that a runner serving `name` died: an event of the spec's model, even
        when the next request loads it again at once (a spec review: a crash under traffic left no
        trace in the status)."""
        if name in self._serving:
            self._event(name, "crashed", f"{why}; the next request loads it again")

    def served_names(self) -> list[str]:
        """The names the spec serves now (those `target` answers for)."""
        return sorted(self._serving)

    def unavailable(self, name: str) -> str | None:
        """Why the spec's model `name` cannot be served now (not pulled, does not fit, failing), or
        None: the spec serves it, or does not declare it. A request for it must not fall through
        to another image of that name in the store."""
        spec = self._spec
        if spec is None or name in self._serving or spec.model(name) is None:
            return None
        report = self._reports.get(name)
        why = report.message if report is not None and report.message else "it is not loaded yet"
        return f"{name} is not ready: {why}"

    def reports(self) -> list[ModelReport]:
        spec = self._spec
        order = [m.name for m in spec.models] if spec is not None else []
        return [self._reports[n] for n in order if n in self._reports]

    @property
    def engaged(self) -> bool:
        """A spec is in force, or one was offered (rejected, or its source failed): the status
        says so rather than "no spec"."""
        return self._spec is not None or self._rejected is not None or self._source_error is not None

    def ready(self) -> bool:
        """Every model the spec does not suspend is Ready at the current generation."""
        spec = self._spec
        # Not before the source's first read: a restart's saved spec may be one the source has
        # moved on from (a review: `status --wait-ready` passed on it, the new commit unread).
        if spec is None or self._observed_generation != self._generation or not self._first_read_done:
            return False
        # Nor while the source's latest revision is not the spec in force (it cannot be read, or
        # was rejected), as Flux's Ready says: `status --wait-ready` passed on the last good spec
        # with the git host down, or after a bad commit. /health (serving) is not affected.
        if self._source and (self._source_error is not None or self._rejected is not None):
            return False
        wanted = [m.name for m in spec.models if not (m.suspend or spec.body.suspend)]
        return all(
            n in self._reports
            and self._reports[n].ready
            and self._reports[n].observed_generation == self._generation
            for n in wanted
        )

    def serving(self) -> bool:
        """Every model the spec does not suspend answers requests now: Ready, Standby, or an earlier
        digest serving on while the spec's moves on (a pull, a swap, a new digest that failed). A
        readiness probe wants this, not `ready()`: a tag move would otherwise take the server out of
        its Service for the length of a pull."""
        spec = self._spec
        # The reports a restart restores say what was, not what is: nothing is Ready before a round
        # of this process (a GitOps review: /health said 200 with no model loaded).
        if spec is None or self._last_round is None:
            return False
        wanted = [m.name for m in spec.models if not (m.suspend or spec.body.suspend)]
        reports = self._reports
        return all(n in reports and (reports[n].ready or reports[n].serving) for n in wanted)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until `ready()`; False when `timeout` seconds pass first."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(self.ready), timeout)
            except TimeoutError:
                return False
        return True

    def status(self) -> dict[str, Any]:
        """The whole status, JSON-ready (`GET /api/status`, `modelyard status`)."""
        spec = self._spec
        models = [r.to_json() for r in self.reports()]
        wanted = [r for r in self.reports() if not (spec and (spec.body.suspend or _suspended(spec, r.name)))]
        rejected = self._rejected
        return {
            "apiVersion": "modelyard/v1",
            "kind": "ModelSetStatus",
            "name": spec.name if spec is not None else None,
            "generation": self._generation,
            "observedGeneration": self._observed_generation,
            "specDigest": spec.digest if spec is not None else None,
            "suspended": bool(spec and spec.body.suspend),
            "ready": self.ready(),
            "readyModels": sum(1 for r in wanted if r.ready),
            "wantedModels": len(wanted),
            "source": {"description": self._source, "revision": self._revision, "error": self._source_error},
            "conditions": [self._source_condition.to_json()]
            if self._source and self._source_condition
            else [],
            "rejected": None
            if rejected is None
            else {
                "revision": rejected.revision,
                "at": timestamp(rejected.at),
                "issues": [
                    {"path": i.path, "message": i.message, "file": i.file, "line": i.line, "text": str(i)}
                    for i in rejected.issues
                ],
            },
            "lastReconcile": timestamp(self._last_round),
            "models": models,
            "inventory": sorted(n for n, m in self._inventory.models.items() if m.applied is not None),
            "events": [
                {
                    "time": timestamp(e.time),
                    "model": e.model or None,
                    "kind": e.kind,
                    "message": e.message,
                    "count": e.count,
                }
                for e in self._events[-20:]
            ],
        }

    # --- the daemon -------------------------------------------------------------------------------

    async def run(self, source: SpecSource | None, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set: on every change of `source`, whenever a spec model's runner
        dies or unloads, and every interval. Without a source, the spec given to `submit` (or the
        last good one saved) is kept in line."""
        self._source = source.description if source is not None else ""
        self._take_up_this_sources_spec(source.former_descriptions if source is not None else ())
        tasks: list[asyncio.Future[Any]] = [asyncio.create_task(self._glance_loop(stop))]
        try:
            if source is not None:
                # The first read gets a head start: read before the first round, the spec a source
                # changed while the server was down is the one loaded (a round on the saved one
                # loaded what the source had dropped). One that hangs (a git host that accepts and
                # never answers: 120 s to git's timeout) goes on beside the rounds, and the saved
                # spec's models load meanwhile (a GitOps review: nothing loaded for 120 s).
                self._first_read_done = False
                self._note_source()
                first = asyncio.create_task(self._read(source, first=True))
                tasks.append(first)
                stopping = asyncio.ensure_future(stop.wait())
                tasks.append(stopping)
                await asyncio.wait(
                    {first, stopping},
                    timeout=self.settings.first_read_head_start,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                tasks.append(asyncio.create_task(self._watch(source, stop, first=first)))
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.reconcile(wait_for_pulls=False)
                except ModelyardError as exc:
                    log.error("reconcile: %s", exc)
                except Exception:  # a bug: logged with its traceback; the daemon keeps serving
                    log.exception("reconcile failed")
                await _wait_any(self._wake, stop, self._sleep_time())
        finally:
            self._cancel_pulls()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _take_up_this_sources_spec(self, former: tuple[str, ...] = ()) -> None:
        """The saved spec stays in force only for the source it came from (by its description, or
        one an earlier version gave it: `former`): `serve --spec FILE` with FILE invalid put in
        force the spec `apply` had set in an earlier run, and said it was healthy (a CLI review).
        Another source's spec is shelved for it, and this source's own, if one was shelved, comes
        back (a README review: one `serve --spec` run lost the spec `apply` had set). What the
        reconciler loaded stays in its inventory."""
        mine = (self._source, *former)
        if self._saved_source is None or self._saved_source in mine:
            return
        came_from, this = self._saved_source or "`apply`", self._source or "`apply`"
        if self._spec is not None:
            self._shelved.pop(self._saved_source, None)  # its latest, last in the order kept
            self._shelved[self._saved_source] = ShelvedSpec(self._spec.to_document(), self._revision)
            for oldest in list(self._shelved)[:-MAX_SHELVED_SPECS]:
                del self._shelved[oldest]
            self._event("", "shelved", f"the saved spec came from {came_from}, not {this}: kept for it")
        self._spec, self._revision, self._rejected, self._reports = None, "", None, {}
        # Under this source's description or a former one (the first found; the others are stale).
        entries = [self._shelved.pop(key) for key in mine if key in self._shelved]
        if entries:
            spec = _restore_spec(entries[0].spec)
            if spec is None:  # a spec this version no longer takes (a review: dropped without a word)
                self._event(
                    "", "unshelved", f"the spec shelved for {this} no longer validates; none is in force"
                )
            else:
                self._generation += 1
                self._spec, self._revision = spec, entries[0].revision
                # As accept() would for a new spec: the other source's failures are not this one's.
                self._forget_failures_of_changed_models(None, spec)
                message = f"generation {self._generation}: the spec of {this}, shelved while {came_from} ran"
                self._event("", "unshelved", message)
        self._saved_source = self._source
        self._save()

    def _sleep_time(self) -> float:
        spec = self._spec
        interval = self.settings.interval or (spec.body.interval if spec is not None else 30.0)
        retries = [m.retry_at for m in self._inventory.models.values() if m.failure and not m.blocked_on]
        due = min((r - self.clock() for r in retries if r > self.clock()), default=interval)
        return max(min(interval, due), 0.05)

    async def _watch(
        self, source: SpecSource, stop: asyncio.Event, *, first: asyncio.Task[None] | None = None
    ) -> None:
        if first is not None:
            await first  # the first read, under way
        while not stop.is_set():
            await _wait_any(None, stop, source.poll_interval)
            if not stop.is_set():
                await self._read(source)

    async def _read(self, source: SpecSource, *, first: bool = False) -> None:
        try:
            await self._read_once(source, first=first)
        finally:
            if first:
                self._first_read_done = True
                self._wake.set()
            if self._note_source():
                self._wake.set()  # a round, whose end tells those waiting for ready()

    def _note_source(self) -> bool:
        """SourceReady from what the last read found (its transition time kept while it holds);
        True when its status flipped."""
        rejected = self._rejected
        before = self._source_condition
        self._source_condition = source_condition(
            self._source_condition,
            error=self._source_error,
            rejected=(rejected.revision or "?") if rejected is not None else None,
            revision=self._revision,
            read=self._first_read_done,
            generation=self._generation,
            now=self.clock(),
        )
        return before is None or before.status != self._source_condition.status

    async def _read_once(self, source: SpecSource, *, first: bool) -> None:
        try:
            snapshot = await asyncio.to_thread(source.read)
            if snapshot.revision == self._revision:
                self._source_error = None
                if self._rejected is not None:  # an edit undone: the source is the spec in force again
                    self._rejected = None
                    self._event(
                        "", "restored", f"the source is back at revision {snapshot.revision}, in force"
                    )
                    self._save()
                return
            if self._rejected is not None and snapshot.revision == self._rejected.revision:
                self._source_error = None
                return
            if not first:  # a file being written reads differently twice: wait until it settles
                await asyncio.sleep(self.settings.debounce)
                again = await asyncio.to_thread(source.read)
                if again.revision != snapshot.revision:
                    return
            self._source_error = None
        except SpecSourceError as exc:
            if self._source_error != str(exc):  # once, not at every poll (twice a second)
                log.warning("%s", exc)
            self._source_error = str(exc)
            return
        # Parsed in a worker thread: a spec of megabytes held every request of the server for
        # seconds on the event loop (a GitOps review). Put in force here, on the loop.
        try:
            spec = await asyncio.to_thread(parse_spec, snapshot.documents)
        except SpecValidationError as exc:
            self._reject(exc, snapshot.revision)
            return
        self.accept(spec, snapshot.revision)

    async def _glance_loop(self, stop: asyncio.Event) -> None:
        """Wake the loop when a spec model's runner died, unloaded or changed outside a round."""
        while not stop.is_set():
            await _wait_any(None, stop, self.settings.heal_poll)
            if not self._round_lock.locked() and self._glance() != self._fingerprint:
                self._wake.set()

    def _glance(self) -> tuple[tuple[str, str, str], ...]:
        return tuple(sorted((r.name, r.digest, r.state) for r in self.effects.running()))

    # --- bookkeeping ------------------------------------------------------------------------------

    def _event(self, model: str, kind: str, message: str) -> None:
        event = Event(self.clock(), model, kind, message)
        # The same again for its model (a pull retried on its backoff): counted, not repeated, so
        # that it does not push the history out of the last events.
        last = next((i for i in range(len(self._events) - 1, -1, -1) if self._events[i].model == model), None)
        if last is not None and (self._events[last].kind, self._events[last].message) == (kind, message):
            event = replace(event, count=self._events.pop(last).count + 1)
        self._events.append(event)
        del self._events[:-MAX_EVENTS]
        log.info("%s%s: %s", f"{model}: " if model else "", kind, message)

    def _save(self) -> None:
        """Write the state file, when what it holds changed. Every round saves, and in steady state
        nothing changes: each rewrote the same bytes with two fsyncs on the event loop, a pause of
        every stream the server sends every 30 s (0.5 ms on the test VM's disk; a busy or networked
        disk takes far longer)."""
        spec = self._spec
        data = encode_state(
            SavedState(
                generation=self._generation,
                spec=spec.to_document() if spec is not None else None,
                spec_digest=spec.digest if spec is not None else "",
                revision=self._revision,
                source=self._source,
                inventory=self._inventory,
                reports=self._reports,
                events=tuple(self._events),
                rejected=self._rejected,
                shelved=self._shelved,
            ),
        )
        # Written again, too, when it is gone (deleted by hand): a stat, no fsync, per round.
        if data != self._saved_bytes or not self.settings.state_path.exists():
            write_state(self.settings.state_path, data)
            self._saved_bytes = data

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


@dataclass
class _PullJob:
    digest: str
    task: asyncio.Future[str]
    waiting: dict[str, Action] = field(default_factory=dict)  # model -> its pull action


def _measured_refusal(planned: ModelPlan | None) -> tuple[str, int] | None:
    """What a model unloaded for not fitting measured, as loaded: its load key and bytes (none for
    an earlier digest or options unloaded to make room: the target was not measured)."""
    if planned is None or planned.target is None or planned.footprint is None or not planned.measured:
        return None
    if planned.failure is None or planned.failure.reason is not Reason.DOES_NOT_FIT:
        return None
    return planned.target.load_key, planned.footprint


def _retrieve(task: asyncio.Future[str]) -> None:
    """Mark a pull's failure as seen (its models record it, or nobody wants it): asyncio would
    otherwise log "exception was never retrieved"."""
    if task.done() and not task.cancelled():
        task.exception()
    elif not task.done():
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())


def classify(exc: ModelyardError, kind: ActionKind) -> Failure:
    """Which condition an error sets, and whether trying again can help before the spec changes."""
    message = str(exc)
    if isinstance(exc, ModelDoesNotFitError):
        return Failure(Reason.DOES_NOT_FIT, message, permanent=True)
    if isinstance(exc, DigestMismatchError):
        return Failure(Reason.PULL_FAILED, message, permanent=True)
    if isinstance(exc, BuildError | InvalidReferenceError | NotAnAdapterError):
        # A GGUF that cannot be read; an adapter image without an adapter.
        return Failure(Reason.LOAD_FAILED, message, permanent=True)
    if isinstance(exc, ServerBusyError):
        return Failure(_BUSY.get(exc.reason, Reason.LOAD_FAILED), message, retry_after=exc.retry_after)
    if isinstance(exc, RunnerCrashedError):
        return Failure(Reason.CRASHED, message)
    if isinstance(exc, RunnerError):
        return Failure(Reason.LOAD_FAILED, message)
    if isinstance(exc, RegistryError | StoreError) or kind is ActionKind.PULL:
        return Failure(Reason.PULL_FAILED, message)
    return Failure(Reason.LOAD_FAILED, message)


# Why the scheduler said busy (ServerBusyError.reason) → the condition's reason. "load-failed" and
# "queue" (its queue is full) are LoadFailed.
_BUSY = {"crashed": Reason.CRASHED, "memory": Reason.DOES_NOT_FIT}

_PAST = {
    ActionKind.LOAD: "loaded",
    ActionKind.RELOAD: "reloaded",
    ActionKind.SWAP: "swapped",
    ActionKind.UPDATE: "updated",
}


def _applied(target: LoadTarget, running: Running, session: str) -> Applied:
    return Applied(
        digest=target.digest,
        load_key=target.load_key,
        options_key=target.options_key,
        serve_key=target.serve_key,
        context_length=running.context_length,
        slots=running.slots,
        keep_alive=target.keep_alive,
        session=session,
    )


def _restore(serving: dict[str, LoadTarget], name: str, before: LoadTarget | None) -> None:
    if before is None:
        serving.pop(name, None)
    else:
        serving[name] = before


def _by_name(running: Sequence[Running]) -> Mapping[str, Running]:
    """One entry per name: the first the scheduler lists (Effects.running puts the active one first)."""
    out: dict[str, Running] = {}
    for entry in running:
        out.setdefault(entry.name, entry)
    return out


def _suspended(spec: Spec, name: str) -> bool:
    model = spec.model(name)
    return model is not None and model.suspend


def _restore_spec(document: Mapping[str, Any] | None) -> Spec | None:
    if document is None:
        return None
    try:
        return parse_spec([SpecDocument("(saved state)", yaml.safe_dump(dict(document)))])
    except SpecValidationError:
        log.warning("the saved spec no longer validates; waiting for a new one")
        return None


async def _wait_any(event: asyncio.Event | None, stop: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if event is not None:
        waiters.append(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
