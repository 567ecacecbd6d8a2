"""HTTPClient's request path (the lean one or the stock one, as the run's
stack says), against raw HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest

from lakehouse.errors import UpstreamError, UpstreamUnreachable
from lakehouse.upstreams.contract import ProviderContext
from lakehouse.upstreams.http import HTTPClient
from tests.support import TUNED

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
BODY = b'{"message":{"content":"hi"}}\n'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, body included; its method."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
    return head.split(b" ", 1)[0]


async def serving(
    handler: Handler,
    config_headers: Mapping[str, str] | None = None,
    plugin_headers: Mapping[str, str] | None = None,
) -> tuple[asyncio.Server, HTTPClient]:
    """A raw server on 127.0.0.1 and a started client for it; the headers
    are those of the provider's table and of its plugin."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ctx = ProviderContext(
        "up", f"http://127.0.0.1:{port}", None, 5, headers=dict(config_headers or {}), tuned=TUNED
    )
    client = HTTPClient(ctx, headers=plugin_headers)
    await client.start()
    return server, client


@pytest.fixture
async def until_close() -> AsyncIterator[HTTPClient]:
    """An HTTP/1.0-style server: no Content-Length, the body ends with the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY)
        await writer.drain()
        writer.close()

    server, client = await serving(handler)
    yield client
    await client.close()
    server.close()


async def test_a_body_ended_by_the_connection_is_read_whole(until_close: HTTPClient) -> None:
    reply = await until_close.post_json("/api/chat", b"{}")
    assert reply.status == 200
    assert reply.body == BODY


async def test_a_stream_ended_by_the_connection_is_read_whole(until_close: HTTPClient) -> None:
    async with until_close.stream_post("/api/chat", b"{}", error=lambda r: UpstreamError("x")) as s:
        assert b"".join([chunk async for chunk in s]) == BODY


@pytest.fixture
async def drops_reused() -> AsyncIterator[tuple[HTTPClient, list[bytes]]]:
    """Answers a connection's first request, then closes it when the next
    arrives (its keep-alive timeout racing ours)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            seen.append(await read_request(reader))
        writer.close()

    server, client = await serving(handler)
    yield client, seen
    await client.close()
    server.close()


async def test_a_get_on_a_stale_pooled_connection_is_tried_again(
    drops_reused: tuple[HTTPClient, list[bytes]],
) -> None:
    client, seen = drops_reused
    assert (await client.request("GET", "/api/version")).status == 200
    assert (await client.request("GET", "/api/version")).status == 200
    assert seen == [b"GET", b"GET", b"GET"]  # the dropped one, then a fresh connection


async def test_a_post_on_a_stale_pooled_connection_is_not_sent_twice(
    drops_reused: tuple[HTTPClient, list[bytes]],
) -> None:
    client, seen = drops_reused
    assert (await client.post_json("/api/chat", b"{}")).status == 200
    with pytest.raises(UpstreamUnreachable, match="up connection failed"):
        await client.post_json("/api/chat", b"{}")
    assert seen == [b"POST", b"POST"]


async def test_headers_merge_case_insensitively() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        writer.close()

    server, client = await serving(
        handler, {"content-type": "text/x-conf"}, {"Authorization": "Bearer k"}
    )
    try:
        await client.post_json("/api/chat", b"{}", headers={"AUTHORIZATION": "Bearer other"})
    finally:
        await client.close()
        server.close()
    lines = [line.lower() for line in heads[0].split(b"\r\n")]
    assert [line for line in lines if line.startswith(b"content-type:")] == [
        b"content-type: text/x-conf"
    ]
    assert [line for line in lines if line.startswith(b"authorization:")] == [
        b"authorization: bearer other"
    ]
