"""What a running chatd holds: config, registry, dispatcher, health, and the
background probe loop. Built in the app's lifespan, never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from lakehouse.config import Config
from lakehouse.dispatcher import CallInfo, Dispatcher
from lakehouse.errors import ChatdError
from lakehouse.health import Health
from lakehouse.metrics import Metrics
from lakehouse.registry import Registry, build_registry
from lakehouse.wire import ChatRequest, ChatResponse

log = logging.getLogger("chatd")
access = logging.getLogger("chatd.access")

# Metric label for a request path: bounded, whatever callers send.
_ROUTES = {"/chat": "chat", "/v1/chat": "chat"}


class Runtime:
    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.health = Health(registry.names(), failure_threshold=config.chatd.failure_threshold)
        self.dispatcher = Dispatcher(registry, tiers=config.tiers, health=self.health)
        self.metrics = Metrics(self.health.snapshot)
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
        self.metrics.close()

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
        overhead = max(0.0, total - info.upstream_s)
        prompt = response.prompt_tokens if response is not None else 0
        completion = response.completion_tokens if response is not None else 0
        code = error.code if error is not None else None
        upstream_code = code if error is not None and error.provider else None
        self.metrics.observe(
            route=_ROUTES.get(path, "other"),
            provider=info.provider,
            tier=info.tier,
            status=status,
            upstream_s=info.upstream_s,
            overhead_s=overhead,
            prompt_tokens=prompt,
            completion_tokens=completion,
            error_code=upstream_code,
        )
        if access.isEnabledFor(logging.INFO):
            fields: dict[str, object] = {
                "request_id": rid,
                "route": path,
                "model": request.model[:200] if request is not None else None,
                "provider": info.provider or None,
                "tier": info.tier or None,
                "status": status,
                "upstream_ms": round(info.upstream_s * 1000, 3),
                "overhead_ms": round(overhead * 1000, 3),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
            if code is not None:
                fields["error"] = code
            access.info("request", extra=fields)
        if (
            request is not None
            and self.config.chatd.log_bodies
            and access.isEnabledFor(logging.DEBUG)
        ):
            access.debug(
                "bodies",
                extra={
                    "messages": [self.registry.redact(m.content) for m in request.messages],
                    "content": self.registry.redact(response.content) if response else None,
                },
            )

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
