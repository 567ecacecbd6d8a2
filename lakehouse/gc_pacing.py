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

So a worker paces both. While ``MANY`` chat calls or more are in flight
it turns CPython's collections off (``gc.disable``): a call leaves no
cycles, ended well or failed (its objects go by reference counting; an
error kept past the clause that caught it drops its traceback,
``errors.settled``), so the young collections found nothing, and walking
what was born cost 4-9% of the CPU a chunk takes (bench/README.md, "The
collector off while busy"). Cyclic garbage made meanwhile (by a library,
or on a path not yet seen) stays until the next full collection, which
the heap's growth brings (below); if that collection frees a twentieth
of the heap or more (``CYCLES``), something leaves cycles in numbers,
and until the calls in flight fall under
``MANY`` the worker collects the young generations itself every
``young_every`` seconds instead (``gc.collect(1)``: each walk covers only
what was born since the last, 0.3 ms on average at 1,000 streams, and
what survives goes straight to the oldest generation). It does the same
where the heap's size cannot be read (below), as growth could not bring
a full collection there. Under ``MANY`` calls CPython's own young
collections run, with smaller thresholds (400 and 3 instead of 700 and
10): their pile-up is small (~20 objects a stream); the first of them
after a busy spell walks what that spell left alive, once.

Full collections are never CPython's. Once ten middle collections have
run, the worker runs one while no call is in flight, at most every
``idle_every`` seconds; while calls are in flight (with the collector
off, whatever the count), only once the heap has grown by a quarter
(``sys.getallocatedblocks``: the objects the interpreter holds; counting
them walks its memory pools, ~0.2 ms for a heap of 200 MB, so the worker
looks once every ``tick``). That is CPython's own rule, a quarter's
growth, measured by what is alive rather than by what young collections
promoted (the transient objects above are promoted hundreds of thousands
a second and die at once; counting them ran a full collection whenever
allowed). And growth that more calls explain does not count: it is
counted from the heap at the last full collection, or from when the calls
in flight last grew by a quarter over those of the base, whichever came
later. Streams being taken on grow the heap with what they hold, and a
full collection then walks it all (50-150 ms at 1,000 streams) to find
nothing; the probe saw one land 1.5 s after the last of 1,000 streams had
started, 140 ms. The base only rises with the calls (a quarter at a time,
so ten times as many calls move it about ten times) and falls with a
full collection, so what a falling or swinging load leaves is still
counted against it. So a worker whose load holds steady walks its whole
heap only when it pauses, and cyclic garbage can grow the heap by a
quarter over that base before it is collected (where the interpreter does
not count its blocks, as under ``PYTHONMALLOC=malloc``, every
``BUSY_EVERY`` seconds instead). Objects frozen at start-up (``asgi``)
are never walked.
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
YOUNG_EVERY = 0.01  # seconds between young collections while busy, once cycles were seen
MANY = 100  # calls in flight from which the worker is busy: the collector off or timed
IDLE_EVERY = 5.0  # seconds between full collections while no call is in flight
# Heap growth over the base (the module's docstring) that makes a full
# collection due while busy; growth of the calls in flight that moves the base.
GROWTH = 1.25
# Share of the heap a full collection while busy frees that turns the young
# collections back on until the load falls: cycles are being made.
CYCLES = 0.05
# Seconds between full collections while busy where the interpreter does not
# count its blocks (``PYTHONMALLOC=malloc``: ``sys.getallocatedblocks()`` is 0).
BUSY_EVERY = 30.0


class CollectionPacer:
    """Sets the collector's thresholds on ``start`` and puts the previous
    ones back on ``stop``; between them, turns the collector off or runs
    the young collections while ``MANY`` calls are in flight, and runs the
    full ones. ``calls()`` says how many chat calls are in flight."""

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
        # The heap and the calls in flight at the last full collection, or when
        # the calls last grew by a quarter: growth while busy counts from here.
        # A heap of 0: the interpreter does not count its blocks.
        self._base_heap = heap()
        self._base_calls = 0
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        # Whether the collector is off by our doing (not a test's, or a host's).
        self._off = False
        # Whether a full collection while busy freed cycles at this load.
        self._cycles = False

    def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.set_threshold(*YOUNG, NEVER)
        self._last = self._clock()
        self._base_heap = self._heap()
        self._base_calls = 0
        self._cycles = False
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await wait_closed(task)
        self._turn_on()
        # Unless someone set others since (another pacer in the same
        # process, as in tests, that stopped first and put its own back).
        if self._saved is not None and gc.get_threshold() == (*YOUNG, NEVER):
            gc.set_threshold(*self._saved)
        self._saved = None

    def young(self) -> None:
        """While ``MANY`` calls are in flight, turn the collector off, or
        collect the young generations once cycles were seen; under that,
        leave them to CPython."""
        if self._calls() < MANY:
            self._cycles = False
            self._turn_on()
        elif self._young_while_busy():
            self._turn_on()
            gc.collect(1)
        elif gc.isenabled():
            gc.disable()
            self._off = True

    def _young_while_busy(self) -> bool:
        """Cycles seen at this load, or a heap whose growth cannot be read."""
        return self._cycles or not self._base_heap

    def _turn_on(self) -> None:
        if self._off:
            self._off = False
            gc.enable()

    def step(self) -> bool:
        """One look: run a full collection if it is due; say whether it ran."""
        calls = self._calls()
        before = self._heap() if calls else 0
        if before and calls > self._base_calls * GROWTH:
            # More calls: what the heap holds now is theirs.
            self._base_heap, self._base_calls = before, calls
        if not self._off and gc.get_count()[2] < FULL_AFTER:
            return False
        if not (self._grown(before) if calls else self._idle_due()):
            return False
        started = time.perf_counter()
        found = gc.collect()
        self._last = self._clock()
        self._base_heap = self._heap()
        self._base_calls = calls
        if self._off and before - self._base_heap >= before * CYCLES:
            self._cycles = True
        log.debug(
            "full collection",
            extra={"found": found, "ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        return True

    def _idle_due(self) -> bool:
        return self._clock() - self._last >= self._idle_every

    def _grown(self, heap: int) -> bool:
        """Whether the heap grew by a quarter that more calls do not explain."""
        if heap and self._base_heap:
            return heap >= self._base_heap * GROWTH
        return self._clock() - self._last >= BUSY_EVERY

    async def _watch(self) -> None:
        look_at = self._clock() + self._tick
        while True:
            # Young collections are timed; a collector that is off only
            # needs a look once a tick.
            busy = self._calls() >= MANY and self._young_while_busy()
            await asyncio.sleep(self._young_every if busy else self._tick)
            self.young()
            if self._clock() >= look_at:
                look_at = self._clock() + self._tick
                self.step()
