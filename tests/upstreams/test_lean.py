"""The contract ``lakehouse.upstreams.lean`` holds aiohttp to, checked
against the real installed aiohttp on real loopback sockets: the lean
request sends the same bytes as ``ClientSession.request``, reads the same
replies, pools and times out the same way.

A failure here after bumping aiohttp means the lean path may no longer
behave like the session's: see UPGRADING.md before touching
``CHECKED_VERSIONS``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from lakehouse.upstreams import lean
from lakehouse.upstreams.http import _lean_usable, session_send

pytestmark = pytest.mark.anyio

Reply = Callable[[bytes], bytes]
CONNECT = aiohttp.ClientTimeout(total=None, connect=5)


class Upstream:
    """A raw HTTP/1.1 server on 127.0.0.1: records each request's bytes and
    the connection it came on, answers with ``reply(request)``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                writer.write(self.reply(request))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Reply], Awaitable[Upstream]]]:
    made: list[Upstream] = []

    async def start(reply: Reply) -> Upstream:
        up = Upstream(reply)
        up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
        made.append(up)
        return up

    yield start
    for up in made:
        assert up.server is not None
        up.server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # As HTTPClient opens its session.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False
    ) as session:
        yield session


def fixed(data: bytes) -> Reply:
    return lambda request: data


HEADERS = CIMultiDict({"Content-Type": "application/json", "X-Request-ID": "r1"})


async def both(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None
) -> list[tuple[int, dict[str, str], bytes]]:
    """The same request through the lean path and through the session."""
    out = []
    lean_resp = await lean.send(session, method, URL(url), HEADERS, body, CONNECT, 5)
    stock_resp = await session_send(session, method, URL(url), HEADERS, body, CONNECT, 5)
    for resp in (lean_resp, stock_resp):
        body_read = await resp.read()
        resp.release()
        out.append((resp.status, dict(resp.headers), body_read))
    return out


def test_the_installed_aiohttp_keeps_the_contract() -> None:
    assert lean.contract_problems() == []


def test_another_version_is_refused_loudly(caplog: pytest.LogCaptureFixture) -> None:
    assert lean.contract_problems("3.15.0") == [
        "aiohttp 3.15.0 is not a version the contract tests passed on"
    ]
    with caplog.at_level(logging.WARNING, "chatd.upstream"):
        assert _lean_usable("up") is True
        assert not caplog.records
        assert _lean_usable("up", "3.15.0") is False
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "aiohttp 3.15.0" in message and "ClientSession.request" in message
    assert "UPGRADING.md" in message


@pytest.mark.parametrize("method,body", [("POST", b'{"a":1}'), ("GET", None)])
async def test_the_same_bytes_go_out_as_through_the_session(
    upstream: Callable[[Reply], Awaitable[Upstream]],
    session: aiohttp.ClientSession,
    method: str,
    body: bytes | None,
) -> None:
    up = await upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    await both(session, method, up.url + "/api/chat", body)
    lean_sent, stock_sent = up.requests
    assert lean_sent == stock_sent
    assert lean_sent.startswith(f"{method} /api/chat HTTP/1.1\r\n".encode())


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(gzip.compress(b"zipped")), gzip.compress(b"zipped")),
        b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["length", "chunked", "429", "gzip", "redirect-not-followed"],
)
async def test_replies_read_the_same_as_through_the_session(
    upstream: Callable[[Reply], Awaitable[Upstream]],
    session: aiohttp.ClientSession,
    reply: bytes,
) -> None:
    up = await upstream(fixed(reply))
    (lean_reply, stock_reply) = await both(session, "POST", up.url + "/x", b"{}")
    for got in (lean_reply, stock_reply):
        got[1].pop("Date", None)
    assert lean_reply == stock_reply
    assert len(up.requests) == 2


async def test_released_connections_go_back_to_the_pool(
    upstream: Callable[[Reply], Awaitable[Upstream]], session: aiohttp.ClientSession
) -> None:
    up = await upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    for _ in range(3):
        await both(session, "POST", up.url + "/x", b"{}")
    assert len(up.requests) == 6
    assert up.connections == 1


async def test_read_timeout_bounds_each_wait_for_bytes(
    session: aiohttp.ClientSession,
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        await asyncio.sleep(30)

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x")
    try:
        resp = await lean.send(session, "GET", url, HEADERS, None, CONNECT, 0.2)
        assert resp.status == 200
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(resp.read(), 20)  # the read timeout fires first
        resp.close()
    finally:
        server.close()


async def test_a_refused_connection_is_a_connector_error(session: aiohttp.ClientSession) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(aiohttp.ClientConnectorError):
        await lean.send(session, "GET", URL(f"http://127.0.0.1:{port}/"), HEADERS, None, CONNECT, 5)


def test_the_timer_is_a_context_manager() -> None:
    timer = aiohttp.helpers.TimerNoop()
    with timer:
        pass


@pytest.mark.parametrize("tuned", [True, False])
def test_the_switch_picks_the_request_path(tuned: bool) -> None:
    from lakehouse.registry import build_registry
    from tests.support import make_config, provider_table

    config = make_config(
        overrides={
            **provider_table("ollama", "http://127.0.0.1:9"),
            "chatd.server.tuned": tuned,
        }
    )
    provider: Any = build_registry(config, {}).get("ollama")
    assert provider._http._lean is tuned
