"""The dispatcher: a chat request in, one provider's answer out.

It resolves tiers to model ids and routes them to providers; it tries a
request's fallback chain in order, retrying each link on retryable
failures with backoff (or the upstream's Retry-After, when it is short
enough), all within the request's deadline; it holds each provider to its
concurrency limit and its circuit breaker; and it stamps ``provider``,
``latency_ms``, ``tier`` and, when a fallback answered, ``fallback`` and
``attempts``. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from lakehouse.config import DEADLINE, MAX_CONCURRENCY, MAX_QUEUE, RetryConfig
from lakehouse.errors import (
    ChatdError,
    DeadlineExceeded,
    UpstreamBadResponse,
)
from lakehouse.health import Health
from lakehouse.metrics import Metrics
from lakehouse.plugin_api import Provider
from lakehouse.registry import Registry, Route
from lakehouse.resilience import Admission, Backoff, Limiter
from lakehouse.timeouts import Bound
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

T = TypeVar("T")
Item = StreamDelta | ChatResponse
Stream = AsyncGenerator[Item, None]


@dataclass(slots=True)
class CallInfo:
    """What the dispatcher learnt about one request, for metrics and logs,
    filled in even when the call fails."""

    provider: str = ""
    # The model routed to: the tier resolved, the routing prefix stripped.
    model: str = ""
    tier: str = ""
    upstream_s: float = 0.0
    # Time spent waiting by choice: retry backoff, Retry-After, queueing.
    wait_s: float = 0.0
    attempts: int = 0
    # Called when the request is about to wait (a provider's queue, a
    # retry's backoff): the caller's side starts watching for a hang-up.
    on_wait: Callable[[], None] | None = None


@dataclass
class Policy:
    retry: RetryConfig = field(default_factory=RetryConfig)
    deadline: float = DEADLINE
    fallbacks: Mapping[str, Sequence[str]] = field(default_factory=dict)
    limits: Mapping[str, tuple[int, int]] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        *,
        tiers: Mapping[str, str] | None = None,
        health: Health | None = None,
        policy: Policy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.tiers = dict(tiers or {})
        self.health = health or Health(registry.names())
        self.policy = policy or Policy()
        self.metrics = metrics
        self._backoff = Backoff(self.policy.retry.backoff_secs, self.policy.retry.max_backoff_secs)
        self.limiters = {
            name: Limiter(name, *self.policy.limits.get(name, (MAX_CONCURRENCY, MAX_QUEUE)))
            for name in registry.names()
        }
        # Requests inside chat() or stream(), retry waits included: a
        # reloaded-away generation closes its sessions once this is 0.
        self.in_flight = 0

    def route(self, model: str) -> tuple[Route, str | None]:
        """The route for a model or tier name, and the tier when it was one."""
        resolved = self.tiers.get(model)
        if resolved is None:
            return self.registry.resolve(model), None
        return self.registry.resolve(resolved), model

    def chain(self, name: str) -> list[str]:
        """The names to try for a request: itself, then its fallbacks (those
        of the tier, else of the model id it resolves to). Not transitive."""
        links = self.policy.fallbacks.get(name)
        if links is None and name in self.tiers:
            links = self.policy.fallbacks.get(self.tiers[name])
        return [name, *(links or ())]

    def budget(self, requested: float | None) -> float:
        cap = self.policy.deadline
        return cap if requested is None else min(requested, cap)

    async def chat(
        self, request: ChatRequest, info: CallInfo | None = None, *, deadline: float | None = None
    ) -> ChatResponse:
        info = info if info is not None else CallInfo()
        budget = self.budget(deadline if deadline is not None else request.deadline_secs)
        self.in_flight += 1
        try:
            async with asyncio.timeout(budget):
                return await self._try_chain(request, info)
        except TimeoutError:
            raise self._late(budget, info) from None
        finally:
            self.in_flight -= 1

    async def _try_chain(self, request: ChatRequest, info: CallInfo) -> ChatResponse:
        async def chat(provider: Provider, model: str) -> ChatResponse:
            return await provider.chat(request, model)

        response, tier, fallback = await self._walk(request.model, info, chat, hold=False)
        return self._stamp(response, info, tier, fallback)

    def _stamp(
        self, response: ChatResponse, info: CallInfo, tier: str | None, fallback: str | None
    ) -> ChatResponse:
        response.provider = info.provider
        response.latency_ms = round(info.upstream_s * 1000)
        response.tier = tier
        response.fallback = fallback
        if info.attempts > 1:
            response.attempts = info.attempts
        return response

    async def stream(
        self, request: ChatRequest, info: CallInfo | None = None, *, deadline: float | None = None
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        """The answer as it is generated: StreamDeltas, then the final
        ChatResponse. Retries and fallbacks happen only before the first
        item; after it, a failure ends the stream with its error. The
        deadline bounds every wait, first item included."""
        # One generator from the provider's stream to the caller (no inner
        # one to relay through): counted in flight from the first item asked.
        self.in_flight += 1
        try:
            info = info if info is not None else CallInfo()
            budget = self.budget(deadline if deadline is not None else request.deadline_secs)
            ends = asyncio.get_running_loop().time() + budget

            async def first(
                provider: Provider, model: str
            ) -> tuple[Stream, StreamDelta | ChatResponse]:
                gen = provider.stream(request, model)
                try:
                    return gen, await anext(gen)
                except BaseException:
                    await gen.aclose()
                    raise

            try:
                async with asyncio.timeout_at(ends):
                    (gen, item), tier, fallback = await self._walk(
                        request.model, info, first, hold=True
                    )
            except TimeoutError:
                raise self._late(budget, info) from None
            name = info.provider
            started = time.perf_counter()
            # One timer for the whole stream, not one per chunk.
            bound = Bound(until=ends)
            try:
                while not isinstance(item, ChatResponse):
                    yield item
                    try:
                        with bound:
                            item = await anext(gen)
                    except TimeoutError:
                        raise self._late(budget, info) from None
                    except StopAsyncIteration:
                        raise UpstreamBadResponse(
                            f"{name} ended its stream without a final answer", provider=name
                        ) from None
                    except ChatdError as exc:
                        self.health.record(name, ok=not exc.provider_fault)
                        self._failed(name, exc)
                        raise
                # Reading on to the end lets the connection go back to the pool.
                with contextlib.suppress(ChatdError, TimeoutError):
                    async with asyncio.timeout(1):
                        async for _ in gen:
                            pass
            finally:
                bound.close()
                info.upstream_s += time.perf_counter() - started
                await gen.aclose()
                self.limiters[name].release()
            yield self._stamp(item, info, tier, fallback)
        finally:
            self.in_flight -= 1

    def _late(self, budget: float, info: CallInfo) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"no answer within the request's deadline of {budget:g}s",
            provider=info.provider or None,
        )

    async def _walk(
        self,
        name: str,
        info: CallInfo,
        action: Callable[[Provider, str], Awaitable[T]],
        *,
        hold: bool,
    ) -> tuple[T, str | None, str | None]:
        """Try the chain for ``name`` until one link's ``action`` succeeds;
        returns its result, its tier, and the link's name if a fallback."""
        links = self.chain(name)
        for index, link in enumerate(links):
            try:
                route, tier = self.route(link)
                info.provider = route.provider.name
                info.model = route.model
                info.tier = tier or ""
                result = await self._call(route.provider, route.model, info, action, hold=hold)
            except ChatdError as exc:
                if index == len(links) - 1 or not exc.fallback:
                    raise
                if self.metrics is not None:
                    self.metrics.fallback(link, links[index + 1])
                continue
            return result, tier, link if index else None
        raise AssertionError("a chain has at least one link")

    async def _call(
        self,
        provider: Provider,
        model: str,
        info: CallInfo,
        action: Callable[[Provider, str], Awaitable[T]],
        *,
        hold: bool,
    ) -> T:
        """One link: the provider, tried again on retryable failures. With
        ``hold`` the concurrency slot stays taken on success (a stream is
        still using the upstream); the caller releases it."""
        name = provider.name
        retry = self.policy.retry
        limiter = self.limiters[name]
        for attempt in range(retry.attempts + 1):
            async with Admission(limiter, self.health, name, info.on_wait) as admission:
                if admission.queued_s:
                    self._waited(info, "queue", admission.queued_s)
                info.attempts += 1
                started = time.perf_counter()
                try:
                    result = await action(provider, model)
                except ChatdError as exc:
                    admission.record(ok=not exc.provider_fault)
                    self._failed(name, exc)
                    # Decided in here, so that no local keeps the error past
                    # this clause: its traceback holds this frame, and the
                    # two would make a reference cycle (errors.settled).
                    wait, reason = self._retry_wait(exc, attempt)
                    if wait is None:
                        raise
                    if self.metrics is not None:
                        self.metrics.retry(name, exc.code)
                else:
                    admission.record(ok=True)
                    if hold:
                        admission.keep()
                    return result
                finally:
                    info.upstream_s += time.perf_counter() - started
            # The slot is free while the retry waits.
            if info.on_wait is not None:
                info.on_wait()
            slept_from = time.perf_counter()
            try:
                await asyncio.sleep(wait)
            finally:
                # Counted even when the deadline or a caller cuts it short.
                self._waited(info, reason, time.perf_counter() - slept_from)
        raise AssertionError("the loop returns or raises")

    def _retry_wait(self, error: ChatdError, attempt: int) -> tuple[float | None, str]:
        """How long to wait before trying again after ``error`` on attempt
        ``attempt``, and why; None when not again: not retryable, the last
        attempt, or a Retry-After too long to wait here (the next fallback,
        if any, is tried at once)."""
        retry = self.policy.retry
        if not error.retryable or attempt == retry.attempts:
            return None, ""
        if error.retry_after is None:
            return self._backoff.delay(attempt), "retry_backoff"
        if error.retry_after > retry.max_retry_after_secs:
            return None, ""
        return error.retry_after, "retry_after"

    def _waited(self, info: CallInfo, reason: str, seconds: float) -> None:
        info.wait_s += seconds
        if self.metrics is not None:
            self.metrics.wait(reason, seconds)

    def _failed(self, provider: str, error: ChatdError) -> None:
        if self.metrics is not None:
            self.metrics.upstream_error(provider, error.code)
