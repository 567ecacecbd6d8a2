"""lakehouse.h2_frames: DATA frames framed by chatd, held to the installed
h2's own framing, windows and stream states."""

from __future__ import annotations

import hashlib
import inspect
import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.stream
import pytest

from lakehouse.h2_frames import h2s_send, open_streams, send_data_frame, send_state

# h2 4.4.1's send path for a DATA frame, which send_data_frame follows:
# H2Connection.send_data (the checks, the connection's state machine, the
# window), H2Stream.send_data (the stream's state machine, the frame, its
# window) and _prepare_for_sending (the serialised frame appended to the
# output). A new h2 changing one fails here: compare them again.
SEND_DATA_SHA256 = {
    "H2Connection.send_data": "9f67cb77f02c01d08a7676dd2c499d64b2bb021b46faa99afb2fe506c838bcdf",
    "H2Stream.send_data": "9742a001ccca6af762d5f21ef2764c999bfd64012019e27241b2d18fdc8ff2dd",
    "H2Connection._prepare_for_sending": (
        "6be16b5970454a30f26185221c6d744febde7ec9450d08b3165f5adc4b7400c5"
    ),
}


def test_h2s_send_data_is_the_one_followed() -> None:
    owners = {"H2Connection": h2.connection.H2Connection, "H2Stream": h2.stream.H2Stream}
    for name, digest in SEND_DATA_SHA256.items():
        owner, method = name.split(".")
        source = inspect.getsource(getattr(owners[owner], method))
        assert hashlib.sha256(source.encode()).hexdigest() == digest, (name, source)
    # The connection's output, which data_to_send hands over and empties.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    assert isinstance(conn._data_to_send, bytearray)


@pytest.mark.parametrize("size", [0, 1, 100, 16_384])
def test_send_data_frame_sends_as_h2s_own(size: int) -> None:
    data = bytes(random.Random(size).randbytes(size))
    (ours, client), (h2s, _) = open_streams(), open_streams()
    for stream_id in (1, 3, 1):
        send_data_frame(ours, stream_id, data)
        h2s.send_data(stream_id, data)
        assert ours.data_to_send() == h2s.data_to_send()
        assert send_state(ours) == send_state(h2s)
    # And the client reads the frames as data, on the streams sent.
    send_data_frame(ours, 3, data)
    [event] = client.receive_data(ours.data_to_send())
    assert isinstance(event, h2.events.DataReceived)
    assert (event.stream_id, event.data) == (3, data)


@pytest.mark.parametrize("size", [0, 1, 16_384])
def test_send_data_frame_ends_streams_as_h2s_own(size: int) -> None:
    # The open stream half closes, the half closed one closes; with no
    # data, h2's own way is end_stream.
    data = bytes(random.Random(size).randbytes(size))
    (ours, client), (h2s, _) = open_streams(), open_streams()
    for stream_id in (1, 3):
        send_data_frame(ours, stream_id, data, end=True)
        h2s_send(h2s, stream_id, data, True)
        sent = ours.data_to_send()
        assert sent == h2s.data_to_send()
        assert send_state(ours) == send_state(h2s)
        # And the client reads the stream's end.
        events = client.receive_data(sent)
        assert isinstance(events[-1], h2.events.StreamEnded), events
        assert events[-1].stream_id == stream_id
    assert ours.streams[3].closed and not ours.streams[1].closed


def refusal(send: Any, conn: h2.connection.H2Connection, stream_id: int, end: bool) -> str:
    """What sending on ``stream_id`` raised, or the bytes it sent."""
    try:
        send(conn, stream_id, b"late", end)
    except Exception as exc:  # whichever it is, compared by name
        return type(exc).__name__
    return repr(conn.data_to_send())


@pytest.mark.parametrize("end", [False, True], ids=["chunk", "end"])
@pytest.mark.parametrize(
    ("case", "stream_id"),
    [("stream ended", 3), ("stream reset", 1), ("connection closed", 1), ("never opened", 5)],
)
def test_send_data_frame_refuses_as_h2s_own(case: str, stream_id: int, end: bool) -> None:
    got = []
    for send in (send_data_frame, h2s_send):
        conn, _ = open_streams()
        if case == "stream ended":
            conn.end_stream(3)
        elif case == "stream reset":
            conn.reset_stream(1)
        elif case == "connection closed":
            conn.close_connection()
        conn.data_to_send()
        got.append(refusal(send, conn, stream_id, end))
    assert got[0] == got[1], got
    assert got[0].endswith("Error"), got
