"""Per-model status with Kubernetes-style conditions (pure), and the whole status as JSON and text.

Conditions follow `metav1.Condition`: `type`, `status` ("True"/"False"), a CamelCase `reason`, a
`message`, `lastTransitionTime` (changes only when `status` flips) and `observedGeneration`.

    Ready        True: loaded as the spec says (Loaded), or unloaded after its keepAlive (Standby)
    Progressing  True while a pull (Pulling) or a load, reload, swap or update (Loading) is under way
    Degraded     True with PullFailed | LoadFailed | DoesNotFit | Crashed while something is wrong,
                 even when the model still serves (a registry down while its tag is checked)

The ModelSet has one of its own, for a followed source (`serve --spec`):

    SourceReady  True (Read) when the source's latest revision is the spec in force; False with
                 ReadFailed, Rejected, or Reading (before its first read ends)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from modelyard.spec.plan import (
    Action,
    ActionKind,
    Failure,
    Memory,
    ModelPlan,
    Phase,
    Running,
    runner_failure,
)

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)
SOURCE_READY = "SourceReady"  # the ModelSet's own, for a followed source (serve --spec)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str
    last_transition_time: float
    observed_generation: int

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": "True" if self.status else "False",
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": timestamp(self.last_transition_time),
            "observedGeneration": self.observed_generation,
        }


@dataclass(frozen=True)
class ModelReport:
    """One model's status."""

    name: str
    image: str
    conditions: tuple[Condition, ...]
    observed_generation: int
    phase: str = ""
    message: str = ""
    resolved_digest: str = ""  # what the image reference points to (the registry's digest)
    digest: str = ""  # the local image the spec asks for
    adapters: tuple[tuple[str, str], ...] = ()  # the spec's adapter images: (reference, local digest)
    serving: str = ""  # the digest loaded now ("" when none)
    failures: int = 0
    next_retry: float | None = None
    note: str = ""  # what the scheduler says it is doing (a swap, a short gap)
    size: int = 0
    slots: int = 0
    context_length: int = 0

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    @property
    def ready(self) -> bool:
        ready = self.condition(READY)
        return ready is not None and ready.status

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "phase": self.phase,
            "message": self.message,
            "resolvedDigest": self.resolved_digest or None,
            "digest": self.digest or None,
            "adapters": [{"image": image, "digest": digest} for image, digest in self.adapters],
            "serving": self.serving or None,
            "observedGeneration": self.observed_generation,
            "conditions": [c.to_json() for c in self.conditions],
            "failures": self.failures,
            "nextRetry": timestamp(self.next_retry) if self.next_retry else None,
            "note": self.note or None,
            "size": self.size,
            "slots": self.slots,
            "contextLength": self.context_length,
        }


def set_condition(conditions: Sequence[Condition], new: Condition) -> tuple[Condition, ...]:
    """Replace the condition of `new.type`, keeping its lastTransitionTime when `status` did not flip."""
    old = next((c for c in conditions if c.type == new.type), None)
    if old is not None and old.status == new.status:
        new = replace(new, last_transition_time=old.last_transition_time)
    kept = [c for c in conditions if c.type != new.type]
    return tuple(sorted([*kept, new], key=lambda c: CONDITION_TYPES.index(c.type)))


def source_condition(
    previous: Condition | None,
    *,
    error: str | None,
    rejected: str | None,
    revision: str,
    read: bool,
    generation: int,
    now: float,
) -> Condition:
    """The ModelSet's SourceReady condition (pure), as Flux's sources and Kustomizations say theirs:
    True only when the source's latest revision is the spec in force. `error`: why the source
    cannot be read now; `rejected`: the revision read whose spec was rejected; `read`: its first
    read has ended."""
    # Without a spec in force yet (`revision` ""), none stays: a README review found status saying
    # both "no spec in force" and "the last good spec stays in force".
    stays = "the last good spec stays in force" if revision else "no spec is in force until one is read"
    if error is not None:
        condition = Condition(SOURCE_READY, False, "ReadFailed", f"{error}; {stays}", now, generation)
    elif not read:  # before a saved rejection: the source may have moved on from it
        condition = Condition(
            SOURCE_READY, False, "Reading", "the source's first read is under way", now, generation
        )
    elif rejected is not None:
        message = f"revision {rejected} is not valid (see rejected); {stays}"
        condition = Condition(SOURCE_READY, False, "Rejected", message, now, generation)
    else:
        condition = Condition(SOURCE_READY, True, "Read", f"revision {revision} is in force", now, generation)
    if previous is not None and previous.status == condition.status:
        condition = replace(condition, last_transition_time=previous.last_transition_time)
    return condition


