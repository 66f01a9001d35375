"""What to do so that what is loaded matches the spec: a pure function of the spec, what was observed,
and what the reconciler remembers (`plan`), and the plan as text (`format_plan`).

    spec  ─┐
    observed (the scheduler's models, what each image reference resolves to, estimates) ─┼─▶ plan ─▶ Plan
    inventory (what the reconciler loaded, failures, backoff) ─┘

Per model, in priority order (higher first, then spec order):

    suspended (spec or model)                      nothing
    a permanent failure for this very entry        nothing until the entry (or the budget) changes
    in backoff after a failure                     nothing until then
    an image not resolvable and none known         nothing (Degraded PullFailed)
    an image not in the store                      pull
    more than what the models before it leave      nothing (DoesNotFit); unload it if loaded by us
    more than the budget even alone                nothing (DoesNotFit); what serves stays, unless it
                                                   is this very target (measured too big)
    not loaded                                     load  (not again after its keepAlive ran out: Standby)
    failed (crashed)                               load again (self-heal)
    another digest (new load options or not)       swap: the new one loads beside the old, no downtime
                                                   (if the spec's memory holds both; else the old goes first)
    other load options (context, slots, adapters)  reload
    only keepAlive, pinned, params, priority       update in place (no reload)
    as the spec says                               nothing

Prune: models this reconciler loaded (its inventory) that the spec no longer lists are unloaded
when `prune: true`; with `prune: all`, every loaded model the spec does not list.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from modelyard.errors import memory_size
from modelyard.spec.schema import ModelSpec, Spec, model_key


class Reason(enum.StrEnum):
    """Why a model is not Ready (the Degraded condition's reasons)."""

    PULL_FAILED = "PullFailed"
    LOAD_FAILED = "LoadFailed"
    DOES_NOT_FIT = "DoesNotFit"
    CRASHED = "Crashed"


@dataclass(frozen=True)
class Failure:
    """An action or a check that failed. `permanent`: retrying cannot help until the spec changes."""

    reason: Reason
    message: str
    permanent: bool = False
    retry_after: float = 0.0  # at least this long before the next try (a registry's or scheduler's ask)


# --- what was observed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    """One model the scheduler holds (its status, reduced to what planning needs)."""

    name: str
    digest: str
    state: str  # ready | loading | failed | unloading
    size: int = 0
    context_length: int = 0
    slots: int = 0
    pinned: bool = False
    last_error: str = ""
    note: str = ""
    shares_runner: bool = False  # served by another name's runner, whose row counts the memory
    failure_kind: str = ""  # state failed: "crashed" (it ran) or "load-failed" (it never did)


@dataclass(frozen=True)
class ImageState:
    """What an image reference resolves to now: the digest its tag names (the registry's; the store's
    for a local name), and the stored image for that digest (or, when it cannot be resolved now, for
    the digest it resolved to last), if any."""

    reference: str
    digest: str | None  # None: it could not be resolved now (see error)
    local_digest: str | None = None
    error: Failure | None = None
    # The stored image of the digest it resolved to before, when the one it resolves to now is not
    # stored: what a model nothing serves can serve until the pull is done.
    fallback: str | None = None


@dataclass(frozen=True)
class Observed:
    running: Mapping[str, Running]
    images: Mapping[str, ImageState]  # by reference text, as the spec writes it
    footprints: Mapping[str, int]  # model name -> estimated bytes of its target, once its images are stored
    budget: int  # what the scheduler may hold: RAM and GPU budgets together
    now: float
    session: str  # this reconciler process: what it loaded before a restart is loaded again
    expired: frozenset[str] = frozenset()  # unloaded after their keepAlive, not loaded since


# --- what the reconciler remembers (persisted) ----------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What the reconciler last had the scheduler load for a model, and what the scheduler then said."""

    digest: str
    load_key: str  # digest, adapters and load options
    options_key: str  # load options alone: equal means a new digest can swap in beside the old
    serve_key: str  # keepAlive, pinned, params, priority: what applies without a reload
    context_length: int
    slots: int
    keep_alive: float
    session: str


@dataclass(frozen=True)
class Memory:
    """The reconciler's memory of one model."""

    applied: Applied | None = None
    failure: Failure | None = None
    failures: int = 0
    retry_at: float = 0.0
    blocked_on: str = ""  # model_key() of the entry a permanent failure waits to see change
    # (load_key, bytes) of a load measured too big and unloaded for it: admitted on its estimate,
    # with the estimate's margin, it loaded, measured over, unloaded, and loaded again each pass
    # for ever (a spec review). Admission takes the measurement for that load from then on.
    measured: tuple[str, int] | None = None


@dataclass(frozen=True)
class Inventory:
    models: Mapping[str, Memory] = field(default_factory=dict)
    known_digests: Mapping[str, str] = field(default_factory=dict)  # reference -> last digest stored

    def memory(self, name: str) -> Memory:
        return self.models.get(name, Memory())


# --- the plan -------------------------------------------------------------------------------------


class ActionKind(enum.StrEnum):
    PULL = "pull"
    LOAD = "load"
    RELOAD = "reload"
    SWAP = "swap"
    UPDATE = "update"
    UNLOAD = "unload"


@dataclass(frozen=True)
class AdapterTarget:
    image: str
    digest: str
    scale: float


@dataclass(frozen=True)
class LoadTarget:
    """Everything needed to load one model as the spec says, with digests from the store."""

    name: str
    image: str
    digest: str  # the local manifest digest
    adapters: tuple[AdapterTarget, ...] = ()
    load_options: tuple[tuple[str, int], ...] = ()  # num_ctx, num_parallel, num_gpu as the spec sets them
    params: tuple[tuple[str, Any], ...] = ()  # request defaults over the image's parameters
    keep_alive: float = math.inf
    pinned: bool = False
    priority: int = 0
    # The spec's models before this one (by priority, then spec order): its load must not evict
    # them to make room. Not part of any key: a change of order reloads nothing.
    protects: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def options(self) -> dict[str, Any]:
        return {**dict(self.params), **dict(self.load_options)}

    @property
    def load_key(self) -> str:
        return _key([self.digest, [(a.digest, a.scale) for a in self.adapters], self.load_options])

    @property
    def options_key(self) -> str:
        return _key(self.load_options)

    @property
    def serve_key(self) -> str:
        keep_alive = "forever" if math.isinf(self.keep_alive) else self.keep_alive
        return _key([keep_alive, self.pinned, self.params, self.priority])


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    model: str
    reason: str
    target: LoadTarget | None = None  # load, reload, swap, update
    image: str = ""  # pull: the reference
    digest: str = ""  # pull: the digest it should bring
    # swap: load the new digest beside the old (no downtime); False when the spec's memory holds
    # only one of them: the old one unloads first (a short gap)
    side_by_side: bool = True


class Phase(enum.StrEnum):
    """Where a model stands after this plan (before its actions run)."""

    READY = "Ready"  # loaded as the spec says
    STANDBY = "Standby"  # unloaded after its keepAlive ran out; loads again on the next request
    PULLING = "Pulling"
    LOADING = "Loading"  # load, reload, swap or update planned
    WAITING = "Waiting"  # backoff after a failure, or the scheduler is busy with it
    FAILED = "Failed"  # cannot go on: unresolvable, does not fit, or a permanent failure
    DRIFTED = "Drifted"  # not as the spec says, and selfHeal is off
    SUSPENDED = "Suspended"


@dataclass(frozen=True)
class ModelPlan:
    name: str
    phase: Phase
    message: str
    actions: tuple[Action, ...] = ()
    target: LoadTarget | None = None  # what the spec asks for, when its images are all stored
    failure: Failure | None = None  # what keeps it from Ready now (observed, or remembered)
    footprint: int | None = None
    key: str = ""  # blocking_key(): what a permanent failure of these actions waits to see change
    measured: bool = False  # the footprint is what the target measured loaded (not an estimate)


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelPlan, ...]  # in the order they are acted on
    prune: tuple[Action, ...] = ()  # unloads of models the spec no longer lists
    forget: tuple[str, ...] = ()  # inventory entries no longer needed
    budget: int = 0

    @property
    def actions(self) -> tuple[Action, ...]:
        """Every action in the order they run: unloads first (they free memory), then per model."""
        yielding = tuple(a for m in self.models for a in m.actions if a.kind is ActionKind.UNLOAD)
        rest = tuple(a for m in self.models for a in m.actions if a.kind is not ActionKind.UNLOAD)
        return self.prune + yielding + rest

    @property
    def pulls(self) -> tuple[tuple[Action, ...], ...]:
        """The pull actions, one group per (image, digest): models on the same image share a pull."""
        groups: dict[tuple[str, str], list[Action]] = {}
        for action in self.actions:
            if action.kind is ActionKind.PULL:
                groups.setdefault((action.image, action.digest), []).append(action)
        return tuple(tuple(group) for group in groups.values())

    @property
    def empty(self) -> bool:
        return not self.actions

    def model(self, name: str) -> ModelPlan | None:
        return next((m for m in self.models if m.name == name), None)


