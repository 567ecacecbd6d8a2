"""Hypercorn's HTTP/2 layer as chatd runs it (lakehouse.h2_tuning): the
contract with the installed Hypercorn and h2, and the behaviour through the
real server over h2c, tuned and stock."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import io
import random
import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import hpack
import hyperframe.frame
import priority
import pytest
from hpack import NeverIndexedHeaderTuple
from hypercorn import protocol as hypercorn_protocol
from hypercorn.asyncio.worker_context import EventWrapper, WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol import http_stream

from lakehouse import connections, server
from lakehouse.h2_tuning import (
    LazyPriorityTree,
    PlainEncoder,
    outbound_headers,
    receive_frame,
    request_headers_ok,
)
from lakehouse.hpack_lean import LeanDecoder
from tests import support
from tests.h2_client import RawH2, exchange
from tests.protocols import built, lifespan, picked_per_config, recording, stock_in_place, tuned_by
from tests.support import make_config

pytestmark = pytest.mark.anyio

STOCK = hypercorn_h2.H2Protocol
# The protocol Hypercorn builds for a connection of a config; whether it is chatd's.
protocol_for = functools.partial(built, "H2Protocol")
runs_tuned = functools.partial(tuned_by, "TunedH2Protocol")
CHUNKS = [b"[%03d]" % i * 5 for i in range(40)]  # 25 bytes each
WHOLE = b"one body message, " * 8  # 144 bytes
ODD_HEADERS = [
    (b"X-Custom", b"yes"),
    (b"connection", b"close"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"te", b"gzip"),
]


# --------------------------------------------------------------------------- contract


def test_hypercorn_picks_the_h2_protocol_by_its_module_name_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tune_h2 swaps the name in hypercorn.protocol; ProtocolWrapper must
    # look it up there when a connection starts, and on an h2c upgrade.
    assert "H2Protocol" in hypercorn_protocol.ProtocolWrapper.handle.__code__.co_names
    stock_in_place(monkeypatch, "H2Protocol", STOCK)
    assert server.tune_h2() is True
    tuned = picked_per_config("H2Protocol", "TunedH2Protocol", STOCK)
    assert tuned.connection.config.validate_inbound_headers is False
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


def test_the_contract_names_what_the_tuning_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert connections.h2_contract_problems() == []
    monkeypatch.delattr(hypercorn_h2.H2Protocol, "_send_data")
    [problem] = connections.h2_contract_problems()
    assert problem == "H2Protocol._send_data is not a coroutine function"


def test_the_contract_checks_h2_frames_data_as_send_data_frame_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h2s = h2.connection.H2Connection.send_data

    def padded(self: Any, stream_id: int, data: bytes, *args: Any, **kwargs: Any) -> None:
        h2s(self, stream_id, data, pad_length=0)  # an h2 that frames otherwise

    monkeypatch.setattr(h2.connection.H2Connection, "send_data", padded)
    assert connections.h2_contract_problems() == [
        "send_data_frame frames otherwise than this h2's send_data"
    ]
    monkeypatch.setattr(h2.connection.H2Connection, "send_data", h2s)
    assert connections.h2_contract_problems() == []
    stream_init = h2.stream.H2Stream.__init__

    def renamed(self: Any, *args: Any, **kwargs: Any) -> None:
        stream_init(self, *args, **kwargs)  # an h2 whose streams keep their window elsewhere
        self.send_window = self.__dict__.pop("outbound_flow_control_window")

    monkeypatch.setattr(h2.stream.H2Stream, "__init__", renamed)
    [problem] = connections.h2_contract_problems()
    assert problem.startswith("send_data_frame fails on this h2: AttributeError"), problem


def test_the_contract_names_the_stream_parts_the_tuning_relies_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(http_stream.HTTPStream, "app_send")
    monkeypatch.delattr(hypercorn_h2.H2Protocol, "_close_stream")
    assert connections.h2_contract_problems() == [
        "H2Protocol._close_stream is not a coroutine function",
        "HTTPStream.app_send is not a coroutine function",
    ]


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


def test_hpack_static_table_is_rfc_7541s() -> None:
    # PlainEncoder indexes into it; RFC 7541 Appendix A has 61 entries.
    table = hpack.table.HeaderTable.STATIC_TABLE
    assert len(table) == 61
    assert table[0] == (b":authority", b"")
    assert table[7] == (b":status", b"200")
    assert table[30] == (b"content-type", b"")
    assert table[60] == (b"www-authenticate", b"")


def test_plain_encoder_sends_static_matches_as_one_byte_and_never_indexes() -> None:
    encoder = PlainEncoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    assert encoder.encode([(b":status", b"200"), (b":status", b"204")]) == b"\x88\x89"
    # Name from the static table (content-type is entry 31: 4-bit prefix
    # 15, then 16), value as a plain literal, nothing added to the table.
    assert encoder.encode([(b"content-type", b"text/plain")]) == b"\x0f\x10\x0atext/plain"
    assert encoder.encode([(b"x-a", b"b")]) == b"\x00\x03x-a\x01b"
    assert encoder.header_table.dynamic_entries == deque()


FIELD_CASES = [
    [(b":status", b"200"), (b"content-type", b"application/json"), (b"content-length", b"158")],
    [(b":status", b"404"), (b"x-request-id", b"c4ec3c6100000001"), (b"date", b"Tue, 01 Dec")],
    [(b":status", b"200"), (b"x-long", b"v" * 126), (b"x-longer", b"v" * 127)],
    [(b":status", b"200"), (b"x-" + b"n" * 300, b"v" * 70000), (b"server", b"")],
    [(b":status", b"200"), hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer k")],
    [(b":status", b"200"), hpack.NeverIndexedHeaderTuple(b"x-secret", b"s")],
    [(b":status", b"200"), (b"cookie", b"a=b", True), (b"set-cookie", b"a=b", False)],
    [(b":status", b"200"), hpack.HeaderTuple(b"vary", b"accept-encoding")],
    # Static entries 14 and 15: the last one-byte name index, the first two-byte one.
    [(b":status", b"200"), (b":status", b"599"), (b"accept-charset", b"utf-8")],
    [(":status", "200"), ("x-text", "str, not bytes")],
]


def as_decoded(field: Any) -> tuple[bytes, bytes]:
    """A field as hpack's decoder gives it back: bytes, never-indexed kept."""
    name, value = (x.encode() if isinstance(x, str) else x for x in field[:2])
    if isinstance(field, hpack.HeaderTuple):
        never = not field.indexable
    else:
        never = len(field) > 2 and field[2]
    return NeverIndexedHeaderTuple(name, value) if never else (name, value)