def report_model(
    previous: ModelReport | None,
    planned: ModelPlan,
    *,
    image: str,
    resolved_digest: str,
    running: Running | None,
    memory: Memory,
    generation: int,
    now: float,
    in_progress: Action | None = None,
) -> ModelReport:
    """The status of one model from its plan (and the action running now, if any)."""
    serving = running.digest if running is not None and running.state == "ready" else ""
    phase = planned.phase
    if in_progress is not None and in_progress.kind is not ActionKind.UPDATE:
        phase = Phase.PULLING if in_progress.kind is ActionKind.PULL else Phase.LOADING
    message = in_progress.reason if in_progress is not None else planned.message

    ready_now = phase in (Phase.READY, Phase.STANDBY)
    if ready_now:
        ready_reason = "Loaded" if phase is Phase.READY else "Standby"
        ready_message = planned.message
    else:
        ready_reason = phase.value
        ready_message = message + (f"; serving {serving[:19]} meanwhile" if serving else "")
    progressing = phase in (Phase.PULLING, Phase.LOADING)
    if progressing:
        progress_reason = "Pulling" if phase is Phase.PULLING else "Loading"
        progress_message = message
    else:
        progress_reason, progress_message = ("Reconciled", "") if ready_now else (phase.value, message)
    failure = _failure(planned, memory, running)

    conditions: tuple[Condition, ...] = previous.conditions if previous is not None else ()
    for condition in (
        Condition(READY, ready_now, ready_reason, ready_message, now, generation),
        Condition(PROGRESSING, progressing, progress_reason, progress_message, now, generation),
        Condition(
            DEGRADED,
            failure is not None,
            failure.reason.value if failure else "Healthy",
            failure.message if failure else "",
            now,
            generation,
        ),
    ):
        conditions = set_condition(conditions, condition)
    target = planned.target
    return ModelReport(
        name=planned.name,
        image=image,
        conditions=conditions,
        observed_generation=generation,
        phase=phase.value,
        message=message,
        resolved_digest=resolved_digest,
        digest=target.digest if target is not None else "",
        adapters=tuple((a.image, a.digest) for a in target.adapters) if target is not None else (),
        serving=serving,
        failures=memory.failures if failure is not None else 0,  # since it was last healthy
        next_retry=memory.retry_at if memory.failure is not None and memory.retry_at > now else None,
        note=running.note if running is not None else "",
        size=running.size if running is not None else 0,
        slots=running.slots if running is not None else 0,
        context_length=running.context_length if running is not None else 0,
    )


def _failure(planned: ModelPlan, memory: Memory, running: Running | None) -> Failure | None:
    if running is not None and running.state == "failed":
        return runner_failure(running)
    return planned.failure or memory.failure


# --- the whole status -----------------------------------------------------------------------------


def timestamp(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SHOWN_EVENTS = 5  # of the status's events, in the table form


def format_status(status: Mapping[str, Any]) -> str:
    """`modelyard status` as a table: rejections and source errors, one line per model, then the
    latest events."""
    in_force = status.get("name") is not None
    lines = [
        f"ModelSet {status.get('name')}  generation {status.get('generation')} "
        f"(observed {status.get('observedGeneration')})" + ("  SUSPENDED" if status.get("suspended") else "")
        if in_force
        else "no spec in force"
    ]
    source = status.get("source") or {}
    if source.get("description"):
        lines.append(f"source    {source['description']}  {source.get('revision') or ''}".rstrip())
    if source.get("error"):
        lines.append(f"          error: {source['error']}")
    rejected = status.get("rejected")
    if rejected:
        when = f"revision {rejected.get('revision')} at {rejected.get('at')}"
        kept = "the last good spec stays in force" if in_force else "nothing is in force"
        lines.append(f"rejected  {when}; {kept}:")
        lines.extend(f"          {issue['text']}" for issue in rejected.get("issues", []))
    models = status.get("models", [])
    width = max([len("NAME"), *(len(m["name"]) for m in models)])  # a long name keeps its column
    lines.append(f"{'NAME':<{width}} {'READY':<6} {'STATUS':<12} {'DIGEST':<20} MESSAGE")
    for model in models:
        conditions = {c["type"]: c for c in model.get("conditions", [])}
        ready = conditions.get(READY, {}).get("status", "Unknown")
        degraded = conditions.get(DEGRADED, {})
        state = degraded.get("reason") if degraded.get("status") == "True" else model.get("phase", "")
        digest = (model.get("serving") or model.get("digest") or "")[:19]
        message = degraded.get("message") if degraded.get("status") == "True" else model.get("message")
        lines.append(f"{model['name']:<{width}} {ready:<6} {state:<12} {digest:<20} {message or ''}".rstrip())
    events = status.get("events") or []
    if events:
        lines.append(f"events (the last {min(len(events), SHOWN_EVENTS)}; --json has {len(events)}):")
        for event in events[-SHOWN_EVENTS:]:
            about = f"{event['model']}: " if event.get("model") else ""
            times = f" ({event['count']} times)" if event.get("count", 1) > 1 else ""
            lines.append(f"  {event['time']}  {event['kind']:<10} {about}{event['message']}{times}")
    return "\n".join(lines)
