"""The dispatcher: a chat request in, one provider's answer out.

It resolves tiers to model ids, routes the model to a provider, refuses
providers that are marked unavailable, and stamps ``provider``,
``latency_ms`` and ``tier`` on the answer. It knows nothing of HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from lakehouse.errors import ChatdError, ProviderUnavailable
from lakehouse.health import Health
from lakehouse.registry import Registry, Route
from lakehouse.wire import ChatRequest, ChatResponse


@dataclass(slots=True)
class CallInfo:
    """What the dispatcher learnt about one request, for metrics and logs,
    filled in even when the call fails."""

    provider: str = ""
    tier: str = ""
    upstream_s: float = 0.0


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        *,
        tiers: Mapping[str, str] | None = None,
        health: Health | None = None,
    ) -> None:
        self.registry = registry
        self.tiers = dict(tiers or {})
        self.health = health or Health(registry.names())

    def route(self, model: str) -> tuple[Route, str | None]:
        """The route for a model or tier name, and the tier when it was one."""
        resolved = self.tiers.get(model)
        if resolved is None:
            return self.registry.resolve(model), None
        return self.registry.resolve(resolved), model

    async def chat(self, request: ChatRequest, info: CallInfo | None = None) -> ChatResponse:
        info = info if info is not None else CallInfo()
        route, tier = self.route(request.model)
        provider = route.provider
        info.provider = provider.name
        info.tier = tier or ""
        if not self.health.available(provider.name):
            raise ProviderUnavailable(
                f"provider `{provider.name}` is unavailable", provider=provider.name
            )
        started = time.perf_counter()
        try:
            response = await provider.chat(request, route.model)
        except ChatdError as exc:
            info.upstream_s = time.perf_counter() - started
            # Only failures that say something about the provider count
            # against its health; a rejected request says nothing.
            self.health.record(provider.name, ok=not exc.retryable)
            raise
        info.upstream_s = time.perf_counter() - started
        self.health.record(provider.name, ok=True)
        response.latency_ms = round(info.upstream_s * 1000)
        response.provider = provider.name
        response.tier = tier
        return response