# --- planning -------------------------------------------------------------------------------------


def plan(spec: Spec, observed: Observed, inventory: Inventory) -> Plan:
    body = spec.body
    budget = body.memory.total if body.memory.total is not None else observed.budget
    ordered = sorted(enumerate(body.models), key=lambda im: (-im[1].priority, im[0]))
    # Suspended models keep whatever memory they hold.
    used = sum(
        observed.running[m.name].size
        for m in body.models
        if m.suspend and m.name in observed.running and not body.suspend
    )
    models = []
    counted: set[str] = set()  # load keys whose runner is counted already: names after share it
    before: set[str] = set()
    for _, model in ordered:
        planned = _plan_model(
            spec, model, observed, inventory, budget, used, frozenset(counted), frozenset(before)
        )
        before.add(model.name)
        running = observed.running.get(model.name)
        unloads = any(a.kind is ActionKind.UNLOAD for a in planned.actions)
        if planned.footprint is not None and planned.phase not in (Phase.FAILED, Phase.STANDBY):
            used += planned.footprint
            if planned.target is not None:
                counted.add(planned.target.load_key)
        elif running is not None and running.state == "ready" and not unloads:
            used += running.size  # what it holds while it stays (an earlier digest serving on)
        models.append(planned)
    listed = {m.name for m in body.models}
    prune: list[Action] = []
    if not body.suspend and body.prune:
        for name, running in sorted(observed.running.items()):
            if name in listed or running.state == "unloading":
                continue
            memory = inventory.memory(name)
            # One whose load failed was never applied, yet it was the spec's: its failed entry
            # stayed listed for ever once the spec dropped it.
            ours = memory.applied is not None or (running.state == "failed" and name in inventory.models)
            if ours or body.prune == "all":
                why = "no longer in the spec" if ours else "not in the spec (prune: all)"
                prune.append(Action(ActionKind.UNLOAD, name, why))
    forget = tuple(sorted(n for n in inventory.models if n not in listed and n not in observed.running))
    return Plan(tuple(models), tuple(prune), forget, budget)


