"""Hypercorn's HTTP/2 layer as chatd runs it (lakehouse.h2_tuning): the
contract with the installed Hypercorn and h2, and the behaviour through the
real server over h2c, tuned and stock."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import hpack
import pytest
from hpack import NeverIndexedHeaderTuple
from hypercorn import protocol as hypercorn_protocol
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol import h2 as hypercorn_h2

from lakehouse import connections, server
from lakehouse.h2_tuning import PlainEncoder, outbound_headers, request_headers_ok
from tests import support
from tests.h2_client import exchange
from tests.support import make_config

pytestmark = pytest.mark.anyio

STOCK = hypercorn_h2.H2Protocol
CHUNKS = [b"[%03d]" % i * 5 for i in range(40)]  # 25 bytes each
ODD_HEADERS = [
    (b"X-Custom", b"yes"),
    (b"connection", b"close"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"te", b"gzip"),
]


# --------------------------------------------------------------------------- contract


def protocol_for(config: HypercornConfig) -> Any:
    """The HTTP/2 protocol Hypercorn builds for a connection of ``config``."""
    return hypercorn_protocol.H2Protocol(
        None, config, WorkerContext(None), None, None, False, None, None, None
    )


def runs_tuned(protocol: Any) -> bool:
    """Whether ``protocol`` (chatd's fixes in front or not) is the tuned one."""
    return "TunedH2Protocol" in [c.__name__ for c in type(protocol).__mro__]


def test_hypercorn_picks_the_h2_protocol_by_its_module_name_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tune_h2 swaps the name in hypercorn.protocol; ProtocolWrapper must
    # look it up there when a connection starts (also on an h2c upgrade).
    wrapper = hypercorn_protocol.ProtocolWrapper
    assert "H2Protocol" in wrapper.__init__.__code__.co_names
    assert "H2Protocol" in wrapper.handle.__code__.co_names
    monkeypatch.setattr(hypercorn_protocol, "H2Protocol", STOCK)
    assert server.tune_h2() is True
    # Chosen per connection by its config, as the TCPServer is: a tuned
    # server's connections get the subclass, a stock server's Hypercorn's own.
    tuned = protocol_for(server.ServerConfig())
    assert isinstance(tuned, STOCK) and runs_tuned(tuned)
    assert tuned.connection.config.validate_inbound_headers is False
    assert not runs_tuned(protocol_for(HypercornConfig()))
    assert server.tune_h2() is True  # idempotent
    assert not runs_tuned(protocol_for(HypercornConfig()))
    assert runs_tuned(protocol_for(server.ServerConfig()))


def test_every_serving_process_gets_the_tuned_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned workers call tune_connections (lakehouse.asgi); it brings the
    # HTTP/2 tuning with it.
    monkeypatch.setattr(hypercorn_protocol, "H2Protocol", STOCK)
    assert server.tune_connections() is True
    assert hypercorn_protocol.H2Protocol is not STOCK
    assert runs_tuned(protocol_for(server.ServerConfig()))


@pytest.mark.parametrize(
    ("hypercorn_version", "h2_version", "named"),
    [("0.19.0", None, "Hypercorn 0.19.0"), (None, "5.0.0", "h2 5.0.0")],
)
def test_an_unchecked_version_serves_stock_http2_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    hypercorn_version: str | None,
    h2_version: str | None,
    named: str,
) -> None:
    monkeypatch.setattr(hypercorn_protocol, "H2Protocol", STOCK)
    with caplog.at_level("WARNING", logger="chatd.server"):
        assert server.tune_h2(hypercorn_version, h2_version) is False
    assert hypercorn_protocol.H2Protocol is STOCK
    assert type(protocol_for(server.ServerConfig())) is STOCK
    [record] = [r for r in caplog.records if r.name == "chatd.server"]
    assert record.levelname == "WARNING"
    assert named in record.getMessage() and "stock H2Protocol" in record.getMessage()


def test_the_contract_names_what_the_tuning_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert connections.h2_contract_problems() == []
    monkeypatch.delattr(hypercorn_h2.H2Protocol, "_send_data")
    [problem] = connections.h2_contract_problems()
    assert problem == "H2Protocol._send_data is not a coroutine function"


def test_stock_h2_protocol_has_what_the_tuning_relies_on() -> None:
    proto = STOCK(None, HypercornConfig(), WorkerContext(None), None, None, False, None, None, None)
    assert isinstance(proto.connection, h2.connection.H2Connection)
    assert proto.stream_buffers == {}
    config = proto.connection.config
    assert config.normalize_outbound_headers is True
    assert config.validate_outbound_headers is True
    assert proto.connection.max_outbound_frame_size > 0
    assert callable(proto.connection.local_flow_control_window)
    assert inspect.iscoroutinefunction(STOCK._flush)
    assert inspect.iscoroutinefunction(STOCK.stream_send)
    buffer = hypercorn_h2.StreamBuffer(WorkerContext.event_class)
    assert isinstance(buffer.buffer, bytearray) and not buffer.buffer


