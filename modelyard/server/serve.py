"""Starting the server: settings → store, scheduler, state → the app under uvicorn."""

from __future__ import annotations

import errno
import logging
import socket
import sys

from modelyard.errors import ModelyardError
from modelyard.runtime.keepalive import DEFAULT_KEEP_ALIVE_S, parse_keep_alive
from modelyard.runtime.runner import Launcher
from modelyard.runtime.scheduler import Scheduler, SchedulerSettings
from modelyard.server.state import ServerState
from modelyard.settings import Settings
from modelyard.store import Store


def scheduler_settings(settings: Settings) -> SchedulerSettings:
    try:
        keep_alive = (
            parse_keep_alive(settings.keep_alive, allow_bare_seconds=True)
            if settings.keep_alive
            else DEFAULT_KEEP_ALIVE_S
        )
    except ModelyardError as exc:  # say which setting: the message alone named no variable
        raise ModelyardError(f"$MODELYARD_KEEP_ALIVE: {exc}") from None
    return SchedulerSettings(
        ram_budget=settings.ram_budget,
        max_queue=settings.max_queue,
        default_keep_alive=keep_alive,
        num_parallel=settings.num_parallel,
        max_loaded_models=settings.max_loaded_models,
    )


def build_state(
    settings: Settings,
    *,
    launcher: Launcher | None = None,
    spec: str | None = None,
    spec_poll: float | None = None,
) -> ServerState:
    """The server's state, with its reconciler: following `spec` (a file, folder or git+ source)
    when given (read every `spec_poll` seconds; None: the source's default), else the spec last
    applied through /api/apply (kept under $MODELYARD_HOME)."""
    from modelyard.runtime.gpu import discover_devices
    from modelyard.spec.daemon import SpecDaemon

    store = Store(settings.store_dir, history_limit=settings.history_limit)
    store.init()
    scheduler = Scheduler(scheduler_settings(settings), devices=discover_devices(), launcher=launcher)
    state = ServerState(settings, store, scheduler)
    state.attach_reconciler(SpecDaemon(settings, scheduler, store=store), spec, poll_interval=spec_poll)
    return state


def run_server(
    settings: Settings, host: str, port: int, *, spec: str | None = None, spec_poll: float | None = None
) -> None:
    """Serve until interrupted (blocking)."""
    import uvicorn

    from modelyard.server.app import create_app
    from modelyard.server.graceful import GracefulServer

    listening = listen(host, port)  # before anything starts: a port in use is the user's to fix
    _log_as_uvicorn()
    launcher = Launcher(spares=1)
    try:
        state = build_state(settings, launcher=launcher, spec=spec, spec_poll=spec_poll)
        app = create_app(state, bind_host=host)
        # Its loop and http "auto" pick uvloop and httptools: dependencies for that (pyproject.toml).
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace,
        )
        retry_after = float(settings.shutdown_grace)  # a restarted server is back in about that
        GracefulServer(config, lambda: state.inference.stop_generations(retry_after)).run(sockets=[listening])
    finally:
        launcher.close()
        listening.close()


def _log_as_uvicorn() -> None:
    """modelyard's own log (the reconciler's events: pulled, loaded, swapped, failed; the
    scheduler's evictions) beside uvicorn's lines, in their form. Unconfigured, only warnings got
    out, bare: a spec review found `serve --spec` said nothing of why a model was down."""
    from uvicorn.logging import DefaultFormatter

    logger = logging.getLogger("modelyard")
    if logger.handlers:  # served twice in one process (tests)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=None))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a ModelyardError saying why not. uvicorn binds only
    after the app has started, then exits 3 under "Application startup complete" (a CLI review:
    a port in use read as a crash of ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses it
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = (
            "another server listens there (`modelyard ps` asks it); choose another port with --host or "
            "$MODELYARD_HOST"
            if exc.errno == errno.EADDRINUSE
            else "check the host and port given with --host or $MODELYARD_HOST"
        )
        raise ModelyardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    return sock
