"""What one template render may spend: wall-clock time and characters of output.

A template comes from an image (its TEMPLATE layer, its GGUF's chat template) or from a request
(Ollama's `template` field), that is from strangers; both engines run it in a sandbox that keeps
it from Python's internals, and under this budget, which keeps it from the machine's time and
memory: a `range` over ten billion, nested loops, a value padded to gigabytes. Legitimate chat
templates render in milliseconds; a render over budget fails with a TemplateError.

Both engines count loop iterations (`step`, which reads the clock) and the characters they emit
(`wrote`). What that cannot bound: memory held by several values at once, each under the limit,
and the work of one Python call on a large value (`|wordwrap` on 8 Mi characters: seconds). The
server therefore renders in worker processes (runtime/template_workers.py) whose address space is
limited to MAX_RENDER_MEMORY_BYTES and which are killed KILL_GRACE_S past their render's time.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Final

from modelyard.errors import TemplateError

RENDER_TIMEOUT_S: Final = 2.0
# On the server's event loop, where a render holds up every other request: a legitimate template
# takes under a millisecond; one that takes longer is rendered again in a thread, under the full
# budget (server/inference.py).
ON_LOOP_TIMEOUT_S: Final = 0.1
MAX_RENDERED_CHARS: Final = 16 * 1024 * 1024  # millions of tokens: past any context window
MAX_TEMPLATE_CHARS: Final = 256 * 1024  # a template's own text (GGUF chat templates: tens of KiB)
MAX_NESTING: Final = 100  # of a value a template keeps (a namespace's): deeper, CPython's hash of
# a tuple recurses in C without a guard and the process dies
# One value a template builds at once (a padded string, a join, a captured block): refused before
# it is built when larger, where it can be sized. Enough for a long context joined whole.
MAX_BUILT_CHARS: Final = 8 * 1024 * 1024
# A template worker process's address space, the interpreter's (about 35 MiB) included: a prompt at
# the largest (16 Mi characters, 4 bytes each at worst) and the request it came from fit many times.
MAX_RENDER_MEMORY_BYTES: Final = 1024 * 1024 * 1024
# How long past its render's time a worker may take to answer before it is killed: one step of a
# render can be one long Python call, which no clock check interrupts.
KILL_GRACE_S: Final = 0.1


class RenderTimedOut(TemplateError):
    """A render that spent its time budget."""


class RenderTooLong(TemplateError):
    """A render that wrote more than it may: for a chat cut to fit, a prompt that does not fit."""


class RenderBudget:
    def __init__(self, timeout_s: float | None = None, max_chars: int | None = None) -> None:
        timeout_s = render_timeout.get() if timeout_s is None else timeout_s
        max_chars = render_max_chars.get() if max_chars is None else max_chars
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        shared = prompt_deadline.get()
        if shared is not None:  # one of several renders of one prompt: theirs is the time it has
            self.deadline = min(self.deadline, shared)
        self.max_chars = max_chars
        self.chars = 0

    def step(self) -> None:
        """One more loop iteration (or other unit of work): fails once the time is spent. The clock
        is read at every step (tens of nanoseconds): one step can be a heavy one."""
        if time.monotonic() > self.deadline:
            raise RenderTimedOut(f"the template took longer than {self.timeout_s:g} s to render")

    def wrote(self, chars: int) -> None:
        self.chars += chars
        if self.chars > self.max_chars:
            raise RenderTooLong(f"the template renders more than {self.max_chars:,} characters")
        self.step()


# The budget of the render in progress in this thread or task (the Jinja engine's loops read it).
current_budget: ContextVar[RenderBudget | None] = ContextVar("current_budget", default=None)
# The time a new budget gets where its caller does not say: ON_LOOP_TIMEOUT_S on the event loop.
render_timeout: ContextVar[float] = ContextVar("render_timeout", default=RENDER_TIMEOUT_S)
# The characters a render may write where its caller does not say: MAX_RENDERED_CHARS, or less for a
# prompt whose request is short (runtime/prompting.py: a template that makes a short request into
# megabytes costs the server their tokenizing and sending, a hundred times the render's own time).
render_max_chars: ContextVar[int] = ContextVar("render_max_chars", default=MAX_RENDERED_CHARS)
# The deadline of the prompt being made, which its renders share (a chat cut to fit its context
# renders it a dozen times): set by builder.prompt.render_prompt.
prompt_deadline: ContextVar[float | None] = ContextVar("prompt_deadline", default=None)


def check_built(chars: int, what: str = "a value") -> None:
    """Refuse, before building it, a single value larger than MAX_BUILT_CHARS."""
    if chars > MAX_BUILT_CHARS:
        raise TemplateError(f"the template builds {what} too large to render ({chars:,} characters)")


def check_template_size(text: str) -> None:
    """Refuse, before parsing it, a template longer than MAX_TEMPLATE_CHARS: parsing and compiling
    take no budget, and cost some fifty times the text in memory."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"the template is {len(text):,} characters long; at most {MAX_TEMPLATE_CHARS:,} are taken"
        )


def check_nesting(value: object) -> None:
    """Refuse a value nested deeper than MAX_NESTING (tuples, lists, dicts), looking at a hundred
    thousand of its parts at most."""
    if nesting_depth(value, 100_000) > MAX_NESTING:
        raise TemplateError(f"the template keeps a value nested more than {MAX_NESTING} deep")


def nesting_depth(value: object, most_parts: int | None = None) -> int:
    """How deep the deepest part of `value` sits in its tuples, lists and dicts (the value itself
    at 0; a dict's values, not its keys), walked without recursion, over `most_parts` at most."""
    deepest, stack, seen = 0, [(value, 0)], 0
    while stack and (most_parts is None or seen < most_parts):
        item, depth = stack.pop()
        seen += 1
        deepest = max(deepest, depth)
        if isinstance(item, tuple | list):
            stack.extend((part, depth + 1) for part in item)
        elif isinstance(item, dict):
            stack.extend((part, depth + 1) for part in item.values())
    return deepest
