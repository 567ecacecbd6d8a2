"""Watching a caller while its request works: when it goes, the work stops.

ASGI tells an app that its caller left (an HTTP/1.1 close, an HTTP/2
RST_STREAM, or the whole h2 connection closing) only through the next
``receive()``, which a request that has read its body never calls again.

``gone_already`` looks once, without waiting and without a task: a caller
that reset its stream before its request even ran (a rapid reset) is
turned away before any upstream work. Then ``CallerWatch``, once the
request has run ``WATCH_AFTER`` seconds (most answers come sooner, and pay
for one timer only) or as soon as it is about to wait in a provider's
queue or a retry's backoff, keeps one ``receive()`` pending in a small task; on
``http.disconnect`` it cancels the request's task, so the upstream call, a
retry's sleep, a wait in a provider's queue and the fallbacks still to try
all end, and every ``async with`` on the way frees what it holds (the
slot, the queue place, the upstream connection, closed rather than pooled
half-read).

The cancellation is only ever requested while the request's task is
suspended inside the watched block (``stop()`` runs right after it, with no
await in between), so it is always delivered inside that block, as a
``CancelledError`` that ``stop()`` then claims as "the caller went".
"""

from __future__ import annotations

import asyncio

from lakehouse.plain_asgi import Receive

# Seconds a request runs unwatched: a caller that leaves sooner costs at
# most this much more upstream work.
WATCH_AFTER = 0.1


def gone_already(receive: Receive) -> bool:
    """Whether an ``http.disconnect`` is already waiting, without waiting.

    Steps ``receive()`` once: a server's receive that has a message ready
    returns it without suspending (Hypercorn's is its request queue's
    ``get``); one that would wait is closed, which withdraws it.
    """
    step = receive().__await__()
    try:
        step.send(None)
    except StopIteration as done:
        message = done.value
        return message is not None and message["type"] == "http.disconnect"
    step.close()
    return False


class CallerWatch:
    __slots__ = ("_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive, after: float = WATCH_AFTER) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.gone = False
        self._receive = receive
        self._task: asyncio.Task[object] | None = task
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            after, self._start
        )

    def now(self) -> None:
        """Watch from now on (the request is about to wait: a provider's
        queue, a retry's backoff), not only after ``WATCH_AFTER``."""
        if self._timer is not None:
            self._timer.cancel()
            self._start()

    def _start(self) -> None:
        self._timer = None
        if self._task is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        task, self._task = self._task, None
        if task is not None:
            self.gone = True
            task.cancel()

    def stop(self) -> bool:
        """Stop watching; True when the caller went, whose cancellation of
        the request's task is then undone (it was delivered already)."""
        if self._task is not None:
            self._task = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            elif self._watcher is not None:
                # Not awaited: the watcher ends on its own next turn. Let go
                # of it: the task keeps its CancelledError, whose traceback
                # holds the watcher's frame, which holds self (a reference
                # cycle otherwise, see errors.settled).
                self._watcher.cancel()
                self._watcher = None
            return False
        if self.gone:
            self.gone = False
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return True
        return False
