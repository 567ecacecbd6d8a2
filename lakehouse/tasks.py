"""Small asyncio helpers shared by both sides."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_closed(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for it, swallowing only its cancellation."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
