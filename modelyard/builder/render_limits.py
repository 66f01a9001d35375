"""What one template render may spend: wall-clock time and characters of output.

A template comes from an image (its TEMPLATE layer, its GGUF's chat template) or from a request
(Ollama's `template` field), that is from strangers; both engines run it in a sandbox that keeps
it from Python's internals, and under this budget, which keeps it from the machine's time and
memory: a `range` over ten billion, nested loops, a value padded to gigabytes. Legitimate chat
templates render in milliseconds; a render over budget fails with a TemplateError.

Both engines count loop iterations (`step`) and the characters they emit (`wrote`); the clock is
read every STEPS_PER_CLOCK_READ steps, so that counting costs next to nothing.
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
MAX_RENDERED_CHARS: Final = 32 * 1024 * 1024  # far past any context window's worth of text
# One value a template builds at once (a padded string, a join, a captured block): refused before
# it is built when larger. As large as a whole render may be, so that no template that renders a
# long context (a join of every message) is refused.
MAX_BUILT_CHARS: Final = MAX_RENDERED_CHARS
STEPS_PER_CLOCK_READ: Final = 256


class RenderTimedOut(TemplateError):
    """A render that spent its time budget."""


class RenderBudget:
    def __init__(self, timeout_s: float | None = None, max_chars: int = MAX_RENDERED_CHARS) -> None:
        timeout_s = render_timeout.get() if timeout_s is None else timeout_s
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.max_chars = max_chars
        self.chars = 0
        self._steps = 0

    def step(self) -> None:
        """One more loop iteration (or other unit of work): fails once the time is spent."""
        self._steps += 1
        if self._steps % STEPS_PER_CLOCK_READ == 0 and time.monotonic() > self.deadline:
            raise RenderTimedOut(f"the template took longer than {self.timeout_s:g} s to render")

    def wrote(self, chars: int) -> None:
        self.chars += chars
        if self.chars > self.max_chars:
            raise TemplateError(f"the template renders more than {self.max_chars:,} characters")
        self.step()


# The budget of the render in progress in this thread or task (the Jinja engine's loops read it).
current_budget: ContextVar[RenderBudget | None] = ContextVar("current_budget", default=None)
# The time a new budget gets where its caller does not say: ON_LOOP_TIMEOUT_S on the event loop.
render_timeout: ContextVar[float] = ContextVar("render_timeout", default=RENDER_TIMEOUT_S)


def check_built(chars: int, what: str = "a value") -> None:
    """Refuse, before building it, a single value larger than MAX_BUILT_CHARS."""
    if chars > MAX_BUILT_CHARS:
        raise TemplateError(f"the template builds {what} too large to render ({chars:,} characters)")