def _plan_model(
    spec: Spec,
    model: ModelSpec,
    observed: Observed,
    inventory: Inventory,
    budget: int,
    used: int,
    counted: frozenset[str] = frozenset(),
    before: frozenset[str] = frozenset(),
) -> ModelPlan:
    name = model.name
    memory = inventory.memory(name)
    running = observed.running.get(name)
    if spec.body.suspend or model.suspend:
        which = "the spec is" if spec.body.suspend else "this model is"
        return ModelPlan(name, Phase.SUSPENDED, f"{which} suspended: nothing is loaded, unloaded or healed")

    # Images: each reference to a digest (the one it resolved to last when it cannot be resolved now).
    resolved: list[str] = []
    stored: dict[str, str] = {}
    fallbacks: dict[str, str] = {}  # the image before, for what is not stored yet
    pulls: list[Action] = []
    warning: Failure | None = None
    for reference in model.reference_texts:
        state = observed.images.get(reference, ImageState(reference, None))
        digest = state.digest or inventory.known_digests.get(reference)
        warning = warning or state.error
        if digest is None or (state.digest is None and state.local_digest is None):
            failure = state.error or Failure(Reason.PULL_FAILED, f"{reference} cannot be resolved yet")
            return ModelPlan(name, Phase.FAILED, failure.message, failure=failure)
        resolved.append(digest)
        if state.local_digest is None:
            why = (
                "not in the store; loads once pulled"
                if running is None
                else f"the tag now points to {digest[:19]}; swaps in once pulled"
            )
            pulls.append(Action(ActionKind.PULL, name, why, image=reference, digest=digest))
            if state.fallback is not None:
                fallbacks[reference] = state.fallback
        else:
            stored[reference] = state.local_digest
    key = blocking_key(spec, model, resolved)
    # Nothing serves it, and what its references named before is stored: that serves while the new
    # images are pulled, or cannot be (a spec review: a restarted daemon served nothing while a
    # moved tag's pull failed, though the image before was in the store).
    meanwhile = bool(pulls) and running is None and len(stored) + len(fallbacks) == len(model.reference_texts)
    if memory.failure is not None and memory.blocked_on == key:
        message = f"{memory.failure.message} (waiting for a change to this model in the spec)"
        if not meanwhile:
            return ModelPlan(name, Phase.FAILED, message, failure=memory.failure, key=key)
        pulls, warning = [], memory.failure
    if memory.failure is not None and observed.now < memory.retry_at:
        wait = memory.retry_at - observed.now
        message = f"{memory.failure.message}; retrying in {wait:.0f} s"
        if not meanwhile:
            return ModelPlan(name, Phase.WAITING, message, failure=memory.failure, key=key)
        pulls, warning = [], memory.failure
    if pulls and not meanwhile:
        return ModelPlan(name, Phase.PULLING, pulls[0].reason, tuple(pulls), failure=warning, key=key)
    if meanwhile:
        stored = {**fallbacks, **stored}

    target = replace(target_for(model, stored), protects=before)
    footprint, measured = _footprint(target, running, memory, observed)
    if target.load_key in counted and not measured:
        # Another name before it loads the same digest with the same options and adapters: the
        # scheduler serves both from one runner, counted once (a spec review: three names on one
        # image were Ready together under a budget that, after a restart, refused two of them).
        footprint, measured = 0, True
    # The estimate's margin is for a model that nothing serves now (after a restart, say): one that
    # replaces what serves must fit by its estimate, or the swap would trade a working model for
    # one measured too big.
    serving_now = running is not None and running.state == "ready"
    # The advice names the limit in force (a spec review: "raise spec.memory" where the server's
    # budget was the limit, which raising spec.memory cannot lift).
    limit = "spec.memory" if spec.body.memory.total is not None else "the server's $MODELYARD_RAM_BUDGET"
    # Under the server's own budget the scheduler checks the estimate strictly, and a model admitted
    # beside others on the margin made it evict the models before it (a spec review: a priority-0
    # model unloaded the priority-10 one, which loaded again and evicted it, for ever).
    lenient = not measured and not serving_now and (spec.body.memory.total is not None or used == 0)
    refused = _admit(footprint, budget, used, lenient=lenient, limit=limit)
    if refused is not None:
        actions: tuple[Action, ...] = ()
        serving_ours = running is not None and running.state == "ready" and memory.applied is not None
        # Not enough room for it beside the models before it: it gives them its room. Too big even
        # alone: what serves now (an earlier digest or options, which fitted) stays until the spec
        # changes; only the very target, loaded and measured too big, goes.
        if serving_ours and (not refused.permanent or measured):
            why = "the budget is for the models before it" if not refused.permanent else "over the budget"
            actions = (Action(ActionKind.UNLOAD, name, why),)
        return ModelPlan(
            name, Phase.FAILED, refused.message, actions, target, refused, footprint, key, measured=measured
        )
    # What the spec's own budget leaves this model (None: no spec budget; the scheduler keeps the
    # machine's): a swap needs the old and the new side by side.
    room = budget - used if spec.body.memory.total is not None else None
    planned = _compare(spec, model, target, running, memory, observed, footprint, warning, room)
    if meanwhile:
        serving = f"serving the image before, {target.digest[:19]}, until the new one is pulled"
        planned = replace(
            planned, actions=(*pulls, *planned.actions), message=f"{serving}; {planned.message}"
        )
    return replace(planned, key=key)


