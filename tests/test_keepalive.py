"""The keep-alive idle timer, through the real server on raw sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from hypercorn.asyncio import tcp_server

from lakehouse.config import Config
from lakehouse.keepalive import IdleWatch
from lakehouse.stubs import Fault, StubUpstream
from tests.support import make_config, provider_table, running_chatd

pytestmark = pytest.mark.anyio

BODY = b'{"model":"qwen3.5:latest","messages":[{"role":"user","content":"hi"}]}'
REQUEST = (
    b"POST /chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
KEEP_ALIVE = 1.0


@pytest.fixture
async def stub() -> AsyncIterator[StubUpstream]:
    stub = StubUpstream("ollama")
    await stub.start()
    try:
        yield stub
    finally:
        await stub.stop()


def config_for(stub: StubUpstream) -> Config:
    return make_config(
        overrides={
            **provider_table("ollama", stub.base_url),
            "chatd.probe_interval_secs": 0,
            "chatd.server.keep_alive_secs": KEEP_ALIVE,
        }
    )


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One request on an open connection; the response's head and body."""
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_hypercorn_uses_the_idle_watch(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)):
        assert tcp_server.AsyncioSingleTask is IdleWatch


async def test_idle_connection_closes_after_keep_alive(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        for _ in range(3):
            assert b" 200 " in await exchange(reader, writer)
        idle_from = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        idle_for = time.monotonic() - idle_from
        writer.close()
        assert KEEP_ALIVE * 0.9 <= idle_for < KEEP_ALIVE * 1.6


async def test_each_request_restarts_the_idle_clock(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        # Requests spaced at 2/3 of the keep-alive span keep the connection
        # open well past it.
        for _ in range(5):
            assert b" 200 " in await exchange(reader, writer)
            await asyncio.sleep(KEEP_ALIVE * 2 / 3)
        assert b" 200 " in await exchange(reader, writer)
        writer.close()


async def test_a_request_longer_than_keep_alive_is_not_cut(stub: StubUpstream) -> None:
    stub.fail_next(Fault(kind="delay", seconds=KEEP_ALIVE * 2.5))
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        answer = await asyncio.wait_for(exchange(reader, writer), 10)
        assert b" 200 " in answer and b'"content"' in answer
        writer.close()


async def test_shutdown_closes_idle_connections_at_once(stub: StubUpstream) -> None:
    config = make_config(
        overrides={
            **provider_table("ollama", stub.base_url),
            "chatd.probe_interval_secs": 0,
            "chatd.server.keep_alive_secs": 60,
        }
    )
    async with running_chatd(config) as base:
        reader, writer = await connect(base)
        assert b" 200 " in await exchange(reader, writer)
        stopping = time.monotonic()
    # running_chatd has stopped the server: the idle connection was closed
    # by it, long before its 60 s keep-alive.
    assert time.monotonic() - stopping < 5
    assert await asyncio.wait_for(reader.read(), 1) == b""
    writer.close()


async def test_no_task_is_left_per_request(stub: StubUpstream) -> None:
    async with running_chatd(config_for(stub)) as base:
        reader, writer = await connect(base)
        assert b" 200 " in await exchange(reader, writer)
        before = len(asyncio.all_tasks())
        for _ in range(200):
            assert b" 200 " in await exchange(reader, writer)
        assert len(asyncio.all_tasks()) <= before
        writer.close()
