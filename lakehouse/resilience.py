"""Backpressure per provider, admission of one call (its slot, then its
breaker trial), and the backoff between retries."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from lakehouse.errors import Overloaded, ProviderUnavailable
from lakehouse.health import Health


class Limiter:
    """At most ``limit`` calls at once, and at most ``queue`` more waiting;
    past that a call is refused at once rather than piling up."""

    def __init__(self, provider: str, limit: int, queue: int) -> None:
        self.provider = provider
        self.limit = limit
        self.queue = queue
        self.active = 0
        self.rejected = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def full(self) -> bool:
        """Whether a call now would have to queue (or be refused)."""
        return self.active >= self.limit or bool(self._waiters)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> bool:
        """Take a slot; True when the call had to queue for it."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return False
        if len(self._waiters) >= self.queue:
            self.rejected += 1
            raise Overloaded(
                f"provider `{self.provider}` is at its limit of {self.limit} concurrent "
                f"calls with {self.queue} waiting",
                provider=self.provider,
                retry_after=1,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot just as we gave up: pass it on.
                self._release_one()
            else:
                # A release in the same loop turn may have popped (and
                # skipped) this cancelled waiter already.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return True

    def release(self) -> None:
        self._release_one()

    def _release_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # The slot passes straight to the waiter: active is unchanged.
                waiter.set_result(None)
                return
        self.active -= 1


class Admission:
    """One call's admission, as one ``async with``: a slot first (waiting in
    the queue if need be), then the breaker's say (in the half-open state,
    the one trial). Every way out gives a verdict: ``record`` on an outcome,
    else (cancelled, the deadline, a bug) the trial is abandoned; the slot
    is freed unless ``keep`` handed it to a stream still running.

    The slot comes first so that a call refused a slot (``Overloaded``) or
    cancelled while queued never holds the trial: holding it would leave
    the provider refusing every call while its listing says available.
    """

    __slots__ = (
        "_health",
        "_kept",
        "_limiter",
        "_name",
        "_on_wait",
        "_trial",
        "_verdict",
        "queued_s",
    )

    def __init__(
        self,
        limiter: Limiter,
        health: Health,
        name: str,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self._limiter = limiter
        self._on_wait = on_wait
        self._health = health
        self._name = name
        self._trial = False
        self._verdict = False
        self._kept = False
        # How long the call waited in the queue for its slot.
        self.queued_s = 0.0

    async def __aenter__(self) -> Admission:
        health, name = self._health, self._name
        if not health.available(name):
            raise self._unavailable()  # at once, without queueing
        if self._on_wait is not None and self._limiter.full:
            self._on_wait()
        queued_at = time.perf_counter()
        if await self._limiter.acquire():
            self.queued_s = time.perf_counter() - queued_at
        if not health.admit(name):
            # Another call took the trial while this one queued.
            self._limiter.release()
            raise self._unavailable()
        self._trial = health.in_trial(name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._verdict and self._trial:
            self._health.abandon(self._name)
        if not self._kept:
            self._limiter.release()

    def record(self, *, ok: bool) -> None:
        self._verdict = True
        self._health.record(self._name, ok=ok)

    def keep(self) -> None:
        """The slot outlives the block; whoever holds it releases it."""
        self._kept = True

    def _unavailable(self) -> ProviderUnavailable:
        name = self._name
        return ProviderUnavailable(f"provider `{name}` is unavailable", provider=name)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with up to 25% downward jitter (as the OpenAI
    SDK does), capped."""

    base: float = 0.25
    cap: float = 4.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        raw = min(self.cap, self.base * (2**attempt))
        jitter = (rng or random).random() * 0.25
        return float(raw * (1 - jitter))