def blocking_key(spec: Spec, model: ModelSpec, digests: Sequence[str]) -> str:
    """What a permanent failure waits to see change: the model's entry, the budget, or a digest."""
    return model_key(spec, model) + ":" + _key(list(digests))


def _compare(
    spec: Spec,
    model: ModelSpec,
    target: LoadTarget,
    running: Running | None,
    memory: Memory,
    observed: Observed,
    footprint: int | None,
    warning: Failure | None,
    room: int | None = None,
) -> ModelPlan:
    name = model.name
    applied = memory.applied
    heal = spec.body.self_heal

    def act(kind: ActionKind, why: str) -> ModelPlan:
        # An update in place keeps the model serving as it is: it stays Ready.
        phase = Phase.READY if kind is ActionKind.UPDATE else Phase.LOADING
        action = Action(kind, name, why, target)
        return ModelPlan(name, phase, why, (action,), target, warning, footprint)

    def drifted(why: str) -> ModelPlan:
        return ModelPlan(name, Phase.DRIFTED, f"{why}; selfHeal is off", (), target, warning, footprint)

    standby = name in observed.expired and not math.isinf(model.keep_alive)
    if running is None:
        ours_now = applied is not None and applied.session == observed.session
        if ours_now and applied is not None and standby:
            # It went after its keepAlive: a new digest or options wait for the next request too,
            # which loads the target as it is then (loading it now would undo the keepAlive).
            message = "unloaded after its keepAlive; loads again on the next request"
            if applied.load_key != target.load_key:
                message += f", as {target.digest[:19]} with the spec's options"
            return ModelPlan(name, Phase.STANDBY, message, (), target, warning, footprint)
        if ours_now and applied is not None and applied.load_key == target.load_key:
            if not heal:
                return drifted("unloaded outside the spec")
            return act(ActionKind.LOAD, "unloaded outside the spec; loading it again")
        return act(ActionKind.LOAD, "it was not loaded")
    if running.state == "failed":
        failed = runner_failure(running)
        what = "failed to load" if failed.reason is Reason.LOAD_FAILED else "its runner failed"
        if not heal:
            return drifted(f"{what} ({running.last_error})")
        action = Action(ActionKind.LOAD, name, f"{what} ({running.last_error}); loading it again", target)
        return ModelPlan(name, Phase.LOADING, action.reason, (action,), target, failed, footprint)
    if running.state == "loading" and standby:
        # A request wakes it: it answers (its requests wait for the load), and /health stays 200
        # (a spec review: it said 503 for the load, taking a pod out of its Service meanwhile).
        message = "loading again for a request, after its keepAlive"
        return ModelPlan(name, Phase.STANDBY, message, (), target, warning, footprint)
    if running.state in ("loading", "unloading"):
        return ModelPlan(
            name, Phase.WAITING, f"the scheduler is {running.state} it", (), target, warning, footprint
        )
    same_options = applied is not None and applied.options_key == target.options_key
    if running.digest != target.digest:
        if applied is not None and running.digest != applied.digest and not heal:
            return drifted(f"serving {running.digest[:19]}, loaded outside the spec")
        # New load options with it too: a swap all the same (the scheduler swaps on any new digest).
        why = f"{running.digest[:19]} → {target.digest[:19]}"
        why += "" if applied is None or same_options else " with new load options"
        if room is not None and footprint is not None and running.size + footprint > room:
            why += "; the spec's memory holds only one: the old one unloads first (a short gap)"
            swap = Action(ActionKind.SWAP, name, why, target, side_by_side=False)
            return ModelPlan(name, Phase.LOADING, why, (swap,), target, warning, footprint)
        return act(ActionKind.SWAP, why)
    if applied is None:
        return act(ActionKind.UPDATE, "loaded outside the spec; adopting it")
    if applied.load_key != target.load_key:
        return act(ActionKind.RELOAD, "load options changed: " + _describe_options(target))
    if (running.context_length, running.slots) != (applied.context_length, applied.slots):
        if not heal:
            return drifted("reloaded with other options outside the spec")
        return act(ActionKind.RELOAD, "reloaded with other options outside the spec; restoring")
    if applied.serve_key != target.serve_key or running.pinned != target.pinned:
        return act(ActionKind.UPDATE, "keepAlive, pinned, params or priority changed (no reload)")
    if applied.session != observed.session:
        return act(ActionKind.UPDATE, "loaded before this daemon started; adopting it")
    return ModelPlan(name, Phase.READY, f"serving {target.digest[:19]}", (), target, warning, footprint)


