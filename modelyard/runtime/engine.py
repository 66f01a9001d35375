"""Continuous batching: N slots share one llama.cpp context, one `llama_decode` per step.

Each step builds one batch: the next token of every generating slot, then prompt tokens of the
slots still prefilling, in chunks, until `n_batch` tokens are in (beside generating slots, about a
slice of time's worth: pacing.py). A slot generating alone also feeds the tokens that prompt lookup
guesses will follow (drafting.py), and keeps those its sampler agrees with. New requests take a
free slot between steps, chosen by what its KV cache keeps of the prompt (prompt_cache.py), so that
only the rest is evaluated; a finished or cancelled request frees its slot at once and leaves its
cells for the next. Every slot has its own sampler chain, stop matcher and UTF-8 decoder. Busy
slots are kept on consecutive sequence ids (slot_layout.py), which llama.cpp decodes in one pass.

Runs inside the runner process, on its main thread; requests arrive on a queue fed by the socket
reader thread, events leave through `send`.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import queue
import time
import traceback
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelyard.runtime import llama
from modelyard.runtime.drafting import DraftPace, NgramIndex, draft_limit, next_pace
from modelyard.runtime.echo import EchoedPrompt
from modelyard.runtime.options import SamplingOptions
from modelyard.runtime.pacing import (
    StepTimes,
    WorkSlice,
    averaged,
    embedding_tokens_beside_streams,
    measured,
    prompt_tokens_beside_streams,
)
from modelyard.runtime.prompt_cache import (
    BusySlot,
    CacheRules,
    FreeSlot,
    choose_slot,
    expendable_slot,
    scored_prefix,
    share_from_busy,
)
from modelyard.runtime.protocol import CompletionRequest
from modelyard.runtime.slot_layout import compaction_moves, keeps_consecutive
from modelyard.runtime.stops import StopMatcher

Send = Callable[[dict[str, Any]], None]

# num_predict -2: generate until the context is full (llama.cpp's and Ollama's meaning); any other
# negative value: until a stop or end of generation, shifting the context when it fills.
FILL_CONTEXT = -2

# How long the engine sleeps on an empty inbox when no slot is busy (a new message wakes it).
IDLE_WAIT_S = 0.5
# While it works, the engine says it is alive at least this often (an "alive" event), so that the
# parent can tell a runner that works slowly (a long prompt) from one that hangs.
HEARTBEAT_S = 2.0

# Operations that read the vocabulary only: answered beside the steps (answer_from_vocabulary).
VOCABULARY_OPS = frozenset({"tokenize", "detokenize"})


class RequestRejected(Exception):
    """A request that cannot be served (bad schema, prompt too long); the message goes to the client."""

    kind = "request"  # the error event's kind, which the parent turns into its error class


class PromptTooLong(RequestRejected):
    """Longer than the context, where it may not be cut."""

    kind = "too_long"


@dataclass
class Slot:
    seq: int
    request_id: int = -1
    prompt: list[int] = field(default_factory=list)
    fed: int = 0  # prompt tokens already in the KV cache
    n_past: int = 0  # tokens in the KV cache for this sequence
    # The tokens in this sequence's KV cells, by position; kept when the slot is freed, for the
    # next prompt that starts the same way. Only the first `exact` were computed without a context
    # shift in between (shifted cells are not what evaluating the prompt afresh would give).
    cache: array[int] = field(default_factory=lambda: array("i"))
    exact: int = 0
    # The log-prob entries of the first cached tokens, as the last scored prompt left them (with
    # `scores_k` candidates each): another prompt that starts the same way need not score them again.
    scores: list[dict[str, Any]] = field(default_factory=list)
    scores_k: int = 0
    reused: int = 0  # prompt tokens of the current request that the cache already held
    shared: int = 0  # of those, copied from a busy slot (prompt_cache.share_from_busy)
    last_used: int = 0
    next_token: int | None = None  # sampled, to be fed in the next step
    logits_index: int = -1  # where this slot's logits are in the current batch
    # Speculative decoding: the prompt and answer so far, indexed for guesses (None: no guessing);
    # the guesses fed after next_token in the current batch, with a logits row each after its own;
    # how many to guess next, and when; and the request's totals.
    drafter: NgramIndex | None = None
    draft: list[int] = field(default_factory=list)
    pace: DraftPace = field(default_factory=lambda: DraftPace(0))
    drafted: int = 0
    accepted: int = 0
    sampler: llama.Sampler | None = None
    stops: StopMatcher | None = None
    decoder: codecs.IncrementalDecoder | None = None
    options: SamplingOptions = field(default_factory=SamplingOptions)
    shift: bool = True
    top_logprobs: int = 0
    echo: EchoedPrompt | None = None  # send the prompt back before the answer, shown so
    # Echo with log-probs: every prompt token's entry, after the tokens before it (the first has
    # none); the rows of the current batch that score some, as (first batch index, first position,
    # count): position p's logits score the token at p + 1.
    prompt_logprobs: list[dict[str, Any]] | None = None
    scored_rows: tuple[int, int, int] | None = None
    # Log-prob entries not yet sent, each with where its token's text starts in the output: an
    # entry goes out once its text does (a stop string may hold the text back, then cut it).
    logprobs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    produced: int = 0  # characters of output decoded so far
    emitted: int = 0  # of those, sent (the rest held back by the stop matcher, or cut)
    generated: int = 0
    truncated: int = 0
    shifts: int = 0
    cancelled: bool = False
    started_ns: int = 0
    prompt_done_ns: int = 0

    @property
    def busy(self) -> bool:
        return self.request_id >= 0

    @property
    def prefilling(self) -> bool:
        return self.busy and self.fed < len(self.prompt)

    @property
    def generating(self) -> bool:
        """Has a sampled token to feed in the next step."""
        return self.busy and not self.prefilling and self.next_token is not None

    def exact_tokens(self) -> npt.NDArray[np.int32]:
        """The tokens of the cells computed without a context shift, from position 0 (a copy, not
        a view: the cache grows)."""
        return np.frombuffer(self.cache, dtype=np.int32, count=self.exact).copy()


@dataclass
class EmbeddingJob:
    """An embeddings request, computed a group of inputs at a time between the steps: a request of
    thousands of inputs held every stream of the runner until it ended (over 20 s on the test VM for
    400 inputs on Gemma 3 270M, `benchmarks/bench_beside_streams.py`). Its inputs are
    tokenized as their group comes: token lists of requests waiting their turn took ten times the
    memory of their text (a review: 257 MiB for 16 MiB of inputs)."""

    request_id: int
    inputs: list[str]
    truncate: bool
    vectors: list[list[float]] = field(default_factory=list)
    tokens: int = 0  # of the inputs embedded so far: the answer's prompt_eval_count
    held: list[int] | None = None  # the next input's tokens, read but past the last group's room

    @property
    def done(self) -> bool:
        return len(self.vectors) == len(self.inputs)


@dataclass(frozen=True)
class SlotView:
    """What the slots hold, as admission weighs it: the free slots' caches (in the order of the
    free slots) and the busy slots as sources of cells (`busy_slots[i]` describes `sources[i]`)."""

    caches: list[FreeSlot]
    sources: list[Slot]
    busy_slots: list[BusySlot]


def fit_prompt(tokens: list[int], n_ctx: int, num_keep: int, truncate: bool) -> tuple[list[int], int]:
    """Make a prompt fit a slot's context, as llama-server does: keep the first `num_keep` tokens
    and drop from after them so that half the context stays free for the answer. Returns the
    tokens and how many were dropped (pure)."""
    if len(tokens) < n_ctx:
        return tokens, 0
    if not truncate:
        raise PromptTooLong(
            f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}: shorten it, or serve "
            "the model with a larger num_ctx"
        )
    keep = max(0, min(num_keep, n_ctx // 2 - 1))
    tail = n_ctx // 2 - keep
    fitted = tokens[:keep] + tokens[-tail:]
    return fitted, len(tokens) - len(fitted)


class Engine:
    def __init__(
        self,
        model: llama.Model,
        ctx: llama.Context,
        slots: int,
        send: Send,
        embedder: Callable[[], EmbeddingContext] | None = None,
        beside_streams: WorkSlice | None = None,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.send = send
        self.slots = [Slot(seq=i) for i in range(slots)]
        self.n_ctx_seq = ctx.n_ctx_seq
        self.cache_rules = CacheRules(n_swa=model.n_swa, can_cut=not model.keeps_a_state)
        self._releases = 0  # a clock for choosing which free slot's cache to give up
        self.batch = llama.Batch(ctx.n_batch, slots)
        self.waiting: deque[tuple[int, CompletionRequest]] = deque()
        # The tokens (and how many were cut) of waiting prompts already read: one that waits for
        # a busy slot's cells is looked at again every step.
        self._prompts: dict[int, tuple[list[int], int, npt.NDArray[np.int32]]] = {}
        self._shared_tokens = 0  # prompt tokens whose cells were copied from a busy slot
        self.beside_streams = beside_streams or WorkSlice()  # other work, at a time
        self.step_times = StepTimes()  # of the last steps: how much prompt fits beside streams
        self._embedder_factory = embedder
        self._embedder: EmbeddingContext | None = None
        self._embeddings: deque[EmbeddingJob] = deque()  # in the order asked, the first under way
        self.running = True
        self._beat_at = time.monotonic()
        self._flush: Callable[[], None] = lambda: None

    # --- the loop -------------------------------------------------------------------------

    def run(
        self, inbox: queue.Queue[dict[str, Any] | None], flush: Callable[[], None] = lambda: None
    ) -> None:
        """Serve until shut down. `flush` sends what `send` was given: after the messages read and
        after each step, so that a step's events for every slot go out together."""
        self._flush = flush
        while self.running:
            self._drain(inbox, block=not self._has_work())
            flush()
            if self.running:
                self._admit()
                self.step()
                self._embed_next_group()
                self.beat()
                flush()

    def beat(self) -> None:
        """An "alive" event, if none went for HEARTBEAT_S (the parent's watch for hangs)."""
        now = time.monotonic()
        if now - self._beat_at >= HEARTBEAT_S:
            self._beat_at = now
            self.send({"event": "alive"})

    def _has_work(self) -> bool:
        return bool(self.waiting) or bool(self._embeddings) or any(s.busy for s in self.slots)

    def _drain(self, inbox: queue.Queue[dict[str, Any] | None], block: bool) -> None:
        try:
            message = inbox.get(timeout=IDLE_WAIT_S) if block else inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if message is None:
                self.running = False
                return
            self.handle(message)
            try:
                message = inbox.get_nowait()
            except queue.Empty:
                return

    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        request_id = int(message.get("id", -1))
        try:
            if op == "complete":
                self.waiting.append((request_id, CompletionRequest.from_message(message)))
            elif op == "cancel":
                self._cancel(request_id)
            elif op == "embed":
                self._embeddings.append(self._embedding_job(request_id, message))
            elif op in VOCABULARY_OPS:
                self.send(self.answer_from_vocabulary(message))
            elif op == "stats":
                self._reply(request_id, self.stats())
            elif op == "shutdown":
                self.running = False
            else:
                self._error(request_id, f"unknown operation {op!r}", "internal")
        except RequestRejected as exc:
            self._error(request_id, str(exc), exc.kind)
        except Exception as exc:  # a bug (the parent sends these messages): fail this request, keep serving
            traceback.print_exc()  # stderr: the parent keeps its tail for crash reports
            self._error(request_id, f"internal error handling {op}: {type(exc).__name__}: {exc}", "internal")

    def answer_from_vocabulary(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply to an operation that only reads the vocabulary (VOCABULARY_OPS). Thread-safe
        beside the steps (llama.cpp's server tokenizes in its HTTP threads too): runner_main runs
        these on a thread of their own, so that a prompt of megabytes, seconds to tokenize, holds
        up no stream (a security review: a request waited 42 s behind one)."""
        op, request_id = message.get("op"), int(message.get("id", -1))
        try:
            if op == "tokenize":
                text, special = str(message["text"]), bool(message.get("add_special"))
                return {
                    "event": "result",
                    "id": request_id,
                    "tokens": self.model.tokenize(text, add_special=special),
                }
            tokens = self._in_vocabulary([int(t) for t in message["tokens"]], "token")
            return {"event": "result", "id": request_id, "text": self.model.detokenize(tokens)}
        except RequestRejected as exc:
            return {"event": "error", "id": request_id, "message": str(exc), "kind": exc.kind}
        except Exception as exc:  # a bug (the parent sends these messages): fail this request
            traceback.print_exc()
            why = f"internal error handling {op}: {type(exc).__name__}: {exc}"
            return {"event": "error", "id": request_id, "message": why, "kind": "internal"}

    def stats(self) -> dict[str, Any]:
        return {
            "slots_busy": sum(s.busy for s in self.slots),
            "slots": len(self.slots),
            "waiting": len(self.waiting),
            "kv_tokens": sum(s.n_past for s in self.slots),
            "prompt_shared_tokens": self._shared_tokens,
        }

    # --- admitting and finishing requests ---------------------------------------------------

    def _admit(self) -> None:
        later: deque[tuple[int, CompletionRequest]] = deque()
        view: SlotView | None = None  # what the slots hold, until a request takes one
        while self.waiting:
            free = [slot for slot in self.slots if not slot.busy]
            # A request waiting for a busy slot's cells keeps a free slot for when they are in:
            # the requests behind it do not take the last ones.
            if len(free) <= len(later):
                break
            request_id, request = self.waiting.popleft()
            view = view or self._view(free)
            try:
                if self._start(free, view, request_id, request):
                    view = None
                else:
                    later.append((request_id, request))
            except RequestRejected as exc:
                self._prompts.pop(request_id, None)
                self._error(request_id, str(exc), exc.kind)
        self.waiting = later + self.waiting  # in the order they came

    def _view(self, free: list[Slot]) -> SlotView:
        busy = [s.busy for s in self.slots]
        caches = [
            FreeSlot(
                s.exact_tokens(),
                s.last_used,
                self.ctx.seq_pos_min(s.seq),
                beside_busy=keeps_consecutive(busy, s.seq),
            )
            for s in free
        ]
        sources = [s for s in self.slots if s.busy]
        # A source's prompt still to come counts if its cells so far are exact (no shift), and
        # unless it scores its prompt, which it reads a few tokens a step, slower than evaluating.
        busy_slots = [
            BusySlot(
                s.exact_tokens(),
                self.ctx.seq_pos_min(s.seq),
                np.asarray(s.prompt[s.fed :], dtype=np.int32)
                if s.exact == s.fed and s.prompt_logprobs is None
                else np.zeros(0, np.int32),
            )
            for s in sources
        ]
        return SlotView(caches, sources, busy_slots)

    def _start(self, free: list[Slot], view: SlotView, request_id: int, request: CompletionRequest) -> bool:
        """Take a free slot for the request, or return False to leave it waiting for a busy slot
        that is evaluating the same first tokens (prompt_cache.share_from_busy). Everything that
        can reject it comes before the slot is touched."""
        options = request.options
        scores_prompt = request.echo and request.top_logprobs > 0
        if scores_prompt and not self.ctx.prompt_logprob_rows:
            raise RequestRejected("this runner does not compute a prompt's log-probabilities")
        self._in_vocabulary([token for token, _ in request.logit_bias], "logit_bias token")
        if request_id not in self._prompts:
            tokens = self._prompt_tokens(request)
            if scores_prompt and len(tokens) >= self.n_ctx_seq:  # cut, it would not be the prompt sent
                raise PromptTooLong(
                    f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx_seq}, and a "
                    "prompt whose log-probabilities are asked for is never truncated; shorten it or "
                    "raise num_ctx"
                )
            fitted, dropped = fit_prompt(tokens, self.n_ctx_seq, options.num_keep, request.truncate)
            self._prompts[request_id] = (fitted, dropped, np.asarray(fitted, dtype=np.int32))
        tokens, dropped, prompt = self._prompts[request_id]
        caches = view.caches
        chosen, reused = choose_slot(caches, prompt, self.cache_rules)
        # A prompt whose log-probabilities are asked for reuses only cells whose scores are kept.
        sharing = None
        if not scores_prompt:
            sharing = share_from_busy(view.busy_slots, prompt, self.cache_rules, reused, self.n_ctx_seq)
        if sharing is not None and sharing.wait:
            return False
        grammar = _grammar_for(request.format)
        seed = options.seed if options.seed >= 0 else int.from_bytes(os.urandom(4), "little")
        try:
            sampler = llama.Sampler(
                self.model, options, seed, grammar, n_ctx=self.n_ctx_seq, logit_bias=request.logit_bias
            )
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None
        del self._prompts[request_id]
        scores = 0
        if sharing is not None:
            # Its cells are overwritten: the free slot whose cache is the least worth keeping.
            slot = free[expendable_slot(caches)]
            self.ctx.seq_cp(view.sources[sharing.source].seq, slot.seq)  # copied at the next decode
            reused = sharing.keep
            self.ctx.seq_rm(slot.seq, reused, -1)
            slot.scores = []  # its own cache's, not the copied cells'
            self._shared_tokens += reused
        else:
            slot = free[chosen]
            if scores_prompt:  # only cells whose tokens' scores the cache holds too
                cached = len(slot.scores) if slot.scores_k >= request.top_logprobs else 0
                scores, reused = scored_prefix(reused, cached, caches[chosen].pos_min, self.cache_rules)
            if not self.ctx.seq_rm(slot.seq, reused, -1):  # a memory that cannot cut a sequence short
                self.ctx.seq_rm(slot.seq)
                reused = scores = 0
        slot.cache = array("i", tokens[:reused])
        reused_scores, slot.scores = slot.scores[:scores], slot.scores[:reused]
        slot.exact = reused
        slot.reused = reused
        slot.shared = reused if sharing is not None else 0
        slot.request_id = request_id
        slot.prompt = tokens
        slot.fed = reused
        slot.n_past = reused
        slot.next_token = None
        slot.sampler = sampler
        slot.stops = StopMatcher(options.stop)
        slot.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        slot.options = options
        slot.shift = request.shift
        slot.top_logprobs = request.top_logprobs
        # A guess that fails is cut from the cache again, which a recurrent state cannot do.
        guesses = options.draft_num_predict > 0 and self.cache_rules.can_cut
        slot.drafter = NgramIndex(tokens) if guesses else None
        slot.draft = []
        slot.pace = DraftPace(options.draft_num_predict)
        slot.drafted = slot.accepted = 0
        slot.echo = None
        if request.echo:
            slot.echo = EchoedPrompt.of(self.model, tokens, None if request.tokens else request.prompt)
        slot.prompt_logprobs = None
        if slot.echo is not None and scores_prompt:
            k = request.top_logprobs
            kept = [
                slot.echo.shown(p, e | {"top": e["top"] and e["top"][:k]})
                for p, e in enumerate(reused_scores)
            ]
            slot.prompt_logprobs = kept or [slot.echo.unscored()]
        slot.scored_rows = None
        slot.logprobs = []
        slot.produced = slot.emitted = 0
        slot.generated = 0
        slot.truncated = dropped
        slot.shifts = 0
        slot.cancelled = False
        slot.started_ns = time.perf_counter_ns()
        slot.prompt_done_ns = 0
        return True

    def _prompt_tokens(self, request: CompletionRequest) -> list[int]:
        if request.tokens:
            return self._in_vocabulary(list(request.tokens), "prompt token")
        tokens = self.model.tokenize(request.prompt, add_special=True, parse_special=True)
        if not tokens:
            raise RequestRejected("the prompt is empty after tokenization")
        return tokens

    def _in_vocabulary(self, tokens: list[int], what: str) -> list[int]:
        outside = [t for t in tokens if not 0 <= t < self.model.n_vocab]
        if outside:  # llama.cpp would abort
            last = self.model.n_vocab - 1
            raise RequestRejected(f"{what} id {outside[0]} is not in the vocabulary (0 to {last})")
        return tokens

    def _cancel(self, request_id: int) -> None:
        for slot in self.slots:
            if slot.request_id == request_id:
                slot.cancelled = True
        self.waiting = deque((rid, r) for rid, r in self.waiting if rid != request_id)
        self._prompts.pop(request_id, None)
        self._embeddings = deque(job for job in self._embeddings if job.request_id != request_id)

    def _finish(self, slot: Slot, reason: str) -> None:
        if slot.decoder is not None and slot.stops is not None and reason != "cancel":
            tail = slot.stops.feed(slot.decoder.decode(b"", final=True)) + slot.stops.flush()
            self._send_output(slot, tail, final=not slot.stops.stopped)
        now = time.perf_counter_ns()
        prompt_done = slot.prompt_done_ns or now
        self.send(
            {
                "event": "done",
                "id": slot.request_id,
                "done_reason": reason,
                "prompt_eval_count": len(slot.prompt),
                "prompt_cached": slot.reused,
                "prompt_shared": slot.shared,
                "prompt_eval_duration": prompt_done - slot.started_ns,
                "eval_count": slot.generated,
                "eval_duration": now - prompt_done,
                "truncated": slot.truncated,
                "context_shifts": slot.shifts,
                "draft_tokens": slot.drafted,
                "draft_accepted": slot.accepted,
            }
        )
        self._release(slot)

    def _release(self, slot: Slot, *, keep_cache: bool = True) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
        if not keep_cache:
            self.ctx.seq_rm(slot.seq)
            slot.cache = array("i")
            slot.exact = 0
            slot.scores = []
        self._releases += 1
        slot.last_used = self._releases
        slot.request_id = -1
        slot.sampler = None
        slot.drafter = None
        slot.draft = []
        slot.prompt_logprobs = None  # a cancelled or failed scoring's entries
        slot.prompt = []
        slot.fed = slot.n_past = 0
        slot.next_token = None

    # --- one decode step -----------------------------------------------------------------

    def step(self) -> None:
        for slot in self.slots:
            if slot.busy and slot.cancelled:
                self._finish(slot, "cancel")
        if self.cache_rules.can_cut:  # a recurrent state is not cells in a stream to copy
            busy = [s.busy for s in self.slots]
            for source, target in compaction_moves(busy, [s.last_used for s in self.slots]):
                self._move(self.slots[source], self.slots[target])
        batch = self.batch
        batch.clear()
        budget = batch.capacity
        scoring_rows = self.ctx.prompt_logprob_rows  # the context's outputs beyond one per slot
        # Guesses only for a slot alone in the step, when one sequence leaves most of the hardware
        # idle. Beside other sequences, llama.cpp would split the unequal runs into ubatches of
        # their own, another pass over the weights; and a sliding-window cache could then reuse
        # cells that the positions after a failed guess still attend to.
        alone = sum(s.generating for s in self.slots) == 1 and not any(s.prefilling for s in self.slots)
        for slot in self.slots:
            slot.logits_index = -1
            slot.scored_rows = None
            slot.draft = []
            if slot.generating:
                assert slot.next_token is not None
                if slot.n_past >= self.n_ctx_seq and not self._make_room(slot):
                    continue
                slot.logits_index = batch.add(slot.next_token, slot.n_past, slot.seq, True)
                if alone:
                    slot.draft = self._guesses(
                        slot, free_outputs=min(budget - 1, self.ctx.n_outputs_max - batch.outputs)
                    )
                    for i, token in enumerate(slot.draft, start=slot.n_past + 1):
                        batch.add(token, i, slot.seq, True)
                fed = [slot.next_token, *slot.draft]
                slot.cache.extend(fed)
                if slot.exact == slot.n_past:
                    slot.exact += len(fed)
                slot.n_past += len(fed)
                budget -= len(fed)
        generated = batch.size
        if generated:
            beside = prompt_tokens_beside_streams(self.step_times, self.beside_streams)
            if beside is not None:
                budget = min(budget, beside)
        for slot in self.slots:
            if budget <= 0:
                break
            if slot.prefilling:
                chunk = min(len(slot.prompt) - slot.fed, budget)
                scores = slot.prompt_logprobs is not None
                if scores:
                    chunk = min(chunk, scoring_rows)
                    if chunk == 0:
                        continue
                    scoring_rows -= chunk
                    slot.scored_rows = (batch.size, slot.fed, chunk)
                last = slot.fed + chunk == len(slot.prompt)
                for i in range(slot.fed, slot.fed + chunk):
                    output = scores or (last and i == len(slot.prompt) - 1)
                    index = batch.add(slot.prompt[i], i, slot.seq, output)
                slot.cache.extend(slot.prompt[slot.fed : slot.fed + chunk])
                slot.exact += chunk
                slot.fed += chunk
                slot.n_past = slot.fed
                budget -= chunk
                if last:
                    slot.logits_index = index
        if batch.size == 0:
            return
        if batch.outputs > self.ctx.n_outputs_max:  # llama.cpp would abort the process instead
            raise RuntimeError(f"a batch asks for {batch.outputs} outputs, over {self.ctx.n_outputs_max}")
        scores = any(slot.scored_rows is not None for slot in self.slots)
        started = time.perf_counter()
        decoded = self._decode_and_sample(batch)
        # The whole step, sampling included: what a stream waits for (and, on a GPU, where
        # llama_decode returns before the work ends, the reading of the logits waits for the rest).
        # Scoring a prompt's tokens is work beyond reading them: not a plain prompt's pace.
        if decoded and not scores:
            self.step_times = measured(
                self.step_times, time.perf_counter() - started, batch.size - generated, generated
            )

    def _decode_and_sample(self, batch: llama.Batch) -> bool:
        """False if llama_decode failed (the batch's requests failed with it)."""
        rc = self.ctx.decode(batch)
        if rc != 0:
            self._fail_batch(f"llama_decode failed with code {rc}")
            return False
        for slot in self.slots:
            if slot.busy and (slot.logits_index >= 0 or slot.scored_rows is not None):
                try:
                    if slot.scored_rows is not None:
                        self._score_prompt(slot)
                    if slot.logits_index >= 0:
                        self._after_decode(slot)
                except Exception as exc:  # a bug, for this one request: fail it, keep serving
                    traceback.print_exc()  # stderr: the parent keeps its tail for crash reports
                    self._error(slot.request_id, f"internal error: {type(exc).__name__}: {exc}", "internal")
                    self._release(slot, keep_cache=False)
        return True

    def _guesses(self, slot: Slot, free_outputs: int) -> list[int]:
        """The tokens to feed after the slot's sampled token at position n_past, by prompt lookup
        (none while its guessing pauses, which this step counts down)."""
        if slot.drafter is None:
            return []
        if slot.pace.pause:
            slot.pace = next_pace(slot.pace, 0, 0, slot.options.draft_num_predict)
            return []
        limit = draft_limit(
            slot.pace.length,
            n_past=slot.n_past,
            n_ctx=self.n_ctx_seq,
            generated=slot.generated,
            num_predict=slot.options.num_predict,
            free_outputs=free_outputs,
        )
        return slot.drafter.draft(limit)

    def _move(self, source: Slot, target: Slot) -> None:
        """Carry a busy slot's request over to a free slot, KV cells and all. The target's cached
        prompt is given up; the source keeps its cells, a copy of the request's, now a prompt cache
        like any free slot's, and the first to be given up (a clock of 0)."""
        if len(source.cache):
            self.ctx.seq_cp(source.seq, target.seq)  # the whole stream: nothing to copy, no copy
        else:
            self.ctx.seq_rm(target.seq)
        self.slots[target.seq] = dataclasses.replace(source, seq=target.seq)
        self.slots[source.seq] = Slot(seq=source.seq, cache=array("i", source.cache), exact=source.exact)

    def _score_prompt(self, slot: Slot) -> None:
        assert slot.scored_rows is not None and slot.prompt_logprobs is not None
        first_index, first_position, count = slot.scored_rows
        following = slot.prompt[first_position + 1 : first_position + count + 1]  # the last row has none
        entries = llama.logprob_entries(
            self.ctx, self.model, first_index, following, slot.top_logprobs, special=True
        )
        assert slot.echo is not None
        for position, entry in enumerate(entries, start=first_position + 1):
            slot.echo.shown(position, entry)
        slot.prompt_logprobs += entries

    def _after_decode(self, slot: Slot) -> None:
        assert slot.sampler is not None and slot.stops is not None and slot.decoder is not None
        if not slot.prompt_done_ns:
            slot.prompt_done_ns = time.perf_counter_ns()
            if slot.echo is not None:
                self._send_prompt(slot, slot.echo)
        if slot.options.num_predict == 0:  # read the prompt, predict nothing (llama.cpp's n_predict 0)
            self._finish(slot, "length")
            return
        sampled = self._sample(slot)
        for token, row in sampled:
            if not self._take(slot, token, row):
                return
        slot.next_token = sampled[-1][0]

    def _sample(self, slot: Slot) -> list[tuple[int, int]]:
        """The token sampled from the slot's row and, while each equals the guess fed after it,
        the tokens sampled from the guesses' rows, each with its row. The cells of the guesses that
        failed leave the cache."""
        assert slot.sampler is not None
        draft = slot.draft
        sampled: list[tuple[int, int]] = []
        for j in range(len(draft) + 1):
            row = slot.logits_index + j
            token = slot.sampler.sample(self.ctx, row)  # given the guesses before j, which held
            sampled.append((token, row))
            if j == len(draft) or token != draft[j] or self.model.is_eog(token):
                break
        if draft:
            accepted = sum(1 for (token, _), guess in zip(sampled, draft, strict=False) if token == guess)
            keep = slot.n_past - len(draft) + accepted
            if keep < slot.n_past:
                self.ctx.seq_rm(slot.seq, keep, -1)
                del slot.cache[keep:]
                slot.exact = min(slot.exact, keep)
                slot.n_past = keep
            slot.drafted += len(draft)
            slot.accepted += accepted
            slot.pace = next_pace(slot.pace, len(draft), accepted, slot.options.draft_num_predict)
            slot.draft = []
        return sampled

    def _take(self, slot: Slot, token: int, row: int) -> bool:
        """Add a sampled token to the answer; False when it ended the request."""
        assert slot.stops is not None and slot.decoder is not None
        if self.model.is_eog(token):
            if slot.top_logprobs and slot.echo is not None:
                # Echo accounts for every token, the end of generation's too: a client reading the
                # last entry as the generated token's (lm-evaluation-harness does) must find it.
                entry = llama.top_logprobs(self.ctx, self.model, row, token, slot.top_logprobs, special=True)
                slot.logprobs.append((slot.produced, entry | {"offset": slot.produced}))
            self._finish(slot, "stop")
            return False
        slot.generated += 1
        if slot.drafter is not None:
            slot.drafter.append(token)
        piece = slot.decoder.decode(self.model.piece(token))
        if slot.top_logprobs:
            entry = llama.top_logprobs(self.ctx, self.model, row, token, slot.top_logprobs)
            slot.logprobs.append((slot.produced, entry | {"offset": slot.produced}))
        slot.produced += len(piece)
        text = slot.stops.feed(piece)
        self._send_output(slot, text)
        if slot.stops.stopped:
            self._finish(slot, "stop")
        elif 0 <= slot.options.num_predict <= slot.generated:
            self._finish(slot, "length")
        else:
            return True
        return False

    def _send_prompt(self, slot: Slot, echo: EchoedPrompt) -> None:
        event: dict[str, Any] = {"event": "token", "id": slot.request_id, "text": echo.text(), "prompt": True}
        if slot.prompt_logprobs is not None:
            event["logprobs"] = slot.prompt_logprobs
            slot.scores, slot.scores_k = slot.prompt_logprobs, slot.top_logprobs  # for the next prompt
            slot.prompt_logprobs = None
        self.send(event)

    def _send_output(self, slot: Slot, text: str, *, final: bool = False) -> None:
        """Send `text`, with the log-probs of the tokens whose text has now gone out (`final`: all
        that are left, the generation having ended without a stop; after a stop, the tokens of the
        text it cut are never sent)."""
        slot.emitted += len(text)
        ready = [entry for start, entry in slot.logprobs if final or start < slot.emitted]
        slot.logprobs = slot.logprobs[len(ready) :]
        if text or ready:
            event: dict[str, Any] = {"event": "token", "id": slot.request_id, "text": text}
            if ready:
                event["logprobs"] = ready
            self.send(event)

    def _make_room(self, slot: Slot) -> bool:
        """The slot's context is full: drop the older half after num_keep, or finish with "length"
        (also for num_predict -2, which means "until the context is full")."""
        if not slot.shift or not self.ctx.can_shift or slot.options.num_predict == FILL_CONTEXT:
            self._finish(slot, "length")
            return False
        keep = max(0, min(slot.options.num_keep, slot.n_past // 2))
        discard = (slot.n_past - keep) // 2
        self.ctx.seq_rm(slot.seq, keep, keep + discard)
        self.ctx.seq_add(slot.seq, keep + discard, slot.n_past, -discard)
        del slot.cache[keep : keep + discard]
        slot.exact = min(slot.exact, keep)
        slot.scores = slot.scores[:keep]
        slot.n_past -= discard
        slot.shifts += 1
        return True

    def _fail_batch(self, message: str) -> None:
        for slot in self.slots:
            if slot.busy and (slot.logits_index >= 0 or slot.prefilling):
                self._error(slot.request_id, message, "internal")
                self._release(slot, keep_cache=False)  # what the failed batch left is unknown

    # --- embeddings -------------------------------------------------------------------------

    def _embedding_job(self, request_id: int, message: dict[str, Any]) -> EmbeddingJob:
        """An embeddings request, to be computed between the steps (_embed_next_group)."""
        inputs = message["inputs"]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise RequestRejected("inputs must be a list of strings")
        if self._embedder is None:
            if self._embedder_factory is None:
                raise RequestRejected("this runner does not compute embeddings")
            self._embedder = self._embedder_factory()
        return EmbeddingJob(request_id, inputs, truncate=bool(message.get("truncate", True)))

    def _embed_next_group(self) -> None:
        """One group of the first embeddings request's inputs (one decode of the embeddings
        context), so that the streams take a step between two groups; its answer once all are in."""
        if not self._embeddings:
            return
        job = self._embeddings[0]
        assert self._embedder is not None
        try:
            if not job.done:  # a request of no inputs has none to compute
                most = None  # alone: what a batch holds
                if any(slot.busy for slot in self.slots):
                    # Until its own batches are timed, a token of inputs costs about what a
                    # prompt's does in the main context (the same weights).
                    per_token = self._embedder.seconds_per_token
                    if per_token is None:
                        per_token = self.step_times.per_prompt_token_s
                    most = embedding_tokens_beside_streams(per_token, self.beside_streams)
                self._embedder.next_group(job, most)
        except RequestRejected as exc:
            self._embeddings.popleft()
            self._error(job.request_id, str(exc), exc.kind)
            return
        except Exception as exc:  # a bug, for this one request: fail it, keep serving
            traceback.print_exc()
            self._embeddings.popleft()
            self._error(job.request_id, f"internal error embedding: {type(exc).__name__}: {exc}", "internal")
            return
        if job.done:
            self._embeddings.popleft()
            self._reply(job.request_id, {"embeddings": job.vectors, "prompt_eval_count": job.tokens})

    # --- replies ----------------------------------------------------------------------------

    def _reply(self, request_id: int, result: dict[str, Any]) -> None:
        self.send({"event": "result", "id": request_id, **result})

    def _error(self, request_id: int, message: str, kind: str) -> None:
        self.send({"event": "error", "id": request_id, "message": message, "kind": kind})


def _grammar_for(format_: object) -> str | None:
    if format_ in (None, ""):
        return None
    if format_ == "json":
        return llama.json_grammar()
    if isinstance(format_, dict):
        try:
            return llama.json_schema_grammar(format_)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None
    raise RequestRejected(f'format must be "json" or a JSON schema object, got {format_!r}')


class EmbeddingContext:
    """A second context for embeddings: pooled, many inputs in one batch, one sequence each. The
    vectors are the model's own: each API decides whether to normalise them (Ollama's /api/embed
    does, its legacy /api/embeddings does not).

    A model that declares no pooling (a chat model) is pooled by the mean of its final hidden
    states. llama.cpp would also compute its lm_head for every token (2.4x the time on Gemma 3,
    benchmarks/RESULTS.md): the context copies the hidden states (llama.Context(hidden_states)).
    Once, as it is made, the means of two short sentences are checked against llama.cpp's mean
    pooling of the same batch; if they agree, every batch stops at the hidden states. If not (a
    model whose graph names another tensor so), the context pools as llama.cpp does.

    Made on the first embeddings request, `n_ctx` tokens as memory.embedding_context_tokens sizes
    it; the scheduler counts its memory (memory.embedding_estimate) before the request reaches us."""

    MAX_SEQUENCES = 16
    # What the hidden states are checked on: two sentences, not more (on CUDA llama.cpp pools more
    # than three sequences with a TF32 product, a few 1e-4 of the largest component off).
    CHECKED_SENTENCES = ("The keeper lit the lamp at dusk.", "Ships passed the rocks.")

    def __init__(
        self, model: llama.Model, n_ctx: int, threads: int, flash_attention: bool | None = None
    ) -> None:
        self.model = model
        self.n_ctx = n_ctx
        # The model's own pooling where it declares one; a chat model's hidden states by mean.
        # Flash attention as the main context has it (llama.cpp turns it on where it can, unless
        # the user turned it off): with it, a batch of n_ctx tokens holds no n_head × n_ctx²
        # matrix of attention scores, which memory.embedding_estimate does not count.
        self.ctx = llama.Context(
            model,
            n_ctx=n_ctx,
            n_seq_max=self.MAX_SEQUENCES,
            n_batch=n_ctx,
            threads=threads,
            embeddings=True,
            pooling=None if model.declares_pooling else llama.L.LLAMA_POOLING_TYPE_MEAN,
            flash_attention=flash_attention,
            # An embedding model pools its own way, after layers of its own: llama.cpp's.
            hidden_states=not model.declares_pooling,
        )
        self.batch = llama.Batch(n_ctx, self.MAX_SEQUENCES)
        self.seconds_per_token: float | None = None  # of the batches so far (a moving average)
        if not model.declares_pooling:
            self._check_hidden_states()

    def _check_hidden_states(self) -> None:
        """Whether the hidden states' means are llama.cpp's mean pooling: if so, every batch stops
        at them from now on; if not, none reads them."""
        group = [self.tokens(text, truncate=True) for text in self.CHECKED_SENTENCES]
        self._decode(group)
        hidden = self.ctx.hidden_states
        agree = hidden is not None and all(
            same_vector(mean, vector)
            for mean, vector in zip(_means(hidden, group), self._pooled(len(group)), strict=True)
        )
        self.ctx.read_hidden_states(read=agree, stop=agree)

    def tokens(self, text: str, truncate: bool) -> list[int]:
        """An input's tokens, cut to the context (or PromptTooLong, unless `truncate`)."""
        tokens = self.model.tokenize(text, add_special=True, parse_special=False)
        if not tokens:  # a model that adds no BOS, an empty text: nothing to pool
            raise RequestRejected(f"an input is {text!r}, which is no tokens: leave it out")
        if len(tokens) > self.n_ctx:
            if not truncate:
                raise PromptTooLong(
                    f"an input is {len(tokens)} tokens but the embeddings context holds {self.n_ctx}: "
                    "shorten it, or split it"
                )
            tokens = tokens[: self.n_ctx]
        return tokens

    def next_group(self, job: EmbeddingJob, most_tokens: int | None = None) -> None:
        """The job's next inputs that one batch takes (at least one; up to `most_tokens` of them),
        tokenized as they come, embedded: their vectors and tokens added to the job's."""
        room = self.n_ctx if most_tokens is None else max(1, min(most_tokens, self.n_ctx))
        group: list[list[int]] = []
        used = 0
        first = len(job.vectors)
        while first + len(group) < len(job.inputs) and len(group) < self.MAX_SEQUENCES:
            held, job.held = job.held, None
            tokens = held if held is not None else self.tokens(job.inputs[first + len(group)], job.truncate)
            if group and used + len(tokens) > room:
                job.held = tokens  # the first of the next group
                break
            group.append(tokens)
            used += len(tokens)
        started = time.perf_counter()
        job.vectors += self._embed_group(group)
        self.seconds_per_token = averaged(
            self.seconds_per_token, (time.perf_counter() - started) / max(used, 1)
        )
        job.tokens += used

    def _embed_group(self, group: list[list[int]]) -> list[list[float]]:
        self._decode(group)
        if not self.ctx.stops_at_hidden_states:
            return self._pooled(len(group))
        hidden = self.ctx.hidden_states
        if hidden is None:  # stopped, yet nothing copied: llama.cpp's outputs are the last batch's
            raise RuntimeError("the batch's hidden states were not read")
        return [mean.tolist() for mean in _means(hidden, group)]

    def _decode(self, group: list[list[int]]) -> None:
        self.ctx.clear()
        self.batch.clear()
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                # Pooling reads every token's output: mark them all, or llama.cpp overrides the
                # flags itself and logs a warning per input.
                self.batch.add(token, pos, seq, True)
        rc = self.ctx.decode(self.batch)
        if rc != 0:
            raise RequestRejected(f"llama_decode failed with code {rc} while embedding")

    def _pooled(self, sequences: int) -> list[list[float]]:
        return [self.ctx.sequence_embedding(seq, self.model.n_embd) for seq in range(sequences)]


def _means(hidden: npt.NDArray[np.float32], group: list[list[int]]) -> list[npt.NDArray[np.float32]]:
    """Each sequence's mean of its rows of a batch's hidden states (the sequences one after the other)."""
    ends = np.cumsum([len(tokens) for tokens in group])
    return [hidden[end - len(tokens) : end].mean(axis=0) for tokens, end in zip(group, ends, strict=True)]


def same_vector(ours: npt.NDArray[np.float32], theirs: list[float]) -> bool:
    """Equal up to rounding: to 1e-3 of the largest component (sums in another order; on CUDA
    llama.cpp may pool with a TF32 product). Another tensor than the one pooled is off by whole
    units (a test: the first layer's norm)."""
    reference = np.asarray(theirs, dtype=np.float32)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return (
        ours.shape == reference.shape and float(np.max(np.abs(ours - reference), initial=0.0)) <= 1e-3 * scale
    )
