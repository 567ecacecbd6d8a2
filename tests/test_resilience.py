from __future__ import annotations

import asyncio
import random

import pytest

from lakehouse.errors import Overloaded
from lakehouse.resilience import Backoff, Limiter

pytestmark = pytest.mark.anyio


async def test_limiter_caps_queues_and_refuses() -> None:
    limiter = Limiter("p", limit=2, queue=1)
    await limiter.acquire()
    await limiter.acquire()
    queued = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert (limiter.active, limiter.waiting) == (2, 1)
    with pytest.raises(Overloaded) as info:
        await limiter.acquire()
    assert info.value.retry_after == 1 and info.value.status == 503
    assert limiter.rejected == 1
    limiter.release()  # the slot passes to the waiter
    await queued
    assert (limiter.active, limiter.waiting) == (2, 0)
    limiter.release()
    limiter.release()
    assert limiter.active == 0


async def taken_with_waiters(waiters: int, queue: int) -> tuple[Limiter, list[asyncio.Task[None]]]:
    """A one-slot limiter, its slot taken, with ``waiters`` tasks queued."""
    limiter = Limiter("p", limit=1, queue=queue)
    await limiter.acquire()
    tasks = [asyncio.create_task(limiter.acquire()) for _ in range(waiters)]
    await asyncio.sleep(0)
    assert limiter.waiting == waiters
    return limiter, tasks


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter, [waiter] = await taken_with_waiters(1, queue=2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 0
    limiter.release()
    assert limiter.active == 0
    await limiter.acquire()
    assert limiter.active == 1


async def test_slot_handed_to_a_waiter_that_was_cancelled_is_passed_on() -> None:
    limiter, [first, second] = await taken_with_waiters(2, queue=2)
    limiter.release()  # hands the slot to `first`...
    first.cancel()  # ...which gives up before running
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert (limiter.active, limiter.waiting) == (1, 0)


async def test_a_waiter_cancelled_in_the_same_turn_as_a_release_leaves_quietly() -> None:
    # Release pops the already-cancelled waiter before its task runs; the
    # task must still end cancelled (a 499), not with a ValueError (a 500).
    limiter, [first, second] = await taken_with_waiters(2, queue=3)
    first.cancel()
    limiter.release()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot went past the cancelled waiter to this one
    assert (limiter.active, limiter.waiting) == (1, 0)
    limiter.release()
    assert limiter.active == 0


def test_backoff_grows_caps_and_jitters_downwards() -> None:
    backoff = Backoff(base=0.25, cap=4)
    rng = random.Random(7)
    for attempt, raw in enumerate([0.25, 0.5, 1, 2, 4, 4, 4]):
        for _ in range(50):
            delay = backoff.delay(attempt, rng)
            assert raw * 0.75 <= delay <= raw
