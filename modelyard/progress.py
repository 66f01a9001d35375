"""Progress events, shaped like Ollama's `ProgressResponse` so the HTTP API can stream them as-is.

Long operations (build, pull, push) take a `ProgressSink` and call it; the CLI renders events as
rich progress bars, the server as NDJSON lines, tests record them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    status: str  # "parsing GGUF", "creating new layer sha256:…", "pulling 1a2b3c4d5e6f", "success", …
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status}
        if self.digest is not None:
            out["digest"] = self.digest
        if self.total is not None:
            out["total"] = self.total
        if self.completed is not None:
            out["completed"] = self.completed
        return out


ProgressSink = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """A sink for callers that don't show progress."""
