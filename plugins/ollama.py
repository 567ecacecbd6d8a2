"""Local Ollama, through its native ``POST /api/chat``.

``stream`` is always sent (Ollama streams when it is absent) and ``think``
is false unless the caller asks, so a low-budget caller gets content rather
than a reply cut short by reasoning. Errors come as ``{"error": "text"}``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import msgspec

from lakehouse.plugin_api import (
    ChatRequest,
    ChatResponse,
    OllamaClient,
    Plugin,
    PluginOptions,
    ProviderContext,
    StreamDelta,
    chat_body,
)

_encode = msgspec.json.Encoder().encode


class OllamaOptions(PluginOptions):
    # How long Ollama keeps the model loaded ("5m", or seconds); server default when unset.
    keep_alive: str | int | None = None
    # Keep constant per model: a different num_ctx makes Ollama reload it.
    num_ctx: int | None = None


class OllamaProvider(OllamaClient):
    probe_path = "/api/version"

    def __init__(self, ctx: ProviderContext) -> None:
        super().__init__(ctx)
        self._options: OllamaOptions = ctx.options

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        options = self._options
        return _encode(
            chat_body(
                request,
                model,
                stream=stream,
                num_ctx=options.num_ctx,
                keep_alive=options.keep_alive,
            )
        )

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        return await self.call("/api/chat", self.body(request, model), model, request)

    def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        body = self.body(request, model, stream=True)
        return self.call_stream("/api/chat", body, model, request)


PLUGIN = Plugin(
    build=OllamaProvider,
    default_base_url="http://localhost:11434",
    options=OllamaOptions,
    dev_stub="ollama",
)
