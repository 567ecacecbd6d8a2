"""One provider in front of several endpoints of one gateway, picked per
model by a rule table: OpenCode Zen serves Claude on Anthropic Messages,
GPT-5 on OpenAI Responses and the rest on Chat Completions, all under one
base URL and one key (docs/protocols/opencode-zen.md).

The clients of each endpoint share this provider's one pooled session.
Rules are data (``[chatd.providers.<name>.options].routes``), so adding a
model family is a line of config, never code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Literal, Protocol

import msgspec

from lakehouse.errors import BadRequest, ConfigError
from lakehouse.upstreams.http import HTTPClient
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

Endpoint = Literal["chat_completions", "messages", "responses", "refuse"]


class EndpointRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Models whose name matches ``match`` (a shell glob, case-insensitive)
    go to ``endpoint``; ``refuse`` answers 400 naming ``family``."""

    match: str
    endpoint: Endpoint
    family: str = ""


class EndpointClient(Protocol):
    async def probe(self) -> bool: ...

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse: ...

    def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]: ...


def pick_rule(
    rules: Sequence[EndpointRule], model: str, default: Endpoint = "chat_completions"
) -> EndpointRule:
    """The first rule matching ``model``, else one naming ``default``."""
    name = model.lower()
    for rule in rules:
        if fnmatch.fnmatchcase(name, rule.match.lower()):
            return rule
    return EndpointRule(match="*", endpoint=default)


class RoutedProvider:
    """Sends each model to the endpoint its first matching rule names."""

    def __init__(
        self,
        name: str,
        http: HTTPClient,
        clients: Mapping[Endpoint, EndpointClient],
        rules: Sequence[EndpointRule],
        *,
        gateway: str = "the upstream",
    ) -> None:
        wanted: set[str] = {r.endpoint for r in rules} | {"chat_completions"}
        missing = wanted - {"refuse"} - set(clients)
        if missing:
            raise ConfigError(f"no client for endpoint(s) {sorted(missing)}")
        self.name = name
        self.rules = tuple(rules)
        self._http = http
        self._clients = clients
        self._gateway = gateway

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        # The Chat Completions client's probe, with its key and options.
        return await self._clients["chat_completions"].probe()

    def client(self, model: str) -> EndpointClient:
        rule = pick_rule(self.rules, model)
        if rule.endpoint == "refuse":
            family = rule.family or f"models matching {rule.match!r}"
            raise BadRequest(
                f"{self.name}/{model}: {self._gateway} serves {family} models on an "
                "endpoint chatd does not speak",
                provider=self.name,
            )
        return self._clients[rule.endpoint]

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        return await self.client(model).chat(request, model)

    async def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        # Picked before the first item, so a refusal is a plain 400.
        client = self.client(model)
        async with aclosing(client.stream(request, model)) as items:
            async for item in items:
                yield item
