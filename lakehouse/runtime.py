"""A running chatd's lifecycle: what its lifespan opens and closes.

Each job has its own object: ``generations`` (the current config's
generation, reloads, retiring ones), ``prober`` (the health probe loop),
``log`` (metrics and the access line of each request), ``mint`` (request
IDs), ``heap`` (freed C heap given back to the OS), ``collector`` (whether
and when the garbage collector walks the young generations and the whole
heap). Built in the app's lifespan, never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Mapping
from typing import Any

from lakehouse import reload_signal, sd_notify
from lakehouse.auth import Gate
from lakehouse.config import Config
from lakehouse.dispatcher import Dispatcher
from lakehouse.gc_pacing import CollectionPacer
from lakehouse.generations import ConfigSource, Generation, Generations
from lakehouse.health import Health
from lakehouse.heap_trim import HeapTrimmer
from lakehouse.metrics import Metrics
from lakehouse.probe_share import Verdicts
from lakehouse.probing import Prober
from lakehouse.registry import Registry
from lakehouse.request_id import Minter
from lakehouse.request_log import RequestLog
from lakehouse.upstreams.pool import host_states

__all__ = ["ConfigSource", "Runtime"]

log = logging.getLogger("chatd")


class Runtime:
    def __init__(self, generations: Generations, metrics: Metrics) -> None:
        self.generations = generations
        self.metrics = metrics
        self.log = RequestLog(metrics)
        self.prober = Prober(generations)
        self.heap = HeapTrimmer()
        self.collector = CollectionPacer(lambda: self.dispatcher.in_flight)
        self.mint = Minter()
        self.ready = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # The current generation's parts, for routes that read one of them once.
    @property
    def current(self) -> Generation:
        return self.generations.current

    @property
    def config(self) -> Config:
        return self.generations.current.config

    @property
    def registry(self) -> Registry:
        return self.generations.current.registry

    @property
    def health(self) -> Health:
        return self.generations.current.health

    @property
    def dispatcher(self) -> Dispatcher:
        return self.generations.current.dispatcher

    @property
    def gate(self) -> Gate:
        return self.generations.current.gate

    @classmethod
    async def start(
        cls,
        config: Config,
        environ: Mapping[str, str] | None = None,
        *,
        source: ConfigSource | None = None,
        handle_sighup: bool = False,
    ) -> Runtime:
        """Open the first generation. ``source`` re-reads the config for a
        reload; with ``handle_sighup`` a SIGHUP triggers one."""
        holder: list[Runtime] = []
        metrics = Metrics(
            lambda: holder[0].health.snapshot(),
            lambda: holder[0].pressure(),
            lambda: host_states(holder[0].registry),
        )
        generation = await Generation.open(config, environ, metrics)
        runtime = cls(Generations(generation, metrics, environ, source), metrics)
        holder.append(runtime)
        runtime.prober.start(config.chatd.probe_interval_secs)
        runtime.heap.start()
        runtime.collector.start()
        if metrics.multiprocess:
            runtime._spawn(metrics.publish_forever())
        if handle_sighup and source is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, runtime._on_sighup)
            reload_signal.release()
        runtime.ready = True
        log.info("chatd ready", extra={"providers": ", ".join(generation.registry.names())})
        return runtime

    def pressure(self) -> dict[str, tuple[int, int, int]]:
        return {
            name: (limiter.active, limiter.waiting, limiter.rejected)
            for name, limiter in self.dispatcher.limiters.items()
        }

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_sighup(self) -> None:
        self._spawn(self._reload_for_signal())

    async def _reload_for_signal(self) -> None:
        # systemd (ExecReload sends the SIGHUP) hears when the reload is done.
        async with sd_notify.reloading():
            await self.reload()

    async def reload(self) -> str | None:
        return await self.generations.reload()

    async def probe_once(self) -> Verdicts:
        return await self.prober.probe_once()

    def apply_probes(self, verdicts: Verdicts) -> None:
        self.prober.apply(verdicts)

    async def close(self) -> None:
        self.ready = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.prober.stop()
        await self.heap.stop()
        await self.collector.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # At shutdown (the server has let requests finish) nothing waits.
        await self.generations.close()
        self.log.close()
        log.info("chatd stopped: in-flight requests done, upstream sessions closed")
