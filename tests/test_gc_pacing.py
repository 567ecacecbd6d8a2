"""CollectionPacer: the collector off (or its young collections timed) while
many calls are in flight, full collections paced."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

import lakehouse
import lakehouse.stubs
import plugins
from lakehouse.gc_pacing import (
    BUSY_EVERY,
    CYCLES,
    FULL_AFTER,
    GROWTH,
    MANY,
    NEVER,
    YOUNG,
    CollectionPacer,
)
from lakehouse.stubs import Fault, StubUpstream
from tests.stub_world import one_stub
from tests.support import make_config, running_chatd

pytestmark = pytest.mark.anyio


class Cycle:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def old_garbage() -> weakref.ref[Cycle]:
    """A cycle that reached the oldest generation, then was dropped, with
    the middle generation collected often enough for a full collection to
    be due."""
    cycle = Cycle()
    gc.collect(1)  # survives the young collections: now in the oldest one
    ref = weakref.ref(cycle)
    del cycle
    for _ in range(FULL_AFTER):
        gc.collect(1)  # each counts one middle collection towards a full one
    assert ref() is not None, "a young collection freed a cycle of the oldest generation"
    return ref


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_start_leaves_full_collections_to_the_pacer_and_stop_restores(
    thresholds: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    pacer = CollectionPacer(lambda: 0, tick=3600)
    pacer.start()
    assert gc.get_threshold() == (*YOUNG, NEVER)
    await pacer.stop()
    assert gc.get_threshold() == (700, 10, 10)


async def test_two_pacers_in_one_process_leave_the_first_thresholds(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    first, second = (
        CollectionPacer(lambda: 0, tick=3600),
        CollectionPacer(lambda: 0, tick=3600),
    )
    first.start()
    second.start()
    await first.stop()
    await second.stop()
    assert gc.get_threshold() == (700, 10, 10)


def young_garbage() -> weakref.ref[Cycle]:
    """A cycle dropped while young, with CPython's own collections off."""
    assert not gc.isenabled()
    cycle = Cycle()
    ref = weakref.ref(cycle)
    del cycle
    return ref


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    gc.disable()
    yield
    gc.enable()


@pytest.fixture
def collector_on() -> Iterator[None]:
    """The collector on again after the test, whatever a pacer left."""
    yield
    gc.enable()


