"""Which loaded models to unload so that a new one fits: a pure decision, table-tested.

Never a busy model (requests in flight or queued), never a pinned one, never one still loading.
Among the rest: models past their keep_alive first, then the least recently used, then the larger
one among equals (it frees more). Stop as soon as enough is freed; if even evicting every candidate
would not free enough, evict nothing and say so: the request waits or gets 503, and no memory is
given up for nothing.

When no choice of idle models frees enough, `choose_drains` picks busy ones to close instead: they
take no new request and go once theirs end, as Ollama's scheduler waits for the busy runner it
chose; without it a model in steady use kept every other out. The idle ones that must go too go
only once the busy ones have: memory is not given up while the drain may still be called off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A loaded model, as the eviction policy sees it."""

    key: str
    host_bytes: int
    device_bytes: int
    busy: bool
    pinned: bool
    loading: bool
    last_used: float  # clock time of the last request's end (or the load)
    expired: bool  # past its keep_alive
    closing: bool = False  # taking no new request: it goes once its requests end


@dataclass(frozen=True)
class Shortfall:
    """Bytes that must be freed: in RAM, and on the GPU(s)."""

    host: int
    device: int = 0

    @property
    def none(self) -> bool:
        return self.host <= 0 and self.device <= 0


def evictable(resident: Resident, *, busy_too: bool = False) -> bool:
    return not ((resident.busy and not busy_too) or resident.pinned or resident.loading)


def eviction_order(residents: Sequence[Resident], *, busy_too: bool = False) -> list[Resident]:
    """Idle before busy (when busy ones may go at all), then expired, least recently used, larger."""
    candidates = [r for r in residents if evictable(r, busy_too=busy_too)]
    return sorted(
        candidates,
        key=lambda r: (r.busy, not r.expired, r.last_used, -(r.host_bytes + r.device_bytes), r.key),
    )


def choose_evictions(
    residents: Sequence[Resident],
    shortfall: Shortfall,
    *,
    may_stay: int | None = None,
    busy_too: bool = False,
) -> list[str] | None:
    """Keys to unload, in order; [] if nothing is needed; None if no choice frees enough.
    `may_stay`: how many of `residents` may stay loaded beside the new one (a cap on loaded
    models, as $OLLAMA_MAX_LOADED_MODELS); None: as many as memory holds. `busy_too`: busy
    models may be chosen, after every idle one."""
    excess = max(len(residents) - may_stay, 0) if may_stay is not None else 0
    if shortfall.none and not excess:
        return []
    chosen: list[str] = []
    host = device = 0
    for resident in eviction_order(residents, busy_too=busy_too):
        chosen.append(resident.key)
        host += resident.host_bytes
        device += resident.device_bytes
        if host >= shortfall.host and device >= shortfall.device and len(chosen) >= excess:
            return chosen
    return None


def choose_drains(
    residents: Sequence[Resident],
    shortfall: Shortfall,
    *,
    may_stay: int | None = None,
) -> list[str] | None:
    """Busy models to close, so that they go once their requests end, for a load that no choice of
    idle ones makes room for. Those closing already count as gone; [] if they suffice (or, with
    idle ones, will); None if no choice frees enough (pinned or loading ones stand in the way)."""
    closing = [r for r in residents if r.closing]
    others = [r for r in residents if not r.closing]
    after = Shortfall(
        host=shortfall.host - sum(r.host_bytes for r in closing),
        device=shortfall.device - sum(r.device_bytes for r in closing),
    )
    chosen = choose_evictions(others, after, may_stay=may_stay, busy_too=True)
    if chosen is None:
        return None
    busy = {r.key for r in others if r.busy}
    return [key for key in chosen if key in busy]
