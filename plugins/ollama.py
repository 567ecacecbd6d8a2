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
    HTTPClient,
    Plugin,
    PluginOptions,
    ProviderContext,
    StreamDelta,
    chat_body,
    decode_json,
    ollama_error,
    ollama_reply_decoder,
    ollama_response,
    ollama_stream,
)

_encode = msgspec.json.Encoder().encode


class OllamaOptions(PluginOptions):
    # How long Ollama keeps the model loaded ("5m", or seconds); server default when unset.
    keep_alive: str | int | None = None
    # Keep constant per model: a different num_ctx makes Ollama reload it.
    num_ctx: int | None = None


class OllamaProvider:
    def __init__(self, ctx: ProviderContext) -> None:
        self.name = ctx.name
        self._options: OllamaOptions = ctx.options
        self._http = HTTPClient(ctx)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        return await self._http.probe("/api/version", 5)

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
        reply = await self._http.post_json("/api/chat", self.body(request, model))
        if reply.status != 200:
            raise ollama_error(reply, self.name)
        data = decode_json(ollama_reply_decoder, reply, self.name)
        return ollama_response(data, provider=self.name, model=model, request=request)

    def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        body = self.body(request, model, stream=True)
        return ollama_stream(self._http, "/api/chat", body, model=model, request=request)


PLUGIN = Plugin(
    build=OllamaProvider,
    default_base_url="http://localhost:11434",
    options=OllamaOptions,
    dev_stub="ollama",
)
