"""Cancelling a task at a known point, for the tests of what a cancelled
caller leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest


async def cancel_once(started: asyncio.Event, work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` as a task, cancel it once it sets ``started``, and check
    that the cancellation reaches whoever awaits it."""
    task = asyncio.create_task(work)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
