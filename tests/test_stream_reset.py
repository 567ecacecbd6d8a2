"""lakehouse.stream_reset against the installed Hypercorn: the internals it
relies on, and an HTTP/2 caller of the gateway whose upstream dies
mid-response getting RST_STREAM at once (real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from aiohttp import web
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

from lakehouse.server import tune_connections
from tests.gateway.test_app import gateway_config, running_gateway

pytestmark = pytest.mark.anyio
FINAL = (h2.events.StreamReset, h2.events.StreamEnded)


def test_the_hypercorn_internals_it_wraps_are_there() -> None:
    # Fails loudly when a Hypercorn upgrade moves what stream_reset relies on.
    assert callable(H2Protocol.stream_send) and callable(H2Protocol._flush)
    assert ASGIHTTPState.RESPONSE in ASGIHTTPState
    assert "state" in HTTPStream.__init__.__code__.co_names
    assert StreamClosed(stream_id=1).stream_id == 1
    tune_connections()
    assert getattr(H2Protocol.stream_send, "chatd_resetting", False)


@pytest.fixture
async def dying() -> AsyncIterator[str]:
    """An upstream that sends one chunk, then drops the connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"content":"Hel"}\n')
        await asyncio.sleep(0.2)
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_an_upstream_dying_mid_stream_resets_the_callers_h2_stream(dying: str) -> None:
    async with running_gateway(gateway_config({"/v1/chat": dying})) as base:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":scheme", "http"), (":authority", base), (":path", "/v1/chat")],
            end_stream=True,
        )
        writer.write(conn.data_to_send())
        seen: list[object] = []
        try:
            # Generous for a loaded CI, far below the ~80 s of a connection close.
            async with asyncio.timeout(15):
                while not any(
                    isinstance(e, h2.events.StreamReset | h2.events.StreamEnded) for e in seen
                ):
                    chunk = await reader.read(65536)
                    assert chunk, "connection closed instead of the stream being reset"
                    seen += conn.receive_data(chunk)
                    writer.write(conn.data_to_send())
        finally:
            writer.close()
    data = b"".join(e.data for e in seen if isinstance(e, h2.events.DataReceived))
    assert data == b'{"content":"Hel"}\n'
    assert not any(isinstance(e, h2.events.StreamEnded) for e in seen)
    [reset] = [e for e in seen if isinstance(e, h2.events.StreamReset)]
    assert reset.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
