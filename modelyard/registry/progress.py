"""Progress for transfers, in Ollama's words (`pulling 1a2b3c4d5e6f`, `pushing …`), from threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

from modelyard.progress import ProgressEvent, ProgressSink

REPORT_EVERY_BYTES = 1024 * 1024


class LayerProgress:
    """Serialises events from transfer threads into one sink; byte counts at most once per MiB."""

    def __init__(self, sink: ProgressSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def status(self, status: str) -> None:
        with self._lock:
            self._sink(ProgressEvent(status))

    def layer(self, verb: str, digest: str, total: int, completed: int) -> None:
        with self._lock:
            last = self._last.get(digest)
            if last is not None and (
                completed == last or (completed != total and completed - last < REPORT_EVERY_BYTES)
            ):
                return
            self._last[digest] = completed
            self._sink(
                ProgressEvent(f"{verb} {digest[7:19]}", digest=digest, total=total, completed=completed)
            )

    def meter(self, verb: str, digest: str, total: int) -> Callable[[int], None]:
        """A callback for one blob's transfer: reports the bytes done so far."""
        self.layer(verb, digest, total, 0)
        return lambda completed: self.layer(verb, digest, total, completed)
