"""How chatd has Hypercorn's HTTP/2 layer run: per-message costs removed.

Its parts stand in for parts of Hypercorn's ``H2Protocol`` (hypercorn 0.18,
``hypercorn/protocol/h2.py``) over the h2 4.x library. ~590 lines: every
lever is a piece of that one class (and of the stream class it builds)
and shares its contract tests. This
module imports h2 and the libraries under it (hpack, hyperframe,
priority), never Hypercorn: ``lakehouse.connections.install_h2`` builds the subclass
and has Hypercorn use it for the connections of a tuned server
(``chatd.server.tuned``; stock ``H2Protocol`` otherwise, or when the
installed Hypercorn or h2 is not a version the contract tests passed on),
``tests/test_h2_tuning.py`` holds the contract.

Direct DATA frames. Hypercorn queues every body message in the stream's
``StreamBuffer`` and wakes a separate send task, which walks a priority
tree, pops the buffer, frames it and writes, then walks the tree again to
find the buffer empty: for a streamed answer, a task switch and that
bookkeeping per chunk. Here a body
message goes straight out (framed by ``h2_frames.send_data_frame``) when
nothing of its stream is queued and the flow-control window takes it
whole; then the connection's
coalesced write (``lakehouse.connections``) sends it with whatever else
this loop turn wrote. The end of the body goes out the same way (an empty
DATA frame with END_STREAM) when nothing of the stream is queued and the
send task is not in the middle of sending it; the stream then never
enters the send task's priority tree at all (``LazyPriorityTree``). The
rest takes Hypercorn's own path: a window too small (flow control), data
already queued (order). Sending the end directly pays only because the
connection no longer flushes its gathered writes on each stream's
idle/busy update: with that flush, it cost a write per stream (+17% CPU
a request), which the send task's batching had hidden.

The last body message and the end in one frame. Hypercorn's stream
turns an answer's last body message into two events, the data and then
the end, which go out as a DATA frame and an empty DATA frame with
END_STREAM: two trips through h2's stream state machine and framing,
and two through the protocol's send path. ``TunedHTTPStream`` (built by
the protocol's ``_create_stream``, Hypercorn's line for line otherwise)
sends them as one event, ``LastBody``, and the protocol sends one DATA
frame with END_STREAM when the direct path above can take it (else the
data and the end go Hypercorn's way, one after the other). A stream
ended directly is also closed without waking the send task, which
Hypercorn does for every stream's close and which would find nothing of
it. Hypercorn's code these stand in for is held by a hash in the tests.

Response headers checked once. h2 normalises and validates every header
block it sends in a chain of generators (lower-case names, strip, drop
connection headers, mark secrets never-indexed; then refuse what is left
of connection headers and misplaced pseudo-headers). The names and values
Hypercorn hands over are already stripped bytes and never pseudo-headers
(its ``build_and_validate_headers``), so one pass here does the rest:
names lower-cased, hop-by-hop fields dropped (h2 would drop some and
raise on others, which Hypercorn swallows, losing the response), and the
fields h2 keeps out of compression contexts marked never-indexed.

Plain HPACK literals. hpack Huffman-codes every header value it does not
find in its table, in pure Python, byte by byte, after a linear search of
its dynamic table; a response's request id and Server-Timing are new
every time, so they fill that table without ever matching. Sent as plain
literals that are never indexed (RFC 7541 allows either) a response head is
~40 bytes longer and much cheaper to make (``PlainEncoder``).

Header blocks received decoded leanly: ``lakehouse.hpack_lean``'s
``LeanDecoder`` stands in for the connection's hpack decoder.

Frames received without their repr. h2 logs every frame it receives
through its no-op logger, making ``repr(frame)`` first (flags sorted,
payload escaped): ``receive_frame`` is h2 4.x's ``_receive_frame`` less
that line, bound to connections whose logger is h2's no-op one; a test
holds h2's source to the version copied.

DATA frames framed by chatd: ``lakehouse.h2_frames``'s ``send_data_frame``
stands in for h2's ``send_data`` and ``end_stream`` on connections whose
logger is h2's no-op one.

Request headers checked once. h2 validates each request's header block in
another chain of generators, with Python loops over every byte of every
name and value. ``request_headers_ok`` applies the same RFC 9113 rules
(8.2.1 characters, 8.2.2 connection fields, 8.3 pseudo-header fields,
Host against :authority) with compiled patterns, and a request that
fails them is reset with PROTOCOL_ERROR, the stream error RFC 9113 8.1.1
calls for (h2 would raise, and Hypercorn would drop the whole connection).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import Frame, RstStreamFrame
from priority.priority import DuplicateStreamError, PriorityTree

from lakehouse.h2_frames import h2s_send, send_data_frame
from lakehouse.hpack_lean import LeanDecoder

# Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2); ``te`` is
# allowed only as "trailers".
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# What h2's normalisation sends never-indexed (h2.utilities._secure_headers).
SECRET = frozenset({b"authorization", b"proxy-authorization"})
SHORT_COOKIE = 20
SEND_ERRORS = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError)

# RFC 9113 8.2.1: a name is visible ASCII without upper case, with a colon
# only as a pseudo-header's first byte; a value has no NUL, CR or LF and no
# leading or trailing space or tab.
_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_VALUE = re.compile(rb"(?![ \t])[^\x00\r\n]*(?<![ \t])")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


def request_headers_ok(headers: Iterable[tuple[bytes, bytes]], *, trailer: bool = False) -> bool:
    """Whether a received header block is well-formed HTTP/2 (the checks
    of h2's ``validate_headers`` for requests and their trailers)."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    for name, value in headers:
        if not _NAME.fullmatch(name) or (value and not _VALUE.fullmatch(value)):
            return False
        if name[0] == 0x3A:  # ":"
            if regular or trailer or name in pseudo or name not in _PSEUDO:
                return False
            pseudo[name] = value
            continue
        regular = True
        if name in HOP_BY_HOP or (name == b"te" and value.lower() != b"trailers"):
            return False
        if name == b"host":
            if host is not None:
                return False
            host = value
    if trailer:
        return True
    method = pseudo.get(b":method")
    if method is None:
        return False
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            return False
    elif (
        b":scheme" not in pseudo
        or not pseudo.get(b":path")
        or (b":protocol" in pseudo and method != b"CONNECT")
    ):
        return False
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        return False
    return authority is None or host is None or authority == host


# RFC 7541 Appendix A, as hpack holds it (1-based): a field that matches an
# entry whole is sent as its index; a field whose name is there, as a
# literal naming that index.
_STATIC = hpack.table.HeaderTable.STATIC_TABLE
_WHOLE = {field: bytes((0x80 | i,)) for i, field in reversed(list(enumerate(_STATIC, 1)))}


def _name_ref(index: int, never: bool) -> bytes:
    """A literal's first bytes naming static entry ``index`` (4-bit prefix)."""
    flag = 0x10 if never else 0x00
    return bytes((flag | index,)) if index < 15 else bytes((flag | 15, index - 15))


_NAMED = {
    name: (_name_ref(i, False), _name_ref(i, True))
    for i, (name, _) in reversed(list(enumerate(_STATIC, 1)))
}
_NEW_NAME = (b"\x00", b"\x10")


def _length(n: int) -> bytes:
    """An HPACK string length, not Huffman-coded (7-bit prefix integer)."""
    if n < 127:
        return bytes((n,))
    out = bytearray((127,))
    n -= 127
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class PlainEncoder(hpack.Encoder):
    """HPACK that never Huffman-codes and never adds to the dynamic table.

    hpack's encoder searches its dynamic table field by field (a linear
    scan, full of request ids and Server-Timing values no later response
    repeats), Huffman-codes in pure Python and logs each field. Here a
    field is sent as its static-table index when it matches one whole
    (``:status: 200``), else as a literal "without indexing" (RFC 7541
    6.2.2; "never indexed", 6.2.3, for the fields h2 keeps out of
    compression contexts) naming a static entry where one has the name.
    The table stays empty, so the peer's decoder keeps nothing for us. A
    pending table size update, or fields not given as bytes pairs, take
    hpack's own path (without Huffman).
    """

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if self.header_table.resized or isinstance(headers, dict):
            return super().encode(headers, huffman=False)
        parts: list[bytes] = []
        append = parts.append
        for field in headers:
            name = field[0]
            value = field[1]
            if type(name) is not bytes or type(value) is not bytes:
                return super().encode(headers, huffman=False)
            if isinstance(field, hpack.HeaderTuple):
                never = not field.indexable
            else:
                never = len(field) > 2 and bool(field[2])
                field = (name, value)
            whole = None if never else _WHOLE.get(field)
            if whole is not None:
                append(whole)
                continue
            named = _NAMED.get(name)
            if named is None:
                append(_NEW_NAME[never])
                append(_length(len(name)))
                append(name)
            else:
                append(named[never])
            append(_length(len(value)))
            append(value)
        return b"".join(parts)


def outbound_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's header fields as HTTP/2 sends them, in one pass."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        name = name.lower()
        if name in HOP_BY_HOP or (name == b"te" and value.lower() != b"trailers"):
            continue
        if name in SECRET or (name == b"cookie" and len(value) < SHORT_COOKIE):
            out.append(NeverIndexedHeaderTuple(name, value))
        else:
            out.append((name, value))
    return out


class LazyPriorityTree(PriorityTree):
    """A priority tree a stream enters only once it has data queued.

    Hypercorn inserts every new stream and blocks it at once, unblocks it
    when a body message is queued, and removes it when it ends; the tree
    keeps each parent's children in a heap it rebuilds on every removal.
    A stream inserted with default priority is only noted here ("dormant")
    and enters the tree when it is first unblocked, or when the tree is
    asked for the next stream while it is still unblocked, so the tree
    schedules as it would have. A stream that never queues anything (its
    body and end sent directly) never enters. Any other priority signal (an
    insert with a parent, weight or exclusive flag, a reprioritisation)
    places every dormant stream and makes the tree a plain one from then
    on: with ``lakehouse.h2_guard`` in front, which drops clients' priority
    signals, none comes. Dormant streams are not counted against
    ``maximum_streams``: they are the connection's open streams, which h2
    and ``lakehouse.h2_guard`` bound.
    """

    def __init__(self, maximum_streams: int = 1000) -> None:
        super().__init__(maximum_streams)
        self._dormant: dict[int, None] = {}  # in insertion order
        self._unblocked: set[int] = set()  # dormant, and not blocked yet
        self._placed: set[int] = set()  # in the tree itself
        self._plain = False

    def _place(self, stream_id: int) -> None:
        """Put a dormant stream in the tree as it would be there."""
        if stream_id not in self._dormant:
            return
        del self._dormant[stream_id]
        super().insert_stream(stream_id)
        self._placed.add(stream_id)
        if stream_id in self._unblocked:
            self._unblocked.discard(stream_id)
        else:
            super().block(stream_id)

    def _become_plain(self) -> None:
        for stream_id in list(self._dormant):
            self._place(stream_id)
        self._plain = True

    def insert_stream(
        self, stream_id: int, depends_on: int | None = None, weight: int = 16,
        exclusive: bool = False,
    ) -> None:  # fmt: skip
        if not self._plain:
            if stream_id in self._dormant or stream_id in self._placed:
                raise DuplicateStreamError(f"Stream {stream_id} already in tree")
            if not (depends_on or weight != 16 or exclusive):
                self._dormant[stream_id] = None
                self._unblocked.add(stream_id)
                return
            self._become_plain()
        super().insert_stream(stream_id, depends_on, weight, exclusive)

    def block(self, stream_id: int) -> None:
        if stream_id in self._dormant:
            self._unblocked.discard(stream_id)
        else:
            super().block(stream_id)

    def unblock(self, stream_id: int) -> None:
        if stream_id in self._dormant:
            self._unblocked.add(stream_id)
            self._place(stream_id)
        else:
            super().unblock(stream_id)

    def reprioritize(
        self, stream_id: int, depends_on: int | None = None, weight: int = 16,
        exclusive: bool = False,
    ) -> None:  # fmt: skip
        if not self._plain:
            self._become_plain()
        super().reprioritize(stream_id, depends_on, weight, exclusive)

    def remove_stream(self, stream_id: int) -> None:
        if stream_id in self._dormant:
            del self._dormant[stream_id]
            self._unblocked.discard(stream_id)
        else:
            super().remove_stream(stream_id)
            self._placed.discard(stream_id)

    def __next__(self) -> int:
        for waiting in list(self._unblocked):
            self._place(waiting)
        stream_id: int = super().__next__()
        return stream_id


def receive_frame(connection: Any, frame: Frame) -> list[h2.events.Event]:
    """h2 4.x's ``H2Connection._receive_frame`` without its first line,
    ``self.config.logger.trace("Received frame: %s", repr(frame))``: the
    repr of every frame received (its flags sorted, its payload escaped),
    made for a logger that does nothing. The rest is h2's, line for line;
    ``tests/test_h2_tuning.py`` holds h2's source to the one copied."""
    events: list[h2.events.Event]
    try:
        frames, events = connection._frame_dispatch_table[frame.__class__](frame)
    except h2.exceptions.StreamClosedError as e:
        if connection._stream_is_closed_by_reset(e.stream_id):
            f = RstStreamFrame(e.stream_id)
            f.error_code = e.error_code
            connection._prepare_for_sending([f])
            events = e._events
        else:
            raise
    except h2.exceptions.StreamIDTooLowError as e:
        if connection._stream_is_closed_by_reset(e.stream_id):
            f = RstStreamFrame(e.stream_id)
            f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
            connection._prepare_for_sending([f])
            events = []
        elif connection._stream_is_closed_by_end(e.stream_id):
            raise h2.exceptions.StreamClosedError(e.stream_id) from e
        else:
            raise
    else:
        connection._prepare_for_sending(frames)
    return events


RECEIVED_HEADERS = (h2.events.RequestReceived, h2.events.TrailersReceived)
MALFORMED = h2.errors.ErrorCodes.PROTOCOL_ERROR


def tuned_h2_protocol(base: type[Any], events: ModuleType, streams: ModuleType) -> type[Any]:
    """A subclass of Hypercorn's ``H2Protocol`` (``base``) with the changes
    above; ``events`` is ``hypercorn.protocol.events``, ``streams``
    ``hypercorn.protocol.http_stream``."""
    body_events = (events.Body, events.Data)
    end_events = (events.EndBody, events.EndData)
    header_events = (events.Response, events.InformationalResponse, events.Trailers)
    stream_closed = events.StreamClosed
    responding = streams.ASGIHTTPState.RESPONSE
    done = streams.ASGIHTTPState.CLOSED
    suppress_body = streams.suppress_body
    # Hypercorn's h2 module: what its _create_stream uses.
    stock = sys.modules[base.__module__]
    stream_buffer, filter_pseudo_headers = stock.StreamBuffer, stock.filter_pseudo_headers

    @dataclasses.dataclass(frozen=True)
    class LastBody(events.Body):  # type: ignore[misc,name-defined]
        """A response's last body message: its data, then its end."""

    class TunedHTTPStream(streams.HTTPStream):  # type: ignore[misc,name-defined]
        """Hypercorn's stream, sending a response's last non-empty body
        message as one event (``LastBody``) where it sends ``Body`` and
        ``EndBody``; the rest as ``HTTPStream._send_closed`` does."""

        async def app_send(self, message: Any) -> None:
            if (
                message is not None
                and message["type"] == "http.response.body"
                and self.state is responding  # type: ignore[has-type]
                and not message.get("more_body", False)
                and not self.response.get("trailers", False)
                and message.get("body", b"") != b""
                and not suppress_body(self.scope["method"], int(self.response["status"]))
            ):
                await self.send(LastBody(stream_id=self.stream_id, data=bytes(message["body"])))
                self.state = done
                await self.config.log.access(
                    self.scope, self.response, time.time() - self.start_time
                )
                await self.send(stream_closed(stream_id=self.stream_id))
                return
            await super().app_send(message)

    class TunedH2Protocol(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.priority = LazyPriorityTree()
            # The stream whose data Hypercorn's send task is sending, if any.
            self._sending: int | None = None
            config = self.connection.config
            config.normalize_outbound_headers = False
            config.validate_outbound_headers = False
            config.validate_inbound_headers = False
            self.connection.encoder = PlainEncoder()
            stock = self.connection.decoder  # (nothing decoded yet)
            self.connection.decoder = LeanDecoder(stock.max_header_list_size)
            self.connection.decoder.max_allowed_table_size = stock.max_allowed_table_size
            self.connection.decoder.header_table_size = stock.header_table_size
            # h2's logging is skipped only where it would do nothing.
            quiet = isinstance(self.connection.config.logger, h2.config.DummyLogger)
            # How a DATA frame goes out: (connection, stream id, data, end).
            self._frame_data = send_data_frame if quiet else h2s_send
            if quiet:
                # (bound to this connection: h2 calls self._receive_frame)
                self.connection._receive_frame = receive_frame.__get__(self.connection)

        async def _handle_events(self, events: list[h2.events.Event]) -> None:
            refused: set[int] = set()
            kept = []
            for event in events:
                stream_id = getattr(event, "stream_id", None)
                if stream_id in refused:
                    continue
                if isinstance(event, RECEIVED_HEADERS) and not request_headers_ok(
                    event.headers, trailer=isinstance(event, h2.events.TrailersReceived)
                ):
                    refused.add(event.stream_id)
                    self.connection.reset_stream(
                        event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR
                    )
                    continue
                kept.append(event)
            await super()._handle_events(kept)

        async def _create_stream(self, request: h2.events.RequestReceived) -> None:
            # Hypercorn's, line for line, with TunedHTTPStream for HTTPStream;
            # tests/test_h2_tuning.py holds Hypercorn's source to the one copied.
            for name, value in request.headers:
                if name == b":method":
                    method = value.decode("ascii").upper()
                elif name == b":path":
                    raw_path = value
            if method == "CONNECT":
                await super()._create_stream(request)
                return
            self.streams[request.stream_id] = TunedHTTPStream(
                self.app, self.config, self.context, self.task_group, self.ssl, self.client,
                self.server, self.stream_send, request.stream_id,
            )  # fmt: skip
            self.stream_buffers[request.stream_id] = stream_buffer(self.context.event_class)
            try:
                self.priority.insert_stream(request.stream_id)
            except DuplicateStreamError:
                pass  # (a PRIORITY frame before the HEADERS frame)
            else:
                self.priority.block(request.stream_id)
            await self.streams[request.stream_id].handle(
                events.Request(
                    stream_id=request.stream_id,
                    headers=filter_pseudo_headers(request.headers),
                    http_version="2",
                    method=method,
                    raw_path=raw_path,
                    state=self.connection_state,
                )
            )
            self.keep_alive_requests += 1
            await self.context.mark_request()

        async def stream_send(self, event: Any) -> None:
            kind = type(event)
            if kind is LastBody:
                if not await self._send_now(event.stream_id, event.data, end=True):
                    # Hypercorn's way: the data queued, then its end.
                    await TunedH2Protocol.stream_send(
                        self, events.Body(event.stream_id, event.data)
                    )
                    await TunedH2Protocol.stream_send(self, events.EndBody(event.stream_id))
                return
            if kind in body_events and await self._send_now(event.stream_id, event.data):
                return
            if kind in end_events and await self._end_now(event.stream_id):
                return
            if kind in header_events:
                # Hypercorn's events are frozen dataclasses.
                event = dataclasses.replace(event, headers=outbound_headers(event.headers))
            await super().stream_send(event)

        async def _send_now(self, stream_id: int, data: bytes, end: bool = False) -> bool:
            """Send ``data`` as a DATA frame at once if nothing stands in
            its way, with END_STREAM when ``end`` (and the send task is not
            sending the stream); False leaves it to Hypercorn's send task."""
            queued = self.stream_buffers.get(stream_id)
            connection = self.connection
            if queued is None or queued.buffer or (end and stream_id == self._sending):
                return False
            try:
                window = connection.local_flow_control_window(stream_id)
                if len(data) > min(window, connection.max_outbound_frame_size):
                    return False
                if end:
                    del self.stream_buffers[stream_id]
                    self.priority.remove_stream(stream_id)
                self._frame_data(connection, stream_id, data, end)
            except SEND_ERRORS:
                # The stream or connection has closed under the sender, as
                # Hypercorn's own path treats it: nothing to send.
                return True
            await self._flush()
            return True

        async def _end_now(self, stream_id: int) -> bool:
            """End the stream at once if nothing of it is queued and the
            send task is not sending it; False leaves it to that task."""
            queued = self.stream_buffers.get(stream_id)
            if queued is None or queued.buffer or stream_id == self._sending:
                return False
            del self.stream_buffers[stream_id]
            self.priority.remove_stream(stream_id)
            try:
                self._frame_data(self.connection, stream_id, b"", True)
            except SEND_ERRORS:
                return True
            await self._flush()
            return True

        async def _close_stream(self, stream_id: int) -> None:
            # Hypercorn wakes its send task on every stream's close; a
            # stream whose end went out directly has nothing there (no
            # buffer, not in the tree), so the wake-up would find nothing.
            if stream_id in self.stream_buffers or self.closed:
                await super()._close_stream(stream_id)
                return
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                await stream.handle(stream_closed(stream_id=stream_id))

        async def _send_data(self, stream_id: int) -> None:
            self._sending = stream_id
            try:
                await super()._send_data(stream_id)
            finally:
                self._sending = None

    return TunedH2Protocol