def target_for(model: ModelSpec, digests: Mapping[str, str]) -> LoadTarget:
    """The load target of `model`, given the stored digest of each of its image references."""
    return LoadTarget(
        name=model.name,
        image=model.image,
        digest=digests[model.image],
        adapters=tuple(AdapterTarget(a.image, digests[a.image], a.scale) for a in model.adapters),
        load_options=tuple(sorted(model.load_options().items())),
        params=tuple(sorted(model.params.items())),
        keep_alive=model.keep_alive,
        pinned=model.pinned,
        priority=model.priority,
    )


# How far a model's estimate may run over what it measures once loaded (the scheduler's estimate is
# within 15% on Gemma 3 270M, and above it on tiny models): an estimate over the budget by less
# than this is let through to load and be measured, so that a model that fitted measured still
# fits after a restart, when only its estimate is known.
ESTIMATE_MARGIN = 0.15


def _footprint(
    target: LoadTarget, running: Running | None, memory: Memory, observed: Observed
) -> tuple[int | None, bool]:
    """Bytes the model takes, and whether they were measured: measured when it is loaded as
    targeted (none when it shares another name's runner, whose row counts them) or was, before it
    was unloaded for not fitting; else the estimate."""
    applied = memory.applied
    loaded_as_targeted = (
        running is not None
        and running.state == "ready"
        and applied is not None
        and applied.load_key == target.load_key
        and running.digest == target.digest
    )
    if loaded_as_targeted and running is not None and (running.shares_runner or running.size):
        return (0 if running.shares_runner else running.size), True
    if memory.measured is not None and memory.measured[0] == target.load_key:
        return memory.measured[1], True
    return observed.footprints.get(target.name), False


