"""A load generator for streamed answers: N streams open at once, each
started again as soon as it ends, for a while; prints one JSON line.

    python bench/streams.py --url http://127.0.0.1:P/chat --streams 200 \\
        --duration 10 --body '{"model":...,"stream":true}' [--h2] [--stagger-ms 20]

The bench stub (``bench/stub.py``) writes each streamed line's content as
``@<CLOCK_MONOTONIC seconds>`` when it sends it. This client reads the
bytes as they arrive (HTTP/1.1 on raw sockets; h2c with prior knowledge
through the ``h2`` library) and, for every chunk carrying such a stamp,
records its transit time: arrival minus stamp, on one machine's clock.
Through chatd that is the producer-to-caller delay of each chunk; the same
streams straight from the stub give the floor to subtract. Only a content
that is exactly one stamp counts, so chatd's final NDJSON line (all the
contents joined) is not counted again.

Streams start spread over ``--stagger-ms``, as independent callers would,
not in lock step; ``bench/run`` spreads them over one answer's length, so
that once all are open they also end and start again spread out (N / that
length stream set-ups a second), not as a burst of N every answer. What is
counted arrives in the ``--duration`` seconds that begin ``--settle-ms``
after the last start (all N open; streams that end then start again), not
in the ramp before nor the drain after. The settling time is for the
serving process: its heap grows as it takes the streams on, and a full
collection by CPython's rule (a quarter's growth; the floor rows run it,
chatd's worker discounts growth that more calls explain) comes last near
the end of the ramp, a transient of taking the streams on, not of holding
them. The line printed: ``STREAMS_JSON {"streams",
"chunks" (counted), "chunks_all" (every stamped chunk, ramp and drain
included: what the serving process's CPU over the whole run is divided
by), "errors", "lat_p50_ms", "lat_p99_ms", "ttfc_p50_ms", "ttfc_p99_ms",
"elapsed_s" (the counted window)}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings

STAMP = re.compile(rb'"content":"@(\d+\.\d+)"')
CARRY = 64  # bytes kept from one read for a stamp cut in two
H1_END = b"\r\n0\r\n\r\n"
STREAMS_PER_H2_CONN = 100
BIG_WINDOW = 2**31 - 1


@dataclass
class Tally:
    counted_from: float  # all streams open
    deadline: float  # the counted window's end: no stream starts after it
    latencies: list[float] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    chunks_all: int = 0
    streams: int = 0
    errors: int = 0
    open: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def stamps(self, buf: bytes, fresh_from: int, now: float) -> int:
        """Record the transit time of each stamp ending past ``fresh_from``
        (in the counted window); say how many there were."""
        found = 0
        counted = self.counted_from <= now < self.deadline
        for match in STAMP.finditer(buf):
            if match.end() > fresh_from:
                if counted:
                    self.latencies.append(now - float(match.group(1)))
                found += 1
        self.chunks_all += found
        return found

    def first_chunk(self, now: float, sent_at: float) -> None:
        if self.counted_from <= now < self.deadline:
            self.ttfc.append(now - sent_at)

    def ended(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.idle.set()


class H1Stream(asyncio.Protocol):
    """One keep-alive connection carrying one stream after another."""

    def __init__(self, tally: Tally, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.carry = b""
        self.sent_at = 0.0
        self.first = True
        self.head_checked = False
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tally.open += 1
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.monotonic()
        self.first = True
        self.head_checked = False
        self.carry = b""
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        tally = self.tally
        buf = self.carry + data
        if not self.head_checked:
            self.head_checked = True
            if not buf.startswith(b"HTTP/1.1 200"):
                tally.errors += 1
                self.finish()
                return
        if tally.stamps(buf, len(self.carry), now) and self.first:
            self.first = False
            tally.first_chunk(now, self.sent_at)
        if buf.endswith(H1_END):
            tally.streams += 1
            if now < tally.deadline:
                self.send()
                return
            self.finish()
            return
        self.carry = buf[-CARRY:]

    def finish(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)
            self.tally.ended()


class H2Streams(asyncio.Protocol):
    """One h2c connection carrying ``n`` streams at once, each restarted
    when it ends. Windows are opened wide at the start, so nothing waits
    on flow control and no WINDOW_UPDATE is needed."""

    def __init__(self, tally: Tally, n: int, authority: str, path: str, body: bytes) -> None:
        self.tally = tally
        self.n = n
        self.headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", authority.encode()),
            (b":path", path.encode()), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]  # fmt: skip
        self.body = body
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.carry = b""
        self.sent_at: dict[int, float] = {}
        self.running = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: BIG_WINDOW})
        self.conn.increment_flow_control_window(BIG_WINDOW - 65535)
        self.flush()

    def start(self) -> None:
        """Open one more stream (called ``n`` times, staggered)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.tally.open += 1
        self.running += 1
        self.open_stream()
        self.flush()

    def open_stream(self) -> None:
        sid = self.conn.get_next_available_stream_id()
        self.sent_at[sid] = time.monotonic()
        self.conn.send_headers(sid, self.headers)
        self.conn.send_data(sid, self.body, end_stream=True)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        tally = self.tally
        buf = self.carry + data
        tally.stamps(buf, len(self.carry), now)
        self.carry = buf[-CARRY:]
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                if dict(event.headers).get(b":status") != b"200":
                    tally.errors += 1
            elif isinstance(event, h2.events.DataReceived):
                sent = self.sent_at.pop(event.stream_id, None)
                if sent is not None and STAMP.search(event.data):
                    tally.first_chunk(now, sent)
                elif sent is not None:
                    self.sent_at[event.stream_id] = sent
            elif isinstance(event, h2.events.StreamEnded):
                self.sent_at.pop(event.stream_id, None)
                tally.streams += 1
                self.restart(now)
            elif isinstance(event, h2.events.StreamReset):
                self.sent_at.pop(event.stream_id, None)
                tally.errors += 1
                self.restart(now)
        self.flush()

    def restart(self, now: float) -> None:
        if now < self.tally.deadline:
            self.open_stream()
            return
        self.running -= 1
        self.tally.ended()
        if self.running == 0 and self.transport is not None:
            self.conn.close_connection()
            self.flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.running:
            self.tally.errors += self.running
            for _ in range(self.running):
                self.tally.ended()
            self.running = 0
        if not self.done.done():
            self.done.set_result(None)


