"""What the reconciler keeps across restarts, in one JSON file under $MODELYARD_HOME (never in the
user's YAML): the last good spec and its generation, the inventory (what it loaded: prune needs it),
the digests tags last resolved to (to go on when the registry is down), failures and backoff, the
conditions (their lastTransitionTime) and recent events. Written atomically (store.atomic), mode 0600.

A file that is not a state file of this version (not JSON, another version, a field missing or of
the wrong type: each checked explicitly) is set aside and the reconciler starts over from the
spec. Anything else that goes wrong while decoding is a bug and raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import SpecIssue
from modelyard.spec.plan import Applied, Failure, Inventory, Memory, Reason
from modelyard.spec.status import Condition, ModelReport
from modelyard.store.atomic import atomic_write

STATE_VERSION = 1
MAX_EVENTS = 100

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    time: float
    model: str  # "" for the spec as a whole
    kind: str  # accepted, rejected, pulled, loaded, swapped, reloaded, updated, unloaded, failed, shelved…
    message: str
    count: int = 1  # the same event in a row for its model, as Kubernetes counts them; `time` the last


@dataclass(frozen=True)
class Rejection:
    """A spec revision that failed validation; the previous one stays in force."""

    revision: str
    at: float
    issues: tuple[SpecIssue, ...]


@dataclass(frozen=True)
class ShelvedSpec:
    """The last good spec of a source that another one replaced (`apply`'s, while a `serve --spec`
    ran), kept to come back when that source is followed again."""

    spec: Mapping[str, Any]  # one ModelSet document
    revision: str = ""


@dataclass(frozen=True)
class SavedState:
    generation: int = 0
    spec: Mapping[str, Any] | None = None  # the last good spec, as one ModelSet document
    spec_digest: str = ""
    revision: str = ""  # the source's revision it came from (a content hash, a commit)
    # The source it came from (`serve --spec`'s description); "" for `apply`; None in a file written
    # before sources were recorded (then it is taken to be the current one).
    source: str | None = None
    inventory: Inventory = field(default_factory=Inventory)
    reports: Mapping[str, ModelReport] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    rejected: Rejection | None = None
    shelved: Mapping[str, ShelvedSpec] = field(default_factory=dict)  # by source ("" for `apply`)


def load_state(path: Path) -> SavedState:
    """The saved state, or a fresh one when there is none. A file that is not a state file of this
    version is set aside (renamed `*.corrupt`) rather than trusted: the reconciler then starts over
    from the spec."""
    try:
        raw = json.loads(path.read_bytes())
        if not isinstance(raw, dict):
            raise StateFormatError("not a JSON object")
        if raw.get("version") != STATE_VERSION:
            raise StateFormatError(f"version {raw.get('version')!r}, not {STATE_VERSION}")
        return _decode(raw)
    except FileNotFoundError:
        return SavedState()
    except (json.JSONDecodeError, UnicodeDecodeError, StateFormatError) as exc:
        aside = path.with_suffix(path.suffix + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        # Said: the generation starts again at 1 and the events are gone (a reconcile audit).
        log.warning("%s is unreadable (%s); set aside as %s, starting from the spec", path, exc, aside.name)
        return SavedState()


def save_state(path: Path, state: SavedState) -> None:
    write_state(path, encode_state(state))


def encode_state(state: SavedState) -> bytes:
    """The state file's bytes (pure): the same state, the same bytes."""
    return json.dumps(_encode(state), indent=1, sort_keys=True).encode()


def write_state(path: Path, data: bytes) -> None:
    """Replace the state file with `data` (encode_state's), whole or not at all."""
    atomic_write(path, data, mode=0o600)


class StateFormatError(ValueError):
    """The state file does not have the shape this version writes."""


# --- codec ----------------------------------------------------------------------------------------