class Heap:
    """Blocks the interpreter holds, as the test says; a full collection
    frees ``freed`` of them."""

    def __init__(self) -> None:
        self.blocks = 100_000
        self.freed = 0

    def __call__(self) -> int:
        return self.blocks

    def collected(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            self.blocks -= self.freed


@pytest.fixture
def heap() -> Iterator[Heap]:
    made = Heap()
    gc.callbacks.append(made.collected)
    yield made
    gc.callbacks.remove(made.collected)


def due_at(pacer: CollectionPacer, heap: Heap, blocks: int, ref: weakref.ref[Cycle]) -> None:
    """With the heap a block short of ``blocks`` no full collection is due
    and the old garbage stays; at ``blocks`` one runs and frees it."""
    heap.blocks = blocks - 1
    assert not pacer.step()
    assert ref() is not None
    heap.blocks = blocks
    assert pacer.step()
    assert ref() is None


def test_many_calls_turn_the_collector_off_until_they_fall(collector_on: None, heap: Heap) -> None:
    # Streams that end well leave no cycles: walking what they make is waste.
    calls = MANY
    pacer = CollectionPacer(lambda: calls, clock=Clock(), heap=heap)
    pacer.young()
    assert not gc.isenabled()
    ref = young_garbage()
    pacer.young()
    assert ref() is not None
    calls = MANY - 1
    pacer.young()
    assert gc.isenabled()
    gc.collect(0)
    assert ref() is None


@pytest.mark.parametrize("calls", [0, MANY - 1])
def test_fewer_calls_leave_the_young_generations_to_cpython(
    no_automatic_collections: None, calls: int
) -> None:
    ref = young_garbage()
    CollectionPacer(lambda: calls, clock=Clock()).young()
    assert ref() is not None
    assert not gc.isenabled(), "the pacer turned on a collector someone else turned off"
    gc.collect(0)
    assert ref() is None


def test_many_calls_collect_the_young_generations_where_the_heap_is_not_counted(
    no_automatic_collections: None,
) -> None:
    # PYTHONMALLOC=malloc: growth could never bring a full collection.
    ref = young_garbage()
    CollectionPacer(lambda: MANY, clock=Clock(), heap=lambda: 0).young()
    assert ref() is None


@pytest.mark.parametrize(
    ("share", "young_collections"), [(CYCLES, True), (CYCLES / 2, False)], ids=["cycles", "few"]
)
def test_a_busy_full_collection_that_frees_cycles_turns_young_collections_on(
    thresholds: None, collector_on: None, heap: Heap, share: float, young_collections: bool
) -> None:
    calls = MANY
    pacer = CollectionPacer(lambda: calls, clock=Clock(), heap=heap)
    gc.set_threshold(*YOUNG, NEVER)
    pacer.young()
    assert not gc.isenabled()
    assert not pacer.step()  # from no calls to MANY: growth counts from this heap
    heap.blocks = int(heap.blocks * GROWTH)
    heap.freed = int(heap.blocks * share)
    assert pacer.step()
    ref = young_garbage()
    pacer.young()
    assert gc.isenabled() is young_collections
    assert (ref() is None) is young_collections
    # Until the load falls: then the collector goes off again at the next.
    calls = 0
    pacer.young()
    calls = MANY
    pacer.young()
    assert not gc.isenabled()


async def freed_by_the_pacer(
    pacer: CollectionPacer, garbage: Callable[[], weakref.ref[Cycle]]
) -> None:
    """Start ``pacer``, make the garbage, and wait for the pacer's task to free it."""
    pacer.start()
    try:
        ref = garbage()
        async with asyncio.timeout(10):
            while ref() is not None:  # noqa: ASYNC110 - the pacer's task frees it
                await asyncio.sleep(0.01)
    finally:
        await pacer.stop()


async def test_busy_worker_collects_young_garbage_on_its_own(
    thresholds: None, no_automatic_collections: None
) -> None:
    pacer = CollectionPacer(lambda: MANY, young_every=0.01, tick=3600, heap=lambda: 0)
    await freed_by_the_pacer(pacer, young_garbage)


async def test_busy_worker_turns_the_collector_off_and_stop_turns_it_on(
    thresholds: None, collector_on: None
) -> None:
    pacer = CollectionPacer(lambda: MANY, tick=0.01)
    pacer.start()
    try:
        async with asyncio.timeout(10):
            while gc.isenabled():  # noqa: ASYNC110 - the pacer's task turns it off
                await asyncio.sleep(0.01)
    finally:
        await pacer.stop()
    assert gc.isenabled()


async def test_idle_worker_collects_once_due(thresholds: None) -> None:
    await freed_by_the_pacer(CollectionPacer(lambda: 0, idle_every=0, tick=0.01), old_garbage)


def test_busy_worker_collects_only_once_the_heap_grew_by_a_quarter(
    thresholds: None, heap: Heap
) -> None:
    clock = Clock()
    pacer = CollectionPacer(lambda: MANY, clock=clock, heap=heap)
    gc.set_threshold(*YOUNG, NEVER)
    assert not pacer.step()  # from no calls to MANY: the heap now is the load's
    ref = old_garbage()
    clock.now += 3600  # time alone makes none due
    due_at(pacer, heap, 125_000, ref)
    # The next one is due at a quarter over the heap after this one.
    due_at(pacer, heap, 156_250, old_garbage())


def test_growth_that_more_calls_explain_is_not_garbage(thresholds: None, heap: Heap) -> None:
    # Streams being taken on grow the heap with what they hold: a full
    # collection then walks it all (50-150 ms at 1,000 streams) and finds nothing.
    calls = MANY
    pacer = CollectionPacer(lambda: calls, clock=Clock(), heap=heap)
    gc.set_threshold(*YOUNG, NEVER)
    assert not pacer.step()
    ref = old_garbage()
    calls, heap.blocks = 4 * MANY, 400_000
    assert not pacer.step()
    calls = int(4 * MANY * GROWTH)  # within a quarter: the load holds
    due_at(pacer, heap, 500_000, ref)


def test_growth_while_the_calls_fall_counts(thresholds: None, heap: Heap) -> None:
    # What the fewer calls no longer hold is freed: the rest is garbage.
    calls = 4 * MANY
    pacer = CollectionPacer(lambda: calls, clock=Clock(), heap=heap)
    gc.set_threshold(*YOUNG, NEVER)
    heap.blocks = 400_000
    assert not pacer.step()
    ref = old_garbage()
    calls = MANY
    due_at(pacer, heap, 500_000, ref)


@pytest.mark.parametrize(
    ("calls", "blocks", "interval"),
    [
        # Busy, but PYTHONMALLOC=malloc: sys.getallocatedblocks() is 0, growth unmeasured.
        (MANY, 0, BUSY_EVERY),
        # Idle: at most every idle_every.
        (0, 100_000, 5),
    ],
    ids=["busy-without-a-block-count", "idle"],
)
def test_full_collections_wait_their_interval(
    thresholds: None, heap: Heap, calls: int, blocks: int, interval: float
) -> None:
    clock = Clock()
    heap.blocks = blocks
    pacer = CollectionPacer(lambda: calls, idle_every=5, clock=clock, heap=heap)
    gc.set_threshold(*YOUNG, NEVER)
    ref = old_garbage()
    clock.now += interval - 1
    assert not pacer.step()
    assert ref() is not None
    clock.now += 1
    assert pacer.step()
    assert ref() is None


def test_nothing_runs_before_a_full_collection_is_due(thresholds: None) -> None:
    pacer = CollectionPacer(lambda: 0, idle_every=0)
    gc.set_threshold(*YOUNG, NEVER)
    gc.collect()  # counts start again from zero
    for _ in range(FULL_AFTER - 1):
        gc.collect(1)
    assert not pacer.step()
    gc.collect(1)
    assert pacer.step()


async def test_a_running_chatd_paces_its_collector_and_puts_it_back(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    async with running_chatd(make_config("")):
        assert gc.get_threshold() == (*YOUNG, NEVER)
    assert gc.get_threshold() == (700, 10, 10)


@contextlib.asynccontextmanager
async def collector_off(
    overrides: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[httpx.AsyncClient, StubUpstream, list[str]]]:
    """A client of chatd in front of the Ollama stub; in the block the
    collector is off, and the list yielded is filled on the way out with
    chatd's cyclic garbage from the block (``chatd_garbage``)."""
    left: list[str] = []
    async with (
        one_stub("ollama", overrides) as (base, stub),
        httpx.AsyncClient(base_url=base, timeout=30) as client,
    ):
        gc.collect()
        gc.disable()
        try:
            yield client, stub, left
            left.extend(chatd_garbage())
        finally:
            gc.enable()


# Where chatd's code and the stubs' are (``plugins`` is a namespace package).
CHATD_DIRS = tuple(os.path.join(d, "") for d in [*lakehouse.__path__, *plugins.__path__])
STUB_DIRS = tuple(os.path.join(d, "") for d in lakehouse.stubs.__path__)


def chatd_garbage() -> list[str]:
    """What of chatd's the collector finds unreachable now: frames,
    coroutines and generators of its code, instances of its classes (the
    provider stubs, which run in this process too, are not chatd's)."""
    found = []
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        for thing in gc.garbage:
            code = getattr(thing, "f_code", None) or getattr(thing, "cr_code", None)
            code = code or getattr(thing, "ag_code", None)
            if code is not None:
                where = code.co_filename
                chatds = where.startswith(CHATD_DIRS) and not where.startswith(STUB_DIRS)
            else:
                where = type(thing).__module__
                chatds = where.partition(".")[0] in ("lakehouse", "plugins")
                chatds = chatds and not where.startswith("lakehouse.stubs")
            if chatds:
                found.append(f"{type(thing).__name__} {getattr(code, 'co_qualname', '')} {where}")
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


ASKED = {"model": "qwen3.5:latest", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "stream", "fault", "times", "status"),
    [
        ("/chat", True, None, 0, 200),
        ("/chat", False, None, 0, 200),
        ("/chat", True, Fault(kind="midstream_error", after=2), 1, 200),
        ("/v1/chat/completions", True, Fault(kind="midstream_error", after=2), 1, 200),
        # The connection cut mid-body: aiohttp's error, mapped.
        ("/chat", True, Fault(kind="truncate", after=2), 1, 200),
        ("/chat", False, Fault(kind="truncate", after=2), 100, 502),
        # Retried, then answered: the first try's error is gone with it.
        ("/chat", False, Fault(kind="status", status=500), 1, 200),
        ("/chat", True, Fault(kind="status", status=500), 1, 200),
        # Every try failed: answered 502 (then the circuit opens: 503).
        ("/chat", False, Fault(kind="status", status=500), 100, 502),
        ("/chat", True, Fault(kind="status", status=500), 100, 502),
    ],
    ids=[
        "stream",
        "whole",
        "stream-broken",
        "sse-broken",
        "stream-cut",
        "whole-cut",
        "whole-retried",
        "stream-retried",
        "whole-failed",
        "stream-failed",
    ],
)
async def test_chat_calls_leave_no_cycles_of_chatds(
    path: str, stream: bool, fault: Fault | None, times: int, status: int
) -> None:
    """What the collector being off while busy stands on: a call, ended
    well or failed, goes by reference counting. An exception kept where
    its traceback's frames can reach it would hold them, and all they
    hold, until a full collection (errors.settled)."""
    overrides = {
        "chatd.retry.attempts": 1,
        "chatd.retry.backoff_secs": 0,
        "chatd.failure_threshold": 3,
    }
    body = {**ASKED, "stream": stream}
    statuses = []
    async with collector_off(overrides) as (client, stub, left):
        await client.post(path, json=body)  # the first call's one-offs
        for _ in range(4):
            if fault is not None:
                stub.fail_next(fault, times)
            statuses.append((await client.post(path, json=body)).status_code)
            stub.clear_faults()
    assert statuses[0] == status, statuses
    assert left == [], left


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_calls_past_their_deadline_leave_no_cycles_of_chatds(stream: bool) -> None:
    body = {**ASKED, "stream": stream}
    async with collector_off() as (client, stub, left):
        for _ in range(3):
            stub.fail_next(Fault(kind="stall", seconds=5, after=1))
            reply = await client.post("/chat", json=body, headers={"x-chatd-deadline": "0.2"})
    assert reply.status_code == (200 if stream else 504), reply.text
    assert b"deadline" in reply.content
    assert left == [], left


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
async def test_callers_leaving_mid_stream_leave_no_cycles_of_chatds(path: str) -> None:
    body = {**ASKED, "stream": True}
    async with collector_off() as (client, stub, left):
        await client.post(path, json=body)
        for _ in range(3):
            stub.fail_next(Fault(kind="stall", seconds=30, after=2))
            async with client.stream("POST", path, json=body) as reply:
                async for _line in reply.aiter_lines():
                    break
            # chatd lets go of the upstream once it sees the caller gone.
            async with asyncio.timeout(30):
                while stub.open_connections:  # noqa: ASYNC110 - the stub's state, seen from outside
                    await asyncio.sleep(0.01)
    assert left == [], left
