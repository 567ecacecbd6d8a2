"""Bound: time limits on many waits of one task with one timer."""

from __future__ import annotations

import asyncio

import pytest

from lakehouse.timeouts import Bound
from tests.cancelling import cancel_once
from tests.support import timers_armed

pytestmark = pytest.mark.anyio


async def test_a_wait_past_the_limit_raises_timeout_error() -> None:
    bound = Bound(limit=0.05)
    never = asyncio.Event()
    with pytest.raises(TimeoutError), bound:
        await never.wait()
    bound.close()


async def test_a_wait_within_the_limit_returns_its_result() -> None:
    bound = Bound(limit=30)
    with bound:
        await asyncio.sleep(0)
    bound.close()


async def test_each_wait_gets_the_whole_limit_from_its_own_start() -> None:
    # Two waits of 1.2 s each under a 2 s limit: a timer left where the
    # first wait put it would cut the second one short.
    bound = Bound(limit=2.0)
    for _ in range(2):
        with bound:
            await asyncio.sleep(1.2)
    bound.close()


async def test_until_bounds_every_wait_and_refuses_new_ones_after_it() -> None:
    loop = asyncio.get_running_loop()
    bound = Bound(until=loop.time() + 0.05)
    with pytest.raises(TimeoutError), bound:
        await asyncio.Event().wait()
    with pytest.raises(TimeoutError), bound:
        pytest.fail("a wait began after the deadline")  # pragma: no cover
    bound.close()


async def test_many_waits_arm_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    armed = timers_armed(monkeypatch, "call_at")
    bound = Bound(limit=60, until=loop.time() + 120)
    for _ in range(200):
        with bound:
            await asyncio.sleep(0)
    bound.close()
    assert len(armed) == 1


async def test_someone_elses_cancellation_passes_through() -> None:
    started = asyncio.Event()

    async def waiting() -> None:
        bound = Bound(limit=60)
        try:
            with bound:
                started.set()
                await asyncio.Event().wait()
        finally:
            bound.close()

    await cancel_once(started, waiting())


async def test_close_disarms_the_timer() -> None:
    bound = Bound(limit=0.01)
    with bound:
        await asyncio.sleep(0)
    bound.close()
    # Nothing left to fire into this task while it waits elsewhere.
    await asyncio.sleep(0.05)
