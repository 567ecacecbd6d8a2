"""CollectionPacer: CPython's young collections, chatd's full ones."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from lakehouse.gc_pacing import FULL_AFTER, NEVER, YOUNG, CollectionPacer
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
    pacer = CollectionPacer(lambda: False, tick=3600)
    pacer.start()
    assert gc.get_threshold() == (*YOUNG, NEVER)
    await pacer.stop()
    assert gc.get_threshold() == (700, 10, 10)


async def test_two_pacers_in_one_process_leave_the_first_thresholds(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    first, second = (
        CollectionPacer(lambda: False, tick=3600),
        CollectionPacer(lambda: False, tick=3600),
    )
    first.start()
    second.start()
    await first.stop()
    await second.stop()
    assert gc.get_threshold() == (700, 10, 10)


async def test_idle_worker_collects_as_cpython_would(thresholds: None) -> None:
    pacer = CollectionPacer(lambda: False, tick=0.01)
    pacer.start()
    try:
        ref = old_garbage()
        async with asyncio.timeout(10):
            while ref() is not None:  # noqa: ASYNC110 - the pacer's task frees it
                await asyncio.sleep(0.01)
    finally:
        await pacer.stop()


def test_busy_worker_collects_at_most_once_per_interval(thresholds: None) -> None:
    clock = Clock()
    pacer = CollectionPacer(lambda: True, busy_every=30, clock=clock)
    gc.set_threshold(*YOUNG, NEVER)
    ref = old_garbage()
    clock.now += 29
    assert not pacer.step()
    assert ref() is not None
    clock.now += 1
    assert pacer.step()
    assert ref() is None
    # The next one waits for the interval again, due or not.
    ref = old_garbage()
    clock.now += 29
    assert not pacer.step()
    clock.now += 1
    assert pacer.step()
    assert ref() is None


def test_nothing_runs_before_a_full_collection_is_due(thresholds: None) -> None:
    pacer = CollectionPacer(lambda: False)
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
