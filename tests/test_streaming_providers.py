"""Provider.stream of every built-in plugin against its protocol stub on
127.0.0.1: what is sent, what comes back, each fault, that abandoned
streams never leave a connection behind and that a reader keeps nothing of
a long answer's text (the world and the checks shared with
tests/test_streaming_zen.py are in tests/stream_world.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from lakehouse import errors, request_id
from lakehouse.stubs import Fault
from lakehouse.stubs.replies import generate, reply_text, thinking_text
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta
from tests.stream_world import KEY, PRE_STREAM, STALL, USER, World, world_of
from tests.support import build_provider

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

OLLAMA = ("ollama", "ollama_cloud")
OPENAI = ("openrouter", "opencode", "kimi")
ALL = (*OLLAMA, *OPENAI)


@pytest.fixture(params=ALL)
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with world_of(request.param) as w:
        yield w


def split(items: list[StreamDelta | ChatResponse]) -> tuple[list[StreamDelta], ChatResponse]:
    *deltas, final = items
    assert all(isinstance(d, StreamDelta) for d in deltas)
    assert isinstance(final, ChatResponse)
    return deltas, final  # type: ignore[return-value]


def expected(thinks: bool, budget: int | None = None) -> Any:
    return generate(
        reply_text(USER), thinking=thinking_text(USER) if thinks else None, budget=budget
    )


# -- happy path ---------------------------------------------------------------


async def test_deltas_add_up_to_the_answer_and_the_end_keeps_none_of_it(world: World) -> None:
    think = True if world.flavour in OLLAMA else None
    deltas, final = split(await world.items(think=think))
    gen = expected(thinks=True)
    assert len(deltas) == len(gen.thinking) + len(gen.content)
    assert "".join(d.content for d in deltas) == gen.content_text
    assert "".join(d.reasoning for d in deltas) == gen.thinking_text
    # The text went out in the deltas: nothing of it is kept to the end.
    assert (final.content, final.reasoning) == ("", None)
    # Reasoning never leaks into content, and each delta carries one of them.
    assert all(bool(d.content) != bool(d.reasoning) for d in deltas)
    assert (final.done_reason, final.prompt_tokens, final.completion_tokens) == (
        "stop",
        3,
        gen.count,
    )
    assert (final.model, final.provider) == (world.model, world.flavour)


async def test_a_long_answer_is_not_kept_as_it_streams(world: World) -> None:
    assert await world.decoded_held_after(pieces=3000) < 20_000


async def test_what_reaches_the_upstream(world: World) -> None:
    token = request_id.current.set("req-stream-1")
    try:
        await world.items()
    finally:
        request_id.current.reset(token)
    (call,) = world.stub.chats
    body = call.json
    assert body["stream"] is True
    assert call.headers["x-request-id"] == "req-stream-1"
    assert call.headers["content-type"] == "application/json"
    if world.flavour in OLLAMA:
        assert body["think"] is False
        assert "stream_options" not in body
    else:
        assert body["stream_options"] == {"include_usage": True}
        assert call.headers["authorization"] == f"Bearer {KEY}"
    if world.flavour == "ollama_cloud":
        assert (call.path, body["prompt"]) == ("/api/generate", USER)


async def test_ollama_without_think_streams_only_content() -> None:
    async with world_of("ollama") as w:
        deltas, _ = split(await w.items())
    assert all(not d.reasoning for d in deltas)
    assert "".join(d.content for d in deltas) == expected(thinks=False).content_text


async def test_budget_spent_on_reasoning_ends_with_length(world: World) -> None:
    think = True if world.flavour in OLLAMA else None
    deltas, final = split(await world.items(think=think, max_tokens=4))
    assert (final.done_reason, final.completion_tokens) == ("length", 4)
    assert all(not d.content for d in deltas)
    assert "".join(d.reasoning for d in deltas) == expected(thinks=True, budget=4).thinking_text
    assert len(deltas) == 4


async def test_finished_streams_give_their_connection_back(world: World) -> None:
    # Read to the end (Zen's cost event after [DONE] included), so the
    # pool reuses one connection rather than opening one per stream.
    for _ in range(3):
        await world.items()
    assert world.stub.open_connections == 1
    assert len(world.stub.chats) == 3


# -- failures before the first item: what chat() raises ---------------------

FAULTS = [
    *PRE_STREAM,
    Fault(kind="status", status=503),
    Fault(kind="redirect"),
    Fault(kind="wrong_content_type"),
    Fault(kind="midstream_error", after=0),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.status}")
async def test_failures_before_the_first_item_match_chat(world: World, fault: Fault) -> None:
    await world.check_fails_before_the_first_item_as_chat(fault)


async def test_empty_choices_is_a_bad_response() -> None:
    async with world_of("opencode") as w:
        w.stub.fail_next(Fault(kind="empty_choices"))
        with pytest.raises(errors.UpstreamBadResponse, match="no choices"):
            await w.items()


async def test_slow_headers_time_out(world: World) -> None:
    async with world_of(world.flavour, timeout=0.2) as w:
        w.stub.fail_next(Fault(kind="delay", seconds=20))
        started = time.monotonic()
        with pytest.raises(errors.UpstreamTimeout):
            await w.items()
        # The 0.2 s timeout, not the upstream's 20 s.
        assert time.monotonic() - started < 10


# -- failures after the first item --------------------------------------------


async def test_midstream_error_after_deltas(world: World) -> None:
    world.stub.fail_next(Fault(kind="midstream_error", after=4, message="GPU fell over"))
    got, exc = await world.until_error()
    assert got and all(isinstance(i, StreamDelta) for i in got)
    assert type(exc) is errors.UpstreamError
    assert "GPU fell over" in str(exc) and exc.provider == world.flavour


@pytest.mark.parametrize("flavour", ALL[1:])  # local Ollama has no key
async def test_midstream_error_text_never_shows_the_key(flavour: str) -> None:
    async with world_of(flavour) as w:
        w.stub.fail_next(Fault(kind="midstream_error", after=4, message=f"bad key {KEY}"))
        _, exc = await w.until_error()
    assert "bad key" in str(exc) and KEY not in str(exc)


async def test_truncated_stream_is_a_bad_response(world: World) -> None:
    world.stub.fail_next(Fault(kind="truncate", after=5))
    got, exc = await world.until_error()
    assert got and all(isinstance(i, StreamDelta) for i in got)
    assert isinstance(exc, errors.UpstreamBadResponse)
    assert await world.settled() == 0


async def test_stall_mid_stream_times_out(world: World) -> None:
    async with world_of(world.flavour, timeout=0.3) as w:
        w.stub.fail_next(Fault(kind="stall", after=5, seconds=3))
        started = time.monotonic()
        got, exc = await w.until_error()
        assert time.monotonic() - started < 2
        assert got and isinstance(exc, errors.UpstreamTimeout)
        assert "0.3s" in str(exc)
        assert await w.settled() == 0


async def test_stall_before_the_first_item_times_out(world: World) -> None:
    async with world_of(world.flavour, timeout=0.3) as w:
        w.stub.fail_next(Fault(kind="stall", after=0, seconds=3))
        with pytest.raises(errors.UpstreamTimeout):
            await anext(w.stream())


TRICKLE = {
    "ollama": (
        "/api/chat",
        "application/x-ndjson",
        [b'{"message":{"content":"%d "},"done":false}\n' % i for i in range(5)]
        + [b'{"message":{"content":""},"done":true,"done_reason":"stop","eval_count":5}\n'],
    ),
    "openrouter": (
        "/chat/completions",
        "text/event-stream",
        [b'data: {"choices":[{"delta":{"content":"%d "}}]}\n\n' % i for i in range(5)]
        + [b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"],
    ),
}


@pytest.mark.parametrize("flavour", TRICKLE)
async def test_the_timeout_bounds_each_wait_not_the_whole_stream(flavour: str) -> None:
    path, content_type, frames = TRICKLE[flavour]

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for frame in frames:
            await asyncio.sleep(0.1)
            await response.write(frame)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(path, trickle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    provider = build_provider(flavour, f"http://127.0.0.1:{port}", key=KEY, timeout=0.3)
    await provider.start()
    try:
        started = time.monotonic()
        request = ChatRequest(model="m", messages=[Message("user", USER)])
        items = [item async for item in provider.stream(request, "m")]
        assert time.monotonic() - started > 0.5  # well over the timeout in all
        deltas, final = split(items)
        assert "".join(d.content for d in deltas) == "0 1 2 3 4 "
        assert final.done_reason == "stop"
    finally:
        await provider.close()
        await runner.cleanup()


# -- abandoned streams ----------------------------------------------------------


async def test_aborted_streams_leak_no_connections(world: World) -> None:
    # The stub holds every reply open after a few frames, so each stream is
    # abandoned half-read: its connection must be closed, not pooled.
    world.stub.fail_always(STALL)
    async with asyncio.timeout(20):
        await world.abandon_streams(200)
        assert await world.settled() == 0
    world.stub.clear_faults()
    _, final = split(await world.items())
    assert final.done_reason == "stop"


async def test_aborted_short_streams_leave_at_most_one_pooled(world: World) -> None:
    # A short reply may arrive whole with its first read; then the
    # connection is complete and goes back to the pool, to be reused.
    await world.abandon_streams(200)
    assert await world.settled(open_connections=1) <= 1


async def test_cancelled_consumers_leak_no_connections(world: World) -> None:
    world.stub.fail_always(STALL)
    async with asyncio.timeout(20):
        await world.cancel_consumers(50)
        assert await world.settled() == 0


async def test_a_consumer_that_stops_at_the_final_reply_leaks_nothing(world: World) -> None:
    for _ in range(20):
        stream = world.stream()
        async for item in stream:
            if isinstance(item, ChatResponse):
                break
        await stream.aclose()
    assert await world.settled(open_connections=1) <= 1
