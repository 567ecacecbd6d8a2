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
import h2.settings


class RawH2:
    """With ``window``, each stream's receive window is that small; the
    client opens it again only as it reads."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        window: int | None = None,
    ) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self._reader, self._writer = reader, writer
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.trailers: dict[int, dict[bytes, bytes]] = {}
        self.body: dict[int, bytes] = {}
        self.ended: dict[int, asyncio.Future[int]] = {}
        # Streams that ended with END_STREAM (not reset, not cut off).
        self.finished: set[int] = set()
        # Streams whose END_STREAM came on a DATA frame that carried data.
        self.ended_on_data: set[int] = set()
        # Who waits for a stream's first data (made only when asked).
        self._data: dict[int, asyncio.Future[bool]] = {}
        # Streams the server reset, by error code.
        self.reset_by_server: dict[int, int] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.increment_flow_control_window(2**30)
        self.flush()
        self._pump = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base: str, *, window: int | None = None) -> RawH2:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)), window=window)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    def _done(self, sid: int, value: int) -> None:
        for waiters, result in ((self.ended, value), (self._data, False)):
            waiter = waiters.get(sid)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

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
            for sid in self.ended:
                self._done(sid, self.status.get(sid, 0))

    def _on(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.headers[event.stream_id] = dict(event.headers)
            self.status[event.stream_id] = int(self.headers[event.stream_id][b":status"])
        elif isinstance(event, h2.events.TrailersReceived):
            self.trailers[event.stream_id] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.body[event.stream_id] = self.body.get(event.stream_id, b"") + event.data
            if event.stream_ended is not None and event.data:
                self.ended_on_data.add(event.stream_id)
            waiter = self._data.get(event.stream_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
        elif isinstance(event, h2.events.StreamEnded):
            self.finished.add(event.stream_id)
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

    async def until_data(self, sid: int, timeout: float = 10) -> bool:
        """Whether stream ``sid`` brought data before it ended."""
        if self.body.get(sid):
            return True
        if self.ended[sid].done():
            return False
        waiter = self._data.setdefault(sid, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        finally:
            del self._data[sid]

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


async def exchange(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    window: int | None = None,
    timeout: float = 30,
) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes]]:
    """One request on a connection of its own: the response's headers,
    body and trailers (httpx reads no trailers). Fails unless the stream
    ends with END_STREAM."""
    client = await RawH2.connect(base, window=window)
    try:
        sid = client.start(method, path, body, headers)
        await client.wait(sid, timeout)
        assert sid in client.finished, f"stream not ended: {client.reset_by_server.get(sid)}"
        return client.headers[sid], client.body.get(sid, b""), client.trailers.get(sid, {})
    finally:
        await client.close()
