"""The reconciler's real effects (host.py) over a real store and scheduler: what reads files runs off
the event loop, the glance reads no /proc, and the estimate is the one Kubernetes export uses."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from spec_fakes import make_spec
from spec_world import build, registry_options
from tinygguf import write_tiny_llama

from modelyard.errors import NotAnAdapterError
from modelyard.reference import Reference, parse_reference
from modelyard.runtime.scheduler import ModelStatus, Scheduler, SchedulerSettings
from modelyard.runtime.servable import load_servable
from modelyard.spec.host import SchedulerHost
from modelyard.spec.kubernetes import estimate_models
from modelyard.spec.plan import ActionKind, Reason, target_for
from modelyard.spec.reconciler import classify
from modelyard.store import Store
from modelyard.store.index import TagRecord

IMAGE = "localhost:5000/team/tiny:v1"


class ThreadNotingStore(Store):
    """The real store; notes whether each lookup ran on the event loop's thread."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.on_loop: list[bool] = []

    def resolve(self, ref: Reference) -> TagRecord:
        self.on_loop.append(threading.current_thread() is threading.main_thread())
        return super().resolve(ref)


class LiveNotingScheduler(Scheduler):
    """The real scheduler; notes every status() that reads /proc."""

    def __init__(self) -> None:
        super().__init__(SchedulerSettings(ram_budget=2**34))
        self.live_reads = 0

    def status(self, *, live: bool = True) -> list[ModelStatus]:
        self.live_reads += live
        return super().status(live=live)


@pytest.fixture
def host(tmp_path: Path) -> tuple[SchedulerHost, ThreadNotingStore, LiveNotingScheduler]:
    store = ThreadNotingStore(tmp_path / "store")
    store.init()
    build(store, write_tiny_llama(tmp_path / "tiny.gguf"), IMAGE, tmp_path)
    scheduler = LiveNotingScheduler()
    return SchedulerHost(store, scheduler, registry_options(tmp_path)), store, scheduler


REF = parse_reference(IMAGE)
TINY = f"models: [{{name: tiny, image: '{IMAGE}'}}]"

EFFECTS: list[tuple[str, Callable[[SchedulerHost, str], Awaitable[object]]]] = [
    ("local_digest", lambda host, digest: host.local_digest(IMAGE, digest)),
    (
        "footprint",
        lambda host, digest: host.footprint(target_for(make_spec(TINY).models[0], {IMAGE: digest})),
    ),
]


@pytest.mark.parametrize("call", [c for _, c in EFFECTS], ids=[name for name, _ in EFFECTS])
def test_what_reads_the_store_runs_off_the_event_loop(
    host: tuple[SchedulerHost, ThreadNotingStore, LiveNotingScheduler],
    call: Callable[[SchedulerHost, str], Awaitable[object]],
) -> None:
    effects, store, _ = host
    digest = store.resolve(REF).digest
    store.on_loop.clear()
    assert asyncio.run(_call(call(effects, digest))) is not None
    assert store.on_loop and not any(store.on_loop)


async def _call(awaitable: Awaitable[object]) -> object:
    return await awaitable


def test_the_glance_reads_no_proc(host: tuple[SchedulerHost, ThreadNotingStore, LiveNotingScheduler]) -> None:
    effects, _, scheduler = host
    assert effects.running() == []
    assert scheduler.live_reads == 0


@pytest.mark.parametrize(
    "options",
    [
        pytest.param("", id="the-image-s-defaults"),
        pytest.param(", context: 256", id="context"),
        pytest.param(", parallel: 3", id="parallel"),
        pytest.param(", context: 1000000", id="context-past-training"),
    ],
)
def test_admission_and_kubernetes_use_the_same_estimate(
    host: tuple[SchedulerHost, ThreadNotingStore, LiveNotingScheduler], options: str
) -> None:
    effects, store, _ = host
    spec = make_spec(f"models: [{{name: tiny, image: '{IMAGE}'{options}}}]")
    target = target_for(spec.models[0], {IMAGE: store.resolve(REF).digest})
    estimate = asyncio.run(_call(effects.footprint(target)))
    assert estimate == estimate_models(spec, store)["tiny"]
    if "1000000" in options:  # capped at the training context
        trained = load_servable(store, REF).gguf.shape.n_ctx_train
        capped = make_spec(f"models: [{{name: tiny, image: '{IMAGE}', context: {trained}}}]")
        assert estimate == estimate_models(capped, store)["tiny"]


