"""When a body comes too slowly to wait for (pure): curl's --speed-limit/--speed-time, git's
http.lowSpeedLimit/lowSpeedTime.

A read timeout alone never ends a body that trickles: a registry (or a proxy) sending a byte every
50 s answers every read within its 60 s, and a 4 GB pull would go on for ever, holding a reconcile
round's model at Pulling. So each window of `seconds` must bring at least `bytes_per_s * seconds`
bytes; a window that does not gives the transfer up (the caller resumes it from where it stopped).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LowSpeed:
    bytes_per_s: int = 1024  # 0: no limit, wait for any link
    seconds: float = 60.0

    @property
    def window_bytes(self) -> float:
        """The bytes a window must bring."""
        return self.bytes_per_s * self.seconds

    def describe(self) -> str:
        return f"under {self.bytes_per_s:,} bytes/s for {self.seconds:g} s"


DEFAULT_LOW_SPEED = LowSpeed()


@dataclass(frozen=True)
class SpeedWatch:
    """The window under way: it began at `since`, when `done` bytes had come."""

    low: LowSpeed
    since: float
    done: int = 0

    def moved(self, done: int, now: float) -> SpeedWatch | None:
        """The watch after `done` bytes in all by `now`: a new window once this one brought its
        bytes, this one while it may still; None when it is over without them (too slow)."""
        if self.low.bytes_per_s <= 0 or done - self.done >= self.low.window_bytes:
            return SpeedWatch(self.low, now, done)
        if now - self.since >= self.low.seconds:
            return None
        return self
