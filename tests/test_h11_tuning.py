"""lakehouse.h11_tuning: the contract with the installed Hypercorn and h11
(the frame h11 would write, the states it would keep, the names looked
up), and a chunked stream through the real server over HTTP/1.1, tuned
and stock, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
from h11._writers import ChunkedWriter
from hypercorn import protocol as hypercorn_protocol
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol import h11 as hypercorn_h11

from lakehouse import connections, server
from lakehouse.h11_tuning import chunk_frame, direct_chunks_possible
from tests.protocols import built, lifespan, picked_per_config, recording, stock_in_place, tuned_by
from tests.support import make_config

pytestmark = pytest.mark.anyio

STOCK = hypercorn_h11.H11Protocol
# The protocol Hypercorn builds for a connection of a config; whether it is chatd's.
protocol_for = functools.partial(built, "H11Protocol")
runs_tuned = functools.partial(tuned_by, "TunedH11Protocol")
CHUNKS = [b"[%03d]" % i * (i % 7 + 1) for i in range(40)]  # 5 to 35 bytes
SIZES = [1, 9, 10, 15, 16, 17, 255, 256, 4095, 4096, 65537]


# --------------------------------------------------------------------------- contract


def sending_body(headers: list[tuple[bytes, bytes]], method: bytes = b"GET") -> h11.Connection:
    """A server-side h11 connection that has sent a 200 with ``headers``."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(method + b" / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    conn.send(h11.Response(status_code=200, headers=headers))
    return conn


@pytest.mark.parametrize("size", SIZES)
def test_the_frame_is_the_one_h11_writes(size: int) -> None:
    conn = sending_body([(b"content-type", b"application/x-ndjson")])
    assert direct_chunks_possible(conn)
    writer, states = conn._writer, dict(conn.states)
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert conn.send(h11.Data(data=data)) == chunk_frame(data)
    # Data in SEND_BODY changes nothing: skipping it leaves h11 where it was.
    assert conn._writer is writer and conn.states == states
    assert conn.our_state is h11.SEND_BODY
    # h11 ends the body as ever after chunks it never saw.
    assert conn.send(h11.EndOfMessage()) == b"0\r\n\r\n"


def test_only_a_chunked_body_under_way_goes_direct() -> None:
    # A length: h11 counts the bytes, so they must go through it.
    assert not direct_chunks_possible(sending_body([(b"content-length", b"5")]))
    # HEAD: h11 frames no body at all.
    assert not direct_chunks_possible(sending_body([], method=b"HEAD"))
    conn = h11.Connection(h11.SERVER)
    assert not direct_chunks_possible(conn)  # nothing sent yet
    conn = sending_body([])
    assert type(conn._writer) is ChunkedWriter
    conn.send(h11.EndOfMessage())
    assert not direct_chunks_possible(conn)  # done
    assert not direct_chunks_possible(object())  # Hypercorn's WebSocket stand-in


def test_hypercorn_picks_the_h11_protocol_by_its_module_name_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Hypercorn sends each body message as an h11.Data through this method.
    assert "_send_h11_event" in STOCK.stream_send.__code__.co_names
    stock_in_place(monkeypatch, "H11Protocol", STOCK)
    monkeypatch.setattr(hypercorn_protocol, "H2Protocol", hypercorn_protocol.H2Protocol)
    assert server.tune_connections() is True
    picked_per_config("H11Protocol", "TunedH11Protocol", STOCK)
    # The guards went in front of both, and installing again keeps it all.
    assert server.install_guards() is True
    assert getattr(type(protocol_for(HypercornConfig())), "chatd_guarded", False)
    assert runs_tuned(protocol_for(server.ServerConfig()))
    assert getattr(type(protocol_for(server.ServerConfig())), "chatd_guarded", False)


def test_the_contract_names_what_the_tuning_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert connections.h11_contract_problems() == []

    monkeypatch.setattr(STOCK, "stream_send", lambda self, event: None)
    assert connections.h11_contract_problems() == [
        "H11Protocol.stream_send is not a coroutine function"
    ]


# --------------------------------------------------------------------------- behaviour


async def streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with CHUNKS, one body message each (and an empty one after
    each); chunked, or with a Content-Length on ``/length``."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    length = scope["path"] == "/length"
    headers = [(b"content-type", b"text/plain")]
    if length:
        headers.append((b"content-length", b"%d" % len(b"".join(CHUNKS))))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# Which stack the server runs (chatd.server.tuned).
STACKS = ["tuned", "stock"]


@pytest.fixture
def through_h11(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of body data that went through h11's Connection.send."""
    sent: list[int] = []

    def record(event: Any) -> None:
        if type(event) is h11.Data:
            sent.append(len(event.data))

    recording(monkeypatch, h11.Connection, "send", record)
    return sent


@contextlib.asynccontextmanager
async def serving(flavour: str) -> AsyncIterator[int]:
    sock = server.bound_socket()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    config = make_config(overrides={"chatd.server.tuned": flavour == "tuned"})
    task = asyncio.create_task(server.serve(streaming_app, config, sock, stop.wait))
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        sock.detach()


async def raw_get(port: int, path: str, times: int = 2) -> list[bytes]:
    """``times`` GETs of ``path`` on one keep-alive connection: each whole
    response as it came off the wire (head and body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        async with asyncio.timeout(30):
            for _ in range(times):
                writer.write(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
                conn = h11.Connection(h11.CLIENT)
                conn.send(h11.Request(method="GET", target=path, headers=[("host", "t")]))
                raw = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        assert data, "connection closed mid-response"
                        raw += data
                        conn.receive_data(data)
                    elif type(event) is h11.EndOfMessage:
                        break
                answers.append(bytes(raw))
    finally:
        writer.close()
    return answers


def body_of(raw: bytes) -> tuple[bytes, bytes]:
    """The head and the de-chunked body of one raw chunked response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return head, bytes(body)
        body += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


@pytest.mark.parametrize("flavour", STACKS)
async def test_a_chunked_stream_is_the_same_bytes_on_either_stack(
    flavour: str, through_h11: list[int]
) -> None:
    async with serving(flavour) as port:
        answers = await raw_get(port, "/chunked")
    for raw in answers:  # the second one on a reused connection
        head, body = body_of(raw)
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
        assert body == b"".join(CHUNKS)
        # One frame per body message, empty ones sent as nothing.
        assert raw.count(b"\r\n") == 2 * len(CHUNKS) + head.count(b"\r\n") + 4
    if flavour == "tuned":
        assert through_h11 == []  # every chunk framed directly
    else:
        assert sorted(through_h11) == sorted([len(c) for c in CHUNKS] * 2)


@pytest.mark.parametrize("flavour", STACKS)
async def test_a_body_with_a_length_stays_with_h11(flavour: str, through_h11: list[int]) -> None:
    async with serving(flavour) as port:
        [raw] = await raw_get(port, "/length", times=1)
    assert raw.endswith(b"\r\n\r\n" + b"".join(CHUNKS))
    assert sorted(through_h11) == sorted(len(c) for c in CHUNKS)
