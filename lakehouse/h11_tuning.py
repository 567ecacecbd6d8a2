"""How chatd has Hypercorn's HTTP/1.1 layer send a streamed body: each
chunk framed here, not by h11's state machine.

Hypercorn 0.18's ``H11Protocol.stream_send`` (``hypercorn/protocol/h11.py``)
turns every body message into an ``h11.Data`` event and hands it to
``h11.Connection.send``, which runs the event through the connection's
state machine, calls the writer for the response's framing with a list's
``append`` and joins the pieces: ~2.7 µs a chunk here, for a transition
that leaves every state as it was (``Data`` in ``SEND_BODY`` goes back to
``SEND_BODY``) and three writes of a chunk's size line, its bytes and a
CRLF. When the response is chunked (h11 picked its ``ChunkedWriter``) and
ours is in ``SEND_BODY``, a body message here becomes the same frame,
made in one step, and goes to the connection's send as raw data. Anything
else (a response with a length, the head, the end of the body, an empty
chunk, a connection in another state) takes Hypercorn's own path.

This module imports h11 only: ``lakehouse.connections.install_protocols``
builds the subclass (given Hypercorn's class and event types) and has
Hypercorn use it for the connections of a tuned server
(``chatd.server.tuned``; stock ``H11Protocol`` otherwise, or when the
installed Hypercorn or h11 is not a version the contract tests passed on).
``tests/test_h11_tuning.py`` holds the contract: h11's own frame for the
same bytes, its states and writer before and after, and the stream through
a real server, tuned and stock.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import h11
from h11._writers import ChunkedWriter


def chunk_frame(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (RFC 9112 7.1), as h11's
    ``ChunkedWriter`` writes it: size in lower-case hex, CRLF, data, CRLF."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def direct_chunks_possible(connection: Any) -> bool:
    """Whether a body chunk may bypass ``connection`` (an ``h11.Connection``,
    or Hypercorn's WebSocket stand-in, which has no writer): a chunked
    response of ours is under way."""
    writer = getattr(connection, "_writer", None)
    return type(writer) is ChunkedWriter and connection.our_state is h11.SEND_BODY


def tuned_h11_protocol(base: type[Any], events: ModuleType, raw_data: type[Any]) -> type[Any]:
    """A subclass of Hypercorn's ``H11Protocol`` (``base``) that frames the
    chunks of a chunked body itself; ``events`` is
    ``hypercorn.protocol.events``, ``raw_data`` ``hypercorn.events.RawData``."""
    body = events.Body

    class TunedH11Protocol(base):  # type: ignore[misc]
        async def stream_send(self, event: Any) -> None:
            if type(event) is body and event.data and direct_chunks_possible(self.connection):
                await self.send(raw_data(data=chunk_frame(event.data)))
                return
            await super().stream_send(event)

    return TunedH11Protocol
