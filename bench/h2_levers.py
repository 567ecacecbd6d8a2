"""What each header lever of lakehouse.h2_tuning saves, in h2 alone.

One h2 server connection answers 20,000 requests from an h2 client in this
process, shaped like the bench's (h2load's request head and a 71-byte body;
chatd's response head with a fresh request id and Server-Timing, and a
158-byte body). Timed: the server's receive of each request (with its flow
control acknowledgement) and its response (HEADERS, DATA, END_STREAM), in
thread CPU time, the best of 5 runs per setting:

    .venv/bin/python bench/h2_levers.py

The direct-DATA lever saves a task switch per body message in Hypercorn's
layer above h2, so only the streaming rows of bench/run show it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lakehouse.h2_tuning import PlainEncoder, outbound_headers, request_headers_ok
from lakehouse.hpack_lean import LeanDecoder

REQUEST = [
    (b":method", b"POST"), (b":path", b"/chat"), (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:3220"), (b"content-type", b"application/json"),
    (b"content-length", b"71"), (b"user-agent", b"h2load nghttp2/1.52.0"),
]  # fmt: skip
N = 20_000


def response(i: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"), (b"content-type", b"application/json"),
        (b"content-length", b"158"), (b"x-request-id", b"c4ec3c61%08x" % i),
        (b"server-timing", b"upstream;dur=%d.%03d, chatd;dur=0.%03d" % (i % 10, i % 1000, i % 997)),
        (b"date", b"Tue, 01 Dec 2026 08:49:43 GMT"),
    ]  # fmt: skip


def run(
    *, own_in: bool = False, own_out: bool = False, plain: bool = False, lean: bool = False
) -> tuple[float, float]:
    """µs per request: (receive, respond)."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=not own_in,
            validate_outbound_headers=not own_out, normalize_outbound_headers=not own_out,
        )
    )  # fmt: skip
    if plain:
        server.encoder = PlainEncoder()
    if lean:
        server.decoder = LeanDecoder()
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    received = sent = 0.0
    for i in range(N):
        stream_id = 1 + 2 * i
        client.send_headers(stream_id, REQUEST)
        client.send_data(stream_id, b"x" * 71, end_stream=True)
        data = client.data_to_send()
        t0 = time.thread_time()
        for event in server.receive_data(data):
            if own_in and isinstance(event, h2.events.RequestReceived):
                assert request_headers_ok(event.headers)
            if isinstance(event, h2.events.DataReceived):
                server.acknowledge_received_data(event.flow_controlled_length, stream_id)
        t1 = time.thread_time()
        head = response(i)
        if own_out:
            head = head[:1] + outbound_headers(head[1:])
        server.send_headers(stream_id, head)
        server.send_data(stream_id, b"y" * 158)
        server.end_stream(stream_id)
        out = server.data_to_send()
        t2 = time.thread_time()
        received += t1 - t0
        sent += t2 - t1
        for event in client.receive_data(out):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, stream_id)
        server.receive_data(client.data_to_send())
    return received / N * 1e6, sent / N * 1e6


def main() -> None:
    settings = [
        ("stock h2", {}),
        ("request headers checked once", {"own_in": True}),
        ("response headers checked once", {"own_out": True}),
        ("plain HPACK literals", {"plain": True}),
        ("lean HPACK decoding", {"lean": True}),
        ("all four", {"own_in": True, "own_out": True, "plain": True, "lean": True}),
    ]
    print("| h2 setting | receive µs/request | respond µs/request | total |")
    print("|---|---|---|---|")
    for name, kwargs in settings:
        runs = [run(**kwargs) for _ in range(5)]
        rx, tx = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"| {name} | {rx:.1f} | {tx:.1f} | {rx + tx:.1f} |", flush=True)


if __name__ == "__main__":
    main()
