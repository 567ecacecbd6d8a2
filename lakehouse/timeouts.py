"""Time limits on the many small waits of one task, with one timer for all.

``asyncio.timeout`` around each wait makes a timer and cancels it again:
for a stream that is a timer per chunk on every layer that bounds its
waits (the upstream read, the request's deadline; the HTTP/2 send to the
caller has one sweep per worker instead, ``lakehouse.callers.send_stall``).
``Bound`` gives each wait the same guarantee from a single timer that is
armed once and, when it fires while no wait is overdue, moved to the
earliest moment one could be (so it fires about once per ``limit`` of a
long stream, not once per chunk).

    bound = Bound(limit=10)           # each wait: at most 10 s
    bound = Bound(until=loop_time)    # every wait: over by then
    with bound:
        await something()             # TimeoutError when past either

Like ``asyncio.timeout``, an expiry cancels the waiting task and turns
that cancellation into ``TimeoutError`` on the way out; a cancellation
from anyone else passes through untouched. Call ``close()`` when done.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Bound:
    def __init__(self, *, limit: float | None = None, until: float | None = None) -> None:
        self._limit = limit
        self._until = until
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        # Loop time the current wait must end by; None between waits.
        self._due: float | None = None
        self._cancelling = 0
        self._fired = False

    def _due_for(self, now: float) -> float:
        due = now + self._limit if self._limit is not None else float("inf")
        return min(due, self._until) if self._until is not None else due

    def __enter__(self) -> Bound:
        now = self._loop.time()
        due = self._due_for(now)
        if due <= now:
            raise TimeoutError
        task = asyncio.current_task()
        assert task is not None, "Bound is used inside a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._due = due
        self._fired = False
        if self._handle is None and due != float("inf"):
            self._handle = self._loop.call_at(due, self._check)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._due = None
        if self._fired:
            self._fired = False
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from exc

    def _check(self) -> None:
        self._handle = None
        due = self._due
        if due is None or self._task is None:
            return  # between waits: the next one arms the timer again
        if due <= self._loop.time():
            self._fired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_at(due, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
