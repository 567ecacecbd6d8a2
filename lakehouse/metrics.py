"""Prometheus metrics of one chatd process, exposed at ``GET /metrics``.

Everything lives in a registry owned by the running app (never the
library's global one). With several workers the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before they start and each scrape merges every
worker's files (prometheus_client multiprocess mode), so whichever worker
answers, a scrape shows the whole instance: counters and histograms
summed; calls in flight and queued summed over live workers ("livesum");
availability the minimum over live workers ("livemin": 0 as soon as any
worker would refuse the provider). What is read from live state rather
than counted as it happens (availability, limiter gauges, rejections) each
worker writes to its files at every scrape it answers and once a second
(``PUBLISH_EVERY``), so another worker's share is at most that old.

Labels stay bounded: providers and tiers come from the config, statuses
and error codes from chatd's own families; a caller's raw model name is
never a label.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_EVERY = 1.0

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


class _PublishFirst(Collector):
    """Yields nothing: collecting it first has the scraped worker write its
    live state into the metrics the rest of the scrape reads."""

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self._publish()
        return iter(())


# Per provider: calls in flight, calls waiting, calls refused so far.
Pressure = Callable[[], dict[str, tuple[int, int, int]]]
# Per (provider, host) of a pooled provider: its state (upstreams.pool).
Hosts = Callable[[], Mapping[tuple[str, str], Any]]


class _Live:
    """The metrics read from live state (health, limiters, host pools)
    rather than counted where things happen; ``publish`` copies that state
    in. Counters grow by what the state's own counts grew since last time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        availability: Callable[[], dict[str, bool]],
        pressure: Pressure | None,
        hosts: Hosts | None,
    ) -> None:
        self._availability = availability
        self._pressure = pressure
        self._hosts = hosts
        self._seen: dict[tuple[str, ...], int] = {}
        r = registry
        self.available = Gauge(
            "chatd_provider_available",
            "Whether chatd sends requests to the provider (1) or not (0); with "
            "several workers, 1 only when every worker does.",
            ["provider"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.calls_in_flight = Gauge(
            "chatd_provider_calls_in_flight",
            "Upstream calls in flight.",
            ["provider"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "chatd_provider_queue_depth",
            "Calls waiting for a slot under the provider's concurrency limit.",
            ["provider"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejections = Counter(
            "chatd_provider_rejections",
            "Calls refused because the provider's queue was full.",
            ["provider"],
            registry=r,
        )
        self.host_available = Gauge(
            "chatd_upstream_host_available",
            "Whether chatd sends calls to this host of a pooled provider (1) or not "
            "(0); with several workers, 1 only when every worker does.",
            ["provider", "host"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.host_in_flight = Gauge(
            "chatd_upstream_host_calls_in_flight",
            "Calls in flight to this host of a pooled provider.",
            ["provider", "host"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.host_calls = Counter(
            "chatd_upstream_host_calls",
            "Calls sent to this host of a pooled provider.",
            ["provider", "host"],
            registry=r,
        )
        self.host_failures = Counter(
            "chatd_upstream_host_failures",
            "Calls to this host that failed for the host's sake (it feeds the host's breaker).",
            ["provider", "host"],
            registry=r,
        )

    def _grow(self, counter: Counter, labels: tuple[str, ...], count: int) -> None:
        key = (str(id(counter)), *labels)
        seen = self._seen.get(key, 0)
        # A smaller count is a new generation's object (a reload).
        fresh = count - seen if count >= seen else count
        if fresh:
            counter.labels(*labels).inc(fresh)
        self._seen[key] = count

    def publish(self) -> None:
        for name, ok in self._availability().items():
            self.available.labels(name).set(1.0 if ok else 0.0)
        if self._pressure is not None:
            for name, (calls, waiting, refused) in self._pressure().items():
                self.calls_in_flight.labels(name).set(calls)
                self.queue_depth.labels(name).set(waiting)
                self._grow(self.rejections, (name,), refused)
        if self._hosts is not None:
            for labels, state in self._hosts().items():
                self.host_available.labels(*labels).set(1.0 if state.available else 0.0)
                self.host_in_flight.labels(*labels).set(state.in_flight)
                self._grow(self.host_calls, labels, state.calls)
                self._grow(self.host_failures, labels, state.failures)


class Metrics:
    def __init__(
        self,
        availability: Callable[[], dict[str, bool]],
        pressure: Pressure | None = None,
        hosts: Hosts | None = None,
    ) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_PublishFirst(self.publish))
        self._live = _Live(r, availability, pressure, hosts)
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
        self.exposition = self._exposition()
        # Label children, cached: labels() costs a lock and string work per call.
        self._children: dict[tuple[str, ...], Callable[..., None]] = {}

    def _exposition(self) -> CollectorRegistry:
        if not self.multiprocess:
            return self.registry
        merged = CollectorRegistry()
        # First, so this worker's share is fresh in the files the
        # multiprocess collector then reads.
        merged.register(_PublishFirst(self.publish))
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged

    def publish(self) -> None:
        """Bring the live-state metrics up to date (in multiprocess mode:
        this worker's share of them, in its files)."""
        self._live.publish()

    async def publish_forever(self) -> None:
        """With several workers: keep this worker's share fresh for scrapes
        other workers answer."""
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_EVERY)

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
            self.publish()  # the last rejections count
            # Drop this worker's live gauges (in-flight) from the merged view.
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def prepare_multiprocess_dir(path: str) -> None:
    """Empty (or create) the folder workers write metrics to; stale files
    from an earlier run would otherwise be summed into the new one."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def forget_worker(pid: int) -> None:
    """Drop a finished worker's live gauges from the merged view (its
    counters stay: they are part of the totals). Its supervisor calls this,
    since a worker killed outright cannot."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
