"""What each HTTP/1.1 lever of ``lakehouse.h11_tuning`` saves per streamed
chunk, in Hypercorn's send path alone (no sockets, no upstream): a body
message of an NDJSON line handed to the connection's protocol, one per
loop turn as a relayed stream sends them, through

- stock: Hypercorn's ``H11Protocol.stream_send`` (h11's state machine and
  chunked writer) into ``TunedTCPServer.protocol_send`` (gathered, sent
  at the turn's end);
- framed: ``h11_tuning``'s one-step frame, through ``protocol_send``, as
  chatd runs it.

The transport is a stand-in whose ``write`` keeps nothing, so the figures
are the Python work only. Best of 5 runs of 50,000 chunks, µs per chunk,
with a bare loop turn (``asyncio.sleep(0)``) subtracted.

    .venv/bin/python bench/h11_levers.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
import uvloop
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol import events
from hypercorn.protocol.h11 import H11Protocol

from lakehouse.connections import TunedTCPServer
from lakehouse.h11_tuning import tuned_h11_protocol

LINE = b'{"content":"@12345.678901"}\n'
CHUNKS = 50_000


class Transport:
    def get_write_buffer_size(self) -> int:
        return 0


class Writer:
    transport = Transport()

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def connection(kind: type[Any]) -> Any:
    tcp = object.__new__(TunedTCPServer)
    tcp.writer = Writer()  # type: ignore[assignment]
    tcp._chatd_pending = None
    tcp._chatd_pending_bytes = 0
    protocol = kind(None, Config(), WorkerContext(None), None, None, False, None, None,
                    tcp.protocol_send)  # fmt: skip
    conn = protocol.connection
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn.next_event()
    conn.send(h11.Response(status_code=200, headers=[(b"content-type", b"x")]))
    return protocol


async def per_chunk(protocol: Any | None) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(CHUNKS):
            if protocol is not None:
                await protocol.stream_send(events.Body(stream_id=1, data=LINE))
            await asyncio.sleep(0)  # the next chunk comes in a later loop turn
        best = min(best, (time.perf_counter() - started) / CHUNKS * 1e6)
    return best


async def main() -> None:
    tuned = tuned_h11_protocol(H11Protocol, events, RawData)
    bare = await per_chunk(None)
    for label, protocol in (
        ("stock (h11)", connection(H11Protocol)),
        ("framed (h11_tuning)", connection(tuned)),
    ):
        print(f"{label:<30} {await per_chunk(protocol) - bare:5.2f} µs per chunk")


if __name__ == "__main__":
    uvloop.run(main())
