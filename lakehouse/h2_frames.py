"""DATA frames framed by chatd for its tuned HTTP/2 connections.

For each DATA frame h2's ``send_data`` runs the connection's and the
stream's state machines (neither state changes for a DATA frame without
END_STREAM), builds a hyperframe ``DataFrame`` with a set of flags,
serialises it and logs through its no-op logger: ~5.5 us a chunk with the
window check and the hand-over of the output, against ~0.9 us with
``send_data_frame``, which checks the same two states, takes the length
off both flow-control windows and appends the 9-byte frame header and the
data to the connection's output, as h2 does. A frame that ends the stream
(an answer's last body message, or the end alone, which h2 sends with
``end_stream``) has the stream's own state machine told of its end, as
h2's stream does, and the END_STREAM flag. Never with padding; a
connection or stream in any other state goes to h2's ``send_data``, which
raises as it would. At start-up the bytes, windows and stream states are
checked against the installed h2's own (``send_data_problems``: a server
whose h2 frames otherwise runs stock), and a test holds h2's source to the
version followed.

``lakehouse.h2_tuning``'s protocol sends with it on connections whose
logger is h2's no-op one; this module imports only h2.
``tests/test_h2_frames.py`` holds the contract.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
import h2.stream

# A DATA frame's header (RFC 9113 4.1): length (24 bits), type 0, flags,
# stream id.
DATA_HEAD = struct.Struct(">BHBBL")
END_STREAM = 0x1
SENDING_OPEN = h2.connection.ConnectionState.SERVER_OPEN
DATA_OPEN = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)
SEND_END_STREAM = h2.stream.StreamInputs.SEND_END_STREAM


def send_data_frame(connection: Any, stream_id: int, data: bytes, end: bool = False) -> None:
    """h2 4.x's ``send_data(stream_id, data, end_stream=end)`` (no padding;
    with empty ``data`` and ``end``, its ``end_stream``) for data the caller
    has checked fits the stream's flow-control window and the peer's frame
    size: both state machines checked (a DATA frame changes neither), the
    stream's told of its end by its own state machine when ``end``, the
    length taken off both windows, the frame appended to the connection's
    output. A connection or stream in any other state goes to h2's
    ``send_data``, which raises as it would."""
    stream = connection.streams.get(stream_id)
    if (
        stream is None
        or connection.state_machine.state is not SENDING_OPEN
        or stream.state_machine.state not in DATA_OPEN
    ):
        connection.send_data(stream_id, data, end_stream=end)
        return
    flags = 0
    if end:
        stream.state_machine.process_input(SEND_END_STREAM)
        flags = END_STREAM
    size = len(data)
    stream.outbound_flow_control_window -= size
    connection.outbound_flow_control_window -= size
    out = connection._data_to_send
    out += DATA_HEAD.pack(size >> 16, size & 0xFFFF, 0, flags, stream_id)
    out += data


def send_data_problems() -> list[str]:
    """Whether ``send_data_frame`` frames as the installed h2's own
    ``send_data`` and ``end_stream`` do (the bytes; the windows and the
    streams' states after) on a stream open and one half closed; what
    differs, if anything. Where it differs the server runs stock
    (``connections.h2_contract_problems``)."""
    try:
        ours = _sent_by(send_data_frame)
        h2s = _sent_by(h2s_send)
    except Exception as exc:  # an h2 whose internals moved; said, not raised
        return [f"send_data_frame fails on this h2: {type(exc).__name__}: {exc}"]
    if ours != h2s:
        return ["send_data_frame frames otherwise than this h2's send_data"]
    return []


def h2s_send(connection: Any, stream_id: int, data: bytes, end: bool) -> None:
    """h2's own way to what ``send_data_frame`` does: what the start-up
    check compares it with, and how a tuned connection whose h2 logs sends."""
    if data or not end:
        connection.send_data(stream_id, data, end_stream=end)
    else:
        connection.end_stream(stream_id)


def open_streams() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A server connection with stream 1 open (the request's body still
    coming) and stream 3 half closed (the request whole), its response
    headers sent; and the client connection, told all the server sent."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    request = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"a"),
        (b":path", b"/"),
    ]
    client.send_headers(1, request)
    client.send_headers(3, request, end_stream=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for stream_id in (1, 3):
        server.send_headers(stream_id, [(b":status", b"200")])
    client.receive_data(server.data_to_send())
    return server, client


def send_state(server: h2.connection.H2Connection) -> list[Any]:
    """What sending DATA changes on ``open_streams``' server: the
    connection's window, and each stream's window, state and closer."""
    streams = [server.streams[1], server.streams[3]]
    return [
        server.outbound_flow_control_window,
        *((s.outbound_flow_control_window, s.state_machine.state, s.closed_by) for s in streams),
    ]


def _sent_by(send: Any) -> tuple[bytes, list[Any]]:
    """What ``send`` (stream id, data, end) sent, and ``send_state`` after:
    on stream 1 (open) a chunk, the last chunk with the end, on stream 3
    (half closed) a chunk, then the end alone."""
    server, _ = open_streams()
    for stream_id, data, end in (
        (1, b"a", False),
        (3, b"bc", False),
        (1, b"d", True),
        (3, b"", True),
    ):
        send(server, stream_id, data, end)
    return server.data_to_send(), send_state(server)
