"""How chatd has Hypercorn run a connection: two per-request costs removed.

Both stand in for parts of Hypercorn's ``TCPServer`` (hypercorn 0.18,
``hypercorn/asyncio/tcp_server.py``); ``lakehouse.server`` installs them
and stays the only module that imports Hypercorn.

The idle timer. Hypercorn's TCPServer watches each connection with an ``AsyncioSingleTask``:
``restart`` (the connection went idle) cancels and awaits the previous
watcher, then starts a task running ``TCPServer._idle_timeout`` (wait for
server shutdown or ``keep_alive_timeout``, then close); ``stop`` (a request
arrived, or the connection is closing) cancels it. On a keep-alive
connection that is a cancellation, two task switches and the inner task of
``asyncio.wait_for`` for every request: ~8% of a proxied request's CPU here.

``IdleWatch`` keeps the same interface and behaviour with one watcher per
connection for its whole life: ``restart`` and ``stop`` only move an
"idle since" mark, and the watcher, waking once per ``keep_alive_timeout``,
closes the connection once it has been idle that long, or at once when the
server shuts down. One exception to "at once": a connection that has not
yet sent its first request (accepted just before a worker began to drain,
its request maybe still in flight) gets ``FIRST_REQUEST_GRACE`` to send
it, so a rolling restart does not drop brand-new connections unanswered.

Coalesced writes. Hypercorn writes each piece of a response as it is made
(the head at ``http.response.start``, the body, an empty end) and awaits
``drain()`` after each: two or three ``send()`` system calls per answer.
``corked`` gathers what one turn of the event loop writes on a connection
and sends it at the end of that turn, in one call; a connection whose
peer reads slowly (bytes left in the transport's buffer) still waits in
``drain()`` as before, and anything other than data (closing, idle/busy
updates) first sends what is gathered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lakehouse.tasks import wait_closed

ProtocolSend = Callable[[Any, Any], Awaitable[None]]

log = logging.getLogger("chatd.server")

# Seconds a connection with no request yet may still send one once the
# server is shutting down (a request in transit on a just-accepted socket).
FIRST_REQUEST_GRACE = 1.0


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("keep-alive watcher failed", exc_info=task.exception())


class IdleWatch:
    """Stands in for Hypercorn's ``AsyncioSingleTask`` as a TCPServer's
    ``idle_task``; ``action`` is that server's bound ``_idle_timeout``."""

    def __init__(self) -> None:
        self._idle_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._server: Any = None
        # No request seen yet, and since when the connection is open.
        self._fresh = True
        self._opened = 0.0

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        server = action.__self__  # type: ignore[attr-defined]
        if server.context.terminated.is_set() and not self._fresh:
            # Shutting down: close now, as Hypercorn's own watcher would.
            task_group._task_group.create_task(action())
            return
        self._idle_since = asyncio.get_running_loop().time()
        if self._task is None:
            if self._fresh:
                self._opened = self._idle_since
            self._server = server
            # Outside the connection's task group, which must be able to end
            # (a client gone mid-request) while the watcher waits; the
            # server's _close() always follows and stops it.
            self._task = asyncio.create_task(self._watch(server))
            self._task.add_done_callback(_report)

    async def stop(self) -> None:
        self._idle_since = None
        self._fresh = False
        task = self._task
        if task is not None and self._server.writer.is_closing():
            self._task = None
            await wait_closed(task)

    async def _watch(self, server: Any) -> None:
        loop = asyncio.get_running_loop()
        timeout = server.config.keep_alive_timeout
        terminated = server.context.terminated
        while True:
            since = self._idle_since
            if terminated.is_set():
                if since is None:
                    # Shutting down mid-request: ``restart`` closes the
                    # connection when the request is done.
                    self._task = None
                    return
                grace = self._opened + FIRST_REQUEST_GRACE - loop.time()
                if not self._fresh or grace <= 0:
                    break
                await asyncio.sleep(grace)
                continue
            wait = timeout if since is None else since + timeout - loop.time()
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(terminated.wait(), wait)
            except TimeoutError:
                continue
        self._task = None
        await asyncio.shield(server._initiate_server_close())


def corked(original: ProtocolSend, raw_data: Any, closed: Any) -> ProtocolSend:
    """``TCPServer.protocol_send`` with writes coalesced per loop turn;
    ``raw_data``/``closed`` are Hypercorn's ``RawData`` and ``Closed``."""

    def flush(server: Any) -> None:
        pending: list[bytes] | None = server.__dict__.pop("_chatd_pending", None)
        if not pending or server.writer.is_closing():
            return
        try:
            server.writer.write(pending[0] if len(pending) == 1 else b"".join(pending))
        except (ConnectionError, RuntimeError):
            gone = server.protocol.handle(closed())
            try:
                server._task_group._task_group.create_task(gone)
            except RuntimeError:  # the connection is already being wound up
                gone.close()

    async def protocol_send(server: Any, event: Any) -> None:
        if type(event) is not raw_data:
            flush(server)
            await original(server, event)
            return
        pending = server.__dict__.get("_chatd_pending")
        if pending is None:
            server._chatd_pending = [event.data]
            asyncio.get_running_loop().call_soon(flush, server)
        else:
            pending.append(event.data)
        if server.writer.transport.get_write_buffer_size():
            # The peer is behind: send now and wait, as Hypercorn would.
            flush(server)
            async with server.send_lock:
                try:
                    await server.writer.drain()
                except (ConnectionError, RuntimeError):
                    await server.protocol.handle(closed())

    return protocol_send
