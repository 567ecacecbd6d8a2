"""When a worker's cyclic garbage collector walks what it holds.

The collector's walks stop the event loop, and every chunk due meanwhile
waits. Two of CPython's rules go wrong for a worker relaying many streams:

- Full collections. CPython runs one once ten collections of the middle
  generation have run: it walks every tracked object, ~230 per open
  stream (coroutines, futures, tasks, protocol objects), 50-80 ms of CPU at
  1,000 open streams, every few seconds while streams kept starting; and
  it finds almost nothing (chatd's objects go by reference counting, a
  tuned connection lets go of its objects when it closes).
- Young collections. CPython's young count is allocations less
  deallocations, and deallocations of old objects count too. A relay
  waiting for its next chunk holds ~25 tracked objects made for that wait
  (the async generators' ``asend`` objects, coroutines, a future, bound
  ``__exit__`` methods), which die one chunk later, by then old. So at
  1,000 streams births and deaths cancel out, the count seldom reaches its
  threshold, and when it does the youngest generation holds everything
  born since: ~20,000 objects, 8-11 ms of CPU for a young collection and
  up to 19 ms for a middle one (bench/README.md, "Young collections").

So a worker paces both. While ``MANY`` chat calls or more are in flight it
collects the young generations itself every ``young_every`` seconds
(``gc.collect(1)``: each walk covers only what was born since the last,
0.3 ms on average at that load, and what survives goes straight to the oldest
generation, so nothing is walked twice). CPython's own young collections
stay, with smaller thresholds (400 and 3 instead of 700 and 10), for the
allocations between, and on their own for fewer calls: their pile-up is
small (~20 objects a stream), and a hundred wake-ups a second (~7 ms of
CPU a second on a 2-core VM) would cost more than they save.

Full collections are never CPython's. Once ten middle collections have
run, the worker runs one while no call is in flight, at most every
``idle_every`` seconds; while calls are in flight, only once the heap has
grown by a quarter since the last one (``sys.getallocatedblocks``: the
objects the interpreter holds; counting them walks its memory pools, ~0.2
ms for a heap of 200 MB, so the worker looks once every ``tick``). That is
CPython's own rule for full collections, a quarter's growth, measured by
what is alive rather than by what young collections promoted: the
transient objects above are promoted hundreds of thousands a second and die
at once, and counting them ran a full collection (50-80 ms at 1,000
streams) whenever allowed. So a worker whose load holds steady walks its
whole heap only when it pauses, and cyclic garbage that reached the oldest
generation can grow the heap by a quarter at most before it is collected
(where the interpreter does not count its blocks, as under
``PYTHONMALLOC=malloc``, every ``BUSY_EVERY`` seconds instead). Objects
frozen at start-up (``asgi``) are never walked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable

from lakehouse.tasks import wait_closed

log = logging.getLogger("chatd")

YOUNG = (400, 3)  # collections of the youngest generation, then of the middle one
FULL_AFTER = 10  # middle-generation collections before a full one (CPython's own)
NEVER = 1 << 30  # a threshold CPython does not reach: full collections are ours
TICK = 1.0  # seconds between looks while no call is in flight
YOUNG_EVERY = 0.01  # seconds between young collections while MANY calls are in flight
MANY = 100  # calls in flight from which the young collections are timed
IDLE_EVERY = 5.0  # seconds between full collections while no call is in flight
GROWTH = 1.25  # heap growth since the last full collection that makes one due while busy
# Seconds between full collections while busy where the interpreter does not
# count its blocks (``PYTHONMALLOC=malloc``: ``sys.getallocatedblocks()`` is 0).
BUSY_EVERY = 30.0


class CollectionPacer:
    """Sets the collector's thresholds on ``start`` and puts the previous
    ones back on ``stop``; between them, runs the young collections while
    ``MANY`` calls are in flight, and the full ones.
    ``calls()`` says how many chat calls are in flight."""

    def __init__(
        self,
        calls: Callable[[], int],
        *,
        idle_every: float = IDLE_EVERY,
        young_every: float = YOUNG_EVERY,
        tick: float = TICK,
        clock: Callable[[], float] = time.monotonic,
        heap: Callable[[], int] = sys.getallocatedblocks,
    ) -> None:
        self._calls = calls
        self._idle_every = idle_every
        self._young_every = young_every
        self._tick = tick
        self._clock = clock
        self._heap = heap
        self._last = clock()
        self._heap_after = heap()  # the heap after the last full collection
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.set_threshold(*YOUNG, NEVER)
        self._last = self._clock()
        self._heap_after = self._heap()
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

    def young(self) -> None:
        """While ``MANY`` calls are in flight, collect the young generations."""
        if self._calls() >= MANY:
            gc.collect(1)

    def step(self) -> bool:
        """One look: run a full collection if it is due; say whether it ran."""
        calls = self._calls()
        if gc.get_count()[2] < FULL_AFTER:
            return False
        if not (self._grown() if calls else self._clock() - self._last >= self._idle_every):
            return False
        started = time.perf_counter()
        found = gc.collect()
        self._last = self._clock()
        self._heap_after = self._heap()
        log.debug(
            "full collection",
            extra={"found": found, "ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        return True

    def _grown(self) -> bool:
        heap = self._heap()
        if heap and self._heap_after:
            return heap >= self._heap_after * GROWTH
        return self._clock() - self._last >= BUSY_EVERY

    async def _watch(self) -> None:
        look_at = self._clock() + self._tick
        while True:
            await asyncio.sleep(self._young_every if self._calls() >= MANY else self._tick)
            self.young()
            if self._clock() >= look_at:
                look_at = self._clock() + self._tick
                self.step()
