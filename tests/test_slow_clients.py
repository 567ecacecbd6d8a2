"""Slow HTTP/1.1 clients through the real server: a head or a body that
stops arriving gets a 408 and a closed connection within the read
timeout; idle keep-alive is unchanged. Then the contract with the
installed Hypercorn and h11."""

from __future__ import annotations

import asyncio
import json

import h11
import hypercorn.protocol as hypercorn_protocols
import pytest
from hypercorn.protocol.h11 import H11Protocol

from lakehouse.connections import SLOW_CLIENT_NEEDS, installed_h11
from lakehouse.server import install_guards
from tests.stub_world import OneStub, one_stub
from tests.support import module_fixtures

# Both stacks: the read timeout is a fix, not part of the tuning.
pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

LIMIT = 1.0
BODY = json.dumps({"model": "qwen3.5:latest", "messages": [{"role": "user", "content": "hi"}]})
HEAD = b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"

# One chatd on the Ollama stub for the module, its read timeout LIMIT.
anyio_backend, chatd = module_fixtures(
    lambda: one_stub("ollama", {"chatd.server.read_timeout_secs": LIMIT}), name="chatd"
)


async def connect(chatd: OneStub) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = chatd[0].removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def answer_then_eof(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = await asyncio.wait_for(reader.read(), 10)
    return data, loop.time() - started


async def test_a_head_that_dribbles_past_the_limit_gets_408_and_closed(chatd: OneStub) -> None:
    reader, writer = await connect(chatd)
    writer.write(b"POST /chat HTTP/1.1\r\n")
    closed = asyncio.create_task(answer_then_eof(reader))
    for _ in range(20):  # a header byte every 0.2 s: never a pause of 1 s
        if closed.done():
            break
        writer.write(b"x")
        await asyncio.sleep(0.2)
    data, waited = await closed
    assert data.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in data
    assert waited < LIMIT + 2
    writer.close()


@pytest.mark.parametrize("declared", [100, 1048576])
async def test_a_body_that_stops_gets_408_and_closed(chatd: OneStub, declared: int) -> None:
    reader, writer = await connect(chatd)
    writer.write(HEAD + b"content-length: %d\r\n\r\n" % declared + b"{" * 10)
    data, waited = await answer_then_eof(reader)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert waited < LIMIT + 2
    writer.close()


async def test_a_body_that_keeps_coming_is_served_however_long(chatd: OneStub) -> None:
    reader, writer = await connect(chatd)
    body = BODY.encode()
    writer.write(HEAD + b"content-length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), len(body) // 4 + 1):  # 4 pieces, 0.4 s apart
        await asyncio.sleep(0.4)
        writer.write(body[i : i + len(body) // 4 + 1])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_idle_keep_alive_is_unchanged(chatd: OneStub) -> None:
    reader, writer = await connect(chatd)
    body = BODY.encode()
    request = HEAD + b"content-length: %d\r\n\r\n" % len(body) + body
    for _ in range(2):
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(next(v for k, v in _headers(head) if k == b"content-length"))
        await reader.readexactly(length)
        await asyncio.sleep(LIMIT * 2)  # idle, past the read timeout
    writer.close()


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [
        (k.strip().lower(), v.strip()) for k, v in (line.split(b":", 1) for line in lines if line)
    ]


def test_hypercorn_builds_each_http1_connection_from_the_timed_class() -> None:
    install_guards()
    # Picked per connection (tuned or stock server), guarded either way.
    choice = installed_h11()
    assert choice is not None and getattr(hypercorn_protocols, "H11Protocol") is choice  # noqa: B009
    for timed in (choice.tuned, choice.stock):
        assert getattr(timed, "chatd_guarded", False) and issubclass(timed, H11Protocol)
    assert all(hasattr(H11Protocol, name) for name in SLOW_CLIENT_NEEDS)
    # What the mixin reads of h11: a partial head is trailing data while
    # the client is IDLE; a partial body is SEND_BODY; IDLE/SEND_RESPONSE
    # on our side means nothing was answered.
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\n")
    assert conn.next_event() is h11.NEED_DATA
    assert conn.their_state is h11.IDLE and conn.trailing_data[0]
    conn.receive_data(b"content-length: 5\r\n\r\nab")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.Data)
    assert conn.their_state is h11.SEND_BODY and conn.our_state is h11.SEND_RESPONSE
