"""Slow HTTP/1.1 clients: headers and bodies that never finish arriving.

Hypercorn 0.18 bounds neither: full headers with ``Content-Length: 100``
and one body byte held a connection, its descriptor and its task forever.
Its own ``read_timeout`` bounds each socket read, idle keep-alive waits
included, so it would also cut idle keep-alive connections at that bound;
``h11_max_incomplete_size`` bounds the size of a head, not its time.

``SlowClientMixin`` goes in front of Hypercorn's ``H11Protocol`` (composed
in ``lakehouse.connections``) and times the client's side of each request:
its head must be complete within ``chatd.server.read_timeout_secs`` of its
first byte, and its body must never pause longer than that between reads.
Past either, the caller gets a 408 when nothing was answered yet, and the
connection is closed. An idle keep-alive connection (no byte of a next
request) is not timed here: ``keep_alive_secs`` still governs it.

The work is one state check per read; a timer exists only while a head or
body is incomplete. It relies on H11Protocol's ``handle``, ``connection``
(h11's ``their_state``, ``our_state``, ``trailing_data``), ``send`` and
``task_group.spawn``; ``tests/test_slow_clients.py`` checks them against
the installed Hypercorn and h11.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11

log = logging.getLogger("chatd.server")

_BODY = b'{"error":{"code":"request_timeout","message":"the request did not arrive in time"}}'
# Written raw: h11 has no response to send before a request's head is in.
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


class SlowClientMixin:
    """Mixed in before Hypercorn's ``H11Protocol``; the composing class
    names Hypercorn's ``RawData`` and ``Closed`` events and the timeout."""

    raw_data_event: Any
    closed_event: Any
    # H11Protocol's, as this mixin uses them.
    config: Any
    connection: Any
    task_group: Any
    client: Any
    send: Callable[[Any], Awaitable[None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        # When the head being received must be complete; 0: none is.
        self._head_due = 0.0
        # Set on chatd's Hypercorn config; another app's config times nothing.
        self._limit: float | None = getattr(self.config, "chatd_read_timeout", None)

    async def handle(self, event: Any) -> None:
        await super().handle(event)  # type: ignore[misc]
        if isinstance(event, self.raw_data_event):
            if self._limit is not None:
                self._time_client(self._limit)
        elif isinstance(event, self.closed_event):
            self._stop()

    def _time_client(self, limit: float) -> None:
        their = self.connection.their_state
        if their is h11.SEND_BODY:
            self._head_due = 0.0
            self._arm(asyncio.get_running_loop().time() + limit)  # from this read
        elif their is h11.IDLE and self.connection.trailing_data[0]:
            if not self._head_due:  # the head's first byte is in this read
                self._head_due = asyncio.get_running_loop().time() + limit
            self._arm(self._head_due)
        else:
            self._head_due = 0.0
            self._stop()

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            if due == self._due:
                return
            self._timer.cancel()
        self._due = due
        self._timer = asyncio.get_running_loop().call_at(due, self._expire)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        # A RuntimeError: the connection is already being wound up.
        with contextlib.suppress(RuntimeError):
            self.task_group.spawn(self._time_out)

    async def _time_out(self) -> None:
        answered = self.connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE)
        log.info(
            "closing a slow client's connection",
            extra={"client": str(self.client), "answered": answered},
        )
        if not answered:
            await self.send(self.raw_data_event(TIMED_OUT))
        await self.send(self.closed_event())
