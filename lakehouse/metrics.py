"""Prometheus metrics of one chatd process, exposed at ``GET /metrics``.

Everything lives in a registry owned by the running app (never the
library's global one). With several workers Hypercorn spawns processes, so
the launcher sets ``PROMETHEUS_MULTIPROC_DIR`` before they start and each
scrape merges every worker's files (prometheus_client multiprocess mode).

Labels stay bounded: providers and tiers come from the config, statuses
and error codes from chatd's own families; a caller's raw model name is
never a label.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# LLM calls take from tens of milliseconds to several minutes.
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600)
# chatd's own share of a request: well under a millisecond when healthy.
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)
# Waits chatd chose (retry backoff, an upstream's Retry-After, a queue for a
# provider's slot): from instant to the longest Retry-After honoured.
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
WAIT_REASONS = ("retry_backoff", "retry_after", "queue")


class _Availability(Collector):
    """``chatd_provider_available`` read from health at scrape time, so it is
    never stale; in multiprocess mode it is the scraped worker's view."""

    def __init__(self, snapshot: Callable[[], dict[str, bool]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "chatd_provider_available",
            "Whether chatd currently sends requests to the provider (1) or not (0).",
            labels=["provider"],
        )
        for name, ok in self._snapshot().items():
            family.add_metric([name], 1.0 if ok else 0.0)
        yield family


# Per provider: calls in flight, calls waiting, calls refused so far.
Pressure = Callable[[], dict[str, tuple[int, int, int]]]


class _Backpressure(Collector):
    """Each provider's limiter, read at scrape time (per worker)."""

    def __init__(self, pressure: Pressure) -> None:
        self._pressure = pressure

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        active = GaugeMetricFamily(
            "chatd_provider_calls_in_flight", "Upstream calls in flight.", labels=["provider"]
        )
        queued = GaugeMetricFamily(
            "chatd_provider_queue_depth",
            "Calls waiting for a slot under the provider's concurrency limit.",
            labels=["provider"],
        )
        rejected = CounterMetricFamily(
            "chatd_provider_rejections",
            "Calls refused because the provider's queue was full.",
            labels=["provider"],
        )
        for name, (calls, waiting, refused) in sorted(self._pressure().items()):
            active.add_metric([name], calls)
            queued.add_metric([name], waiting)
            rejected.add_metric([name], refused)
        yield active
        yield queued
        yield rejected


class Metrics:
    def __init__(
        self, availability: Callable[[], dict[str, bool]], pressure: Pressure | None = None
    ) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chatd_requests",
            "Requests answered, by route, provider, tier and HTTP status.",
            ["route", "provider", "tier", "status"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "chatd_upstream_duration_seconds",
            "Time spent on the upstream per request (all its calls).",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            "chatd_overhead_seconds",
            "Time chatd spent on a request: the total less upstream calls and waits.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "chatd_tokens",
            "Tokens reported by upstreams.",
            ["provider", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "chatd_in_flight_requests",
            "Requests being served now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waits = Histogram(
            "chatd_wait_seconds",
            "Time requests spent waiting: retry backoff, an upstream's Retry-After, "
            "or a queue for a provider's slot.",
            ["reason"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        # Counted per call (a retried request that fails twice counts 2).
        self.upstream_errors = Counter(
            "chatd_upstream_errors",
            "Failed upstream calls, by provider and error code.",
            ["provider", "code"],
            registry=r,
        )
        # Chain links are configured names (tiers or model ids), so bounded.
        self.fallbacks = Counter(
            "chatd_fallbacks",
            "Moves to the next link of a fallback chain.",
            ["from_name", "to_name"],
            registry=r,
        )
        self.retries = Counter(
            "chatd_retries",
            "Retries of the same provider, by the error that caused them.",
            ["provider", "code"],
            registry=r,
        )
        self.exposition = self._exposition(availability)
        if pressure is not None:
            self.exposition.register(_Backpressure(pressure))
        # Label children, cached: labels() costs a lock and string work per call.
        self._children: dict[tuple[str, ...], Callable[..., None]] = {}

    def _exposition(self, availability: Callable[[], dict[str, bool]]) -> CollectorRegistry:
        if not self.multiprocess:
            self.registry.register(_Availability(availability))
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        merged.register(_Availability(availability))
        return merged

    def _child(
        self, key: tuple[str, ...], make: Callable[[], Callable[..., None]]
    ) -> Callable[..., None]:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = make()
        return child

    def observe(
        self,
        *,
        route: str,
        provider: str,
        tier: str,
        status: int,
        upstream_s: float,
        overhead_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self._child(
            ("r", route, provider, tier, str(status)),
            lambda: self.requests.labels(route, provider, tier, str(status)).inc,
        )()
        self._child(("o", route), lambda: self.overhead_seconds.labels(route).observe)(overhead_s)
        if not provider:
            return
        if upstream_s > 0:
            self._child(("u", provider), lambda: self.upstream_seconds.labels(provider).observe)(
                upstream_s
            )
        if prompt_tokens:
            self._child(
                ("t", provider, "prompt"), lambda: self.tokens.labels(provider, "prompt").inc
            )(prompt_tokens)
        if completion_tokens:
            self._child(
                ("t", provider, "completion"),
                lambda: self.tokens.labels(provider, "completion").inc,
            )(completion_tokens)

    def upstream_error(self, provider: str, code: str) -> None:
        """One upstream call that failed."""
        count = self._child(
            ("e", provider, code), lambda: self.upstream_errors.labels(provider, code).inc
        )
        count()

    def wait(self, reason: str, seconds: float) -> None:
        """One wait of a request; ``reason`` is one of ``WAIT_REASONS``."""
        self._child(("w", reason), lambda: self.waits.labels(reason).observe)(seconds)

    def fallback(self, from_name: str, to_name: str) -> None:
        self.fallbacks.labels(from_name, to_name).inc()

    def retry(self, provider: str, code: str) -> None:
        self.retries.labels(provider, code).inc()

    def close(self) -> None:
        if self.multiprocess:
            # Drop this worker's live gauges (in-flight) from the merged view.
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def prepare_multiprocess_dir(path: str) -> None:
    """Empty (or create) the folder workers write metrics to; stale files
    from an earlier run would otherwise be summed into the new one."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
