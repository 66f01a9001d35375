"""The parent's handle on a runner process: start it, stream requests through it, stop it.

One runner per loaded model (as Ollama runs one llama-server per model): a crash or a leak stays in
its process, and stopping it frees all of its memory for certain. The runner starts in its own
session; `stop()` asks it to shut down, then SIGTERMs its process group, then SIGKILLs, then reaps.

If the runner dies, every request in flight fails at once with RunnerCrashedError (no hang) and
`on_exit` tells the owner (the scheduler) so it can mark the model failed.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelyard.errors import (
    InferenceRequestError,
    ModelLoadError,
    PromptTooLongError,
    RunnerCrashedError,
    RunnerError,
)
from modelyard.runtime.options import LoadOptions
from modelyard.runtime.protocol import Channel, CompletionRequest, Done, RunnerInfo, load_message

log = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 300.0
STOP_GRACE_S = 5.0

# Set once a runner died of SIGILL with repacked weights: a fact about this machine's CPU, so later
# runners in this process skip the doomed first attempt.
_REPACK_UNUSABLE = threading.Event()


class RunnerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class RunnerSpec:
    name: str  # for messages: the model's name
    weights: Path  # the GGUF blob in the store, used in place
    adapters: tuple[tuple[Path, float], ...] = ()
    options: LoadOptions = field(default_factory=LoadOptions)
    repack: bool = True


@dataclass(frozen=True)
class Token:
    text: str
    # With CompletionRequest.top_logprobs: one entry per token generated since the last event:
    # {"id", "token", "bytes", "logprob", "logit", "offset", "top": [{"id", "token", "bytes",
    # "logprob", "logit"}, …]}, "offset" being where the token's text starts in the answer (a
    # stop string may hold text back, so not where the event's text starts).
    logprobs: tuple[dict[str, Any], ...] = ()
    # The prompt sent back (CompletionRequest.echo), before any generated token; its log-prob
    # entries, when asked for, are the prompt's tokens' (no "offset": their text is the prompt's,
    # piece by piece), the first with logprob and top None.
    prompt: bool = False


@dataclass(frozen=True)
class Failure:
    error: RunnerError


Event = Token | Done | Failure
OnEvent = Callable[[Event], None]


class RequestHandle:
    def __init__(self, runner: Runner, request_id: int) -> None:
        self._runner = runner
        self.request_id = request_id

    def cancel(self) -> None:
        """Free the request's slot at the next step; no more events are delivered."""
        self._runner._cancel(self.request_id)


