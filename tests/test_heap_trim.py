"""HeapTrimmer: freed C heap that glibc keeps goes back once RSS has grown."""

from __future__ import annotations

import asyncio

import pytest

from lakehouse.heap_trim import HeapTrimmer, rss_mb

pytestmark = pytest.mark.anyio

needs_glibc = pytest.mark.skipif(
    not HeapTrimmer().works or not rss_mb(), reason="malloc_trim and mallinfo2 are glibc's"
)


def fragment() -> list[bytes]:
    """~100 MB freed in holes between blocks still held: glibc keeps it."""
    keep: list[bytes] = []
    junk: list[bytes] = []
    for i in range(50_000):
        (keep if i % 25 == 0 else junk).append(bytes(2000))
    junk.clear()
    return keep


@needs_glibc
async def test_retained_heap_goes_back_after_growth() -> None:
    trimmer = HeapTrimmer(interval=0.05)
    trimmer.start()
    try:
        await asyncio.sleep(0.1)  # its floor: before the burst
        before = rss_mb()
        keep = fragment()
        assert rss_mb() - before > 50, "glibc gave it back by itself"
        async with asyncio.timeout(10):
            while (rss_mb() or 0.0) > before + 20:  # noqa: ASYNC110 - RSS is the kernel's
                await asyncio.sleep(0.05)
        assert keep
    finally:
        await trimmer.stop()
