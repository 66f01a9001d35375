"""When to try a request again, and after how long. Pure: the caller supplies the randomness.

Transient failures are retried: network errors (refused, reset, timed out), 408, 429 and 5xx.
Everything else (a 4xx: bad credentials, unknown tag, invalid manifest) is an answer, not a
hiccup, and is returned at once. Delays grow exponentially, are capped, and are fully jittered
(a random point in [0, delay]) so that clients that failed together don't retry together. A
`Retry-After` the registry sends wins, up to the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    base_s: float = 0.25
    cap_s: float = 8.0


DEFAULT_RETRY = RetryPolicy()


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status < 600


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    *,
    status: int | None = None,
    network_error: bool = False,
    retry_after: str | None = None,
    rand: float = 1.0,
) -> float | None:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 0), or None to give up.

    `status` is the HTTP status of a response; `network_error` says there was no response at all.
    `rand` in [0, 1) is the jitter.
    """
    transient = network_error or (status is not None and is_retryable_status(status))
    if not transient or attempt + 1 >= policy.attempts:
        return None
    hinted = parse_retry_after(retry_after)
    if hinted is not None:
        return min(hinted, policy.cap_s)
    return rand * min(policy.cap_s, policy.base_s * 2**attempt)


def parse_retry_after(value: str | None) -> float | None:
    """Delay-seconds form only; an HTTP-date (rare from registries) is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
