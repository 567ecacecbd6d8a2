"""The opencode provider's Messages and Responses streams against the Zen
stub on 127.0.0.1: connections given back, failures before the first item
as chat() raises them, stalls timed out, abandoned and cancelled streams
leaving no connection behind (as tests/test_streaming_providers.py checks
for every Chat Completions and Ollama stream)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.stubs import Fault, StubUpstream
from lakehouse.stubs.replies import reply_text
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta, Tool
from tests.support import build_provider

pytestmark = pytest.mark.anyio

KEY = "zen-stream-key-0123456789"
USER = "hello there friend"
MODELS = ("claude-opus-4-7", "gpt-5.4")


@dataclass
class World:
    stub: StubUpstream
    provider: Any
    model: str

    def stream(self) -> Any:
        request = ChatRequest(model=self.model, messages=[Message("user", USER)])
        return self.provider.stream(request, self.model)

    async def items(self) -> list[StreamDelta | ChatResponse]:
        return [item async for item in self.stream()]

    async def settled(self, open_connections: int = 0, within: float = 2.0) -> int:
        for _ in range(round(within / 0.01)):
            if self.stub.open_connections == open_connections:
                break
            await asyncio.sleep(0.01)
        return self.stub.open_connections


@contextlib.asynccontextmanager
async def world_of(model: str, timeout: float = 5) -> AsyncIterator[World]:
    async with StubUpstream("opencode", key=KEY) as stub:
        provider = build_provider("opencode", stub.base_url, key=KEY, timeout=timeout)
        await provider.start()
        try:
            yield World(stub, provider, model)
        finally:
            await provider.close()


@pytest.fixture(params=MODELS)
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with world_of(request.param) as w:
        yield w


async def test_deltas_add_up_and_the_connection_is_reused(world: World) -> None:
    for _ in range(3):
        *deltas, final = await world.items()
        assert isinstance(final, ChatResponse)
        assert "".join(d.content for d in deltas if isinstance(d, StreamDelta)) == final.content
        assert final.content == reply_text(USER)
    assert world.stub.open_connections == 1
    assert len(world.stub.chats) == 3


TOOL = msgspec.convert(
    {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "additionalProperties": False,
            },
        },
    },
    Tool,
)


async def test_tool_call_fragments_are_relayed_as_they_come(world: World) -> None:
    request = ChatRequest(model=world.model, messages=[Message("user", USER)], tools=[TOOL])
    items = [item async for item in world.provider.stream(request, world.model)]
    *deltas, final = items
    chunks = [c for d in deltas if isinstance(d, StreamDelta) for c in d.tool_calls or ()]
    # The stub sends the arguments in three fragments; each is passed on.
    assert len(chunks) == 4
    assert (chunks[0].index, chunks[0].name) == (0, "f") and chunks[0].id
    assert all(c.index == 0 and c.id is None for c in chunks[1:])
    assert json.loads("".join(c.arguments for c in chunks)) == {"q": USER}
    assert isinstance(final, ChatResponse) and final.done_reason == "tool_calls"
    assert final.tool_calls is not None
    assert (final.tool_calls[0].id, final.tool_calls[0].function.arguments) == (
        chunks[0].id,
        {"q": USER},
    )


PRE_STREAM = [
    Fault(kind="status", status=529),
    Fault(kind="status", status=429, retry_after="7"),
    Fault(kind="status", status=400),
    Fault(kind="quota"),
    Fault(kind="reset"),
    Fault(kind="html"),
    Fault(kind="garbage"),
]


@pytest.mark.parametrize("fault", PRE_STREAM, ids=lambda f: f"{f.kind}-{f.status}")
async def test_failures_before_the_first_item_match_chat(world: World, fault: Fault) -> None:
    world.stub.fail_next(fault)
    with pytest.raises(errors.ChatdError) as by_chat:
        await world.provider.chat(
            ChatRequest(model="m", messages=[Message("user", USER)]), world.model
        )
    world.stub.fail_next(fault)
    with pytest.raises(errors.ChatdError) as by_stream:
        await anext(world.stream())
    assert type(by_stream.value) is type(by_chat.value)
    assert by_stream.value.upstream_status == by_chat.value.upstream_status
    assert by_stream.value.retry_after == by_chat.value.retry_after
    assert KEY not in str(by_stream.value)


async def test_stall_mid_stream_times_out(world: World) -> None:
    async with world_of(world.model, timeout=0.3) as w:
        w.stub.fail_next(Fault(kind="stall", after=5, seconds=3))
        started = time.monotonic()
        stream = w.stream()
        got = []
        with pytest.raises(errors.UpstreamTimeout):
            async for item in stream:
                got.append(item)
        assert got and time.monotonic() - started < 2
        assert await w.settled() == 0


async def test_aborted_and_cancelled_streams_leak_no_connections(world: World) -> None:
    world.stub.fail_always(Fault(kind="stall", after=5, seconds=30))
    async with asyncio.timeout(20):
        for _ in range(50):
            stream = world.stream()
            assert isinstance(await anext(stream), StreamDelta)
            await stream.aclose()
        assert await world.settled() == 0
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in world.stream():
                started.set()

        for _ in range(20):
            started.clear()
            task = asyncio.create_task(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await world.settled() == 0