def test_h2_sends_header_names_as_given_once_normalisation_is_off() -> None:
    # So outbound_headers is what lower-cases them: without it, h2 would put
    # an upper-case name on the wire, which HTTP/2 peers must refuse.
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            normalize_outbound_headers=False,
            validate_outbound_headers=False,
        )
    )
    conn.initiate_connection()
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                            (b":authority", b"t")], end_stream=True)  # fmt: skip
    conn.receive_data(client.data_to_send())
    conn.send_headers(1, [(b":status", b"200"), (b"X-Up", b"1")], end_stream=True)
    client.config.validate_inbound_headers = False
    events = client.receive_data(conn.data_to_send())
    sent = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert (b"X-Up", b"1") in sent.headers


def test_outbound_headers_lower_cases_drops_hop_by_hop_and_hides_secrets() -> None:
    out = outbound_headers(
        [*ODD_HEADERS, (b"te", b"trailers"), (b"Authorization", b"x"), (b"cookie", b"a=b")]
    )
    assert out == [(b"x-custom", b"yes"), (b"te", b"trailers"), (b"authorization", b"x"),
                   (b"cookie", b"a=b")]  # fmt: skip
    assert isinstance(out[2], NeverIndexedHeaderTuple)
    assert isinstance(out[3], NeverIndexedHeaderTuple)
    assert not isinstance(out[0], NeverIndexedHeaderTuple)


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
REQUEST_CASES = [
    GET,
    [*GET, (b"x-a", b"1"), (b"te", b"trailers"), (b"te", b"Trailers"), (b"x-empty", b"")],
    [*GET, (b"host", b"a")],
    [*GET, (b"host", b"b")],
    [*GET, (b"host", b"a"), (b"host", b"a")],
    [*GET[:3], (b"host", b"a")],
    GET[:3],
    GET[1:],
    [GET[0], GET[1], GET[3]],
    [*GET[:2], (b":path", b""), GET[3]],
    [*GET, (b":method", b"GET")],
    [*GET, (b":status", b"200")],
    [*GET, (b":custom", b"x")],
    [*GET, (b":protocol", b"websocket")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *GET[1:]],
    [(b"x-a", b"1"), *GET],
    [*GET, (b"X-Upper", b"1")],
    [*GET, (b"", b"1")],
    [*GET, (b"x a", b"1")],
    [*GET, (b"x:a", b"1")],
    [*GET, (b"x\x7f", b"1")],
    [*GET, (b"x-a", b" lead")],
    [*GET, (b"x-a", b"trail\t")],
    [*GET, (b"x-a", b"in side")],
    [*GET, (b"x-a", b"cr\rlf")],
    [*GET, (b"x-a", b"nul\x00")],
    [*GET, (b"x-a", b"\x80high")],
    [*GET, (b"connection", b"close")],
    [*GET, (b"keep-alive", b"5")],
    [*GET, (b"proxy-connection", b"x")],
    [*GET, (b"transfer-encoding", b"chunked")],
    [*GET, (b"upgrade", b"h2c")],
    [*GET, (b"te", b"gzip")],
]
TRAILER_CASES = [[(b"x-a", b"1")], [(b":path", b"/")], [(b"X-A", b"1")], [(b"connection", b"x")]]


def h2_accepts(headers: list[tuple[bytes, bytes]], *, trailer: bool) -> bool:
    flags = h2.utilities.HeaderValidationFlags(
        is_client=False, is_trailer=trailer, is_response_header=False, is_push_promise=False
    )
    try:
        list(h2.utilities.validate_headers(headers, flags))
    except h2.exceptions.ProtocolError:
        return False
    return True


@pytest.mark.parametrize("headers", REQUEST_CASES)
def test_request_checks_agree_with_h2s_own(headers: list[tuple[bytes, bytes]]) -> None:
    # The contract: what h2 4.x refuses, request_headers_ok refuses, and
    # the other way round; a change in h2's rules shows up here.
    assert request_headers_ok(headers) == h2_accepts(headers, trailer=False)


@pytest.mark.parametrize("headers", TRAILER_CASES)
def test_trailer_checks_agree_with_h2s_own(headers: list[tuple[bytes, bytes]]) -> None:
    assert request_headers_ok(headers, trailer=True) == h2_accepts(headers, trailer=True)