def _admit(
    footprint: int | None, budget: int, used: int, *, lenient: bool = False, limit: str = "spec.memory"
) -> Failure | None:
    """Whether a model of `footprint` bytes fits the budget after the `used` bytes of the models
    before it; `lenient`: an estimate may run over by ESTIMATE_MARGIN of the budget. `limit`: what
    sets the budget, to raise."""
    if footprint is None:
        return None  # unknown: let the scheduler decide
    need = math.ceil(footprint / (1 + ESTIMATE_MARGIN)) if lenient else footprint
    if need > budget:
        return Failure(
            Reason.DOES_NOT_FIT,
            f"needs about {memory_size(footprint)} but the budget is {memory_size(budget)} even with "
            "nothing else loaded; lower context or parallel, use a smaller quantization, or raise "
            f"{limit}",
            permanent=True,
        )
    if used + need > budget:
        return Failure(
            Reason.DOES_NOT_FIT,
            f"needs about {memory_size(footprint)}; the models before it (by priority, then spec order) use "
            f"{memory_size(used)} of the {memory_size(budget)} budget; raise {limit}, or lower the "
            "priority of another",
        )
    return None


def runner_failure(running: Running) -> Failure:
    """Why a failed runner is down: it crashed, or it never loaded (llama.cpp refused the weights)."""
    if running.failure_kind == "load-failed":
        return Failure(Reason.LOAD_FAILED, running.last_error or "it failed to load")
    return Failure(Reason.CRASHED, running.last_error or "its runner failed")


def _describe_options(target: LoadTarget) -> str:
    names = {"num_ctx": "context", "num_parallel": "parallel", "num_gpu": "gpuLayers"}
    shown = [f"{names.get(k, k)} {v}" for k, v in target.load_options] or ["the image's defaults"]
    if target.adapters:
        shown.append(f"{len(target.adapters)} adapter(s)")
    return ", ".join(shown)


def _key(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- as text --------------------------------------------------------------------------------------


def format_plan(plan: Plan) -> str:
    """For `apply --dry-run` and `diff`: one line per action, then models that need nothing."""
    lines = []
    sharing = {group[0]: ", ".join(a.model for a in group) for group in plan.pulls}
    for action in plan.actions:
        what = action.image or (action.target.image if action.target else "")
        detail = f" {what}" if what else ""
        models = action.model
        if action.kind is ActionKind.PULL:
            if action not in sharing:
                continue  # another model's pull of the same image and digest brings it
            # A pinned image already names its digest; a tag shows the digest it resolved to.
            image = action.image or ""
            detail = f" {image}" if "@sha256:" in image else f" {image}@{action.digest[:19]}"
            models = sharing[action]
        lines.append(f"{_SIGNS[action.kind]} {action.kind.value:<7} {models}{detail}  ({action.reason})")
    for model in plan.models:
        if not model.actions:
            lines.append(f"  {model.phase.value.lower():<7} {model.name}  ({model.message})")
    if not plan.actions:
        unsettled = [m for m in plan.models if m.phase in (Phase.FAILED, Phase.WAITING, Phase.DRIFTED)]
        lines.insert(
            0,
            "nothing to do: what is loaded matches the spec"
            if not unsettled
            else "nothing to do now; not as the spec says:",
        )
    return "\n".join(lines)


_SIGNS = {
    ActionKind.PULL: "↓",
    ActionKind.LOAD: "+",
    ActionKind.RELOAD: "~",
    ActionKind.SWAP: "~",
    ActionKind.UPDATE: "~",
    ActionKind.UNLOAD: "-",
}
