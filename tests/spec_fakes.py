"""A recording fake of the reconciler's Effects, a fake clock, and spec helpers for the spec tests."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from modelyard.errors import ModelyardError
from modelyard.spec.plan import LoadTarget, Running
from modelyard.spec.schema import Spec, SpecDocument, parse_spec

HEADER = "apiVersion: modelyard/v1\nkind: ModelSet\nmetadata: {name: team}\n"


def digest(label: str) -> str:
    """A readable fake digest: `digest("a")` = sha256:aaaa…"""
    return "sha256:" + (label * 64)[:64]


def spec_text(body: str) -> str:
    return HEADER + "spec:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n"


def make_spec(body: str) -> Spec:
    return parse_spec([SpecDocument("models.yaml", spec_text(body))])


def documents(body: str, path: str = "models.yaml") -> list[SpecDocument]:
    return [SpecDocument(path, spec_text(body))]


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeEffects:
    """The world as a few dicts. Every call is recorded in `calls` as a tuple; `errors` maps a call
    (e.g. ("ensure", "chat") or ("resolve", ref)) to an exception raised (once per listing)."""

    tags: dict[str, str] = field(default_factory=dict)  # reference -> digest the registry names now
    stored: set[str] = field(default_factory=set)  # digests in the store (local = remote here)
    sizes: dict[str, int] = field(default_factory=dict)  # model name -> estimated bytes
    measured: dict[str, int] = field(default_factory=dict)  # model name -> bytes once loaded, if not sizes'
    budget: int = 10 * 2**30
    loaded: dict[str, Running] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    side_by_side: list[bool] = field(default_factory=list)  # each ensure's, in order
    notes: dict[str, str] = field(default_factory=dict)  # model name -> the scheduler's note
    errors: dict[tuple[str, str], list[ModelyardError]] = field(default_factory=dict)
    during_ensure: Callable[[LoadTarget], None] | None = None  # called while a load is under way
    pull_gate: asyncio.Event | None = None  # when set: pulls wait for it (a slow registry)
    expired_names: set[str] = field(default_factory=set)  # unloaded after their keepAlive

    def _maybe_fail(self, kind: str, key: str) -> None:
        pending = self.errors.get((kind, key))
        if pending:
            raise pending.pop(0)

    async def resolve(self, image: str) -> str:
        self.calls.append(("resolve", image))
        self._maybe_fail("resolve", image)
        if "@" in image:
            return image.rsplit("@", 1)[1]
        return self.tags[image]

    async def local_digest(self, image: str, digest: str) -> str | None:
        return digest if digest in self.stored else None

    async def pull(self, image: str, digest: str) -> str:
        self.calls.append(("pull", image, digest))
        if self.pull_gate is not None:
            try:
                await self.pull_gate.wait()
            except asyncio.CancelledError:
                self.calls.append(("pull stopped", image, digest))
                raise
        self._maybe_fail("pull", image)
        self.stored.add(digest)
        return digest

    async def footprint(self, target: LoadTarget) -> int | None:
        return self.sizes.get(target.name)

    async def ensure(self, target: LoadTarget, *, side_by_side: bool = True) -> Running:
        self.calls.append(("ensure", target.name, target.digest, dict(target.options)))
        self.side_by_side.append(side_by_side)
        if self.during_ensure is not None:
            self.during_ensure(target)
        self._maybe_fail("ensure", target.name)
        options = dict(target.load_options)
        running = Running(
            name=target.name,
            digest=target.digest,
            state="ready",
            size=self.measured.get(target.name, self.sizes.get(target.name, 1000)),
            context_length=options.get("num_ctx", 4096),
            slots=options.get("num_parallel", 1),
            pinned=target.pinned,
            note=self.notes.get(target.name, ""),
        )
        self.loaded[target.name] = running
        return running

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.pop(name, None)

    def running(self) -> list[Running]:
        return list(self.loaded.values())

    def memory_budget(self) -> int:
        return self.budget

    def expired(self) -> frozenset[str]:
        return frozenset(self.expired_names)

    # --- the world changing -------------------------------------------------------------------

    def crash(self, name: str, error: str = "runner crashed (SIGKILL)", kind: str = "crashed") -> None:
        self.loaded[name] = replace(self.loaded[name], state="failed", last_error=error, failure_kind=kind)

    def actions(self) -> list[tuple[Any, ...]]:
        """The calls that change something (not the resolves)."""
        return [c for c in self.calls if c[0] != "resolve"]
