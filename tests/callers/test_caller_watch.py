"""CallerWatch and gone_already with an ASGI receive like Hypercorn's
(a request queue's ``get``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lakehouse.callers.caller_watch import CallerWatch, gone_already

pytestmark = pytest.mark.anyio

GONE = {"type": "http.disconnect"}


async def test_gone_already_looks_without_waiting_and_withdraws() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    assert not gone_already(queue.get)
    # The look left no getter behind to swallow the next message.
    queue.put_nowait(GONE)
    assert queue.get_nowait() == GONE
    queue.put_nowait(GONE)
    assert gone_already(queue.get)


async def test_the_request_is_cancelled_when_its_caller_goes() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def request() -> str:
        watch = CallerWatch(queue.get, after=0.01)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if watch.stop():
                return "gone"
            raise
        watch.stop()
        return "answered"

    task = asyncio.create_task(request())
    await asyncio.sleep(0.05)  # watched by now
    queue.put_nowait(GONE)
    assert await asyncio.wait_for(task, 5) == "gone"
    assert not task.cancelled() and task.cancelling() == 0


async def test_a_quick_answer_never_starts_a_watcher() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    before = len(asyncio.all_tasks())
    watch = CallerWatch(queue.get, after=10)
    assert len(asyncio.all_tasks()) == before
    assert watch.stop() is False
    queue.put_nowait(GONE)
    assert queue.get_nowait() == GONE  # nobody was reading it
