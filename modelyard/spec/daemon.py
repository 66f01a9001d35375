"""Entry points for the edges (the CLI and the HTTP server): the reconciler wired to this machine.

    daemon = SpecDaemon(settings, scheduler)            # beside the server's scheduler
    asyncio.create_task(daemon.run(open_source(spec, settings.cache_dir), stop))   # serve --spec
    daemon.request_for("chat") -> ModelRequest | None   # a request for a name the spec serves
    daemon.status() -> dict                             # GET /api/status
    await daemon.apply(documents, dry_run=...) -> dict  # POST /api/apply (apply -f, diff)
    await daemon.wait_ready(timeout) -> bool

Without a server: `plan_for(path, settings)` (apply --dry-run, diff) and `export_for(path, settings)`
(export k8s) need no scheduler with runners.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelyard.errors import SpecValidationError
from modelyard.registry import RegistryOptions
from modelyard.runtime.scheduler import ModelRequest, Scheduler, SchedulerSettings
from modelyard.runtime.servable import Servable
from modelyard.settings import Settings
from modelyard.spec.host import SchedulerHost
from modelyard.spec.kubernetes import (
    ExportOptions,
    Mode,
    estimate_models,
    export_caveats,
    export_kubernetes,
    export_yaml,
)
from modelyard.spec.plan import Plan, format_plan
from modelyard.spec.reconciler import Clock, Reconciler, ReconcilerSettings, SpecSource
from modelyard.spec.schema import SpecDocument, load_spec, parse_spec
from modelyard.store import Store


def state_path(settings: Settings) -> Path:
    """Where the reconciler keeps its state: $MODELYARD_HOME/reconciler/state.json."""
    return settings.home / "reconciler" / "state.json"


class SpecDaemon:
    """The reconciler over this machine's store, registries and the server's scheduler."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        *,
        store: Store | None = None,
        registry: RegistryOptions | None = None,
        reconciler: ReconcilerSettings | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings.store_dir, history_limit=settings.history_limit)
        self.host = SchedulerHost(self.store, scheduler, registry or RegistryOptions.from_settings(settings))
        self.reconciler = Reconciler(
            self.host, reconciler or ReconcilerSettings(state_path(settings)), clock=clock
        )
        scheduler.crash_observers.append(self.reconciler.runner_crashed)

    async def run(self, source: SpecSource | None, stop: asyncio.Event) -> None:
        """Keep the models in line with `source` until `stop` is set (`serve --spec`)."""
        await self.reconciler.run(source, stop)

    def serves(self, name: str) -> bool:
        """Whether `name` is one of the spec's served names (a lookup: no I/O, no lock)."""
        return self.reconciler.target(name) is not None

    def served_names(self) -> list[str]:
        """The spec's served names that requests can use now (a lookup: no I/O, no lock)."""
        return self.reconciler.served_names()

    def unavailable(self, name: str) -> str | None:
        """Why the spec's model `name` cannot be served now; None if it can, or is not the spec's."""
        return self.reconciler.unavailable(name)

    def request_for(self, name: str) -> ModelRequest | None:
        """The scheduler request for a served name the spec declares (its image at the digest the
        spec is on, the spec's options, params, keepAlive, pinned), or None: not the spec's name.
        Use it for every request to that name, so that requests and the reconciler agree on the
        digest (a request naming another digest would swap the model back)."""
        target = self.reconciler.target(name)
        return self.host.request(target) if target is not None else None

    def servable_for(self, name: str) -> Servable | None:
        """The image a served name is on, for its prompt template and parameters; its `name` is the
        served name. The spec's params are request defaults over the image's parameters."""
        target = self.reconciler.target(name)
        if target is None:
            return None
        servable = self.host.servable(target.image, target.digest)
        return replace(servable, alias=name, params={**servable.params, **dict(target.params)})

    def status(self) -> dict[str, Any]:
        return self.reconciler.status()

    def ready(self) -> bool:
        """Every model of the spec is Ready (reconciled)."""
        return self.reconciler.ready()

    def serving(self) -> bool:
        """For `/health` under `serve --spec`: every model of the spec answers requests now."""
        return self.reconciler.serving()

    async def wait_ready(self, timeout: float) -> bool:
        return await self.reconciler.wait_ready(timeout)

    async def apply(self, documents: Sequence[SpecDocument], *, dry_run: bool = False) -> dict[str, Any]:
        """Validate `documents` and put them in force (or, dry run, say what that would do).

        Returns {"accepted", "generation", "changed", "issues": [...], "plan": text}. Issues are
        every problem found; nothing changes when there are any."""
        if dry_run:
            try:
                spec = parse_spec(documents)
            except SpecValidationError as exc:
                return _rejected(exc, self.reconciler.generation)
            planned = await self.reconciler.preview(spec)
            return {
                "accepted": True,
                "generation": self.reconciler.generation,
                "changed": self.reconciler.spec is None or self.reconciler.spec.digest != spec.digest,
                "issues": [],
                "plan": format_plan(planned) if planned is not None else "",
            }
        result, planned = await self.reconciler.submit_and_preview(documents, revision="api")
        if result.error is not None:
            return _rejected(result.error, result.generation)
        # An apply answers when its round is done, the pulls its plan needs included (as it always
        # has); the daemon's own rounds (serve --spec) let long pulls go on in the background.
        await self.reconciler.reconcile()
        return {
            "accepted": True,
            "generation": result.generation,
            "changed": result.changed,
            "issues": [],
            "plan": format_plan(planned) if planned is not None else "",
        }


def _rejected(error: SpecValidationError, generation: int) -> dict[str, Any]:
    return {
        "accepted": False,
        "generation": generation,
        "changed": False,
        "issues": [
            {"path": i.path, "message": i.message, "file": i.file, "line": i.line, "text": str(i)}
            for i in error.issues
        ],
        "plan": "",
    }


def plan_for(
    path: Path | str, settings: Settings, *, plain_http: bool = False, insecure: bool = False
) -> Plan:
    """What applying the spec at `path` would do on this machine with nothing loaded yet: pulls, loads
    (`apply --dry-run` and `diff` when no server runs). Raises SpecValidationError or SpecSourceError."""
    spec = load_spec(path)

    async def preview() -> Plan:
        scheduler = Scheduler(SchedulerSettings())
        registry = RegistryOptions.from_settings(settings, plain_http=plain_http, insecure=insecure)
        reconciler = Reconciler(
            SchedulerHost(Store(settings.store_dir), scheduler, registry),
            ReconcilerSettings(state_path(settings)),
        )
        planned = await reconciler.preview(spec)
        assert planned is not None
        return planned

    return asyncio.run(preview())


def export_for(
    path: Path | str, settings: Settings, *, mode: Mode = "both", options: ExportOptions | None = None
) -> str:
    """`modelyard export k8s -f PATH`: the resources as multi-document YAML, with a YAML comment
    for each thing the export cannot carry or that will not work in a cluster (export_caveats)."""
    spec = load_spec(path)
    options = (options or ExportOptions()).with_settings(settings)  # registries reached without TLS
    estimates = estimate_models(spec, Store(settings.store_dir))
    text = export_yaml(export_kubernetes(spec, mode=mode, estimates=estimates, options=options))
    caveats = "".join(f"# warning: {caveat}\n" for caveat in export_caveats(spec, mode, options))
    return caveats + text