@pytest.mark.parametrize("fields", FIELD_CASES)
def test_plain_encoder_blocks_decode_to_the_fields_given(fields: list[Any]) -> None:
    encoder = PlainEncoder()
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    expected = [as_decoded(field) for field in fields]
    for _ in range(3):  # the same fields again decode the same
        decoded = decoder.decode(encoder.encode(fields), raw=True)
        assert decoded == expected
        # Never-indexed stays never-indexed for every hop after us (7.1.3).
        never = [isinstance(f, NeverIndexedHeaderTuple) for f in decoded]
        assert never == [isinstance(f, NeverIndexedHeaderTuple) for f in expected]


def test_plain_encoder_signals_a_table_size_change_first() -> None:
    encoder = PlainEncoder()
    decoder = hpack.Decoder()
    encoder.header_table_size = 256  # the peer's SETTINGS_HEADER_TABLE_SIZE
    block = encoder.encode([(b":status", b"200"), (b"x-a", b"b")])
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update (RFC 7541 6.3)
    assert decoder.decode(block, raw=True) == [(b":status", b"200"), (b"x-a", b"b")]
    assert decoder.header_table_size == 256
    assert encoder.encode([(b"x-a", b"b")]) == b"\x00\x03x-a\x01b"


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


def test_h2_connection_decodes_with_its_decoder_attribute() -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    assert type(conn.decoder) is hpack.Decoder
    decoded: list[bytes] = []

    class Recording(LeanDecoder):
        def decode(self, data: bytes, raw: bool = False) -> Any:
            decoded.append(data)
            return super().decode(data, raw)

    conn.decoder = Recording()
    conn.initiate_connection()
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, GET, end_stream=True)
    [_, received, _] = conn.receive_data(client.data_to_send())
    assert isinstance(received, h2.events.RequestReceived)
    assert received.headers == GET
    assert len(decoded) == 1


def test_a_tuned_connection_decodes_with_the_lean_decoder_and_h2s_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stock_in_place(monkeypatch, "H2Protocol", STOCK)
    assert server.tune_h2() is True
    proto = protocol_for(server.ServerConfig())
    assert runs_tuned(proto)
    decoder = proto.connection.decoder
    assert type(decoder) is LeanDecoder
    stock = h2.connection.H2Connection().decoder
    assert decoder.max_header_list_size == stock.max_header_list_size
    assert decoder.max_allowed_table_size == stock.max_allowed_table_size
    assert decoder.header_table_size == stock.header_table_size


