"""When a worker's cyclic garbage collector walks everything it holds.

CPython runs a full collection once ten collections of the middle
generation have run and the oldest generation has grown by a quarter since
the last full one. A full collection walks every object the collector
tracks, with the event loop stopped: at 1,000 open streams a worker tracks
~230,000 objects (coroutines, futures, tasks, protocol objects: ~230 a
stream), and a full collection took 50-80 ms of CPU, every few seconds
while streams kept starting. Every chunk due in that time waits: pacing
them halved the NDJSON relay's chunk delay p99 at 1,000 streams (35 to 16
ms; bench/README.md, "Collector pauses"). They find almost nothing:
chatd's objects go by reference counting, a tuned connection lets go of
its objects when it closes (``connections.TunedTCPServer.run``), and the
few cycles left mostly die young, where the young collections find them.

So a worker leaves the young generations to CPython, smaller than its
defaults (700 and 10: a collection of the middle one took 4 ms of CPU on
average and up to 15 ms at that load; with 400 and 3, 1.3 ms and 5.8 ms),
and paces the full ones itself: as CPython would (after ``FULL_AFTER``
middle collections) when no chat call is in flight, and at most once every
``busy_every`` seconds while one is. Cyclic garbage that reached the oldest
generation waits that long at most. Objects frozen at start-up (``asgi``)
are never walked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from lakehouse.tasks import wait_closed

log = logging.getLogger("chatd")

YOUNG = (400, 3)  # collections of the youngest generation, then of the middle one
FULL_AFTER = 10  # middle-generation collections before a full one (CPython's own)
NEVER = 1 << 30  # a threshold CPython does not reach: full collections are ours
TICK = 1.0  # seconds between looks
BUSY_EVERY = 30.0  # seconds between full collections while calls are in flight


class CollectionPacer:
    """Sets the collector's thresholds on ``start`` and puts the previous
    ones back on ``stop``; between them, runs the full collections.
    ``busy()`` says whether chat calls are in flight."""

    def __init__(
        self,
        busy: Callable[[], bool],
        *,
        busy_every: float = BUSY_EVERY,
        tick: float = TICK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._busy = busy
        self._busy_every = busy_every
        self._tick = tick
        self._clock = clock
        self._last = clock()
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.set_threshold(*YOUNG, NEVER)
        self._last = self._clock()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await wait_closed(task)
        # Unless someone set others since (another pacer in the same
        # process, as in tests, that stopped first and put its own back).
        if self._saved is not None and gc.get_threshold() == (*YOUNG, NEVER):
            gc.set_threshold(*self._saved)
        self._saved = None

    def step(self) -> bool:
        """One look: run a full collection if it is due; say whether it ran."""
        if gc.get_count()[2] < FULL_AFTER:
            return False
        now = self._clock()
        if self._busy() and now - self._last < self._busy_every:
            return False
        started = time.perf_counter()
        found = gc.collect()
        self._last = self._clock()
        log.debug(
            "full collection",
            extra={"found": found, "ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.step()