class Runner:
    def __init__(self, spec: RunnerSpec, on_exit: Callable[[Runner], None] | None = None) -> None:
        self.spec = spec
        self.state = RunnerState.STARTING
        self.info: RunnerInfo | None = None
        self.exit_detail = ""
        self._on_exit = on_exit
        self._ids = itertools.count(1)
        self._pending: dict[int, Callable[[Any], None]] = {}
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=40)
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        # When the runner last said anything (a token, a reply, a heartbeat while it works), or
        # when it was given work while idle: the scheduler's watch for a runner that hangs.
        self._heard_at = time.monotonic()
        self._killed_because = ""

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        spec: RunnerSpec,
        *,
        progress: Callable[[float], None] | None = None,
        timeout: float = DEFAULT_LOAD_TIMEOUT_S,
        on_exit: Callable[[Runner], None] | None = None,
        launcher: Launcher | None = None,
    ) -> Runner:
        """Start a runner and wait until its model is loaded. Raises ModelLoadError."""
        if _REPACK_UNUSABLE.is_set():
            spec = replace(spec, repack=False)
        runner = cls(spec, on_exit)
        try:
            runner._launch(progress, timeout, launcher)
        except _IllegalInstruction:
            if not spec.repack:
                raise ModelLoadError(spec.name, "the runner died of SIGILL while loading") from None
            # This CPU advertises instructions its (virtual) machine will not run, and the repacked
            # weight layouts use them. Load again with llama.cpp's plain layouts.
            _REPACK_UNUSABLE.set()
            runner = cls(replace(spec, repack=False), on_exit)
            runner._launch(progress, timeout, launcher)
        return runner

    def _launch(
        self, progress: Callable[[float], None] | None, timeout: float, launcher: Launcher | None
    ) -> None:
        self._proc, parent = launcher.take() if launcher is not None else spawn_runner_process()
        threading.Thread(target=self._read_stderr, name=f"runner-stderr-{self.pid}", daemon=True).start()
        self._channel = Channel(parent, never_block=True)  # written from the server's event loop
        spec = self.spec
        adapters = [(str(path), scale) for path, scale in spec.adapters]
        parent.settimeout(timeout)
        try:
            self._channel.send(load_message(str(spec.weights), adapters, spec.options, spec.repack))
            self._await_loaded(progress)
        except TimeoutError:
            self._kill()
            self._channel.close()
            raise ModelLoadError(spec.name, f"loading took longer than {timeout:.0f} s") from None
        except BaseException:
            self._kill()
            self._channel.close()
            raise
        parent.settimeout(None)
        self.state = RunnerState.READY
        threading.Thread(target=self._read_events, name=f"runner-events-{self.pid}", daemon=True).start()

    def _await_loaded(self, progress: Callable[[float], None] | None) -> None:
        assert self._channel is not None
        while True:
            message = self._channel.receive()
            if message is None:
                code = self._reap()
                self.state = RunnerState.FAILED
                if code == -signal.SIGILL:
                    raise _IllegalInstruction()
                raise ModelLoadError(
                    self.spec.name, f"the runner exited ({_describe_exit(code)}){self._stderr_tail()}"
                )
            event = message.get("event")
            if event == "progress" and progress is not None:
                progress(float(message["fraction"]))
            elif event == "loaded":
                self.info = RunnerInfo(**message["info"])
                return
            elif event == "load_failed":
                self._reap()
                self.state = RunnerState.FAILED
                raise ModelLoadError(self.spec.name, str(message["message"]))

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else -1

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Shut the runner down and reap it; in-flight requests fail."""
        if self._proc is None or self.state in (RunnerState.STOPPED, RunnerState.STOPPING):
            return
        self.state = RunnerState.STOPPING
        with contextlib.suppress(OSError):
            if self._channel is not None:
                self._channel.send({"op": "shutdown"})
        try:
            self._proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._kill()
        self._reap()
        self.state = RunnerState.STOPPED
        self._fail_all(RunnerError(f"the runner for {self.spec.name} was stopped"))
        if self._channel is not None:
            self._channel.close()

    def _kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        self._reap()

    def _signal_group(self, sig: int) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def _reap(self) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            return self._proc.wait()

    # --- requests -------------------------------------------------------------------------

    def submit(self, request: CompletionRequest, on_event: OnEvent) -> RequestHandle:
        request_id = self._register(on_event)
        self._send(request.to_message(request_id), request_id)
        return RequestHandle(self, request_id)

    def generate(self, request: CompletionRequest) -> Iterator[Token | Done]:
        """Stream a completion; closing the iterator early cancels the request."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        handle = self.submit(request, events.put)
        finished = False
        try:
            while True:
                event = events.get()
                if isinstance(event, Failure):
                    finished = True
                    raise event.error
                yield event
                if isinstance(event, Done):
                    finished = True
                    return
        finally:
            if not finished:
                handle.cancel()

    def complete(self, request: CompletionRequest) -> tuple[str, Done]:
        parts: list[str] = []
        for event in self.generate(request):
            if isinstance(event, Token):
                parts.append(event.text)
            else:
                return "".join(parts), event
        raise AssertionError("a completion stream always ends with Done")

    def embed(self, inputs: list[str], truncate: bool = True) -> dict[str, Any]:
        return self._call({"op": "embed", "inputs": inputs, "truncate": truncate})

    def submit_embed(
        self, inputs: list[str], truncate: bool, on_reply: Callable[[Any], None]
    ) -> RequestHandle:
        """Embeddings whose reply (the result, or a Failure) goes to `on_reply`, on the reader
        thread; the handle's cancel drops the work the runner has not done yet (a client gone)."""
        return self._submit({"op": "embed", "inputs": inputs, "truncate": truncate}, on_reply)

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return list(self._call({"op": "tokenize", "text": text, "add_special": add_special})["tokens"])

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._call({"op": "detokenize", "tokens": tokens})["text"])

    def stats(self) -> dict[str, Any]:
        return self._call({"op": "stats"})

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submit(message, replies.put)
        return reply_result(replies.get())

    def _submit(self, message: dict[str, Any], on_reply: Callable[[Any], None]) -> RequestHandle:
        request_id = self._register(on_reply)
        self._send({**message, "id": request_id}, request_id)
        return RequestHandle(self, request_id)

    def _register(self, on_event: Callable[[Any], None]) -> int:
        if self.state is not RunnerState.READY:
            raise RunnerCrashedError(self.spec.name, f"the runner is {self.state.value}{self._exit_suffix()}")
        request_id = next(self._ids)
        with self._lock:
            if not self._pending:  # idle until now: its silence so far is not a hang
                self._heard_at = time.monotonic()
            self._pending[request_id] = on_event
        return request_id

    def silent_while_working(self) -> float:
        """Seconds since the runner last said anything while it has requests; 0 when it has none."""
        with self._lock:
            return time.monotonic() - self._heard_at if self._pending else 0.0

    def kill_unresponsive(self, why: str) -> None:
        """Kill a runner that hangs (stopped, or stuck in a C call): its requests fail with `why`,
        and its exit is reported as a crash (on_exit) so that the next request loads it again."""
        self._killed_because = why
        self._signal_group(signal.SIGKILL)

    def _send(self, message: dict[str, Any], request_id: int) -> None:
        assert self._channel is not None
        try:
            self._channel.send(message)
        except OSError as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise RunnerCrashedError(self.spec.name, f"cannot reach the runner: {exc}") from None

    def _cancel(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)
        with contextlib.suppress(OSError):
            if self._channel is not None and self.state is RunnerState.READY:
                self._channel.send({"op": "cancel", "id": request_id})

    # --- the reader threads -------------------------------------------------------------------

    def _read_events(self) -> None:
        """Route the runner's events to their requests until it goes away. Nothing a callback or a
        message does may end this loop early: that would leave requests waiting forever and the
        runner's death unreported."""
        assert self._channel is not None
        try:
            while True:
                try:
                    message = self._channel.receive()
                except (OSError, ValueError):
                    message = None
                if message is None:
                    break
                self._heard_at = time.monotonic()
                try:
                    self._dispatch(message)
                except Exception:  # a bug in a callback or a message: fail that request, go on
                    log.exception(
                        "runner %s: event %r could not be delivered", self.spec.name, message.get("event")
                    )
                    self._fail_request(message, RunnerError("internal error delivering the runner's output"))
        finally:
            self._exited()

    def _fail_request(self, message: dict[str, Any], error: RunnerError) -> None:
        request_id = message.get("id")
        with self._lock:
            callback = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if callback is not None:
            with contextlib.suppress(Exception):
                callback(Failure(error))

    def _exited(self) -> None:
        if self.state is RunnerState.READY:
            code = self._reap()
            self.state = RunnerState.FAILED
            self.exit_detail = self._killed_because or (_describe_exit(code) + self._stderr_tail())
            if self._channel is not None:
                self._channel.close()
            # The owner first: whoever sees a request fail must find the model failed too (the
            # scheduler's status said "ready" for a moment after a killed runner's error).
            try:
                if self._on_exit is not None:
                    self._on_exit(self)
            finally:  # the owner's loop closed meanwhile, say: its requests still hear of it
                self._fail_all(RunnerCrashedError(self.spec.name, self.exit_detail))

    def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = int(message.get("id", -1))
        event = message.get("event")
        with self._lock:
            callback = self._pending.get(request_id)
            if callback is not None and event in ("done", "result", "error"):
                del self._pending[request_id]
        if callback is None:
            return  # a cancelled request's late events
        if event == "token":
            callback(
                Token(str(message["text"]), tuple(message.get("logprobs") or ()), bool(message.get("prompt")))
            )
        elif event == "done":
            fields = {k: message[k] for k in Done.__dataclass_fields__}
            callback(Done(**fields))
        elif event == "result":
            callback(message)
        elif event == "error":
            kinds: dict[object, type[RunnerError]] = {
                "request": InferenceRequestError,
                "too_long": PromptTooLongError,
            }
            callback(Failure(kinds.get(message.get("kind"), RunnerError)(str(message["message"]))))

    def _fail_all(self, error: RunnerError) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback(Failure(error))

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        with self._proc.stderr as stderr:
            for line in stderr:
                self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def _stderr_tail(self) -> str:
        lines = [line.strip() for line in self._stderr if line.strip()]
        telling = [line for line in lines if re.search(r"GGML_ASSERT|error|Error|Exception", line)]
        chosen = (telling or lines)[-3:]
        return (": " + " | ".join(chosen)) if chosen else ""

    def _exit_suffix(self) -> str:
        return f" ({self.exit_detail})" if self.exit_detail else ""


