"""The one path every generation and embedding takes, whichever API it came through.

    name → image in the store → lease from the scheduler (loading if needed) → prompt rendered
    through the image's template → runner → events streamed back to the route

The lease is released, and an unfinished request cancelled in the runner (its slot freed at the
next step), however the route's generator ends: done, error, or the client gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol

from modelyard.builder.prompt import PromptRequest, Render, ToolCall, run_render_job
from modelyard.builder.render_limits import ON_LOOP_TIMEOUT_S, RenderTimedOut, render_timeout
from modelyard.errors import ImageNotFoundError, InferenceRequestError, ServerBusyError
from modelyard.reference import Reference, parse_reference
from modelyard.runtime.keepalive import parse_keep_alive
from modelyard.runtime.options import (
    LOAD_OPTION_NAMES,
    RequestOptions,
    merge_options,
    parse_request_options,
)
from modelyard.runtime.prompting import RunnerNeeded, prepare
from modelyard.runtime.protocol import Done
from modelyard.runtime.runner import Failure, RequestHandle, Runner, Token, reply_result
from modelyard.runtime.scheduler import Lease, ModelRequest, Scheduler
from modelyard.runtime.servable import Servable, load_servable
from modelyard.runtime.template_workers import NoIdleWorker, TemplateWorkers
from modelyard.server.http_errors import STATUS_CLIENT_GONE, HTTPError
from modelyard.server.metrics import Metrics
from modelyard.server.tool_calls import ToolCallParser
from modelyard.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """The last event of a generation: the runner's counts plus what the server measured (ns)."""

    done: Done
    load_duration: int
    total_duration: int
    dropped_messages: int
    tool_calls: tuple[ToolCall, ...] = ()  # found in the output by with_tool_calls
    context: tuple[int, ...] | None = None  # the prompt's and the answer's tokens, when asked for

    @property
    def done_reason(self) -> str:
        return self.done.done_reason


GenerationEvent = Token | Finished


class SpecTargets(Protocol):
    """The reconciler's view of the names its spec serves (spec.daemon.SpecDaemon)."""

    def serves(self, name: str) -> bool: ...

    def unavailable(self, name: str) -> str | None: ...

    def request_for(self, name: str) -> ModelRequest | None: ...

    def servable_for(self, name: str) -> Servable | None: ...


# Retry-After for a model of the spec that cannot be served yet: about a reconcile pass.
SPEC_RETRY_AFTER_S = 10.0
# How long an unload (keep_alive 0 and no prompt) waits to answer: an idle model goes within it,
# and a busy one goes once its requests end, after the answer.
UNLOAD_ANSWER_WAIT_S = 1.0

# The image the current request resolved to (its metrics label when it fails after that point).
# Set only for names found in the store, so that typos and fuzzers cannot grow the label set.
served_model: contextvars.ContextVar[str] = contextvars.ContextVar("served_model", default="")


# Numbers one embeddings answer may hold (inputs × the model's width): some 250 MB of Python floats
# on their way through the runner's channel, the server and the JSON, for 13,107 inputs of a
# 640-wide model or 2,048 (OpenAI's limit on inputs) of a 4,096-wide one. A 16 MiB body of
# one-character inputs would otherwise ask for billions.
MAX_EMBEDDING_NUMBERS: Final = 8 * 1024 * 1024

RENDER_THREADS: Final = 8  # prompts rendered or counted off the loop at once (see Inference.__init__)

# Tokens of one generation waiting for its client to read them. They queue only once the socket's
# buffers are full, and each holds memory until read. Past MAX_UNREAD_TOKENS, a client that has
# taken nothing for STALL_S (a suspended laptop, a paused consumer) has its generation cancelled, so
# its slot goes to the others; one that still reads, only slower than the runner makes tokens (a
# slow link), goes on until MAX_UNREAD_TOKENS_READING, a bound on the memory (a few tens of MB),
# which an endless generation (num_predict -1) would otherwise pass. The client, reading on, gets
# what was made and then this error.
MAX_UNREAD_TOKENS: Final = 16_384
MAX_UNREAD_TOKENS_READING: Final = 262_144
STALL_S: Final = 10.0
STALLED: Final = (
    "{unread:,} tokens were waiting for the client to read them: the generation was cancelled "
    "(read the stream as it comes, or ask for fewer tokens)"
)