def test_plain_encoder_sends_literals_a_stock_decoder_reads() -> None:
    block = PlainEncoder().encode([(b"x-request-id", b"c4ec3c6100000001"), (b":status", b"200")])
    assert b"c4ec3c6100000001" in block  # not Huffman-coded
    assert hpack.Decoder().decode(block, raw=True) == [
        (b"x-request-id", b"c4ec3c6100000001"),
        (b":status", b"200"),
    ]


def test_h2_connection_encodes_with_its_encoder_attribute() -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    assert isinstance(conn.encoder, hpack.Encoder)
    conn.encoder = PlainEncoder()
    conn.initiate_connection()
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, GET, end_stream=True)
    conn.receive_data(client.data_to_send())
    conn.data_to_send()
    conn.send_headers(1, [(b":status", b"200"), (b"x-request-id", b"c4ec3c6100000001")])
    assert b"c4ec3c6100000001" in conn.data_to_send()


# --------------------------------------------------------------------------- behaviour


async def streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with CHUNKS, one body message each."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/odd-headers":
        headers += ODD_HEADERS
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in CHUNKS:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(params=["tuned", "stock"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Which stack the server runs (``chatd.server.tuned``)."""
    return str(request.param)


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes queued in Hypercorn's stream buffers (its send-task path)."""
    queued: list[int] = []
    push = hypercorn_h2.StreamBuffer.push

    async def counting(self: Any, data: bytes) -> None:
        queued.append(len(data))
        await push(self, data)

    monkeypatch.setattr(hypercorn_h2.StreamBuffer, "push", counting)
    return queued


@contextlib.asynccontextmanager
async def serving(flavour: str) -> AsyncIterator[int]:
    config = make_config(overrides={"chatd.server.tuned": flavour == "tuned"})
    # streaming_app answers every path; the readiness check is HTTP/1.1.
    async with support.serving(streaming_app, config, ready="/") as base:
        yield int(base.rsplit(":", 1)[1])


async def fetch(
    port: int, path: str, window: int | None = None
) -> tuple[dict[bytes, bytes], bytes]:
    """GET ``path`` over h2c; the response headers and body. With ``window``,
    the client advertises that small a stream window and opens it again
    only as it reads."""
    headers, body, _ = await exchange(f"http://127.0.0.1:{port}", "GET", path, window=window)
    return headers, body


async def test_streamed_chunks_arrive_whole_and_in_order(flavour: str, pushes: list[int]) -> None:
    async with serving(flavour) as port:
        headers, body = await fetch(port, "/")
    assert headers[b":status"] == b"200"
    assert body == b"".join(CHUNKS)
    if flavour == "tuned":
        assert pushes == []  # every chunk went out directly
    else:
        assert len(pushes) == len(CHUNKS)


async def test_a_small_window_keeps_hypercorn_flow_control(flavour: str, pushes: list[int]) -> None:
    # 25-byte chunks against a 10-byte window: none fits, so the tuned
    # protocol hands each one to Hypercorn's send task, which waits for
    # the client's WINDOW_UPDATEs.
    async with serving(flavour) as port:
        headers, body = await fetch(port, "/", window=10)
    assert headers[b":status"] == b"200"
    assert body == b"".join(CHUNKS)
    assert len(pushes) == len(CHUNKS)


async def test_response_headers_are_lower_cased_and_hop_by_hop_dropped() -> None:
    # (Stock h2 refuses such a header block and Hypercorn drops the response.)
    async with serving("tuned") as port:
        headers, body = await fetch(port, "/odd-headers")
    assert headers[b"x-custom"] == b"yes"
    assert not {b"connection", b"keep-alive", b"transfer-encoding", b"te"} & set(headers)
    assert body == b"".join(CHUNKS)


async def test_a_malformed_request_is_reset_and_the_connection_kept() -> None:
    async with serving("tuned") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        config = h2.config.H2Configuration(
            header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        conn.send_headers(1, [*GET, (b"X-Upper", b"1")], end_stream=True)
        conn.send_headers(3, GET, end_stream=True)
        writer.write(conn.data_to_send())
        reset: dict[int, int] = {}
        ended: set[int] = set()
        try:
            async with asyncio.timeout(30):
                while 3 not in ended:
                    data = await reader.read(65536)
                    assert data, "connection closed"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.StreamReset):
                            reset[event.stream_id] = event.error_code
                        elif isinstance(event, h2.events.DataReceived):
                            conn.acknowledge_received_data(event.flow_controlled_length, 3)
                        elif isinstance(event, h2.events.StreamEnded):
                            ended.add(event.stream_id)
                    writer.write(conn.data_to_send())
        finally:
            writer.close()
    assert reset == {1: h2.errors.ErrorCodes.PROTOCOL_ERROR}
