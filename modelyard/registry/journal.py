"""Upload sessions kept across runs, so that a push stopped halfway (Ctrl-C, a dropped link, a
crash) goes on from what the registry holds on the next push instead of sending the blob again.

One small JSON file per (registry, repository, blob) in the store's ingest folder, holding the
session's URL as the registry last gave it: Distribution signs the bytes received into the URL's
`_state` and refuses a session resumed with an older one, so the file is rewritten after every chunk
the registry takes. Removed once the blob is in; `prune` removes those older than its grace (a
registry purges sessions left open: Distribution after a week).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelyard.registry.client import UploadSession
from modelyard.store.blobs import UPLOAD_JOURNAL_SUFFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadJournal:
    path: Path
    origin: str  # scheme://host:port of the registry: a session elsewhere is not resumed

    def recall(self) -> UploadSession | None:
        """The session an earlier run left open; None when there is none (or the file is not one
        this code wrote for this registry: then it is only in the way)."""
        try:
            record = json.loads(self.path.read_text())
            url, min_chunk = str(record["url"]), int(record.get("min_chunk", 0))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.debug("upload journal %s unreadable (%s); starting afresh", self.path.name, exc)
            self.forget()
            return None
        if _origin(url) != self.origin:
            # Requests to it would carry this registry's credentials elsewhere.
            log.debug("upload journal %s names another host; starting afresh", self.path.name)
            self.forget()
            return None
        return UploadSession(url, min_chunk)

    def remember(self, upload: UploadSession) -> None:
        """Keep `upload` for a later run: written whole, or not at all."""
        record = json.dumps({"url": upload.url, "min_chunk": upload.min_chunk})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(record)
            os.chmod(temporary, 0o600)  # the URL grants writes to the session
            os.replace(temporary, self.path)
        except OSError as exc:  # a full disk loses the resume, not the push
            log.debug("upload journal %s not written: %s", self.path.name, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()

    def forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def upload_journal(folder: Path, base_url: str, repository: str, digest: str) -> UploadJournal:
    """The journal of `digest`'s upload to `repository` at the registry of `base_url`."""
    origin = _origin(base_url)
    key = hashlib.sha256(f"{origin}/{repository}@{digest}".encode()).hexdigest()[:32]
    return UploadJournal(folder / f"{key}{UPLOAD_JOURNAL_SUFFIX}", origin)


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
