"""A fast stub upstream for the benchmark: raw asyncio.Protocol HTTP/1.1 on uvloop.

Speaks just enough of two upstream protocols, with fixed small replies:

- ``POST /api/chat``              Ollama native, non-streaming (``done: true``, token counts)
- ``POST /v1/chat/completions``   OpenAI non-streaming (``choices`` and ``usage``)
- ``GET  /api/version``           Ollama's version probe
- ``POST /api/chat`` with ``"stream":true``: Ollama's NDJSON stream, chunked,
  ``--chunks`` lines ``--chunk-ms`` apart on one timer per stream, then the
  ``done`` line. Each line's content is ``@<CLOCK_MONOTONIC seconds>`` at the
  moment it was written, so a client on this machine reads each chunk's
  transit time (``bench/streams.py``).

Keep-alive and pipelined requests are parsed by Content-Length (chunked request
bodies are accepted too); replies go out in request order. The model name is
echoed from the request body by a cheap byte search, not a JSON parse.
``--delay-ms N`` holds every reply N ms on a timer (``loop.call_later``), never
blocking the loop. It must be far faster than chatd, or a benchmark measures the
stub: ``python bench/stub.py --port 0`` prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import deque

CHAT_REPLY = (
    b'{"model":"%s","created_at":"2025-01-01T00:00:00.000000Z",'
    b'"message":{"role":"assistant","content":"Hello from bench stub."},'
    b'"done":true,"done_reason":"stop","total_duration":1000000,"load_duration":0,'
    b'"prompt_eval_count":12,"prompt_eval_duration":100000,'
    b'"eval_count":5,"eval_duration":500000}'
)
OPENAI_REPLY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1735689600,'
    b'"model":"%s","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello from bench stub."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}'
)
STREAM_LINE = (
    b'{"model":"%s","created_at":"2025-01-01T00:00:00.000000Z",'
    b'"message":{"role":"assistant","content":"@%.6f"},"done":false}\n'
)
STREAM_DONE = (
    b'{"model":"%s","created_at":"2025-01-01T00:00:00.000000Z",'
    b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"prompt_eval_count":12,"eval_count":%d}\n'
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
VERSION_REPLY = b'{"version":"0.12.0"}'
NOT_FOUND = b'{"error":"not found"}'
BAD_REQUEST = b'{"error":"bad request"}'

HEAD = b"HTTP/1.1 %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
CLOSE = b"Connection: close\r\n"
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


def model_of(body: bytes) -> bytes:
    """The first ``"model": "..."`` value, found by a byte search (a JSON-safe
    string or ``stub`` when it is absent or escaped)."""
    at = body.find(b'"model"')
    if at < 0:
        return b"stub"
    colon = body.find(b":", at + 7)
    start = body.find(b'"', colon + 1) + 1
    end = body.find(b'"', start)
    if colon < 0 or start <= 0 or end < 0 or b"\\" in body[start:end]:
        return b"stub"
    return body[start:end]


def response(status: bytes, body: bytes, close: bool) -> bytes:
    return b"".join((HEAD % (status, len(body)), CLOSE if close else b"", b"\r\n", body))


def reply_for(method: bytes, path: bytes, body: bytes) -> tuple[bytes, bytes]:
    path = path.split(b"?", 1)[0]
    if method == b"POST" and path == b"/api/chat":
        return b"200 OK", CHAT_REPLY % model_of(body)
    if method == b"POST" and path == b"/v1/chat/completions":
        return b"200 OK", OPENAI_REPLY % model_of(body)
    if method == b"GET" and path == b"/api/version":
        return b"200 OK", VERSION_REPLY
    return b"404 Not Found", NOT_FOUND


def dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``: (body, end) or None if incomplete."""
    parts = []
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # trailers, then the blank line
            return (b"".join(parts), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


def wants_stream(body: bytes) -> bool:
    return b'"stream":true' in body or b'"stream": true' in body


class StubProtocol(asyncio.Protocol):
    delay: float = 0.0
    chunks: int = 50
    chunk_interval: float = 0.02
    loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending: deque[list[bytes | None]] = deque()  # delayed replies, in order
        self.closing = False
        # While a stream is being sent, further requests wait in ``buf``.
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        while not self.closing and not self.streaming:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail()
                return self.send(out)
            head = bytes(buf[:head_end])
            lines = head.split(b"\r\n")
            try:
                method, path, version = lines[0].split(b" ", 2)
            except ValueError:
                return self.fail()
            length = 0
            chunked = False
            close = version == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        return self.fail()
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    value = value.strip().lower()
                    close = value == b"close" or (close and value != b"keep-alive")
            start = head_end + 4
            if chunked:
                decoded = dechunk(buf, start)
                if decoded is None:
                    return self.send(out)
                body, end = decoded
            else:
                if length < 0 or length > MAX_BODY:
                    return self.fail()
                end = start + length
                if len(buf) < end:
                    return self.send(out)
                body = bytes(buf[start:end])
            del buf[:end]
            if method == b"POST" and path == b"/api/chat" and wants_stream(body):
                self.send(out)
                out = []
                self.start_stream(model_of(body))
                continue
            status, payload = reply_for(method, path, body)
            out.append(response(status, payload, close))
            if close:
                self.closing = True
        return self.send(out)

    def start_stream(self, model: bytes) -> None:
        if self.transport is None:
            return
        self.streaming = True
        self.transport.write(STREAM_HEAD)
        self.loop.call_later(self.chunk_interval, self.tick, model, 0)

    def tick(self, model: bytes, sent: int) -> None:
        if self.transport is None:
            return
        if sent < self.chunks:
            line = STREAM_LINE % (model, time.monotonic())
            self.transport.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.loop.call_later(self.chunk_interval, self.tick, model, sent + 1)
            return
        line = STREAM_DONE % (model, sent)
        self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
        self.streaming = False
        if self.buf:
            self.data_received(b"")

    def send(self, out: list[bytes]) -> None:
        if not out or self.transport is None:
            return
        if self.delay:
            slot: list[bytes | None] = [None]
            self.pending.append(slot)
            data = b"".join(out)
            self.loop.call_later(self.delay, self.ready, slot, data)
            return
        self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if self.closing:
            self.transport.close()

    def ready(self, slot: list[bytes | None], data: bytes) -> None:
        slot[0] = data
        pending = self.pending
        while pending and pending[0][0] is not None:
            chunk = pending.popleft()[0]
            if self.transport is not None and chunk:
                self.transport.write(chunk)
        if self.closing and not pending and self.transport is not None:
            self.transport.close()

    def fail(self) -> None:
        if self.transport is not None:
            self.transport.write(response(b"400 Bad Request", BAD_REQUEST, True))
            self.transport.close()
        self.closing = True


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


async def serve(
    host: str, port: int, delay_ms: float, chunks: int = 50, chunk_ms: float = 20
) -> None:
    loop = asyncio.get_running_loop()
    StubProtocol.delay = delay_ms / 1000.0
    StubProtocol.chunks = chunks
    StubProtocol.chunk_interval = chunk_ms / 1000.0
    StubProtocol.loop = loop
    server = await loop.create_server(StubProtocol, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="hold each reply N ms")
    parser.add_argument("--chunks", type=int, default=50, help="lines per streamed reply")
    parser.add_argument("--chunk-ms", type=float, default=20, help="ms between streamed lines")
    args = parser.parse_args(argv)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            serve(args.host, args.port, args.delay_ms, args.chunks, args.chunk_ms)
        )
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
