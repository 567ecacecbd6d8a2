"""The health probe loop: every provider of the current generation, each
``chatd.probe_interval_secs``; with several workers one probes and the
others follow its verdicts (``probe_share``)."""

from __future__ import annotations

import asyncio
import logging
import os

from lakehouse.generations import Generations
from lakehouse.metrics import MULTIPROC_ENV
from lakehouse.probe_share import ProbeShare, Verdicts
from lakehouse.upstreams.pool import HostPool

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

    async def probe_once(self) -> Verdicts:
        verdicts: Verdicts = {}
        # Held like a request: a reload meanwhile leaves its sessions open.
        with self._generations.current as generation:

            async def one(name: str) -> None:
                provider = generation.registry.get(name)
                assert provider is not None
                reason = "probe answered that it is not ready"
                try:
                    ok = await provider.probe()
                except Exception as exc:
                    ok = False
                    # Every interval while down: health logs the change once.
                    reason = "probe failed: " + generation.registry.redact(str(exc))
                    log.debug("probe failed", extra={"provider": name, "error": reason})
                generation.health.set_probe(name, ok, reason)
                verdicts[name] = {"ok": ok}
                if isinstance(provider, HostPool):
                    verdicts[name]["hosts"] = provider.host_probes()

            await asyncio.gather(*(one(name) for name in generation.registry.names()))
        return verdicts

    def apply(self, verdicts: Verdicts) -> None:
        """Take another worker's probe verdicts as this one's."""
        generation = self._generations.current
        for name, verdict in verdicts.items():
            provider = generation.registry.get(name)
            if provider is None:
                continue
            generation.health.set_probe(name, bool(verdict.get("ok")), announce=False)
            if isinstance(provider, HostPool):
                provider.set_host_probes(verdict.get("hosts") or {})

    async def _loop(self) -> None:
        folder = os.environ.get(MULTIPROC_ENV)
        share = ProbeShare(folder) if folder else None
        try:
            while True:
                interval = self._generations.current.config.chatd.probe_interval_secs
                if share is None or share.lead():
                    verdicts = await self.probe_once()
                    if share is not None:
                        share.publish(verdicts)
                    await asyncio.sleep(interval)
                    continue
                # Not the prober: follow its verdicts, read more often than
                # it writes so this worker lags it by at most a second.
                shared = share.read()
                if shared is not None:
                    self.apply(shared)
                await asyncio.sleep(min(interval, 1.0))
        finally:
            if share is not None:
                share.close()
