"""Generations of the running config, and reloading them.

A generation is everything built from one config: registry (and its
upstream sessions), health, dispatcher, auth gate. A request takes the
current generation once, as ``with runtime.generations.current as gen``,
and uses only it, across retries, fallbacks and its whole stream; the use
count it holds is what keeps a retiring generation open.

A reload (SIGHUP, or ``POST /admin/reload``) builds and opens a whole new
generation first; a bad config is refused with one log line and the old
generation keeps serving. The old one retires: it closes its sessions when
its last user leaves, or at shutdown, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import TracebackType

from lakehouse.auth import Gate
from lakehouse.config import Config
from lakehouse.dispatcher import Dispatcher, Policy
from lakehouse.errors import ConfigError
from lakehouse.health import Health
from lakehouse.metrics import Metrics
from lakehouse.registry import Registry, build_registry

log = logging.getLogger("chatd")

ConfigSource = Callable[[], Config]


class Generation:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        health: Health,
        dispatcher: Dispatcher,
        gate: Gate,
    ) -> None:
        self.config = config
        self.registry = registry
        self.health = health
        self.dispatcher = dispatcher
        self.gate = gate
        self.users = 0
        # Set once retiring; fires when the last user leaves.
        self._unused: asyncio.Event | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, config: Config, environ: Mapping[str, str] | None, metrics: Metrics | None
    ) -> Generation:
        chatd = config.chatd
        gate = Gate.from_config(chatd.auth, chatd.bind, environ)
        registry = build_registry(config, environ)
        health = Health(
            registry.names(),
            failure_threshold=chatd.failure_threshold,
            cooldown=chatd.cooldown_secs,
        )
        policy = Policy(
            retry=chatd.retry,
            deadline=chatd.deadline_secs,
            fallbacks=chatd.fallbacks,
            limits={n: (p.max_concurrency, p.max_queue) for n, p in chatd.providers.items()},
        )
        dispatcher = Dispatcher(
            registry, tiers=config.tiers, health=health, policy=policy, metrics=metrics
        )
        started = []
        try:
            for provider in registry:
                await provider.start()
                started.append(provider)
        except BaseException:
            for provider in started:
                await provider.close()
            raise
        return cls(config, registry, health, dispatcher, gate)

    def __enter__(self) -> Generation:
        self.users += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.users -= 1
        if self.users == 0 and self._unused is not None:
            self._unused.set()

    async def retire(self) -> None:
        """Close once the last user has left."""
        self._unused = asyncio.Event()
        if self.users == 0:
            self._unused.set()
        await self._unused.wait()
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for provider in self.registry:
            await provider.close()


class Generations:
    """The current generation, the retiring ones, and reloads."""

    def __init__(
        self,
        first: Generation,
        metrics: Metrics,
        environ: Mapping[str, str] | None,
        source: ConfigSource | None,
    ) -> None:
        self.current = first
        self._metrics = metrics
        self._environ = environ
        self._source = source
        self._lock = asyncio.Lock()
        self._retiring: dict[Generation, asyncio.Task[None]] = {}

    async def reload(self) -> str | None:
        """Swap in a generation built from the config source; on a refused
        config, the reason (also logged in one line) and the old one stays."""
        if self._source is None:
            log.error("reload refused: this chatd has no config source")
            return "this chatd has no config source"
        async with self._lock:
            try:
                config = self._source()
                fresh = await Generation.open(config, self._environ, self._metrics)
            except ConfigError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                return str(exc)
            old, self.current = self.current, fresh
            log.info("config reloaded", extra={"providers": ", ".join(fresh.registry.names())})
            task = asyncio.create_task(old.retire())
            self._retiring[old] = task
            task.add_done_callback(lambda _: self._retiring.pop(old, None))
            return None

    async def close(self) -> None:
        """At shutdown: every generation closes, in use or not."""
        for old, task in list(self._retiring.items()):
            task.cancel()
            await old.close()
        self._retiring.clear()
        await self.current.close()
