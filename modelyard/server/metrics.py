"""Prometheus metrics: what Ollama's users have asked for since 2024 (ollama#3144).

Counters and histograms are updated as requests run; the gauges (loaded models, queue depth,
memory per model, system headroom) are rendered from the scheduler's status taken at scrape time
(`render(statuses)`), so they are never stale. Each server has its own registry: no global
state, and tests can run several servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.runtime import procstats
from modelyard.runtime.scheduler import ModelStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, queue_depths: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelyard_requests",
            "Requests by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "modelyard_prompt_tokens", "Prompt tokens evaluated.", ["model"], registry=self.registry
        )
        self.prompt_cached_tokens = Counter(
            "modelyard_prompt_cached_tokens",
            "Prompt tokens not evaluated: a slot kept their KV cache from its previous request, or"
            " copied it from a running one.",
            ["model"],
            registry=self.registry,
        )
        self.prompt_shared_tokens = Counter(
            "modelyard_prompt_shared_tokens",
            "Of the cached prompt tokens, those whose KV cache was copied from a running request's"
            " slot (n choices, or requests sharing a long system prompt at once).",
            ["model"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "modelyard_generated_tokens", "Tokens generated.", ["model"], registry=self.registry
        )
        self.draft_tokens = Counter(
            "modelyard_draft_tokens",
            "Tokens guessed ahead by prompt lookup and checked in the same decode step as the one sampled.",
            ["model"],
            registry=self.registry,
        )
        self.draft_accepted_tokens = Counter(
            "modelyard_draft_accepted_tokens",
            "Guessed tokens that sampling agreed with (each saved a decode step).",
            ["model"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "modelyard_time_to_first_token_seconds",
            "From the request to its first token (load included).",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.time_per_token = Histogram(
            "modelyard_time_per_output_token_seconds",
            "Time between two generated tokens of a request.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "modelyard_model_load_seconds",
            "Time a model's runner took to load, one observation a load.",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self._live = _LiveCollector(queue_depths)
        self.registry.register(self._live)

    def render(self, statuses: list[ModelStatus]) -> bytes:
        """The exposition, its gauges from `statuses` (Scheduler.live_status, taken off the loop)."""
        self._live.statuses = statuses
        try:
            return generate_latest(self.registry)
        finally:
            self._live.statuses = []


class _LiveCollector(Collector):
    def __init__(self, queue_depths: Callable[[], Mapping[str, int]]) -> None:
        self._queue_depths = queue_depths
        self.statuses: list[ModelStatus] = []  # what the render in progress reports

    def collect(self) -> Iterator[Metric]:
        statuses = self.statuses
        # A runner's own row: names that share its runner are listed after it, its memory and
        # slots counted with the first (a metrics review: a shared runner counted twice here).
        runners = [s for s in statuses if not s.shares_runner_of]
        loaded = GaugeMetricFamily(
            "modelyard_models_loaded",
            "Runners loading, ready or unloading (names that share one count once; a load waiting"
            " for memory does not count).",
        )
        loaded.add_metric(
            [], float(sum(s.state in ("ready", "loading", "unloading") and not s.waiting for s in runners))
        )
        yield loaded
        labels = ["model"]
        families = {
            "queue": GaugeMetricFamily(
                "modelyard_queue_depth",
                "Requests waiting: beyond busy slots, or for a model not loaded yet.",
                labels=labels,
            ),
            "busy": GaugeMetricFamily(
                "modelyard_slots_busy", "Slots decoding a request (as modelyard_slots).", labels=labels
            ),
            "slots": GaugeMetricFamily(
                "modelyard_slots",
                "Slots of the model's runner (given with the first of the names sharing it).",
                labels=labels,
            ),
            "size": GaugeMetricFamily(
                "modelyard_model_memory_bytes", "Memory of the model (RAM and GPU).", labels=labels
            ),
            "vram": GaugeMetricFamily(
                "modelyard_model_gpu_memory_bytes", "GPU memory of the model.", labels=labels
            ),
            "rss": GaugeMetricFamily(
                "modelyard_runner_rss_bytes", "Resident memory of the runner process.", labels=labels
            ),
            "resident": GaugeMetricFamily(
                "modelyard_weights_resident_bytes", "Bytes of the mmapped weights in RAM.", labels=labels
            ),
        }
        for name, depth in sorted(self._queue_depths().items()):
            families["queue"].add_metric([name], float(depth))
        # One sample a name: while a name's old runner finishes its streams beside its new one (a
        # swap, a stop then a rebuild), both are the name's, summed (a diff review: one series
        # twice in a scrape, which Prometheus refuses).
        totals: dict[str, dict[str, float]] = {}
        for s in statuses:
            by_name = totals.setdefault(s.name, {})
            figures: dict[str, int | None] = {
                "size": s.size,
                "vram": s.size_vram,
                "rss": s.runner_rss,
                "resident": s.weights_resident,
            }
            if not s.shares_runner_of:
                figures |= {"busy": s.slots_busy, "slots": s.slots}
            for family, value in figures.items():
                if value is not None:
                    by_name[family] = by_name.get(family, 0.0) + float(value)
        for name, summed in totals.items():
            for family, total in summed.items():
                families[family].add_metric([name], total)
        yield from families.values()
        system = procstats.system_memory()
        if system is not None:
            available = GaugeMetricFamily(
                "modelyard_system_memory_available_bytes", "Memory the system can hand out without swapping."
            )
            available.add_metric([], float(system.available))
            yield available
            swap = GaugeMetricFamily("modelyard_system_swap_used_bytes", "Swap in use.")
            swap.add_metric([], float(system.swap_used))
            yield swap
