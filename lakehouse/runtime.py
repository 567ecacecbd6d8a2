"""What a running chatd holds: config, registry, dispatcher, health, and the
background probe loop. Built in the app's lifespan, never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from lakehouse.config import Config
from lakehouse.dispatcher import Dispatcher
from lakehouse.health import Health
from lakehouse.registry import Registry, build_registry

log = logging.getLogger("chatd")


class Runtime:
    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.health = Health(registry.names(), failure_threshold=config.chatd.failure_threshold)
        self.dispatcher = Dispatcher(registry, tiers=config.tiers, health=self.health)
        self.ready = False
        self._probe_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: Config, environ: Mapping[str, str] | None = None) -> Runtime:
        runtime = cls(config, build_registry(config, environ))
        started = []
        try:
            for provider in runtime.registry:
                await provider.start()
                started.append(provider)
        except BaseException:
            for provider in started:
                await provider.close()
            raise
        if config.chatd.probe_interval_secs > 0 and len(runtime.registry):
            runtime._probe_task = asyncio.create_task(runtime._probe_loop())
        runtime.ready = True
        names = ", ".join(runtime.registry.names()) or "none"
        log.info("chatd ready", extra={"providers": names})
        return runtime

    async def close(self) -> None:
        self.ready = False
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for provider in self.registry:
            await provider.close()

    async def probe_once(self) -> None:
        async def one(name: str) -> None:
            provider = self.registry.get(name)
            assert provider is not None
            try:
                ok = await provider.probe()
            except Exception as exc:
                log.warning(
                    "probe failed",
                    extra={"provider": name, "error": self.registry.redact(str(exc))},
                )
                ok = False
            self.health.set_probe(name, ok)

        await asyncio.gather(*(one(name) for name in self.registry.names()))

    async def _probe_loop(self) -> None:
        interval = self.config.chatd.probe_interval_secs
        while True:
            await self.probe_once()
            await asyncio.sleep(interval)