# h2 4.4.1's H2Connection._receive_frame, which receive_frame copies less
# its logging line. A new h2 changing it fails here: compare the two again.
RECEIVE_FRAME_SHA256 = "39b2e16b4fd74ed014ca144a0c6e388aef3dc51f116d6f0a874b70d92bd92873"


def test_h2s_receive_frame_is_the_one_copied() -> None:
    source = inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert hashlib.sha256(source.encode()).hexdigest() == RECEIVE_FRAME_SHA256, source
    assert 'self.config.logger.trace("Received frame: %s", repr(frame))' in source
    assert "self._receive_frame(frame)" in inspect.getsource(h2.connection.H2Connection)


# Hypercorn 0.18.0's code the tuned stream stands in for: H2Protocol's
# _create_stream (copied, with TunedHTTPStream for HTTPStream) and
# _close_stream (bypassed for streams that ended directly), HTTPStream's
# app_send and _send_closed (what a response's last body message does). A
# new Hypercorn changing one fails here: compare h2_tuning's parts again.
HYPERCORN_SHA256 = {
    "H2Protocol._create_stream": "91eb123ddf247ede84f6766ae1ecb49ab0a7d2fad59490f1adfe7694c738b686",
    "H2Protocol._close_stream": "a292549791640b651dc636a981d58eb25117578cc09d85929bef25d12fc425ed",
    "HTTPStream.app_send": "c806044b997369855904b5496ef44bd2bf273f599e686647500ce507c1b0250b",
    "HTTPStream._send_closed": "9aaf2e1ac611e51c85bb587cc9ca28f7db77e8ec03b43231ee0efc42a4c40393",
}


def test_hypercorns_stream_code_is_the_one_the_tuning_follows() -> None:
    for name, digest in HYPERCORN_SHA256.items():
        owner, method = name.split(".")
        module = hypercorn_h2 if owner == "H2Protocol" else http_stream
        source = inspect.getsource(getattr(getattr(module, owner), method))
        assert hashlib.sha256(source.encode()).hexdigest() == digest, source


