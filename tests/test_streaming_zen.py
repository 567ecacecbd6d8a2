"""The opencode provider's Messages and Responses streams against the Zen
stub on 127.0.0.1: connections given back, failures before the first item
as chat() raises them, stalls timed out, abandoned and cancelled streams
leaving no connection behind, nothing of a long answer's text kept (as
tests/test_streaming_providers.py checks for every Chat Completions and
Ollama stream)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from lakehouse import errors
from lakehouse.stubs import Fault
from lakehouse.stubs.replies import reply_text
from lakehouse.wire import ChatResponse, StreamDelta, Tool
from tests.stream_world import PRE_STREAM, STALL, USER, World, world_of

pytestmark = pytest.mark.anyio

MODELS = ("claude-opus-4-7", "gpt-5.4")


@pytest.fixture(params=MODELS)
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with world_of("opencode", request.param) as w:
        yield w


async def test_deltas_add_up_and_the_connection_is_reused(world: World) -> None:
    for _ in range(3):
        *deltas, final = await world.items()
        assert isinstance(final, ChatResponse)
        text = "".join(d.content for d in deltas if isinstance(d, StreamDelta))
        assert (text, final.content, final.done_reason) == (reply_text(USER), "", "stop")
    assert world.stub.open_connections == 1
    assert len(world.stub.chats) == 3


async def test_a_long_answer_is_not_kept_as_it_streams(world: World) -> None:
    assert await world.decoded_held_after(pieces=3000) < 20_000


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
    *deltas, final = await world.items(tools=[TOOL])
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


FAULTS = [*PRE_STREAM, Fault(kind="status", status=529)]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.status}")
async def test_failures_before_the_first_item_match_chat(world: World, fault: Fault) -> None:
    await world.check_fails_before_the_first_item_as_chat(fault)


async def test_stall_mid_stream_times_out(world: World) -> None:
    async with world_of("opencode", world.model, timeout=0.3) as w:
        w.stub.fail_next(Fault(kind="stall", after=5, seconds=3))
        started = time.monotonic()
        got, exc = await w.until_error()
        assert got and isinstance(exc, errors.UpstreamTimeout)
        assert time.monotonic() - started < 2
        assert await w.settled() == 0


async def test_aborted_and_cancelled_streams_leak_no_connections(world: World) -> None:
    world.stub.fail_always(STALL)
    async with asyncio.timeout(20):
        await world.abandon_streams(50)
        assert await world.settled() == 0
        await world.cancel_consumers(20)
        assert await world.settled() == 0
