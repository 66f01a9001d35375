"""What the reconciler keeps across restarts, in one JSON file under $MODELYARD_HOME (never in the
user's YAML): the last good spec and its generation, the inventory (what it loaded: prune needs it),
the digests tags last resolved to (to go on when the registry is down), failures and backoff, the
conditions (their lastTransitionTime) and recent events. Written atomically: temp file, fsync, rename.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import SpecIssue
from modelyard.spec.plan import Applied, Failure, Inventory, Memory, Reason
from modelyard.spec.status import Condition, ModelReport

STATE_VERSION = 1
MAX_EVENTS = 100


@dataclass(frozen=True)
class Event:
    time: float
    model: str  # "" for the spec as a whole
    kind: str  # accepted, rejected, pulled, loaded, swapped, reloaded, updated, unloaded, failed
    message: str


@dataclass(frozen=True)
class Rejection:
    """A spec revision that failed validation; the previous one stays in force."""

    revision: str
    at: float
    issues: tuple[SpecIssue, ...]


@dataclass(frozen=True)
class SavedState:
    generation: int = 0
    spec: Mapping[str, Any] | None = None  # the last good spec, as one ModelSet document
    spec_digest: str = ""
    revision: str = ""  # the source's revision it came from (a content hash, a commit)
    inventory: Inventory = field(default_factory=Inventory)
    reports: Mapping[str, ModelReport] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    rejected: Rejection | None = None


def load_state(path: Path) -> SavedState:
    """The saved state, or a fresh one when there is none. A file that cannot be read is set aside
    (renamed `*.corrupt`) rather than trusted: the reconciler then starts over from the spec."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"version {raw.get('version')!r}")
        return _decode(raw)
    except FileNotFoundError:
        return SavedState()
    except (ValueError, KeyError, TypeError, AttributeError):
        with contextlib.suppress(OSError):
            os.replace(path, path.with_suffix(path.suffix + ".corrupt"))
        return SavedState()


def save_state(path: Path, state: SavedState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(_encode(state), indent=1, sort_keys=True).encode()
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# --- codec ----------------------------------------------------------------------------------------


def _seconds(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def _float(value: Any) -> float:
    return math.inf if value == "inf" else float(value)


def _encode(state: SavedState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "generation": state.generation,
        "spec": state.spec,
        "specDigest": state.spec_digest,
        "revision": state.revision,
        "knownDigests": dict(state.inventory.known_digests),
        "models": {name: _encode_memory(m) for name, m in state.inventory.models.items()},
        "reports": {name: _encode_report(r) for name, r in state.reports.items()},
        "events": [[e.time, e.model, e.kind, e.message] for e in state.events],
        "rejected": None
        if state.rejected is None
        else {
            "revision": state.rejected.revision,
            "at": state.rejected.at,
            "issues": [[i.path, i.message, i.file, i.line] for i in state.rejected.issues],
        },
    }


def _encode_memory(memory: Memory) -> dict[str, Any]:
    applied = memory.applied
    return {
        "applied": None
        if applied is None
        else {
            "digest": applied.digest,
            "loadKey": applied.load_key,
            "optionsKey": applied.options_key,
            "serveKey": applied.serve_key,
            "contextLength": applied.context_length,
            "slots": applied.slots,
            "keepAlive": _seconds(applied.keep_alive),
            "session": applied.session,
        },
        "failure": None
        if memory.failure is None
        else {
            "reason": memory.failure.reason.value,
            "message": memory.failure.message,
            "permanent": memory.failure.permanent,
        },
        "failures": memory.failures,
        "retryAt": memory.retry_at,
        "blockedOn": memory.blocked_on,
    }


def _encode_report(report: ModelReport) -> dict[str, Any]:
    return {
        "image": report.image,
        "observedGeneration": report.observed_generation,
        "conditions": [
            [c.type, c.status, c.reason, c.message, c.last_transition_time, c.observed_generation]
            for c in report.conditions
        ],
    }


def _decode(raw: Mapping[str, Any]) -> SavedState:
    rejected = raw.get("rejected")
    return SavedState(
        generation=int(raw["generation"]),
        spec=raw.get("spec"),
        spec_digest=str(raw.get("specDigest", "")),
        revision=str(raw.get("revision", "")),
        inventory=Inventory(
            models={name: _decode_memory(m) for name, m in raw.get("models", {}).items()},
            known_digests={str(k): str(v) for k, v in raw.get("knownDigests", {}).items()},
        ),
        reports={name: _decode_report(name, r) for name, r in raw.get("reports", {}).items()},
        events=tuple(Event(float(t), str(m), str(k), str(msg)) for t, m, k, msg in raw.get("events", [])),
        rejected=None
        if not rejected
        else Rejection(
            str(rejected["revision"]),
            float(rejected["at"]),
            tuple(SpecIssue(str(p), str(m), str(f), int(line)) for p, m, f, line in rejected["issues"]),
        ),
    )


def _decode_memory(raw: Mapping[str, Any]) -> Memory:
    applied = raw.get("applied")
    failure = raw.get("failure")
    return Memory(
        applied=None
        if applied is None
        else Applied(
            digest=str(applied["digest"]),
            load_key=str(applied["loadKey"]),
            options_key=str(applied["optionsKey"]),
            serve_key=str(applied["serveKey"]),
            context_length=int(applied["contextLength"]),
            slots=int(applied["slots"]),
            keep_alive=_float(applied["keepAlive"]),
            session=str(applied["session"]),
        ),
        failure=None
        if failure is None
        else Failure(Reason(failure["reason"]), str(failure["message"]), bool(failure["permanent"])),
        failures=int(raw.get("failures", 0)),
        retry_at=float(raw.get("retryAt", 0.0)),
        blocked_on=str(raw.get("blockedOn", "")),
    )


def _decode_report(name: str, raw: Mapping[str, Any]) -> ModelReport:
    return ModelReport(
        name=name,
        image=str(raw.get("image", "")),
        conditions=tuple(
            Condition(str(t), bool(s), str(r), str(m), float(at), int(g))
            for t, s, r, m, at, g in raw["conditions"]
        ),
        observed_generation=int(raw.get("observedGeneration", 0)),
    )
