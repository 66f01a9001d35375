"""The parent ⇄ runner protocol: one JSON object per line over a Unix socket pair.

Parent → runner (`op`):
    load        {weights, adapters: [[path, scale]], options: LoadOptions, repack}   (first message)
    complete    {id, prompt, options: SamplingOptions, format, truncate, shift}
    embed       {id, inputs: [str], truncate}
    tokenize    {id, text, add_special}
    detokenize  {id, tokens}
    cancel      {id}
    stats       {id}
    shutdown    {}

Runner → parent (`event`):
    progress    {fraction}                                      while loading
    loaded      {info: RunnerInfo}                              ready to serve
    load_failed {message}                                       then the runner exits
    token       {id, text, logprobs?}                           streamed output (logprobs when asked)
    done        {id, done_reason, prompt_eval_count, prompt_cached, prompt_shared,
                 prompt_eval_duration, eval_count, eval_duration, truncated, context_shifts,
                 draft_tokens, draft_accepted}
                                                                durations in nanoseconds
    result      {id, …}                                         embed / tokenize / detokenize / stats
    error       {id, message, kind: "request" | "too_long" | "internal"}   too_long: the prompt
                                                                does not fit and may not be cut

Requests carry the prompt as text, already rendered through the template by the caller, so the
runner knows nothing of templates; it tokenizes with the model's own vocabulary.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from modelyard.runtime.options import LoadOptions, SamplingOptions


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    options: SamplingOptions = field(default_factory=SamplingOptions)
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema
    truncate: bool = True  # a prompt longer than the context: keep num_keep + the end (else an error)
    shift: bool = True  # a full context during generation: drop old tokens (else stop with "length")
    top_logprobs: int = 0  # > 0: token events carry the chosen and the top candidates' log-probs
    # The prompt as token ids, used as they are (no BOS added, no special-token parsing); `prompt`
    # is then only for messages. Empty: tokenize `prompt`.
    tokens: tuple[int, ...] = ()
    # Send the prompt back first, as a token event marked "prompt" (its text piece by piece, as
    # runtime/echo.py shows it); with top_logprobs, with every prompt token's log-probability
    # after the tokens before it (the first has none), as OpenAI's legacy `echo` does.
    echo: bool = False
    # (token id, bias) pairs added to those tokens' logits before sampling (OpenAI's logit_bias).
    logit_bias: tuple[tuple[int, float], ...] = ()

    def to_message(self, request_id: int) -> dict[str, Any]:
        return {
            "op": "complete",
            "id": request_id,
            "prompt": self.prompt,
            "options": asdict(self.options),
            "format": self.format,
            "truncate": self.truncate,
            "shift": self.shift,
            "top_logprobs": self.top_logprobs,
            "tokens": list(self.tokens),
            "echo": self.echo,
            "logit_bias": [list(pair) for pair in self.logit_bias],
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> CompletionRequest:
        options = dict(message.get("options") or {})
        options["stop"] = tuple(options.get("stop") or ())
        return cls(
            prompt=str(message["prompt"]),
            options=SamplingOptions(**options),
            format=message.get("format"),
            truncate=bool(message.get("truncate", True)),
            shift=bool(message.get("shift", True)),
            top_logprobs=int(message.get("top_logprobs") or 0),
            tokens=tuple(int(t) for t in message.get("tokens") or ()),
            echo=bool(message.get("echo", False)),
            logit_bias=tuple((int(t), float(b)) for t, b in message.get("logit_bias") or ()),
        )


@dataclass(frozen=True)
class RunnerInfo:
    """What a loaded runner reports about itself."""

    pid: int
    n_ctx: int  # tokens of KV cache in all
    n_ctx_per_slot: int
    slots: int
    n_ctx_train: int
    n_embd: int
    weights_bytes: int  # as llama.cpp allocated them (mmapped on CPU)
    kv_bytes: int
    compute_bytes: int
    output_bytes: int
    device_bytes: int  # the part of the above on GPUs
    load_seconds: float
    repack: bool
    threads: int = 0  # llama.cpp's CPU threads (LoadOptions.threads)
    bos: str = ""
    eos: str = ""
    adapters: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.output_bytes


@dataclass(frozen=True)
class Done:
    done_reason: str  # "stop" | "length" | "cancel"
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    truncated: int = 0  # prompt tokens dropped to fit the context
    context_shifts: int = 0  # times old tokens were dropped during generation
    prompt_cached: int = 0  # of prompt_eval_count, tokens whose KV the slot kept from its last request
    prompt_shared: int = 0  # of prompt_cached, tokens whose KV was copied from a busy slot
    draft_tokens: int = 0  # tokens guessed ahead by prompt lookup (runtime/drafting.py)
    draft_accepted: int = 0  # of those, the ones sampling agreed with


def load_message(
    weights: str, adapters: list[tuple[str, float]], options: LoadOptions, repack: bool
) -> dict[str, Any]:
    return {
        "op": "load",
        "weights": weights,
        "adapters": adapters,
        "options": asdict(options),
        "repack": repack,
    }


class Channel:
    """JSON lines over a connected socket; writes from several threads are serialised.

    `never_block`: a write never waits for the other side to read. The parent's writes come from
    the server's event loop, and a runner that stops reading (stopped, or stuck in a long C call)
    would fill the socket's buffer, and a blocking write then freezes the whole server, every
    model's requests and /health with it. What the buffer cannot take at once waits in a backlog
    that a thread of its own writes out, in order."""

    def __init__(self, sock: socket.socket, *, never_block: bool = False) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=1 << 16)
        self._write_lock = threading.Lock()
        self._backlog: collections.deque[bytes] | None = collections.deque() if never_block else None
        self._more = threading.Condition(self._write_lock)
        self._writer: threading.Thread | None = None
        self._closed = False

    def send(self, message: dict[str, Any]) -> None:
        self.send_all([message])

    def send_all(self, messages: list[dict[str, Any]]) -> None:
        """Several messages in one write: the other side wakes once for them all."""
        data = b"".join(
            json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for m in messages
        )
        with self._write_lock:
            if self._backlog is None:
                self.sock.sendall(data)
                return
            if self._closed:
                raise BrokenPipeError("the channel is closed")
            if not self._backlog:  # nothing waiting before it: as much as the buffer takes now
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            self._backlog.append(data)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_backlog, name="backlog", daemon=True)
                self._writer.start()
            self._more.notify()

    def _write_backlog(self) -> None:
        assert self._backlog is not None
        while True:
            with self._write_lock:
                while not self._backlog and not self._closed:
                    self._more.wait()
                if self._closed:
                    return
                data = self._backlog[0]  # stays first until written: later writes queue behind it
            try:
                self.sock.sendall(data)
            except OSError:
                return  # the other side is gone: its reader sees the end and fails the requests
            with self._write_lock:
                self._backlog.popleft()

    def backlog_bytes(self) -> int:
        """Bytes written but not yet taken by the other side's socket buffer."""
        with self._write_lock:
            return sum(map(len, self._backlog or ()))

    def batch(self) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
        """(send, flush): `send` keeps messages until `flush` writes them together (one thread)."""
        held: list[dict[str, Any]] = []

        def flush() -> None:
            if held:
                self.send_all(held)
                held.clear()

        return held.append, flush

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the other side has gone."""
        line = self._reader.readline()
        if not line:
            return None
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("protocol message is not an object")
        return value

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            self._more.notify_all()
        try:
            self._reader.close()
        finally:
            self.sock.close()