def reply_result(reply: Any) -> dict[str, Any]:
    """A reply's result, without the protocol's fields; a Failure's error raised."""
    if isinstance(reply, Failure):
        raise reply.error
    return {k: v for k, v in reply.items() if k not in ("event", "id")}


class _IllegalInstruction(Exception):
    pass


def spawn_runner_process() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A runner process in its own session, waiting on a socket for its `load` message."""
    parent, child = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard.runtime.runner_main", "--fd", str(child.fileno())],
            pass_fds=(child.fileno(),),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # ggml's abort would attach gdb to print a backtrace: slow, and noise in our errors.
            env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        )
    finally:
        child.close()
    return proc, parent


class Launcher:
    """Keeps runner processes started ahead of need: the interpreter up and llama.cpp imported
    (about half a second on a small machine), so that loading a model waits only for the load."""

    def __init__(self, spares: int = 1) -> None:
        self.spares = spares
        self._ready: deque[tuple[subprocess.Popen[bytes], socket.socket]] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._refill()

    def take(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        with self._lock:
            while self._ready:
                proc, sock = self._ready.popleft()
                if proc.poll() is None:
                    break
                sock.close()  # a spare that died waiting: let go of everything it held
                if proc.stderr is not None:
                    proc.stderr.close()
            else:
                proc, sock = spawn_runner_process()
        threading.Thread(target=self._refill, name="runner-spares", daemon=True).start()
        return proc, sock

    def _refill(self) -> None:
        with self._lock:
            while not self._closed and len(self._ready) < self.spares:
                self._ready.append(spawn_runner_process())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spares, self._ready = list(self._ready), deque()
        for proc, sock in spares:
            sock.close()  # EOF: the spare exits on its own
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