def _seconds(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def _encode(state: SavedState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "generation": state.generation,
        "spec": state.spec,
        "specDigest": state.spec_digest,
        "revision": state.revision,
        "source": state.source,
        "knownDigests": dict(state.inventory.known_digests),
        "models": {name: _encode_memory(m) for name, m in state.inventory.models.items()},
        "reports": {name: _encode_report(r) for name, r in state.reports.items()},
        "events": [[e.time, e.model, e.kind, e.message, e.count] for e in state.events],
        "rejected": None
        if state.rejected is None
        else {
            "revision": state.rejected.revision,
            "at": state.rejected.at,
            "issues": [[i.path, i.message, i.file, i.line] for i in state.rejected.issues],
        },
        # A list: the order they were shelved in, the oldest first (an object's keys are sorted).
        "shelved": [
            {"source": source, "spec": dict(s.spec), "revision": s.revision}
            for source, s in state.shelved.items()
        ],
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
        "measured": None
        if memory.measured is None
        else {"loadKey": memory.measured[0], "bytes": memory.measured[1]},
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


_REQUIRED: Any = object()
_NUMBER = (int, float)


def _field(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
    """`raw[key]`, checked to be a `kind` (`default` when it is absent and there is one)."""
    if key not in raw:
        if default is _REQUIRED:
            raise StateFormatError(f"{key} is missing")
        return default
    value = raw[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, _NUMBER)):
        raise StateFormatError(f"{key} is {type(value).__name__}")
    return value


def _decode_event(raw: Any) -> Event:
    # Four fields before events were counted.
    kinds = (
        (_NUMBER, str, str, str, int) if isinstance(raw, list) and len(raw) == 5 else (_NUMBER, str, str, str)
    )
    time, model, kind, message, *count = _row(raw, kinds, "an event")
    return Event(_float(time, "an event's time"), model, kind, message, *count)


def _row(value: Any, kinds: tuple[type | tuple[type, ...], ...], what: str) -> list[Any]:
    """A list of len(kinds) values, each of its kind."""
    if not isinstance(value, list) or len(value) != len(kinds):
        raise StateFormatError(f"{what} is not a list of {len(kinds)}")
    for item, kind in zip(value, kinds, strict=True):
        if not isinstance(item, kind):
            raise StateFormatError(f"{what} holds a {type(item).__name__}")
    return value


def _mapping(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    return dict(_field(raw, key, dict, {}))


def _float(value: Any, what: str) -> float:
    if value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise StateFormatError(f"{what} is {type(value).__name__}")
    return float(value)


def _decode(raw: Mapping[str, Any]) -> SavedState:
    rejected = _field(raw, "rejected", (dict, type(None)), None)
    known = _mapping(raw, "knownDigests")
    if not all(isinstance(v, str) for v in known.values()):
        raise StateFormatError("knownDigests holds a digest that is not a string")
    issue = (str, str, str, int)
    return SavedState(
        generation=_field(raw, "generation", int),
        spec=_field(raw, "spec", (dict, type(None)), None),
        spec_digest=_field(raw, "specDigest", str, ""),
        revision=_field(raw, "revision", str, ""),
        source=_field(raw, "source", (str, type(None)), None),
        inventory=Inventory(
            models={name: _decode_memory(m) for name, m in _objects(raw, "models")},
            known_digests=known,
        ),
        reports={name: _decode_report(name, r) for name, r in _objects(raw, "reports")},
        events=tuple(_decode_event(e) for e in _field(raw, "events", list, [])),
        rejected=None
        if not rejected
        else Rejection(
            _field(rejected, "revision", str),
            _float(_field(rejected, "at", _NUMBER), "rejected.at"),
            tuple(SpecIssue(*_row(i, issue, "an issue")) for i in _field(rejected, "issues", list)),
        ),
        shelved=dict(_decode_shelved(e) for e in _field(raw, "shelved", list, [])),  # absent: none
    )


def _decode_shelved(raw: Any) -> tuple[str, ShelvedSpec]:
    if not isinstance(raw, dict):
        raise StateFormatError(f"a shelved spec is {type(raw).__name__}")
    return _field(raw, "source", str), ShelvedSpec(
        _field(raw, "spec", dict), _field(raw, "revision", str, "")
    )


def _objects(raw: Mapping[str, Any], key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The entries of the object `raw[key]`, each checked to be an object."""
    entries = list(_mapping(raw, key).items())
    for name, value in entries:
        if not isinstance(value, dict):
            raise StateFormatError(f"{key}.{name} is {type(value).__name__}")
    return entries


def _decode_memory(raw: Mapping[str, Any]) -> Memory:
    applied = _field(raw, "applied", (dict, type(None)), None)
    failure = _field(raw, "failure", (dict, type(None)), None)
    measured = _field(raw, "measured", (dict, type(None)), None)
    return Memory(
        applied=None
        if applied is None
        else Applied(
            digest=_field(applied, "digest", str),
            load_key=_field(applied, "loadKey", str),
            options_key=_field(applied, "optionsKey", str),
            serve_key=_field(applied, "serveKey", str),
            context_length=_field(applied, "contextLength", int),
            slots=_field(applied, "slots", int),
            keep_alive=_float(_field(applied, "keepAlive", (*_NUMBER, str)), "keepAlive"),
            session=_field(applied, "session", str),
        ),
        failure=None
        if failure is None
        else Failure(
            _reason(_field(failure, "reason", str)),
            _field(failure, "message", str),
            _field(failure, "permanent", bool),
        ),
        failures=_field(raw, "failures", int, 0),
        retry_at=_float(_field(raw, "retryAt", _NUMBER, 0.0), "retryAt"),
        blocked_on=_field(raw, "blockedOn", str, ""),
        measured=None
        if measured is None
        else (_field(measured, "loadKey", str), _field(measured, "bytes", int)),
    )


def _reason(value: str) -> Reason:
    if value not in {r.value for r in Reason}:
        raise StateFormatError(f"unknown failure reason {value!r}")
    return Reason(value)


def _decode_report(name: str, raw: Mapping[str, Any]) -> ModelReport:
    condition = (str, bool, str, str, _NUMBER, int)
    return ModelReport(
        name=name,
        image=_field(raw, "image", str, ""),
        conditions=tuple(
            Condition(t, s, r, m, _float(at, "a condition's time"), g)
            for t, s, r, m, at, g in (
                _row(c, condition, "a condition") for c in _field(raw, "conditions", list)
            )
        ),
        observed_generation=_field(raw, "observedGeneration", int, 0),
    )
