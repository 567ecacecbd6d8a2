"""StubThread: a StubUpstream on its own event loop, for synchronous callers
(``chatd --dev`` runs one next to Hypercorn, which owns the main loop)."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any

from lakehouse.stubs.server import StubUpstream

START_TIMEOUT = 10.0


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    # Handlers still sleeping in a fault would otherwise be destroyed pending.
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


class StubThread:
    def __init__(self, flavour: str, **options: Any) -> None:
        """``options``: as ``StubUpstream`` takes them."""
        # Built here so a bad flavour or option fails in the caller's thread.
        self.stub = StubUpstream(flavour, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.stub.base_url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving; returns the base URL once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("stub thread already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.stub.start(host, port))
            except BaseException as exc:  # handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stub.stop())
                _cancel_leftovers(loop)
                loop.close()

        thread = threading.Thread(target=run, name=f"stub-{self.stub.flavour}", daemon=True)
        thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError(f"stub {self.stub.flavour} did not start")
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self.stub.base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)

    def __enter__(self) -> StubThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
