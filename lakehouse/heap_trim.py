"""Giving freed C heap back to the operating system.

Measured (``bench/attacks.py --tls-only --tls-stalled 1``): 3,000 TLS
connections that stall after their ClientHello took a worker from 50 to
149 MB, and it stayed there once they had all closed. It is not a leak:
``gc.collect()`` freed nothing and ``malloc_trim(0)`` brought it back to
54 MB. OpenSSL's per-handshake buffers are freed, but glibc keeps the
pages, scattered through its heap where the top-of-heap trim never
reaches them.

``HeapTrimmer`` asks glibc every ``INTERVAL`` seconds how much freed
memory its heap holds (``mallinfo2``, which reads the allocator's own
counters) and calls ``malloc_trim(0)`` when that is ``FREE_MB`` or more,
so a burst's memory goes back within a few seconds of its connections
closing. Elsewhere than glibc 2.33+ it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time

from lakehouse.tasks import wait_closed

log = logging.getLogger("chatd")

INTERVAL = 2.0  # seconds
FREE_MB = 8.0  # freed heap held before it is given back


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


class _Glibc:
    """glibc's malloc_trim and mallinfo2 (2.33+), or nothing."""

    def __init__(self) -> None:
        self.ok = False
        name = ctypes.util.find_library("c")
        if name is None:
            return
        try:
            libc = ctypes.CDLL(name)
            self._trim = libc.malloc_trim
            self._info = libc.mallinfo2
        except (OSError, AttributeError):
            return  # not glibc, or older than 2.33
        self._trim.argtypes = [ctypes.c_size_t]
        self._trim.restype = ctypes.c_int
        self._info.restype = _MallInfo2
        self.ok = True

    def free_mb(self) -> float:
        """Freed bytes the main heap and arenas hold, in MB."""
        info = self._info()
        return float(info.fordblks + info.fsmblks) / 2**20

    def trim(self) -> None:
        self._trim(0)


def rss_mb() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class HeapTrimmer:
    def __init__(self, interval: float = INTERVAL, free_mb: float = FREE_MB) -> None:
        self._glibc = _Glibc()
        self._interval = interval
        self._free_mb = free_mb
        self._task: asyncio.Task[None] | None = None

    @property
    def works(self) -> bool:
        return self._glibc.ok

    def start(self) -> None:
        if self._glibc.ok:
            self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await wait_closed(task)

    async def _watch(self) -> None:
        glibc = self._glibc
        while True:
            await asyncio.sleep(self._interval)
            free = glibc.free_mb()
            if free < self._free_mb:
                continue
            before = rss_mb()
            started = time.perf_counter()
            glibc.trim()
            log.debug(
                "heap trimmed",
                extra={
                    "held_free_mb": round(free, 1),
                    "rss_mb_before": round(before, 1),
                    "rss_mb_after": round(rss_mb(), 1),
                    "trim_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
