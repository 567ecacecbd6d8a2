"""Backpressure per provider, and the backoff between retries."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import dataclass

from lakehouse.errors import Overloaded


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
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
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