def stalled(unread: int, since_read_s: float, *, with_logprobs: bool = False) -> bool:
    """Whether a generation whose client has `unread` tokens waiting, and took its last one
    `since_read_s` ago, is to be cancelled (see MAX_UNREAD_TOKENS). With log-probabilities a token
    holds kilobytes (top 20: some 9 KB), so a slow reader gets no more room than a stalled one."""
    if unread >= (MAX_UNREAD_TOKENS if with_logprobs else MAX_UNREAD_TOKENS_READING):
        return True
    return unread >= MAX_UNREAD_TOKENS and since_read_s >= STALL_S


@dataclass(frozen=True)
class _Stalled:
    """The event that ends a generation whose client stopped reading (see MAX_UNREAD_TOKENS)."""

    unread: int


# A generation's events, from the runner's reader thread to the request's generator.
GenerationEvents = asyncio.Queue[Token | Done | Failure | _Stalled]


class Inference:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        metrics: Metrics,
        default_keep_alive: float,
        spec_targets: SpecTargets | None = None,
        templates: TemplateWorkers | None = None,
    ) -> None:
        """`templates`: the worker processes that render prompts (None: in this process)."""
        self.store = store
        # On the loop, a worker free now (else a thread's turn); in a thread, waiting for one.
        self._render_now: Render = templates.render_now if templates else run_render_job
        self._render_waiting: Render = templates.render if templates else run_render_job
        self.scheduler = scheduler
        self.metrics = metrics
        self.default_keep_alive = default_keep_alive
        self.spec_targets = spec_targets
        self._servables: dict[str, Servable] = {}
        self._post: LoopPost | None = None
        self._generating: set[GenerationEvents] = set()  # each generation's events
        self._embedding: set[asyncio.Future[Any]] = set()  # each embeddings request's reply to come
        self._awaiting_model: set[asyncio.Task[Any]] = set()  # requests inside scheduler.acquire
        self._stopped_retry_after: float | None = None  # set by stop_generations
        self._stopped_waits: set[asyncio.Task[Any]] = set()  # the waits stop_generations cancelled
        self._unknown_options_logged: set[str] = set()
        self._unloads: set[asyncio.Task[bool]] = set()  # unloads answered before they ended
        # Prompts that cannot be made on the loop wait here, on threads of their own: slow templates
        # queue behind one another, not in front of every asyncio.to_thread of the server.
        self._render_threads = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")

    def _poster(self, loop: asyncio.AbstractEventLoop) -> LoopPost:
        """The one LoopPost of the loop that serves (one per loop, should tests run several)."""
        if self._post is None or self._post.loop is not loop:
            self._post = LoopPost(loop)
        return self._post

    def stop_generations(self, retry_after: float) -> int:
        """End every generation (and embeddings request) still running with an error that says the
        server is stopping (an error line in a stream, a 503 otherwise): at the end of a graceful
        shutdown, a client learns that its answer was cut short instead of seeing the connection
        drop (an embeddings request's was a plain-text 500: a review). Returns how many there were."""
        error = ServerBusyError(
            "the server is shutting down: this answer was cut short", retry_after, reason="stopping"
        )
        # A request still waiting for its model (a load, another's drain) would start generating
        # just before the cut: it gets its answer, a 503, now.
        self._stopped_retry_after = retry_after
        for events in self._generating:
            events.put_nowait(Failure(error))
        for reply in self._embedding:
            if not reply.done():
                reply.set_result(Failure(error))
        for task in self._awaiting_model:
            task.cancel()
        self._stopped_waits = set(self._awaiting_model)
        return len(self._generating) + len(self._embedding) + len(self._awaiting_model)

    def request_options(self, servable: Servable, options: Mapping[str, Any] | None) -> RequestOptions:
        """A request's options over the image's parameters. Unknown names are skipped, as Ollama
        does, and logged once each (a client that sends one with every request would fill the log), for
        the first 256 names."""
        parsed = parse_request_options(merge_options(servable.params, options), ignore_unknown=True)
        for message in parsed.unknown:
            if message not in self._unknown_options_logged and len(self._unknown_options_logged) < 256:
                self._unknown_options_logged.add(message)  # bounded: a fuzzer's names stop here
                log.warning("ignored %s in a request's options (logged once)", message)
        return parsed

    # --- models ---------------------------------------------------------------------------

    def reference(self, name: str) -> Reference:
        if not isinstance(name, str) or not name.strip():
            raise InferenceRequestError("model is required")
        return parse_reference(name)

    async def servable(self, name: str) -> Servable:
        """The image a name means now: a name the spec serves resolves to the spec's image at the
        digest the reconciler is on; any other name to the store's tag (tags move: resolved on every
        request, GGUF facts cached)."""
        # Asking whether the spec serves a name is a lookup, made here: a hop to a thread and back
        # on every request costs more. Its image is read from the store, in a thread.
        if self.spec_targets is not None and self.spec_targets.serves(name):
            servable = await asyncio.to_thread(self.spec_targets.servable_for, name)
            if servable is not None:  # None: the spec dropped the name meanwhile
                served_model.set(servable.name)
                return servable
        if self.spec_targets is not None and (why := self.spec_targets.unavailable(name)) is not None:
            # The spec's name, not servable now: never another image of that name in the store.
            raise ServerBusyError(why, retry_after=SPEC_RETRY_AFTER_S)
        ref = self.reference(name)
        # On the loop when the index is as last parsed (one read of a small file, tens of µs): a
        # hop to a worker thread and back costs more, on every request. Parsing one that changed
        # takes milliseconds in a large store, and goes to a thread.
        index = self.store.parsed_index()
        if index is not None:
            record_digest = self.store.resolve(ref, index).digest
        else:
            record_digest = await asyncio.to_thread(lambda: self.store.resolve(ref).digest)
        cached = self._servables.get(str(ref))
        if cached is not None and cached.digest == record_digest:
            servable = cached
        else:
            servable = await asyncio.to_thread(load_servable, self.store, ref)
            self._servables[str(ref)] = servable
        served_model.set(servable.name)
        return servable

    def keep_alive(self, value: object) -> float | None:
        return None if value is None else parse_keep_alive(value)

    def model_keep_alive(self, servable: Servable, requested: object) -> float | None:
        """The request's keep_alive, else the image's `PARAMETER keep_alive`, else None (the
        model keeps what it has; a new load gets the server's default)."""
        if requested is not None:
            return parse_keep_alive(requested)
        image_value = servable.params.get("keep_alive")
        return None if image_value is None else parse_keep_alive(image_value, allow_bare_seconds=True)

    async def acquire(
        self, servable: Servable, options: Mapping[str, Any] | None, keep_alive: object
    ) -> tuple[Lease, int]:
        """A lease on the loaded model; the nanoseconds spent waiting for the load. A model the spec
        serves loads as the spec says (its options, keepAlive, pinned): a request cannot reload it
        with other options, or the reconciler and the requests would take turns undoing each other."""
        spec_request = None
        if servable.alias and self.spec_targets is not None:
            spec_request = await asyncio.to_thread(self.spec_targets.request_for, servable.alias)
        if spec_request is not None:
            request = spec_request
        else:
            load_options = {k: v for k, v in (options or {}).items() if k in LOAD_OPTION_NAMES}
            request = servable.request(
                options=load_options, keep_alive=self.model_keep_alive(servable, keep_alive)
            )
        started = time.perf_counter_ns()
        lease = await self._acquire(request)
        return lease, time.perf_counter_ns() - started

    async def _acquire(self, request: ModelRequest) -> Lease:
        """The scheduler's lease, unless the server stops first (stop_generations)."""
        if self._stopped_retry_after is not None:
            raise self._not_ready(self._stopped_retry_after)
        task = asyncio.current_task()
        if task is None:  # not in a task (never under uvicorn): nothing stop_generations could cancel
            return await self.scheduler.acquire(request)
        self._awaiting_model.add(task)
        try:
            return await self.scheduler.acquire(request)
        except asyncio.CancelledError:
            if self._stopped_retry_after is None or task not in self._stopped_waits:
                raise  # the client left, or uvicorn's cut
            task.uncancel()
            raise self._not_ready(self._stopped_retry_after) from None
        finally:
            self._awaiting_model.discard(task)

    @staticmethod
    def _not_ready(retry_after: float) -> ServerBusyError:
        return ServerBusyError(
            "the server is shutting down: this request's model was not ready in time",
            retry_after,
            reason="stopping",
        )

    async def load_only(self, name: str, keep_alive: object, options: Mapping[str, Any] | None = None) -> str:
        """Ollama's empty prompt: load (or, with keep_alive 0, unload). Returns the done_reason.
        The request's load options apply, as Ollama's do: a preload with num_ctx 8192 loads that
        context, and the requests that follow with the same options find it. A model removed from
        the store while loaded (`modelyard rm` beside a running server) can still be unloaded by
        its name."""
        unloading = keep_alive is not None and self.keep_alive(keep_alive) == 0
        try:
            servable = await self.servable(name)
        except ImageNotFoundError:
            short = self.reference(name).short()
            if unloading and self.scheduler.holds(short):  # a failed load too, which ps lists
                await self.unload(short)
                return "unload"
            raise
        if unloading:
            await self.unload(servable.name)
            return "unload"
        self.request_options(servable, options)  # wrong types are a 400 here too
        lease, _ = await self.acquire(servable, options, keep_alive)
        lease.release()
        return "load"

    async def unload(self, name: str) -> None:
        """Unload `name` once its requests end, answering when it is gone or after
        UNLOAD_ANSWER_WAIT_S, whichever is first: as Ollama, the answer does not wait for the
        requests it serves (a stream without end held `modelyard stop` for ever). Nobody joins it
        meanwhile; it goes when they end."""
        unloading = asyncio.ensure_future(self.scheduler.unload(name))
        self._unloads.add(unloading)
        unloading.add_done_callback(self._unloads.discard)
        await asyncio.wait({unloading}, timeout=UNLOAD_ANSWER_WAIT_S)
        if unloading.done():
            unloading.result()  # its error, if any, is the request's
        else:
            unloading.add_done_callback(_log_unload_failure)  # after the answer, only the log can say

    # --- generation -----------------------------------------------------------------------

    async def generate(
        self,
        servable: Servable,
        request: PromptRequest,
        options: Mapping[str, Any] | None,
        *,
        format: str | dict[str, Any] | None = None,
        keep_alive: object = None,
        truncate: bool = True,
        shift: bool = True,
        top_logprobs: int = 0,
        with_context: bool = False,
        tokens: Sequence[int] = (),
        echo: bool = False,
        logit_bias: Sequence[tuple[int, float]] = (),
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the tokens of one generation, then a Finished event. `top_logprobs` > 0: each
        Token carries its tokens' log-probabilities (see server/logprobs.py). `with_context`: the
        Finished event carries the tokens of the prompt and the answer (Ollama's deprecated
        `context`, which a later generate request may send back). `tokens`: the prompt as token
        ids (`request` raw and empty). `echo`: a Token marked `prompt` comes first, the prompt's
        text (and with `top_logprobs`, every prompt token's log-probability). `logit_bias`: (token,
        bias) pairs added to those tokens' logits."""
        started = time.perf_counter_ns()
        sampling = self.request_options(servable, options).sampling
        if request.images or any(m.images for m in request.messages):
            raise InferenceRequestError(f"{servable.name} is a text model: it cannot take images")
        lease, load_ns = await self.acquire(servable, options, keep_alive)
        runner = lease.runner
        loop = asyncio.get_running_loop()
        events: GenerationEvents = asyncio.Queue()
        handle = None
        finished = False
        sent = 0  # tokens handed on, for the count of one that ends before its Done
        self._generating.add(events)
        try:
            prepare_request = functools.partial(
                prepare,
                runner,
                servable.prompting,
                request,
                sampling,
                format=format,
                truncate=truncate,
                shift=shift,
                top_logprobs=top_logprobs,
                tokens=tokens,
                echo=echo,
                logit_bias=logit_bias,
            )
            rendered = None
            on_loop = render_timeout.set(ON_LOOP_TIMEOUT_S)
            try:
                # On the loop: a render takes a fraction of a millisecond (the loop waits for a
                # worker process's answer), less than the hop to a thread and back.
                rendered = prepare_request(ask_runner=False, render=self._render_now)
            except (RunnerNeeded, RenderTimedOut, NoIdleWorker):
                # A long prompt to count or a context to detokenize (a round trip to the runner), a
                # template slow to render, which holds up the loop no longer, or every worker busy:
                # in a thread.
                pass
            finally:
                render_timeout.reset(on_loop)  # before the thread, which takes a copy of the context
            if rendered is None:  # under the full budget, waiting for a worker if need be
                run = contextvars.copy_context().run
                in_context = functools.partial(run, prepare_request, render=self._render_waiting)
                rendered = await loop.run_in_executor(self._render_threads, in_context)

            post = self._poster(loop)
            submitted: list[RequestHandle] = []  # the handle, for the reader thread to cancel with

            read_at = [time.monotonic()]  # when the request's generator last took an event

            def deliver(event: Token | Done | Failure) -> None:  # on the runner's reader thread
                unread = events.qsize()
                if (
                    isinstance(event, Token)
                    and unread >= MAX_UNREAD_TOKENS
                    and stalled(unread, time.monotonic() - read_at[0], with_logprobs=top_logprobs > 0)
                ):
                    # The client reads nothing (its connection open, its window shut): the tokens
                    # would pile up here for as long as the runner makes them. Cancelled once.
                    if submitted:
                        submitted.pop().cancel()
                        loop.call_soon_threadsafe(lease.release)  # its slot is free now, not when read
                        post(events, _Stalled(unread))
                    return
                post(events, event)

            handle = runner.submit(rendered.completion, deliver)
            submitted.append(handle)
            # The histograms' children for this model, looked up once: per token, the lookup (its
            # label tuple, a lock) cost more than the observation.
            per_token = self.metrics.time_per_token.labels(servable.name)
            last = 0
            answer: list[str] = []  # kept only for the context
            while True:
                event = await events.get()
                read_at[0] = time.monotonic()  # the client took the events before this one
                if isinstance(event, Failure):
                    raise event.error
                if isinstance(event, _Stalled):
                    raise HTTPError(STATUS_CLIENT_GONE, STALLED.format(unread=event.unread))
                now = time.perf_counter_ns()
                if isinstance(event, Token) and event.prompt:
                    yield event  # the prompt sent back: not an answer token, for the timings
                    continue
                if isinstance(event, Token):
                    if last == 0:
                        self.metrics.time_to_first_token.labels(servable.name).observe((now - started) / 1e9)
                    else:
                        per_token.observe((now - last) / 1e9)
                    last = now
                    sent += len(event.logprobs) or 1  # an event holds more than one only with them
                    if with_context:
                        answer.append(event.text)
                    yield event
                    continue
                context = None
                if with_context:
                    text = rendered.completion.prompt + "".join(answer)
                    context = tuple(await asyncio.to_thread(runner.tokenize, text))
                finished = True
                evaluated = event.prompt_eval_count - event.prompt_cached
                self.metrics.prompt_tokens.labels(servable.name).inc(evaluated)
                self.metrics.prompt_cached_tokens.labels(servable.name).inc(event.prompt_cached)
                self.metrics.prompt_shared_tokens.labels(servable.name).inc(event.prompt_shared)
                self.metrics.generated_tokens.labels(servable.name).inc(event.eval_count)
                self.metrics.draft_tokens.labels(servable.name).inc(event.draft_tokens)
                self.metrics.draft_accepted_tokens.labels(servable.name).inc(event.draft_accepted)
                yield Finished(event, load_ns, now - started, rendered.dropped_messages, context=context)
                return
        finally:
            self._generating.discard(events)
            if not finished and sent:
                # Cut short (its client gone, the runner failed): the tokens it did send count, as
                # the time to first token already did (a metrics review: they never counted).
                self.metrics.generated_tokens.labels(servable.name).inc(sent)
            if handle is not None and not finished:
                handle.cancel()  # the client went away, or something failed: free the slot
            lease.release(served=finished)

    async def embed(
        self,
        servable: Servable,
        inputs: list[str],
        options: Mapping[str, Any] | None,
        *,
        keep_alive: object = None,
        truncate: bool = True,
    ) -> tuple[dict[str, Any], int, int]:
        """Embeddings of `inputs`; returns (result, load ns, total ns)."""
        started = time.perf_counter_ns()
        self.request_options(servable, options)  # reject bad options the same way
        check_embedding_size(servable.name, len(inputs), servable.gguf.shape.n_embd)  # before a load
        lease, load_ns = await self.acquire(servable, options, keep_alive)
        served = False
        try:
            await self.scheduler.reserve_embeddings(lease)
            result = await self._embeddings_of(lease.runner, inputs, truncate)
            served = True
        finally:
            lease.release(served=served)
        self.metrics.prompt_tokens.labels(servable.name).inc(result["prompt_eval_count"])
        return result, load_ns, time.perf_counter_ns() - started

    async def _embeddings_of(self, runner: Runner, inputs: list[str], truncate: bool) -> dict[str, Any]:
        """The runner's embeddings of `inputs`. Cancelled (its client gone: server/disconnect.py) or
        cut by a shutdown (stop_generations), the runner drops the batches it has not computed: an
        abandoned request of thousands of inputs ran to its end, and the requests behind it (a
        client's retries) waited for it (a review: 257 s)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any) -> None:
            if not reply.done():
                reply.set_result(value)

        def on_reply(value: Any) -> None:  # on the runner's reader thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
                loop.call_soon_threadsafe(settle, value)

        handle = runner.submit_embed(inputs, truncate, on_reply)
        self._embedding.add(reply)
        finished = False
        try:
            result = reply_result(await reply)
            finished = True
            return result
        finally:
            self._embedding.discard(reply)
            if not finished:  # cancelled, cut, or failed: what is left of it is for nobody
                handle.cancel()

    def forget(self, name: str) -> None:
        """Drop a cached image after rm/tag changes (the next request re-reads the store)."""
        with contextlib.suppress(InferenceRequestError, ImageNotFoundError, ValueError):
            self._servables.pop(str(self.reference(name)), None)


async def with_tool_calls(
    stream: AsyncGenerator[GenerationEvent, None], parser: ToolCallParser
) -> AsyncGenerator[GenerationEvent, None]:
    """`stream` with the tool calls in its output taken out of the text and onto Finished."""
    try:
        async for event in stream:
            if isinstance(event, Finished):
                text, calls = parser.finish()
                if text:
                    yield Token(text)
                yield dataclasses.replace(event, tool_calls=tuple(calls))
                return
            text = parser.feed(event.text)
            if text or event.logprobs:
                yield Token(text, event.logprobs)
    finally:
        await stream.aclose()  # the generation's own clean-up: cancel, release the lease


def check_embedding_size(model: str, inputs: int, width: int) -> None:
    """Refuse (400) a request whose vectors (`width` numbers each) would be more than
    MAX_EMBEDDING_NUMBERS numbers."""
    if inputs * width > MAX_EMBEDDING_NUMBERS:
        most = MAX_EMBEDDING_NUMBERS // width
        raise InferenceRequestError(
            f"{inputs:,} inputs are too many for one request: {model}'s vectors have {width} "
            f"numbers, and an answer holds {MAX_EMBEDDING_NUMBERS:,} at most ({most:,} inputs); "
            "send them in several requests"
        )


def _log_unload_failure(unloading: asyncio.Task[bool]) -> None:
    if not unloading.cancelled() and unloading.exception() is not None:
        log.warning("unloading failed: %s", unloading.exception())


class LoopPost:
    """Items from other threads into a loop's asyncio queues, with one wake-up of the loop for all
    that come together: a runner's reader thread hands over a step's tokens for every stream at
    once, and each wake-up is a write to the loop's self-pipe, a return from epoll and a switch
    of threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._held: list[tuple[asyncio.Queue[Any], Any]] = []

    def __call__(self, queue: asyncio.Queue[Any], item: Any) -> None:
        with self._lock:
            self._held.append((queue, item))
            if len(self._held) > 1:
                return  # a wake-up is on its way and will take this one too
        self.loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for queue, item in held:
            queue.put_nowait(item)
