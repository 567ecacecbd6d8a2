"""What a running chatd holds: the current generation (config, registry,
health, dispatcher, auth gate), the metrics, and the background probe
loop. Built in the app's lifespan, never at import.

A reload (SIGHUP, or ``POST /admin/reload``) builds and opens a whole new
generation first; a bad config is refused with one log line and the old
generation keeps serving. Requests already inside the old one finish on
it; its upstream sessions close once they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from lakehouse import sd_notify
from lakehouse.auth import Gate
from lakehouse.config import Config
from lakehouse.dispatcher import CallInfo, Dispatcher, Policy
from lakehouse.errors import ChatdError, ConfigError
from lakehouse.health import Health
from lakehouse.logs import AccessEntry, AccessLog
from lakehouse.metrics import MULTIPROC_ENV, Metrics
from lakehouse.probe_share import ProbeShare, Verdicts
from lakehouse.registry import Registry, build_registry
from lakehouse.request_id import Minter
from lakehouse.upstreams.pool import HostPool, host_states
from lakehouse.wire import ChatRequest, ChatResponse

log = logging.getLogger("chatd")
access = logging.getLogger("chatd.access")

# Metric label for a request path: bounded, whatever callers send.
_ROUTES = {
    "/chat": "chat",
    "/v1/chat": "chat",
    "/chat/completions": "chat_completions",
    "/v1/chat/completions": "chat_completions",
}

ConfigSource = Callable[[], Config]


@dataclass
class Generation:
    config: Config
    registry: Registry
    health: Health
    dispatcher: Dispatcher
    gate: Gate

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

    def busy(self) -> bool:
        # Requests, not just calls: one waiting out a retry holds no slot.
        return self.dispatcher.in_flight > 0

    async def close(self) -> None:
        for provider in self.registry:
            await provider.close()


class Runtime:
    def __init__(
        self,
        generation: Generation,
        metrics: Metrics,
        environ: Mapping[str, str] | None,
        source: ConfigSource | None,
    ) -> None:
        self.current = generation
        self.metrics = metrics
        self.ready = False
        self._environ = environ
        self._source = source
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        # Old generations waiting for their requests to finish.
        self._retiring: list[Generation] = []
        self.access = AccessLog()
        self.mint = Minter()

    # The current generation's parts, as most callers want them.
    @property
    def config(self) -> Config:
        return self.current.config

    @property
    def registry(self) -> Registry:
        return self.current.registry

    @property
    def health(self) -> Health:
        return self.current.health

    @property
    def dispatcher(self) -> Dispatcher:
        return self.current.dispatcher

    @property
    def gate(self) -> Gate:
        return self.current.gate

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
        runtime = cls(generation, metrics, environ, source)
        holder.append(runtime)
        if config.chatd.probe_interval_secs > 0:
            runtime._probe_task = asyncio.create_task(runtime._probe_loop())
        if metrics.multiprocess:
            runtime._spawn(metrics.publish_forever())
        if handle_sighup and source is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, runtime._on_sighup)
        runtime.ready = True
        log.info("chatd ready", extra={"providers": ", ".join(generation.registry.names())})
        return runtime

    def pressure(self) -> dict[str, tuple[int, int, int]]:
        return {
            name: (limiter.active, limiter.waiting, limiter.rejected)
            for name, limiter in self.dispatcher.limiters.items()
        }

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_sighup(self) -> None:
        self._spawn(self._reload_for_signal())

    async def _reload_for_signal(self) -> None:
        # systemd (ExecReload sends the SIGHUP) hears when the reload is done.
        async with sd_notify.reloading():
            await self.reload()

    async def reload(self) -> str | None:
        """Swap in a generation built from the config source; on a refused
        config, the reason (also logged in one line) and the old one stays."""
        if self._source is None:
            log.error("reload refused: this chatd has no config source")
            return "this chatd has no config source"
        async with self._reload_lock:
            try:
                config = self._source()
                fresh = await Generation.open(config, self._environ, self.metrics)
            except ConfigError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                return str(exc)
            old, self.current = self.current, fresh
            log.info("config reloaded", extra={"providers": ", ".join(fresh.registry.names())})
            self._spawn(self._retire(old))
            return None

    async def _retire(self, old: Generation) -> None:
        # Calls started on the old generation finish on its sessions.
        self._retiring.append(old)
        deadline = time.monotonic() + old.config.chatd.deadline_secs
        while old.busy() and time.monotonic() < deadline:  # noqa: ASYNC110 - a rare, idle wait
            await asyncio.sleep(0.1)
        self._retiring.remove(old)
        await old.close()

    async def close(self) -> None:
        self.ready = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in [self._probe_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # At shutdown (the server has let requests finish) nothing waits.
        for old in self._retiring:
            await old.close()
        self._retiring.clear()
        await self.current.close()
        self.metrics.close()
        self.access.flush()
        log.info("chatd stopped: in-flight requests done, upstream sessions closed")

    def observe(
        self,
        path: str,
        rid: str,
        request: ChatRequest | None,
        info: CallInfo,
        status: int,
        started: float,
        response: ChatResponse | None,
        error: ChatdError | None,
    ) -> None:
        """Count and log one answered request (after its response was sent)."""
        total = time.perf_counter() - started
        # chatd's own time: not the upstream's, nor waits chatd chose.
        overhead = max(0.0, total - info.upstream_s - info.wait_s)
        prompt = response.prompt_tokens if response is not None else 0
        completion = response.completion_tokens if response is not None else 0
        code = error.code if error is not None else None
        self.metrics.observe(
            route=_ROUTES.get(path, "other"),
            provider=info.provider,
            tier=info.tier,
            status=status,
            upstream_s=info.upstream_s,
            overhead_s=overhead,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        if self.access.enabled:
            self.access.write(
                AccessEntry(
                    ts=self.access.timestamp(time.time()),
                    level="info",
                    logger="chatd.access",
                    msg="request",
                    request_id=rid,
                    route=path,
                    status=status,
                    upstream_ms=round(info.upstream_s * 1000, 3),
                    overhead_ms=round(overhead * 1000, 3),
                    wait_ms=round(info.wait_s * 1000, 3),
                    model=request.model[:200] if request is not None else None,
                    provider=info.provider or None,
                    tier=info.tier or None,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    attempts=info.attempts if info.attempts > 1 else 0,
                    error=code,
                    message=self.registry.redact(str(error))[:500] if error else None,
                )
            )
        if (
            request is not None
            and self.config.chatd.log_bodies
            and access.isEnabledFor(logging.DEBUG)
        ):
            redact = self.registry.redact
            access.debug(
                "bodies",
                extra={
                    "request_id": rid,
                    "messages": [redact(m.text()) for m in request.messages],
                    "content": redact(response.content) if response else None,
                },
            )

    async def probe_once(self) -> Verdicts:
        generation = self.current
        verdicts: Verdicts = {}

        async def one(name: str) -> None:
            provider = generation.registry.get(name)
            assert provider is not None
            reason = "probe answered that it is not ready"
            try:
                ok = await provider.probe()
            except Exception as exc:
                # Every interval while down: health logs the change once.
                reason = "probe failed: " + generation.registry.redact(str(exc))
                log.debug("probe failed", extra={"provider": name, "error": reason})
                ok = False
            generation.health.set_probe(name, ok, reason)
            verdicts[name] = {"ok": ok}
            if isinstance(provider, HostPool):
                verdicts[name]["hosts"] = provider.host_probes()

        await asyncio.gather(*(one(name) for name in generation.registry.names()))
        return verdicts

    def apply_probes(self, verdicts: Verdicts) -> None:
        """Take another worker's probe verdicts as this one's."""
        generation = self.current
        for name, verdict in verdicts.items():
            provider = generation.registry.get(name)
            if provider is None:
                continue
            generation.health.set_probe(name, bool(verdict.get("ok")), announce=False)
            if isinstance(provider, HostPool):
                provider.set_host_probes(verdict.get("hosts") or {})

    async def _probe_loop(self) -> None:
        folder = os.environ.get(MULTIPROC_ENV)
        share = ProbeShare(folder) if folder else None
        try:
            while True:
                interval = self.config.chatd.probe_interval_secs
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
                    self.apply_probes(shared)
                await asyncio.sleep(min(interval, 1.0))
        finally:
            if share is not None:
                share.close()
