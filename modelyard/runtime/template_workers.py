"""Template renders in worker processes, bounded in memory and killed when late.

A template comes from strangers (an image's TEMPLATE or chat template, a request's `template`).
The engines' budgets (builder/render_limits.py) bound its loops and the size of each value, but not
the memory of many values held at once, nor one long Python call (`|wordwrap` on 8 Mi characters
takes seconds, in which no clock is read). In the server that is an out-of-memory kill away from
losing every loaded model. So the server renders in worker processes: each limited to
MAX_RENDER_MEMORY_BYTES of address space (a render that needs more fails, or its worker dies,
alone) and to a few seconds of CPU per render, each killed KILL_GRACE_S after its render's time is
up, and replaced in the background. A worker starts in `/`, with no environment but Python's own
settings and the locale (none of the server's credentials), and exits at the end of its socket.

`TemplateWorkers.render` is a builder.prompt.Render: it waits for a free worker (the wait does not
count against the render's time; past WORKER_WAIT_S it is a ServerBusyError, a 503), then blocks
until its job is rendered, up to the time the render has (render_limits: the prompt's deadline,
else `render_timeout`), and raises what rendering here would (TemplateError, RenderTimedOut).
`render_now` never waits for a worker (NoIdleWorker): the event loop's way. A render costs a round
trip between processes over the work itself (benchmarks/bench_template_render.py).

The wire, both ways: frames of an 8-byte big-endian length, then that many bytes. Parent to worker:
the render's time and its deadline (two doubles: CLOCK_MONOTONIC is one clock for every process
of the machine) and the characters it may write, then the pickled RenderJob. Worker to parent:
READY once, then per job one byte of kind, one of retirement (b"1": the worker exits after it),
then the text or message in UTF-8 (a message cut to MAX_MESSAGE_BYTES). The parent never
unpickles what a worker sends, and reads a reply no longer than the render may write, by its
deadline: a template that escaped its sandbox there gains no code, memory or time in the server.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Final

from modelyard.builder.prompt import RenderJob
from modelyard.builder.render_limits import (
    KILL_GRACE_S,
    MAX_RENDER_MEMORY_BYTES,
    RENDER_TIMEOUT_S,
    RenderTimedOut,
    RenderTooLong,
    prompt_deadline,
    render_max_chars,
    render_timeout,
)
from modelyard.errors import ServerBusyError, TemplateError

log = logging.getLogger("modelyard.templates")

REPLY_TEXT: Final = b"T"
REPLY_ERROR: Final = b"E"  # a TemplateError's message
REPLY_TIMED_OUT: Final = b"O"  # a RenderTimedOut's message
REPLY_TOO_LONG: Final = b"L"  # a RenderTooLong's message
REPLY_BUG: Final = b"B"  # a traceback
MAX_MESSAGE_BYTES: Final = 16 * 1024  # an error's message or a traceback, cut by the worker
READY: Final = b"ready"  # a worker's first frame: imported, limited, waiting for jobs
FRAME_HEADER: Final = struct.Struct("!Q")
# A job's time in all (for messages), its deadline, and the characters it may write.
LIMITS: Final = struct.Struct("!ddQ")
# A worker holding more than this after a render exits after answering: a fresh one gives the
# memory back at once, where an interpreter keeps much of what it once held.
RETIRE_RSS_BYTES: Final = 256 * 1024 * 1024
DEFAULT_WORKERS: Final = 2  # a render takes a fraction of a millisecond: two serve thousands a second
START_TIMEOUT_S: Final = 30.0
# The longest a render waits for a free worker: a busy one is done (or killed) within a render's
# time and grace, and replaced within about a second.
WORKER_WAIT_S: Final = RENDER_TIMEOUT_S + KILL_GRACE_S + 1.0
# What a worker's environment keeps of the server's: the interpreter's settings (PYTHON*: where it
# finds modelyard, PYTHONINTMAXSTRDIGITS, which a template's `int` sees) and the locale.
KEPT_ENVIRONMENT: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE")


def _worker_environment() -> dict[str, str]:
    kept = {
        name: value
        for name, value in os.environ.items()
        if name in KEPT_ENVIRONMENT or name.startswith("PYTHON")
    }
    if "PYTHONPATH" in kept:  # a worker starts in /: the server's relative entries, made absolute
        entries = kept["PYTHONPATH"].split(os.pathsep)
        kept["PYTHONPATH"] = os.pathsep.join(os.path.abspath(entry) for entry in entries)
    return kept


class NoIdleWorker(Exception):
    """render_now: every worker is busy or starting (render again where waiting is allowed)."""


class _WorkerGone(Exception):
    """The worker's socket failed: it died (a template's doing, or anybody's) or broke the wire."""


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(FRAME_HEADER.pack(len(payload)) + payload)


