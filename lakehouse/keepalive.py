"""A connection's keep-alive idle timer that costs nothing per request.

Hypercorn's TCPServer watches each connection with an ``AsyncioSingleTask``:
``restart`` (the connection went idle) cancels and awaits the previous
watcher, then starts a task running ``TCPServer._idle_timeout`` (wait for
server shutdown or ``keep_alive_timeout``, then close); ``stop`` (a request
arrived, or the connection is closing) cancels it. On a keep-alive
connection that is a cancellation, two task switches and the inner task of
``asyncio.wait_for`` for every request: ~8% of a proxied request's CPU here.

``IdleWatch`` keeps the same interface and behaviour with one watcher per
connection for its whole life: ``restart`` and ``stop`` only move an
"idle since" mark, and the watcher, waking once per ``keep_alive_timeout``,
closes the connection once it has been idle that long, or at once when the
server shuts down. ``lakehouse.server`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


class IdleWatch:
    """Stands in for Hypercorn's ``AsyncioSingleTask`` as a TCPServer's
    ``idle_task``; ``action`` is that server's bound ``_idle_timeout``."""

    def __init__(self) -> None:
        self._idle_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._server: Any = None

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        server = action.__self__  # type: ignore[attr-defined]
        if server.context.terminated.is_set():
            # Shutting down: close now, as Hypercorn's own watcher would.
            task_group._task_group.create_task(action())
            return
        self._idle_since = asyncio.get_running_loop().time()
        if self._task is None:
            self._server = server
            self._task = task_group._task_group.create_task(self._watch(server))

    async def stop(self) -> None:
        self._idle_since = None
        task = self._task
        if task is not None and self._server.writer.is_closing():
            self._task = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self, server: Any) -> None:
        loop = asyncio.get_running_loop()
        timeout = server.config.keep_alive_timeout
        terminated = server.context.terminated
        while True:
            since = self._idle_since
            wait = timeout if since is None else since + timeout - loop.time()
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(terminated.wait(), wait)
            except TimeoutError:
                continue
            if self._idle_since is None:
                # Shutting down mid-request: ``restart`` closes the
                # connection when the request is done.
                self._task = None
                return
            break
        self._task = None
        await asyncio.shield(server._initiate_server_close())
