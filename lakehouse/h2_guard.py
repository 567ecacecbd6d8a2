"""An abuse budget per HTTP/2 connection (rapid reset, CVE-2023-44487).

Hypercorn 0.18 counts a stream against ``h2_max_concurrent_streams`` only
while h2 thinks it is open: a stream the client resets is closed at once,
while the request it started still runs. One connection could so start
unbounded work: 1,000 x (POST, RST_STREAM) in under a second queued 1,000
upstream calls. Its reset streams also stayed in the send scheduler's
priority tree (their buffers are never completed), which past 1,000 raised
``TooManyStreamsError`` out of the connection (a traceback, a bare
EOF); and a connection that closed under open streams left each stream's
last send waiting forever on a buffer nobody drains.

``GuardMixin`` goes in front of Hypercorn's ``H2Protocol``, tuned or stock
(composed in ``lakehouse.connections``, which with ``lakehouse.server``
stays the only module importing Hypercorn):

- A stream counts from its HEADERS until its request's task ends, reset
  or not. With the connection's ``h2_max_concurrent_streams`` running, a
  new stream is refused with RST_STREAM(REFUSED_STREAM) before any of its
  work starts (Go's and nginx's answer was the same bound).
- Resets and refusals spend tokens of a bucket refilled over time and by
  each completed response (nghttp2's rate limit: a burst of 1,000, 33 a
  second); an empty bucket closes the connection with
  GOAWAY(ENHANCE_YOUR_CALM), as nginx, Go and nghttp2 do.
- A reset stream's buffer is closed, so Hypercorn's sender drops it from
  the priority tree; a connection that closes closes every buffer, so no
  send waits on it. A ``TooManyStreamsError`` left anyway is answered with
  the same GOAWAY, never a traceback.
- Priority signals (PRIORITY frames, HEADERS' priority fields) are ignored,
  as RFC 9113 §5.3.2 lets a server do: every stream is scheduled with the
  default weight under the root. Hypercorn hands them to the ``priority``
  library's tree, and six PRIORITY frames for idle streams then a request
  leave that tree looping forever when the request's stream is removed:
  one client hung the whole worker (``tests/test_h2_guard.py``).

It relies on H2Protocol's ``_handle_events``, ``_create_stream``,
``stream_send``, ``handle``, ``streams``, ``stream_buffers``, ``priority``,
``connection`` and ``send``; ``tests/test_h2_guard.py`` checks each
against the installed Hypercorn and fails loudly when one changes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
from priority.priority import MissingStreamError, TooManyStreamsError

log = logging.getLogger("chatd.server")

# nghttp2's defaults for its RST_STREAM rate limit (CVE-2023-44487).
RESET_BURST = 1000
RESET_RATE = 33.0  # tokens a second

App = Callable[..., Awaitable[None]]


class ResetBudget:
    """Tokens a connection spends on resets and refusals."""

    __slots__ = ("_clock", "_stamp", "tokens")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stamp = clock()
        self.tokens = float(RESET_BURST)

    def spend(self) -> bool:
        """Take a token; False once the bucket is empty."""
        now = self._clock()
        self.tokens = min(RESET_BURST, self.tokens + (now - self._stamp) * RESET_RATE) - 1
        self._stamp = now
        return self.tokens >= 0

    def refund(self) -> None:
        self.tokens = min(RESET_BURST, self.tokens + 1)


class GuardMixin:
    """Mixed in before Hypercorn's ``H2Protocol`` (see the module doc); the
    composing class names Hypercorn's ``Closed`` and ``StreamClosed``."""

    closed_event: Any
    stream_closed_event: Any
    # H2Protocol's, as this mixin uses them.
    config: Any
    context: Any
    connection: Any
    streams: dict[int, Any]
    stream_buffers: dict[int, Any]
    priority: Any
    has_data: Any
    client: Any
    send: Callable[[Any], Awaitable[None]]
    _flush: Callable[[], Awaitable[None]]

    def __init__(self, app: App, *args: Any, **kwargs: Any) -> None:
        super().__init__(self._counted(app), *args, **kwargs)  # type: ignore[call-arg]
        self.running = 0
        self.refused = 0
        self._budget = ResetBudget()
        self._refused_ids: set[int] = set()
        self._calmed = False

    def _counted(self, app: App) -> App:
        async def counted(*args: Any) -> None:
            try:
                await app(*args)
            finally:
                self.running -= 1

        return counted

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        if headers is not None:
            self.running += 1  # the h2c upgrade's request, created there
        await super().initiate(headers, settings)  # type: ignore[misc]

    async def handle(self, event: Any) -> None:
        closing = isinstance(event, self.closed_event)
        if self._calmed and not closing:
            return  # what the client sends after our GOAWAY
        try:
            await super().handle(event)  # type: ignore[misc]
        except TooManyStreamsError:
            await self._calm("too many streams in the priority tree")
            return
        if closing:
            # Nobody sends on this connection again: release every stream's
            # last send instead of leaving it to wait forever.
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()

    async def _handle_events(self, events: list[Any]) -> None:
        kept: list[Any] = []
        reset: list[int] = []
        limit = self.config.h2_max_concurrent_streams
        for event in events:
            kind = type(event)
            if kind is h2.events.PriorityUpdated:
                continue  # ignored (see the module doc)
            sid = getattr(event, "stream_id", 0)
            if sid in self._refused_ids:
                if kind is h2.events.DataReceived:
                    # Still counts against the connection's window.
                    self.connection.acknowledge_received_data(event.flow_controlled_length, sid)
                elif kind is h2.events.StreamEnded or kind is h2.events.StreamReset:
                    self._refused_ids.discard(sid)
                continue
            if kind is h2.events.RequestReceived and not self.context.terminated.is_set():
                if self.running >= limit:
                    # Already closed when the client reset it in the same read.
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        self.connection.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                    self._refused_ids.add(sid)
                    self.refused += 1
                    if not self._budget.spend():
                        break
                    continue
                self.running += 1
            elif kind is h2.events.StreamReset and event.remote_reset:
                reset.append(sid)
                if not self._budget.spend():
                    break
            kept.append(event)
        else:
            await super()._handle_events(kept)  # type: ignore[misc]
            for sid in reset:
                buffer = self.stream_buffers.get(sid)
                if buffer is not None:
                    # Completed and unblocked: the sender drops the stream.
                    await buffer.close()
                    with contextlib.suppress(MissingStreamError):
                        self.priority.unblock(sid)
                    await self.has_data.set()
            return
        await super()._handle_events(kept)  # type: ignore[misc]
        await self._calm("resets far faster than completed requests")

    async def stream_send(self, event: Any) -> None:
        if type(event) is self.stream_closed_event and event.stream_id in self.streams:
            self._budget.refund()  # a response completed, not a reset
        await super().stream_send(event)  # type: ignore[misc]

    async def _calm(self, why: str) -> None:
        self._calmed = True
        log.warning(
            "h2 connection closed with GOAWAY(ENHANCE_YOUR_CALM): %s",
            why,
            extra={"client": str(self.client), "refused_streams": self.refused},
        )
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            await self._flush()
        await self.send(self.closed_event())