def receive_frame(sock: socket.socket, max_bytes: int, deadline: float | None = None) -> bytes:
    """One frame's payload, read by `deadline` (None: however long it takes). EOFError at the end
    of the socket; TimeoutError past the deadline; ValueError for a frame over max_bytes. The
    other side sends nothing after a frame until it is answered: a read may take the whole frame."""
    data = bytearray()
    size = None
    while size is None or len(data) < FRAME_HEADER.size + size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        # Under 128 KiB: a larger read is its own mmap (and page faults), even for a short frame.
        want = 1 << 16 if size is None else min(FRAME_HEADER.size + size - len(data), 1 << 24)
        chunk = sock.recv(want)
        if not chunk:
            raise EOFError
        data += chunk
        if size is None and len(data) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(data)
            if size > max_bytes:
                raise ValueError(f"a frame of {size:,} bytes, more than the {max_bytes:,} expected")
    return bytes(memoryview(data)[FRAME_HEADER.size :])


class _Worker:
    def __init__(self, memory_bytes: int, retire_rss_bytes: int) -> None:
        parent, child = socket.socketpair()
        command = [sys.executable, "-P", "-m", "modelyard.runtime.template_worker_main"]
        arguments = ["--fd", str(child.fileno()), "--memory", str(memory_bytes)]
        try:
            self.process = subprocess.Popen(
                [*command, *arguments, "--retire-rss", str(retire_rss_bytes)],
                pass_fds=(child.fileno(),),
                start_new_session=True,  # a terminal's Ctrl-C is for the server, which closes it
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env=_worker_environment(),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.socket = parent
        try:
            ready = receive_frame(parent, len(READY), time.monotonic() + START_TIMEOUT_S) == READY
        except (EOFError, OSError, ValueError):
            ready = False
        if not ready:
            self.kill()
            raise OSError(
                f"the template worker did not start ({_exit(self.process.returncode)}; its output "
                "is in this log)"
            )

    def kill(self) -> None:
        """Kill, reap and let go (blocks while the kernel frees its memory: not on the loop)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.socket.close()

    def close(self) -> None:
        """End of the socket: the worker exits on its own; killed if it does not soon."""
        self.socket.close()
        try:
            self.process.wait(2)
        except subprocess.TimeoutExpired:
            self.kill()


class TemplateWorkers:
    """A pool of `size` template worker processes (see the module docstring). Thread-safe: the
    server's event loop and its threads render at once, each on a worker of its own."""

    def __init__(
        self,
        size: int = DEFAULT_WORKERS,
        *,
        memory_bytes: int = MAX_RENDER_MEMORY_BYTES,
        retire_rss_bytes: int = RETIRE_RSS_BYTES,
    ) -> None:
        self.size = size
        self.memory_bytes = memory_bytes
        self.retire_rss_bytes = retire_rss_bytes
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._waiting: deque[object] = deque()  # the renders waiting for a worker, in order
        self._starting = 0  # workers being started, in the background
        self._failed_starts = 0
        self._start_failure = ""  # why the last start that failed did
        self._changed = threading.Condition()
        self._closed = False

    def start(self) -> None:
        """Start the workers in the background, so that the first render does not wait for one."""
        with self._changed:
            self._fill()

    def render(self, job: RenderJob) -> str:
        """Render `job` on a worker, waiting for one to be free (see the module docstring)."""
        return self._render(job, wait=True)

    def render_now(self, job: RenderJob) -> str:
        """Render `job` on a worker that is free now, else raise NoIdleWorker."""
        return self._render(job, wait=False)

    def pids(self) -> list[int]:
        """The worker processes' ids, idle and rendering."""
        with self._changed:
            return [w.process.pid for w in [*self._idle, *self._busy]]

    def close(self) -> None:
        """Stop the idle workers; one rendering stops when its render ends."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._changed.notify_all()
        for worker in idle:
            worker.close()

    # --- one render -------------------------------------------------------------------------------

    def _render(self, job: RenderJob, *, wait: bool) -> str:
        timeout_s = render_timeout.get()
        max_chars = render_max_chars.get()
        deadline = prompt_deadline.get()
        if deadline is None:
            deadline = time.monotonic() + timeout_s
        pickling = time.monotonic()
        try:
            pickled = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
        except RecursionError:  # a request's JSON nested hundreds deep (tool call arguments)
            raise TemplateError("the request's values are nested too deeply to render") from None
        deadline += time.monotonic() - pickling  # the job's size is the request's, not the template's
        for attempt in range(2):
            asked = time.monotonic()
            worker = self._take(asked + WORKER_WAIT_S if wait else None)
            deadline += time.monotonic() - asked  # waiting for a worker is not rendering
            if prompt_deadline.get() is not None:  # nor is it for the prompt's later renders
                prompt_deadline.set(deadline)
            limits = LIMITS.pack(timeout_s, deadline, max_chars)
            reply = b""
            try:
                max_reply = 2 + max(4 * max_chars, MAX_MESSAGE_BYTES)
                reply = self._run(worker, limits, pickled, timeout_s, deadline, max_reply)
            except _WorkerGone as gone:
                if gone.args[0] == "before" and attempt == 0:
                    continue  # it died idle (killed, say): the job never reached it; another
                try:
                    code = worker.process.wait(0.2)  # its end of the socket closes as it exits
                except subprocess.TimeoutExpired:
                    code = None
                raise TemplateError(
                    f"the template's render stopped: its worker process exited ({_exit(code)}), "
                    f"which a render that needs more than {self.memory_bytes // 2**20:,} MiB of "
                    "memory does"
                ) from None
            finally:
                self._give_back(worker, keep=bool(reply) and reply[1:2] != b"1")
            return _result(reply)
        raise AssertionError("unreachable")  # the second attempt returns or raises

    def _run(
        self,
        worker: _Worker,
        limits: bytes,
        pickled: bytes,
        timeout_s: float,
        deadline: float,
        max_reply: int,
    ) -> bytes:
        """The worker's reply (kind, retirement, payload), or _WorkerGone("before" the job reached it,
        or "during" it). Never blocks past the deadline and its grace; `max_reply`: the most bytes
        a reply may have (its output's characters at 4 bytes each)."""
        killed_at = deadline + KILL_GRACE_S
        try:
            worker.socket.settimeout(max(killed_at - time.monotonic(), 0.001))
            send_frame(worker.socket, limits + pickled)
        except TimeoutError:
            worker.process.kill()  # reaped by _give_back's thread, off this one (maybe the loop)
            raise RenderTimedOut(f"the template took longer than {timeout_s:g} s to render") from None
        except OSError:
            raise _WorkerGone("before") from None
        try:
            reply = receive_frame(worker.socket, max_reply, killed_at)
        except TimeoutError:
            worker.process.kill()
            raise RenderTimedOut(f"the template took longer than {timeout_s:g} s to render") from None
        except (EOFError, OSError):
            raise _WorkerGone("during") from None  # it died: out of memory, most likely
        except ValueError:
            reply = b""  # longer than any render's output: not a worker of ours any more
        if len(reply) < 2:
            worker.process.kill()
            raise _WorkerGone("during")
        return reply

    # --- the pool ---------------------------------------------------------------------------------

    def _take(self, wait_until: float | None) -> _Worker:
        """A free, live worker; `wait_until` None: one free now or NoIdleWorker. Renders that wait
        are served in the order they came (a slow template's requests do not crowd out others'),
        and one that does not wait takes a worker only when none is waited for."""
        with self._changed:
            failed_before = self._failed_starts
            turn = object()
            try:
                while True:
                    if self._closed:
                        raise ServerBusyError(
                            "the server is shutting down: no template can be rendered", 1.0, reason="stopping"
                        )
                    while self._idle and (not self._waiting or self._waiting[0] is turn):
                        worker = self._idle.pop()
                        if worker.process.poll() is None:
                            self._busy.add(worker)
                            return worker
                        self._reap(worker)  # died while idle (killed, say): not handed out
                    if self._failed_starts > failed_before and not self._starting and not self._busy:
                        # None will come: a fault of this machine or installation, not the template's.
                        raise RuntimeError(f"no template worker could be started: {self._start_failure}")
                    self._fill()
                    if wait_until is None:
                        raise NoIdleWorker
                    if turn not in self._waiting:
                        self._waiting.append(turn)
                    left = wait_until - time.monotonic()
                    if left <= 0:
                        raise ServerBusyError(
                            f"every template worker stayed busy for {WORKER_WAIT_S:g} s: try again shortly",
                            1.0,
                            reason="templates",
                        )
                    self._changed.wait(left)
            finally:
                if turn in self._waiting:
                    self._waiting.remove(turn)
                    self._changed.notify_all()  # the next in line may take what this one leaves

    def _give_back(self, worker: _Worker, *, keep: bool) -> None:
        with self._changed:
            self._busy.discard(worker)
            close_it = keep and self._closed
            if keep and not self._closed:
                self._idle.append(worker)
            elif not keep:
                self._reap(worker)
                self._fill()
            self._changed.notify_all()
        if close_it:
            worker.close()

    def _reap(self, worker: _Worker) -> None:
        """Kill and reap a worker in the background (the kernel frees up to a GiB meanwhile)."""
        threading.Thread(target=worker.kill, name="template-worker-reap", daemon=True).start()

    def _fill(self) -> None:
        """Start, in the background, as many workers as the pool lacks. Holds `_changed`."""
        missing = self.size - len(self._idle) - self._starting - len(self._busy)
        for _ in range(0 if self._closed else missing):
            thread = threading.Thread(target=self._start_one, name="template-worker-start", daemon=True)
            self._starting += 1
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the next render's _fill tries again
                self._starting -= 1
                return

    def _start_one(self) -> None:
        worker = None
        failure = None
        try:
            worker = _Worker(self.memory_bytes, self.retire_rss_bytes)
        except Exception as exc:  # no processes or memory left, or a broken installation
            failure = str(exc)
            log.error("could not start a template worker: %s", exc)
        with self._changed:
            self._starting -= 1
            if failure is not None:
                self._failed_starts += 1
                self._start_failure = failure
            if worker is not None and not self._closed:
                self._idle.append(worker)
                worker = None
            self._changed.notify_all()
        if worker is not None:
            worker.close()


def _result(reply: bytes) -> str:
    kind = reply[:1]
    payload = str(memoryview(reply)[2:], "utf-8")  # no copy of a long prompt to decode it
    if kind == REPLY_TEXT:
        return payload
    if kind == REPLY_TIMED_OUT:
        raise RenderTimedOut(payload)
    if kind == REPLY_TOO_LONG:
        raise RenderTooLong(payload)
    if kind == REPLY_ERROR:
        raise TemplateError(payload)
    raise RuntimeError(f"the template worker failed:\n{payload}")  # a bug: show its traceback


def _exit(code: int | None) -> str:
    if code is None:
        return "its socket broke"
    if code < 0:
        return f"signal {-code}"
    return f"status {code}"
