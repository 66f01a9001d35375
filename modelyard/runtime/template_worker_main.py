"""A template worker process: `python -m modelyard.runtime.template_worker_main --fd N --memory B
--retire-rss R`.

Renders the RenderJobs its parent sends on the inherited socket, one at a time, in an address
space limited to B bytes and with a few seconds of CPU per render (RLIMIT_CPU: the kernel ends a
render that nobody is waiting for any more, its parent gone), and answers each with a reply
(runtime/template_workers.py has the wire). It exits at the end of its socket (its parent closed
it, or went away), and after a render that left it holding more than R bytes (a fresh process
gives them back).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import resource
import socket
import traceback
from collections.abc import Iterator

from modelyard.builder.prompt import RenderJob, run_render_job, without_lone_surrogates
from modelyard.builder.render_limits import (
    KILL_GRACE_S,
    RenderTimedOut,
    RenderTooLong,
    prompt_deadline,
    render_max_chars,
    render_timeout,
)
from modelyard.errors import TemplateError
from modelyard.runtime.template_workers import (
    LIMITS,
    MAX_MESSAGE_BYTES,
    READY,
    REPLY_BUG,
    REPLY_ERROR,
    REPLY_TEXT,
    REPLY_TIMED_OUT,
    REPLY_TOO_LONG,
    receive_frame,
    send_frame,
)

MAX_JOB_BYTES = 1 << 40  # from the parent, which is trusted: a bound only against a broken wire


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelyard-template-worker", description="Renders chat templates for modelyard (internal)."
    )
    parser.add_argument("--fd", type=int, required=True, help="the inherited socket to the parent")
    parser.add_argument("--memory", type=int, required=True, help="the address space's limit, bytes")
    parser.add_argument(
        "--retire-rss", type=int, required=True, help="exit after a render that leaves more resident"
    )
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    connection = socket.socket(fileno=args.fd)
    send_frame(connection, READY)
    while True:
        try:
            frame = receive_frame(connection, MAX_JOB_BYTES)
        except (EOFError, OSError):
            return 0
        timeout_s, deadline, max_chars = LIMITS.unpack_from(frame)
        job = pickle.loads(memoryview(frame)[LIMITS.size :])  # from the parent: trusted
        with _cpu_limited(timeout_s):
            kind, payload = _render(job, timeout_s, deadline, max_chars)
        if kind != REPLY_TEXT and len(payload) > MAX_MESSAGE_BYTES // 4:  # a message: its start says it
            payload = payload[: MAX_MESSAGE_BYTES // 4 - 1] + "…"
        retire = _rss_bytes() > args.retire_rss
        # A prompt has no lone surrogate (run_render_job); an error's message may quote one.
        reply = kind + (b"1" if retire else b"0") + without_lone_surrogates(payload).encode()
        try:
            send_frame(connection, reply)
        except OSError:
            return 0
        if retire:
            return 0


@contextlib.contextmanager
def _cpu_limited(timeout_s: float) -> Iterator[None]:
    """The CPU this process may have used by the end of a render: its time, the grace and a second
    to spare (RLIMIT_CPU counts whole seconds); past it the kernel ends the process."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    allowed = math.ceil(used.ru_utime + used.ru_stime + timeout_s + KILL_GRACE_S) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (allowed, resource.RLIM_INFINITY))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _render(job: RenderJob, timeout_s: float, deadline: float, max_chars: int) -> tuple[bytes, str]:
    """The render's reply. `timeout_s`: its time in all, which messages name; `deadline`: when
    that time is up (some of it may have gone to the prompt's earlier renders); `max_chars`: what
    it may write."""
    budget = render_timeout.set(timeout_s)
    shared = prompt_deadline.set(deadline)
    most = render_max_chars.set(max_chars)
    try:
        return REPLY_TEXT, run_render_job(job)
    except RenderTimedOut as exc:
        return REPLY_TIMED_OUT, str(exc)
    except RenderTooLong as exc:
        return REPLY_TOO_LONG, str(exc)
    except TemplateError as exc:
        return REPLY_ERROR, str(exc)
    except MemoryError:  # outside the engines' own mapping (building the values, say)
        return REPLY_ERROR, "the template needs more memory than a render may take"
    except Exception:  # a bug: its traceback goes to the parent, which raises it
        return REPLY_BUG, traceback.format_exc()
    finally:
        render_max_chars.reset(most)
        prompt_deadline.reset(shared)
        render_timeout.reset(budget)


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


if __name__ == "__main__":
    raise SystemExit(main())
