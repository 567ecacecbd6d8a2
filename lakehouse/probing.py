"""The health probe loop: every provider of the current generation, each
``chatd.probe_interval_secs``."""

from __future__ import annotations

import asyncio
import logging

from lakehouse.generations import Generations

log = logging.getLogger("chatd")


class Prober:
    def __init__(self, generations: Generations) -> None:
        self._generations = generations
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        if interval > 0:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def probe_once(self) -> None:
        # Held like a request: a reload meanwhile leaves its sessions open.
        with self._generations.current as generation:

            async def one(name: str) -> None:
                provider = generation.registry.get(name)
                assert provider is not None
                try:
                    ok = await provider.probe()
                except Exception as exc:
                    log.warning(
                        "probe failed",
                        extra={"provider": name, "error": generation.registry.redact(str(exc))},
                    )
                    ok = False
                generation.health.set_probe(name, ok)

            await asyncio.gather(*(one(name) for name in generation.registry.names()))

    async def _loop(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self._generations.current.config.chatd.probe_interval_secs)