def frames_after_a_reset(quiet: bool) -> tuple[list[str], bytes]:
    """A server connection's events and output for: a request on stream 1,
    the server resetting it, a request on stream 3, then the client's
    trailers on stream 1 anyway (h2's "closed by reset" path: RST_STREAM
    again)."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    if quiet:
        server._receive_frame = receive_frame.__get__(server)  # type: ignore[method-assign]
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"POST"), *GET[1:]])
    events = server.receive_data(client.data_to_send())
    server.reset_stream(1)
    client.send_headers(3, GET, end_stream=True)  # (h2 forgets stream 1 here)
    client.send_headers(1, [(b"x-trailer", b"late")], end_stream=True)
    events += server.receive_data(client.data_to_send())
    return [repr(e) for e in events], server.data_to_send()


def test_receive_frame_answers_as_h2s_own() -> None:
    quiet = frames_after_a_reset(quiet=True)
    assert quiet == frames_after_a_reset(quiet=False)
    assert any("RequestReceived stream_id:3" in e for e in quiet[0])


def test_hypercorn_uses_only_the_tree_calls_lazy_priority_stands_in_for() -> None:
    source = inspect.getsource(hypercorn_h2.H2Protocol)
    assert set(re.findall(r"self\.priority\.(\w+)", source)) <= {
        "insert_stream", "block", "unblock", "remove_stream", "reprioritize",
    }  # fmt: skip
    assert "next(self.priority)" in source
    assert "self.priority = priority.PriorityTree()" in source


def outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except priority.PriorityError as exc:
        return type(exc)


def eligible(tree: priority.PriorityTree) -> set[int]:
    """What the tree may schedule next: the unblocked streams it reaches
    through blocked ones only (read from priority's own tree, the oracle)."""
    out: set[int] = set()
    todo = [tree._root_stream]
    expanded = set()  # (priority lets reprioritising build cycles)
    while todo:
        node = todo.pop()
        if node.stream_id in expanded:
            continue
        expanded.add(node.stream_id)
        for _, child in node.child_queue:
            if child.active:
                out.add(child.stream_id)
            else:
                todo.append(child)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_lazy_tree_answers_as_prioritys_own(seed: int) -> None:
    # The same calls, as Hypercorn makes them, to both trees: the same
    # errors, and a next stream the full tree could have picked too (the
    # order among equals may differ: a lazy stream joins its siblings'
    # queue later).
    rng = random.Random(seed)
    stock, lazy = priority.PriorityTree(), LazyPriorityTree()
    for _ in range(300):
        sid = rng.choice(range(1, 24, 2))
        op = rng.choice(["insert", "insert", "block", "unblock", "remove", "next", "next", "tree"])
        if op == "tree":  # a PRIORITY frame: reprioritise, or insert when missing
            args = (sid, rng.choice([None, 0, *range(1, 24, 2)]), rng.randint(1, 256))
            exclusive = rng.random() < 0.3
            got = outcome(lazy.reprioritize, *args, exclusive=exclusive)
            assert got == outcome(stock.reprioritize, *args, exclusive=exclusive)
            if got is priority.MissingStreamError:
                got = outcome(lazy.insert_stream, *args, exclusive=exclusive)
                assert got == outcome(stock.insert_stream, *args, exclusive=exclusive)
        elif op == "next":
            may = eligible(stock)
            got = outcome(next, lazy)
            assert got in may if may else got is priority.DeadlockError
            outcome(next, stock)
        else:
            call = {"insert": "insert_stream", "block": "block", "unblock": "unblock",
                    "remove": "remove_stream"}[op]  # fmt: skip
            assert outcome(getattr(lazy, call), sid) == outcome(getattr(stock, call), sid)


def test_a_dormant_parent_shadows_its_child_as_in_the_tree() -> None:
    for tree in (priority.PriorityTree(), LazyPriorityTree()):
        tree.insert_stream(1)
        tree.block(1)
        tree.insert_stream(3, depends_on=1)
        assert next(tree) == 3  # the parent is blocked
        tree.unblock(1)
        assert {next(tree) for _ in range(5)} == {1}  # now it goes first


def test_a_stream_that_never_queues_stays_out_of_the_tree(tree_inserts: list[int]) -> None:
    inserted = tree_inserts
    tree = LazyPriorityTree()
    tree.insert_stream(1)
    tree.block(1)
    tree.remove_stream(1)
    assert inserted == []
    with pytest.raises(priority.DeadlockError):
        next(tree)
    tree.insert_stream(3)
    tree.block(3)
    tree.unblock(3)
    assert inserted == [3]
    assert next(tree) == 3


# --------------------------------------------------------------------------- behaviour


async def streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with CHUNKS, one body message each."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/whole":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": WHOLE, "more_body": False})
        return
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
def tree_inserts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Streams put in a priority tree itself (not only noted as dormant)."""
    inserted: list[int] = []

    def record(stream_id: int, *args: Any, **kwargs: Any) -> None:
        inserted.append(stream_id)

    recording(monkeypatch, priority.PriorityTree, "insert_stream", record)
    return inserted


@pytest.fixture
def frame_reprs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Frames repr'd (h2 does it for its logger, for every frame received,
    in the test's client too): their type, and END_STREAM when set."""
    made: list[str] = []
    frame_repr = hyperframe.frame.Frame.__repr__

    def counting(self: Any) -> str:
        made.append(type(self).__name__ + (" END_STREAM" if "END_STREAM" in self.flags else ""))
        return frame_repr(self)

    monkeypatch.setattr(hyperframe.frame.Frame, "__repr__", counting)
    return made


@pytest.fixture
def send_task(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Streams Hypercorn's send task sent for (data or the end)."""
    sent: list[int] = []
    recording(monkeypatch, hypercorn_h2.H2Protocol, "_send_data", sent.append)
    return sent


@pytest.fixture
def h2_data(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Streams h2's own ``send_data`` or ``end_stream`` framed a DATA
    frame for."""
    sent: list[int] = []
    for name in ("send_data", "end_stream"):
        recording(
            monkeypatch, h2.connection.H2Connection, name, lambda sid, *_, **__: sent.append(sid)
        )
    return sent


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes queued in Hypercorn's stream buffers (its send-task path)."""
    queued: list[int] = []
    recording(monkeypatch, hypercorn_h2.StreamBuffer, "push", lambda data: queued.append(len(data)))
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


async def test_streamed_chunks_arrive_whole_and_in_order(
    flavour: str,
    pushes: list[int],
    send_task: list[int],
    tree_inserts: list[int],
    frame_reprs: list[str],
    h2_data: list[int],
) -> None:
    async with serving(flavour) as port:
        # (The start-up's contract check sent and received some.)
        h2_data.clear()
        frame_reprs.clear()
        headers, body = await fetch(port, "/")
    assert headers[b":status"] == b"200"
    assert body == b"".join(CHUNKS)
    if flavour == "tuned":
        assert pushes == []  # every chunk went out directly
        assert h2_data == []  # framed by send_data_frame, and so was the end
        assert send_task == []  # and so did the end of the stream
        assert tree_inserts == []  # which never entered the priority tree
        # The server no longer reprs what it receives (the GET's HEADERS).
        assert "HeadersFrame END_STREAM" not in frame_reprs
    else:
        assert "HeadersFrame END_STREAM" in frame_reprs
        assert len(pushes) == len(CHUNKS)
        assert set(h2_data) == {1}
        assert 1 in send_task
        assert tree_inserts == [1]


async def test_a_connection_whose_h2_logs_sends_directly_through_h2s_own_framing(
    monkeypatch: pytest.MonkeyPatch,
    pushes: list[int],
    send_task: list[int],
    h2_data: list[int],
) -> None:
    # chatd frames DATA itself only where h2's logging would do nothing:
    # given a logger, h2's send_data and end_stream frame each chunk and
    # the end, still sent at once rather than through the send task.
    class Logging(h2.config.H2Configuration):
        def __init__(self, **options: Any) -> None:
            super().__init__(logger=h2.config.OutputLogger(io.StringIO()), **options)

    monkeypatch.setattr(h2.config, "H2Configuration", Logging)
    async with serving("tuned") as port:
        h2_data.clear()  # (the start-up's contract check sent some)
        headers, body = await fetch(port, "/")
    assert headers[b":status"] == b"200"
    assert body == b"".join(CHUNKS)
    assert pushes == [] and send_task == []
    assert h2_data == [1] * (len(CHUNKS) + 1)  # each chunk, then the end


async def test_a_small_window_keeps_hypercorn_flow_control(
    flavour: str, pushes: list[int], send_task: list[int], tree_inserts: list[int]
) -> None:
    # 25-byte chunks against a 10-byte window: none fits, so the tuned
    # protocol hands each one to Hypercorn's send task, which waits for
    # the client's WINDOW_UPDATEs.
    async with serving(flavour) as port:
        headers, body = await fetch(port, "/", window=10)
    assert headers[b":status"] == b"200"
    assert body == b"".join(CHUNKS)
    assert len(pushes) == len(CHUNKS)
    assert 1 in send_task
    assert tree_inserts == [1]


async def test_a_one_message_body_goes_out_with_its_end_in_one_frame(
    flavour: str, pushes: list[int], send_task: list[int], h2_data: list[int]
) -> None:
    async with serving(flavour) as port:
        h2_data.clear()  # (the start-up's contract check sent some)
        client = await RawH2.connect(f"http://127.0.0.1:{port}")
        try:
            sid = client.start("GET", "/whole")
            assert await client.wait(sid) == 200
        finally:
            await client.close()
    assert client.body[sid] == WHOLE
    assert sid in client.finished
    if flavour == "tuned":
        assert sid in client.ended_on_data  # DATA with END_STREAM, no empty DATA after
        assert pushes == [] and send_task == []
        assert h2_data == []  # framed by send_data_frame
    else:
        assert sid not in client.ended_on_data
        assert pushes == [len(WHOLE)]


async def test_a_one_message_body_over_the_window_keeps_hypercorn_flow_control(
    flavour: str, pushes: list[int], send_task: list[int]
) -> None:
    async with serving(flavour) as port:
        headers, body = await fetch(port, "/whole", window=10)
    assert headers[b":status"] == b"200"
    assert body == WHOLE
    assert pushes == [len(WHOLE)]
    assert 1 in send_task


async def test_a_head_request_gets_no_body_and_its_end(flavour: str) -> None:
    async with serving(flavour) as port:
        headers, body, _ = await exchange(f"http://127.0.0.1:{port}", "HEAD", "/whole")
    assert headers[b":status"] == b"200"
    assert body == b""


async def test_streams_that_end_directly_do_not_wake_the_send_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Hypercorn wakes its send task as each stream closes; for a stream
    # whose end went out directly there is nothing for it to do.
    waits: list[None] = []
    requests = 10
    recording(monkeypatch, EventWrapper, "wait", lambda: waits.append(None))
    async with serving("tuned") as port:
        client = await RawH2.connect(f"http://127.0.0.1:{port}")
        try:
            for _ in range(requests):
                sid = client.start("GET", "/whole")
                assert await client.wait(sid) == 200
                assert client.body[sid] == WHOLE
        finally:
            await client.close()
    # A few waits whatever the count (the send task's first, the server's
    # own); one more per request when each close wakes the send task.
    assert len(waits) < requests, len(waits)


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
