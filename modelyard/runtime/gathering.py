"""Whether an idle engine waits for the rest of a burst before its first step (pure).

Requests that a client sends together (a batch job, an agent fanning out, several users at once)
reach the runner over milliseconds: the server reads, validates and renders them one after
another. An idle engine that steps on the first alone makes the others wait for that whole step,
then evaluates them in a step of their own; one step for all of them is shorter than the two (a
step's time grows much slower than its tokens). The server says, with each request, how many more
for the same model it is still reading (`more_coming`). The engine waits for those, never past
`GATHER_LIMIT_S` from the first, and never while a slot is generating: that would stall its stream.
A request that comes alone (more_coming 0) is not delayed at all.
"""

from __future__ import annotations

# Long enough for the server to read and render a burst of eight (about a millisecond each), short
# beside one step on a CPU. A request the server counted that never comes (it failed validation,
# its client left) costs the ones waiting at most this.
GATHER_LIMIT_S = 0.02


def gather_wait_s(
    *,
    busy_slots: int,
    free_slots: int,
    waiting: int,
    more_coming: int,
    waited_s: float,
    limit_s: float = GATHER_LIMIT_S,
) -> float:
    """Seconds to wait for more requests before stepping; 0: step now. `more_coming` is what the
    latest request said; `waited_s`, the time since the first of those waiting arrived."""
    if busy_slots or not waiting or more_coming <= 0 or waiting >= free_slots:
        return 0.0
    return max(0.0, limit_s - waited_s)
