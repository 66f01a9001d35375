"""Which loaded models to unload so that a new one fits: a pure decision, table-tested.

Never a busy model (requests in flight or queued), never a pinned one, never one still loading.
Among the rest: models past their keep_alive first, then the least recently used, then the larger
one among equals (it frees more). Stop as soon as enough is freed; if even evicting every candidate
would not free enough, evict nothing and say so: the request waits or gets 503, and no memory is
given up for nothing.
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


@dataclass(frozen=True)
class Shortfall:
    """Bytes that must be freed: in RAM, and on the GPU(s)."""

    host: int
    device: int = 0

    @property
    def none(self) -> bool:
        return self.host <= 0 and self.device <= 0


def evictable(resident: Resident) -> bool:
    return not (resident.busy or resident.pinned or resident.loading)


def eviction_order(residents: Sequence[Resident]) -> list[Resident]:
    candidates = [r for r in residents if evictable(r)]
    return sorted(
        candidates, key=lambda r: (not r.expired, r.last_used, -(r.host_bytes + r.device_bytes), r.key)
    )


def choose_evictions(
    residents: Sequence[Resident],
    shortfall: Shortfall,
    *,
    may_stay: int | None = None,
) -> list[str] | None:
    """Keys to unload, in order; [] if nothing is needed; None if no choice frees enough.
    `may_stay`: how many of `residents` may stay loaded beside the new one (a cap on loaded
    models, as $OLLAMA_MAX_LOADED_MODELS); None: as many as memory holds."""
    excess = max(len(residents) - may_stay, 0) if may_stay is not None else 0
    if shortfall.none and not excess:
        return []
    chosen: list[str] = []
    host = device = 0
    for resident in eviction_order(residents):
        chosen.append(resident.key)
        host += resident.host_bytes
        device += resident.device_bytes
        if host >= shortfall.host and device >= shortfall.device and len(chosen) >= excess:
            return chosen
    return None
