"""Watching a caller while its request works: when it goes, the work stops.

ASGI tells an app that its caller left (an HTTP/1.1 close, an HTTP/2
RST_STREAM, or the whole h2 connection closing) only through the next
``receive()``, which a request that has read its body never calls again.
``CallerWatch`` keeps one ``receive()`` pending in a small task; on
``http.disconnect`` it cancels the request's task, so the upstream call,
a retry's sleep, a wait in a provider's queue and the fallbacks still to
try all end at once, and every ``async with`` on the way frees what it
holds (the slot, the queue place, the upstream connection, closed rather
than pooled half-read).

The cancellation is only ever requested while the request's task is
suspended inside the watched block (``stop()`` runs right after it, with no
await in between), so it is always delivered inside that block, as a
``CancelledError`` that ``stop()`` then claims as "the caller went".
"""

from __future__ import annotations

import asyncio

from lakehouse.callers.http_io import Receive


class CallerWatch:
    __slots__ = ("_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.gone = False
        self._task: asyncio.Task[object] | None = task
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
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
            # Not awaited: the watcher ends on its own next turn.
            self._watcher.cancel()
            return False
        if self.gone:
            self.gone = False
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return True
        return False