def percentile_ms(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index] * 1000


async def run(args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = args.body.encode()
    started = time.monotonic()
    ramp = args.stagger_ms / 1000
    counted_from = started + ramp + args.settle_ms / 1000
    tally = Tally(counted_from=counted_from, deadline=counted_from + args.duration)
    stagger = ramp / max(1, args.streams)
    if args.h2:
        conns = []
        left = args.streams
        while left > 0:
            n = min(STREAMS_PER_H2_CONN, left)
            left -= n
            _, proto = await loop.create_connection(
                lambda n=n: H2Streams(tally, n, url.netloc, url.path, body), host, port
            )
            conns.append(proto)
        for i in range(args.streams):
            loop.call_at(started + i * stagger, conns[i % len(conns)].start)
        waits = [c.done for c in conns]
    else:
        request = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        waits = []

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, started + i * stagger - time.monotonic()))
            while True:
                try:
                    _, proto = await loop.create_connection(
                        lambda: H1Stream(tally, request), host, port
                    )
                except OSError:
                    # Refused (a full accept queue): an error, then try again.
                    tally.errors += 1
                    if time.monotonic() >= tally.deadline:
                        return
                    await asyncio.sleep(0.05)
                    continue
                await proto.done
                return

        waits = [asyncio.ensure_future(one(i)) for i in range(args.streams)]
    try:
        async with asyncio.timeout(tally.deadline - started + args.grace):
            await asyncio.gather(*waits)
    except TimeoutError:
        tally.errors += tally.open
    return {
        "streams": tally.streams,
        "chunks": len(tally.latencies),
        "chunks_all": tally.chunks_all,
        "errors": tally.errors,
        "lat_p50_ms": percentile_ms(tally.latencies, 50),
        "lat_p99_ms": percentile_ms(tally.latencies, 99),
        "ttfc_p50_ms": percentile_ms(tally.ttfc, 50),
        "ttfc_p99_ms": percentile_ms(tally.ttfc, 99),
        "elapsed_s": min(time.monotonic(), tally.deadline) - tally.counted_from,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument(
        "--duration", type=float, default=10, help="seconds counted, from the last start"
    )
    p.add_argument("--grace", type=float, default=60, help="how long open streams may take")
    p.add_argument("--body", required=True)
    p.add_argument("--h2", action="store_true", help="h2c, prior knowledge")
    p.add_argument("--stagger-ms", type=float, default=20, help="spread of the first starts")
    p.add_argument("--settle-ms", type=float, default=0, help="not counted after the last start")
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print("STREAMS_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