def bare_host(tmp_path: Path, **settings: Any) -> SchedulerHost:
    """A host over an empty store, for its tag checks."""
    store = Store(tmp_path / "store")
    store.init()
    return SchedulerHost(
        store, Scheduler(SchedulerSettings(ram_budget=2**30)), registry_options(tmp_path), **settings
    )


def test_a_registry_that_never_answers_fails_a_tag_check_within_its_short_timeout(tmp_path: Path) -> None:
    """A reconcile audit: a registry that took connections and never answered (SIGSTOPped) held
    each tag check for 2 x 60 s, and with it the round, the next spec and apply, for minutes."""
    import socket
    import time

    import httpx

    from modelyard.errors import RegistryUnavailableError
    from modelyard.registry.retry import RetryPolicy

    with socket.socket() as silent:  # listens (connections complete in the backlog), never reads
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        host = bare_host(
            tmp_path,
            resolve_retry=RetryPolicy(attempts=2, base_s=0.0, cap_s=0.0),
            resolve_timeout=httpx.Timeout(0.3, connect=0.3),
        )
        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError):
            asyncio.run(asyncio.wait_for(host.resolve(f"127.0.0.1:{port}/team/chat:v1"), timeout=10))
        assert time.monotonic() - started < 3


def test_a_registry_that_answers_a_line_at_a_time_fails_a_tag_check_by_its_deadline(tmp_path: Path) -> None:
    """A registry review: the tag check's timeout was a read's, and a registry sending a header line
    every few seconds held the check, and the round, past a minute. Each check now has a deadline;
    one stuck is waited on by the next rounds (no thread beside it), for a few deadlines only (a
    diff review: the image's checks failed for as long as that connection trickled)."""
    import socket
    import time

    import httpx

    from modelyard.errors import RegistryUnavailableError

    answer = "sha256:" + "ab" * 32
    stop = threading.Event()
    trickled: list[bool] = []

    def handle(connection: socket.socket) -> None:
        with connection:
            if not trickled:  # the first connection trickles, each read within its timeout
                trickled.append(True)
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    with contextlib.suppress(OSError):
                        connection.sendall(b"X-Slow: 1\r\n")
                return
            connection.recv(65536)  # the others are answered at once
            manifest = "application/vnd.oci.image.manifest.v1+json"
            head = f"Docker-Content-Digest: {answer}\r\nContent-Type: {manifest}\r\nContent-Length: 0\r\n"
            connection.sendall(f"HTTP/1.1 200 OK\r\n{head}\r\n".encode())

    def serve(server: socket.socket) -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                threading.Thread(target=handle, args=(server.accept()[0],), daemon=True).start()

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        image = f"127.0.0.1:{server.getsockname()[1]}/team/chat:v1"
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        host = bare_host(tmp_path, resolve_timeout=httpx.Timeout(1.0, connect=1.0), resolve_deadline_s=0.5)
        loop = asyncio.new_event_loop()  # not asyncio.run: it would wait for the stuck thread
        try:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailableError, match=r"no answer to the tag check .* within 0.5 s"):
                loop.run_until_complete(host.resolve(image))
            assert time.monotonic() - started < 2
            outcomes: list[str] = []
            for _ in range(6):
                try:
                    outcomes.append(loop.run_until_complete(host.resolve(image)))
                except RegistryUnavailableError:
                    outcomes.append("no answer")
            assert outcomes[0] == "no answer" and outcomes[-1] == answer, outcomes
        finally:
            stop.set()
            loop.run_until_complete(asyncio.sleep(1.5))  # the stuck thread ends with its connection
            loop.close()


def test_an_adapter_image_without_an_adapter_fails_the_load_for_good(
    host: tuple[SchedulerHost, ThreadNotingStore, LiveNotingScheduler],
) -> None:
    """A spec review: `adapters: [{image: other}]` naming a whole model's image was skipped, and the
    model served as its base, Ready and Healthy."""
    effects, store, _ = host
    spec = make_spec(
        f"models: [{{name: tuned, image: '{IMAGE}', adapters: [{{image: '{IMAGE}', scale: 0.5}}]}}]"
    )
    target = target_for(spec.models[0], {IMAGE: store.resolve(REF).digest})
    with pytest.raises(
        NotAnAdapterError, match=r"tuned: the adapter image .* holds no LoRA adapter"
    ) as caught:
        effects.request(target)
    failure = classify(caught.value, ActionKind.LOAD)
    assert (failure.reason, failure.permanent) == (Reason.LOAD_FAILED, True)
