"""A machine for the spec's integration tests: a home with a store, a scheduler with real runners,
the SpecDaemon over them, and helpers to build, push, wait and send requests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from registry_server import Registry

from modelyard.builder.build import Builder
from modelyard.reference import parse_reference
from modelyard.registry import RegistryOptions, push
from modelyard.registry.retry import RetryPolicy
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.runner import Runner
from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
from modelyard.settings import Settings
from modelyard.spec.daemon import SpecDaemon, state_path
from modelyard.spec.reconciler import ReconcilerSettings, SpecSource
from modelyard.store import Store

FAST_RETRY = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05)


def registry_options(home: Path) -> RegistryOptions:
    return RegistryOptions(docker_config=home / "docker", cache_dir=home / "cache", retry=FAST_RETRY)


def build(store: Store, gguf: Path, name: str, workdir: Path) -> str:
    """Build `FROM gguf` as the local image `name`; returns its digest."""
    folder = workdir / f"build-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    (folder / "Modelfile").write_text(f"FROM {gguf}\nPARAMETER temperature 0\n")
    return (
        Builder(store, workdir / "build-cache").build_file(folder / "Modelfile", parse_reference(name)).digest
    )


def push_image(store: Store, name: str, target: str, home: Path) -> None:
    push(store, parse_reference(target), registry_options(home), source=parse_reference(name))


def restart_registry(registry: Registry) -> Registry:
    """Start the registry again on the same port and storage (after `registry.stop()`)."""
    config = registry.root.parent / "config.yml"
    with registry.log_path.open("ab") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    again = Registry(registry.host, registry.root, process, registry.log_path)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://{registry.host}/v2/", timeout=1.0).status_code == 200:
                return again
        time.sleep(0.05)
    raise RuntimeError("the registry did not come back")


def generate(runner: Runner, n: int = 2) -> str:
    return runner.complete(CompletionRequest("the cat", SamplingOptions(temperature=0, num_predict=n)))[0]


async def eventually(check: Callable[[], bool], timeout: float, what: str = "") -> float:
    """Seconds until `check()` holds; fails the test after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def conditions(daemon: SpecDaemon, name: str) -> dict[str, dict[str, str]]:
    for model in daemon.status()["models"]:
        if model["name"] == name:
            return {c["type"]: c for c in model["conditions"]}
    return {}


def is_true(daemon: SpecDaemon, name: str, kind: str, reason: str | None = None) -> bool:
    condition = conditions(daemon, name).get(kind, {})
    return condition.get("status") == "True" and (reason is None or condition.get("reason") == reason)


@dataclass
class Machine:
    home: Path
    daemon: SpecDaemon
    scheduler: Scheduler
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        return self.daemon.store

    def start(self, source: SpecSource | None) -> None:
        self.task = asyncio.create_task(self.daemon.run(source, self.stop))


@contextlib.asynccontextmanager
async def machine(
    home: Path, *, ram_budget: int = 2**34, interval: float = 30.0, store: Store | None = None
) -> AsyncIterator[Machine]:
    """A daemon over a fresh scheduler; everything stops (runners included) on exit."""
    settings = Settings(home=home, docker_config=home / "docker")
    scheduler = Scheduler(SchedulerSettings(ram_budget=ram_budget, memory_wait=5))
    daemon = SpecDaemon(
        settings,
        scheduler,
        store=store or Store(settings.store_dir),
        registry=registry_options(home),
        reconciler=ReconcilerSettings(state_path(settings), interval=interval, heal_poll=0.2, debounce=0.1),
    )
    daemon.store.init()
    box = Machine(home, daemon, scheduler)
    try:
        yield box
    finally:
        box.stop.set()
        if box.task is not None:
            await box.task
        await scheduler.close()
