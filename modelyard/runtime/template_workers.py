"""Template renders in worker processes, bounded in memory and killed when late.

A template comes from strangers (an image's TEMPLATE or chat template, a request's `template`).
The engines' budgets (builder/render_limits.py) bound its loops and the size of each value, but not
the memory of many values held at once, nor one long Python call (`|wordwrap` on 8 Mi characters
takes seconds, in which no clock is read). In the server that is an out-of-memory kill away from
losing every loaded model. So the server renders in worker processes: each limited to
MAX_RENDER_MEMORY_BYTES of address space (a render that needs more fails, or its worker dies,
alone), each killed KILL_GRACE_S after its render's time is up, and replaced in the background.

`TemplateWorkers.render` is a builder.prompt.Render: it blocks until its job is rendered, up to
the time the render has (render_limits: the prompt's deadline, else `render_timeout`), and
raises what rendering here would (TemplateError, RenderTimedOut). A render costs a round trip
between processes over the work itself (benchmarks/bench_template_render.py).

Replies, worker to parent: one byte of kind, one of retirement (b"1": the worker exits after it),
then the text or message in UTF-8. The parent never unpickles what a worker sends: a template
that escaped its sandbox there gains no code in the server.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Final

from modelyard.builder.prompt import RenderJob
from modelyard.builder.render_limits import (
    KILL_GRACE_S,
    MAX_RENDER_MEMORY_BYTES,
    RenderTimedOut,
    prompt_deadline,
    render_timeout,
)
from modelyard.errors import TemplateError

log = logging.getLogger("modelyard.templates")

REPLY_TEXT: Final = b"T"
REPLY_ERROR: Final = b"E"  # a TemplateError's message
REPLY_TIMED_OUT: Final = b"O"  # a RenderTimedOut's message
REPLY_BUG: Final = b"B"  # a traceback
# A worker holding more than this after a render exits after answering: a fresh one gives the
# memory back at once, where an interpreter keeps much of what it once held.
RETIRE_RSS_BYTES: Final = 256 * 1024 * 1024
DEFAULT_WORKERS: Final = 2  # a render takes a fraction of a millisecond: two serve thousands a second
READY: Final = b"ready"  # a worker's first message: imported, limited, waiting for jobs
START_TIMEOUT_S: Final = 30.0


def encode_reply(kind: bytes, payload: str, *, retire: bool) -> bytes:
    # surrogatepass: a message's text may hold a lone surrogate (JSON's "\ud800"), kept as it came
    return kind + (b"1" if retire else b"0") + payload.encode("utf-8", "surrogatepass")


class _Worker:
    def __init__(self, memory_bytes: int, retire_rss_bytes: int) -> None:
        parent, child = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modelyard.runtime.template_worker_main",
                    "--fd",
                    str(child.fileno()),
                    "--memory",
                    str(memory_bytes),
                    "--retire-rss",
                    str(retire_rss_bytes),
                ],
                pass_fds=(child.fileno(),),
                start_new_session=True,  # a terminal's Ctrl-C is for the server, which closes it
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.connection = Connection(parent.detach())
        try:
            ready = self.connection.poll(START_TIMEOUT_S) and self.connection.recv_bytes() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            code = self.process.returncode
            raise OSError(f"the template worker did not start ({_exit(code)}; its output is in this log)")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        self.connection.close()

    def close(self) -> None:
        """End of the socket: the worker exits on its own; killed if it does not soon."""
        self.connection.close()
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
        self._busy_workers: set[_Worker] = set()
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
        deadline = prompt_deadline.get()
        if deadline is None:
            deadline = time.monotonic() + render_timeout.get()
        timeout_s = render_timeout.get()
        worker = self._take(deadline, timeout_s)
        kind, retire, payload = b"", False, ""
        try:
            kind, retire, payload = self._run(worker, job, deadline, timeout_s)
        finally:
            self._give_back(worker, keep=bool(kind) and not retire)
        if kind == REPLY_TEXT:
            return payload
        if kind == REPLY_TIMED_OUT:
            raise RenderTimedOut(payload)
        if kind == REPLY_ERROR:
            raise TemplateError(payload)
        raise RuntimeError(f"the template worker failed:\n{payload}")  # a bug: show its traceback

    def pids(self) -> list[int]:
        """The worker processes' ids, idle and rendering."""
        with self._changed:
            return [w.process.pid for w in [*self._idle, *self._busy_workers]]

    def close(self) -> None:
        """Stop the idle workers; one rendering stops when its render ends."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._changed.notify_all()
        for worker in idle:
            worker.close()

    # --- the pool ---------------------------------------------------------------------------------

    def _take(self, deadline: float, timeout_s: float) -> _Worker:
        with self._changed:
            failed_before = self._failed_starts
            while True:
                if self._closed:
                    raise TemplateError("the server is shutting down: no template can be rendered")
                if self._idle:
                    worker = self._idle.pop()
                    self._busy_workers.add(worker)
                    return worker
                if self._failed_starts > failed_before and not self._starting and not self._busy_workers:
                    # None will come: a fault of this machine or installation, not of the template.
                    raise RuntimeError(f"no template worker could be started: {self._start_failure}")
                self._fill()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RenderTimedOut(f"no template worker was free within {timeout_s:g} s")
                self._changed.wait(left)

    def _give_back(self, worker: _Worker, *, keep: bool) -> None:
        if not keep:
            threading.Thread(target=worker.kill, name="template-worker-reap", daemon=True).start()
        with self._changed:
            self._busy_workers.discard(worker)
            if keep and not self._closed:
                self._idle.append(worker)
            else:
                self._fill()
            self._changed.notify_all()
        if keep and self._closed:
            worker.close()

    def _fill(self) -> None:
        """Start, in the background, as many workers as the pool lacks. Holds `_changed`."""
        missing = self.size - len(self._idle) - self._starting - len(self._busy_workers)
        for _ in range(0 if self._closed else missing):
            self._starting += 1
            threading.Thread(target=self._start_one, name="template-worker-start", daemon=True).start()

    def _start_one(self) -> None:
        worker = None
        failure = None
        try:
            worker = _Worker(self.memory_bytes, self.retire_rss_bytes)
        except OSError as exc:  # no processes or memory left, or a broken installation
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

    # --- one render -------------------------------------------------------------------------------

    def _run(
        self, worker: _Worker, job: RenderJob, deadline: float, timeout_s: float
    ) -> tuple[bytes, bool, str]:
        """(kind, retire, payload); kind b"" when the worker died or was killed (not to reuse)."""
        left = deadline - time.monotonic()
        try:
            message = pickle.dumps((job, timeout_s, max(left, 0.0)), pickle.HIGHEST_PROTOCOL)
            worker.connection.send_bytes(message)
            if not worker.connection.poll(max(left, 0.0) + KILL_GRACE_S):
                worker.kill()
                raise RenderTimedOut(f"the template took longer than {timeout_s:g} s to render")
            reply = worker.connection.recv_bytes()
        except (EOFError, OSError):
            try:
                code = worker.process.wait(1)
            except subprocess.TimeoutExpired:  # alive, its socket broken: of no more use
                worker.kill()
                code = worker.process.returncode
            raise TemplateError(
                f"the template's render stopped: its worker process exited ({_exit(code)}), which a "
                f"render that needs more than {self.memory_bytes // 2**20:,} MiB of memory does"
            ) from None
        return reply[:1], reply[1:2] == b"1", reply[2:].decode("utf-8", "surrogatepass")


def _exit(code: int) -> str:
    if code < 0:
        return f"signal {-code}"
    return f"status {code}"
