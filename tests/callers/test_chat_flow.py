"""The chat flow through the real server: callers that leave (HTTP/1.1
close, RST_STREAM, a closed h2 connection) free everything at once."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest

from lakehouse.stubs import Fault
from tests.h2_client import RawH2
from tests.stub_world import MODELS, World, stub_world
from tests.support import module_fixtures

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hello"}]
MODEL = MODELS["openrouter"]
# Ten plain and ten streamed requests, on both surfaces.
PATHS = ["/chat", "/v1/chat/completions"]
BODIES = [(PATHS[i % 2], {"model": MODEL, "messages": HELLO, "stream": i >= 10}) for i in range(20)]
SLOTS = 5


OVERRIDES = {
    "chatd.timeout_secs": 60,
    "chatd.retry.attempts": 2,
    "chatd.retry.backoff_secs": 2,
    # Five run, the rest wait in the queue.
    "chatd.providers.openrouter.max_concurrency": SLOTS,
    "chatd.fallbacks": {MODEL: ["opencode/glm-5.2"]},
}
anyio_backend, world = module_fixtures(lambda: stub_world(OVERRIDES))


@pytest.fixture(autouse=True)
def fresh(world: World) -> None:
    world.reset()


async def metrics(base: str) -> str:
    async with httpx.AsyncClient(base_url=base) as client:
        return (await client.get("/metrics")).text


def gauge(text: str, name: str, provider: str) -> float:
    match = re.search(rf'^{name}{{provider="{provider}"}} (\S+)$', text, re.M)
    assert match is not None, name
    return float(match.group(1))


def counted(text: str, status: int) -> float:
    pattern = rf'^chatd_requests_total{{[^}}]*status="{status}"[^}}]*}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.M))


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state is the server's, seen from outside
            await asyncio.sleep(0.02)


async def pressure(world: World) -> tuple[float, float]:
    text = await metrics(world.base)
    return (
        gauge(text, "chatd_provider_calls_in_flight", "openrouter"),
        gauge(text, "chatd_provider_queue_depth", "openrouter"),
    )


async def all_admitted(world: World) -> bool:
    return world.stubs["openrouter"].in_flight == SLOTS and await pressure(world) == (
        SLOTS,
        len(BODIES) - SLOTS,
    )


async def gone_count(world: World) -> float:
    return counted(await metrics(world.base), 499)


def h1_request(path: str, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def settled_499(world: World, before: float) -> None:
    async def all_counted() -> bool:
        return await gone_count(world) - before == len(BODIES)

    await until(all_counted, within=2.0)
    assert await gone_count(world) - before == len(BODIES)


async def check_freed(world: World, before: float) -> None:
    stub = world.stubs["openrouter"]

    async def freed() -> bool:
        return stub.in_flight == 0 and await pressure(world) == (0, 0)

    await until(freed, within=1.0)
    # Closed, not pooled half-read: only hung calls ever went there.
    assert await world.settled("openrouter") == 0
    await settled_499(world, before)
    assert len(stub.chats) == SLOTS, "a queued request reached the upstream"
    assert world.stubs["opencode"].chats == [], "a fallback ran for a caller gone"


async def test_http1_callers_that_close_free_everything(world: World) -> None:
    world.stubs["openrouter"].fail_always(Fault(kind="delay", seconds=120))
    before = await gone_count(world)
    conns = [await asyncio.open_connection(*world.base[7:].split(":")) for _ in BODIES]
    for (_, writer), (path, payload) in zip(conns, BODIES, strict=True):
        writer.write(h1_request(path, payload))
    await until(lambda: all_admitted(world))
    for _, writer in conns:
        writer.close()
    await check_freed(world, before)


async def test_h2_streams_reset_free_everything(world: World) -> None:
    world.stubs["openrouter"].fail_always(Fault(kind="delay", seconds=120))
    before = await gone_count(world)
    caller = await RawH2.connect(world.base)
    try:
        sids = [caller.post_json(path, payload) for path, payload in BODIES]
        await until(lambda: all_admitted(world))
        for sid in sids:
            caller.reset(sid)
        await check_freed(world, before)
    finally:
        await caller.close()


async def test_a_closed_h2_connection_frees_its_streams_work(world: World) -> None:
    world.stubs["openrouter"].fail_always(Fault(kind="delay", seconds=120))
    before = await gone_count(world)
    caller = await RawH2.connect(world.base)
    for path, payload in BODIES:
        caller.post_json(path, payload)
    await until(lambda: all_admitted(world))
    caller.abort()
    await check_freed(world, before)


async def test_a_retry_sleeping_its_backoff_stops_when_the_caller_goes(world: World) -> None:
    stub = world.stubs["openrouter"]
    stub.fail_next(Fault(kind="status", status=503))
    before = await gone_count(world)
    _reader, writer = await asyncio.open_connection(*world.base[7:].split(":"))
    writer.write(h1_request("/chat", {"model": MODEL, "messages": HELLO}))

    async def failed_once() -> bool:
        return len(stub.chats) == 1 and stub.in_flight == 0

    await until(failed_once)
    writer.close()  # during the 2 s backoff

    async def counted_gone() -> bool:
        return await gone_count(world) - before == 1

    await until(counted_gone, within=1.0)
    await asyncio.sleep(2.5)  # past the backoff: no second try, no fallback
    assert len(stub.chats) == 1
    assert world.stubs["opencode"].chats == []
