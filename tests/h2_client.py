"""A raw h2c (prior knowledge) client for tests and bench/attacks.py: it
sends exactly the frames asked for (RST_STREAM, a bare socket close) and
records what the server answered, which httpx does not allow."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


class RawH2:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self._reader, self._writer = reader, writer
        self.status: dict[int, int] = {}
        self.body: dict[int, bytes] = {}
        self.ended: dict[int, asyncio.Future[int]] = {}
        # Streams the server reset, by error code.
        self.reset_by_server: dict[int, int] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        self.flush()
        self._pump = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base: str) -> RawH2:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    def _done(self, sid: int, value: int) -> None:
        waiter = self.ended.get(sid)
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(65536):
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._on(event)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for sid, waiter in self.ended.items():
                if not waiter.done():
                    waiter.set_result(self.status.get(sid, 0))

    def _on(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.status[event.stream_id] = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.body[event.stream_id] = self.body.get(event.stream_id, b"") + event.data
        elif isinstance(event, h2.events.StreamEnded):
            self._done(event.stream_id, self.status.get(event.stream_id, 0))
        elif isinstance(event, h2.events.StreamReset):
            self.reset_by_server[event.stream_id] = int(event.error_code)
            self._done(event.stream_id, -int(event.error_code) or -1)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def start(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        flush: bool = True,
    ) -> int:
        """Open a stream (no waiting); its ``ended`` future resolves to its
        status, or minus the error code when the server reset it."""
        sid = self.conn.get_next_available_stream_id()
        sent = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            *(headers or ()),
        ]
        if body is not None:
            sent += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        self.ended[sid] = asyncio.get_running_loop().create_future()
        self.conn.send_headers(sid, sent, end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        if flush:
            self.flush()
        return sid

    def post_json(self, path: str, payload: Any, *, flush: bool = True) -> int:
        return self.start("POST", path, json.dumps(payload).encode(), flush=flush)

    def reset(self, sid: int, *, flush: bool = True) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        if flush:
            self.flush()

    async def wait(self, sid: int, timeout: float = 10) -> int:
        return await asyncio.wait_for(asyncio.shield(self.ended[sid]), timeout)

    def abort(self) -> None:
        """Drop the connection without a GOAWAY, streams still open."""
        self._writer.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()
        self.flush()
        self._writer.close()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._pump
