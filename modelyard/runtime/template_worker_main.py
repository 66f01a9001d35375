"""A template worker process: `python -m modelyard.runtime.template_worker_main --fd N --memory B`.

Renders the RenderJobs its parent sends on the inherited socket, one at a time, in an address
space limited to B bytes, and answers each with a reply (runtime/template_workers.py: REPLY_*).
It exits at the end of its socket (its parent closed it, or went away), and after a render that
left it holding more than `--retire-rss` bytes (a fresh process gives them back).
"""

from __future__ import annotations

import argparse
import pickle
import resource
import time
import traceback
from multiprocessing.connection import Connection

from modelyard.builder.prompt import RenderJob, run_render_job
from modelyard.builder.render_limits import RenderTimedOut, prompt_deadline, render_timeout
from modelyard.errors import TemplateError
from modelyard.runtime.template_workers import (
    READY,
    REPLY_BUG,
    REPLY_ERROR,
    REPLY_TEXT,
    REPLY_TIMED_OUT,
    encode_reply,
)


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
    connection = Connection(args.fd)
    connection.send_bytes(READY)
    while True:
        try:
            job, timeout_s, left_s = pickle.loads(connection.recv_bytes())  # from the parent: trusted
        except EOFError:
            return 0
        kind, payload = _render(job, timeout_s, time.monotonic() + left_s)
        retire = _rss_bytes() > args.retire_rss
        connection.send_bytes(encode_reply(kind, payload, retire=retire))
        if retire:
            return 0


def _render(job: RenderJob, timeout_s: float, deadline: float) -> tuple[bytes, str]:
    """The render's reply. `timeout_s`: its time in all, which messages name; `deadline`: when
    that time is up (some of it may have gone to the prompt's earlier renders)."""
    budget = render_timeout.set(timeout_s)
    shared = prompt_deadline.set(deadline)
    try:
        return REPLY_TEXT, run_render_job(job)
    except RenderTimedOut as exc:
        return REPLY_TIMED_OUT, str(exc)
    except TemplateError as exc:
        return REPLY_ERROR, str(exc)
    except MemoryError:  # outside the engines' own mapping (building the values, say)
        return REPLY_ERROR, "the template needs more memory than a render may take"
    except Exception:  # a bug: its traceback goes to the parent, which raises it
        return REPLY_BUG, traceback.format_exc()
    finally:
        prompt_deadline.reset(shared)
        render_timeout.reset(budget)


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


if __name__ == "__main__":
    raise SystemExit(main())
