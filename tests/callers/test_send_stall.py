"""The HTTP/2 send stall bound: one sweep over the sends in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from lakehouse.callers.send_stall import SWEEPS, BoundedSend, PeerGone, StallSweep
from tests.h2_client import RawH2
from tests.stub_world import one_stub
from tests.support import eventually, timers_armed

pytestmark = pytest.mark.anyio

GOOD = {"model": "qwen3.5:latest", "messages": [{"role": "user", "content": "Say hello."}]}


async def never(message: Any) -> None:
    await asyncio.Event().wait()


async def sent(message: Any) -> None:
    await asyncio.sleep(0)


async def test_a_stalled_send_ends_the_request_and_every_send_after_it() -> None:
    sweep = StallSweep(0.2)
    send = BoundedSend(never, sweep)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(PeerGone):
        await send({"type": "http.response.start"})
    # Not before the limit; within a sweep of it (a loaded CI: generous).
    assert 0.2 <= loop.time() - began < 5
    with pytest.raises(PeerGone):
        await BoundedSend.__call__(send, {"type": "http.response.body"})
    assert not sweep.waiting
    sweep.close()


async def test_each_send_gets_the_whole_limit_from_its_own_start() -> None:
    # Sends of 0.5 s each under a 2 s limit, 2.5 s in all: a bound on the
    # request rather than on each send would end it (and a loaded CI has
    # 1.5 s of slack per send).
    sweep = StallSweep(2.0)

    async def slow(message: Any) -> None:
        await asyncio.sleep(0.5)

    send = BoundedSend(slow, sweep)
    for _ in range(5):
        await send({"type": "http.response.body"})
    assert not sweep.waiting
    sweep.close()


async def test_a_cancellation_from_elsewhere_passes_through_untouched() -> None:
    sweep = StallSweep(30)
    released = asyncio.Event()

    async def held(message: Any) -> None:
        await released.wait()

    send = BoundedSend(held, sweep)
    task = asyncio.create_task(send({"type": "http.response.start"}))
    await eventually(lambda: bool(sweep.waiting), what="the send waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sweep.waiting
    released.set()
    await send({"type": "http.response.body"})  # not taken for a gone peer
    sweep.close()


async def test_sends_that_do_not_wait_arm_no_timer_per_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    armed = timers_armed(monkeypatch, "call_later")
    sweep = StallSweep(10)
    for _ in range(100):
        send = BoundedSend(sent, sweep)
        await send({"type": "http.response.start"})
        await send({"type": "http.response.body"})
    assert armed == [10 / SWEEPS]
    assert not sweep.waiting
    sweep.close()


@pytest.mark.parametrize("tuned", [True, False], ids=["tuned", "stock"])
async def test_a_caller_that_never_opens_its_window_is_let_go_after_the_bound(
    tuned: bool,
) -> None:
    # The answer's body cannot go out (the stream's window is 0), so its
    # last send waits in Hypercorn's send task for a window that never
    # opens: without the bound, the request would stay in flight for good.
    overrides = {"chatd.server.send_stall_secs": 0.5, "chatd.server.tuned": tuned}
    async with (
        one_stub("ollama", overrides) as (base, _),
        httpx.AsyncClient(base_url=base) as client,
    ):
        caller = await RawH2.connect(base, window=0)
        try:
            sid = caller.post_json("/chat", GOOD)
            await eventually(lambda: caller.status.get(sid) == 200, what="the answer's head")

            async def none_in_flight() -> bool:
                for line in (await client.get("/metrics")).text.splitlines():
                    if line.startswith("chatd_in_flight_requests "):
                        return float(line.split()[1]) == 0
                raise AssertionError("no chatd_in_flight_requests")

            await eventually(none_in_flight, within=15, what="the stalled request ended")
            assert sid not in caller.finished  # its body never went out
        finally:
            await caller.close()
