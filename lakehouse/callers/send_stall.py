"""The HTTP/2 send stall bound: one sweep per app over the sends in flight.

Hypercorn 0.18 leaves a stream's final send waiting forever when its
HTTP/2 connection closes under it (``StreamBuffer.drain`` is never
released): the request's task would leak until shutdown, and shutdown
would wait out its whole grace period. Our bodies are small, so a send
that waits ``send_stall_secs`` is waiting on a peer that is gone, and the
request ends (``PeerGone``).

Nearly every send completes without waiting (the frame is gathered for
the connection's write at the end of the loop turn), so a timer per
request, armed and cancelled again, was ~3% of an h2c request's CPU for a
bound that almost never fires. Here a send only notes when it is due in
``StallSweep``'s table, and takes itself out when it returns; one timer
per app, armed while the table is not empty, looks every ``limit / 4``
for a send past its due and cancels that send's task. A send stalled for
``limit`` therefore ends within ``1.25 x limit``.
"""

from __future__ import annotations

import asyncio

from lakehouse.plain_asgi import Message, Send

# How often, in parts of the limit, the sweep looks: a stalled send ends
# within (1 + 1/SWEEPS) x limit.
SWEEPS = 4


class PeerGone(Exception):
    """A send on an HTTP/2 stream stalled past ``send_stall_secs``."""


class StallSweep:
    """The sends in flight on one event loop, and the timer that ends the
    ones that stall."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        # send -> (loop time it is due by, the task waiting in it)
        self.waiting: dict[BoundedSend, tuple[float, asyncio.Task[object]]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # (a timer left on a loop that has gone does not count)
        if self._handle is None or self._loop is not loop:
            self._loop = loop
            self._handle = loop.call_later(self.limit / SWEEPS, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = loop.time()
        for send, (due, task) in list(self.waiting.items()):
            if due <= now:
                del self.waiting[send]
                send.expire(task)
        if self.waiting:
            self.arm(loop)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class BoundedSend:
    """``send`` that gives up once a send stalls past the sweep's limit,
    and at once after that (``PeerGone``)."""

    __slots__ = ("_cancelling", "_expired", "_gone", "_send", "_sweep")

    def __init__(self, send: Send, sweep: StallSweep) -> None:
        self._send = send
        self._sweep = sweep
        self._gone = False
        self._expired = False
        self._cancelling = 0

    async def __call__(self, message: Message) -> None:
        if self._gone:
            raise PeerGone
        sweep = self._sweep
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None, "a send runs inside a task"
        sweep.waiting[self] = (loop.time() + sweep.limit, task)
        sweep.arm(loop)
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if not self._expired:
                raise
            self._expired = False
            # Only our cancellation becomes PeerGone; anyone else's passes.
            if task.uncancel() > self._cancelling:
                raise
            self._gone = True
            raise PeerGone from None
        finally:
            sweep.waiting.pop(self, None)

    def expire(self, task: asyncio.Task[object]) -> None:
        """Called by the sweep: this send is past its due."""
        self._expired = True
        self._cancelling = task.cancelling()
        task.cancel()
