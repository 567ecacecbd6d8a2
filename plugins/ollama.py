"""Local Ollama, through its native ``POST /api/chat``.

``stream`` is always sent (Ollama streams when it is absent) and ``think``
is false unless the caller asks, so a low-budget caller gets content rather
than a reply cut short by reasoning. Errors come as ``{"error": "text"}``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from lakehouse.plugin_api import (
    ChatRequest,
    ChatResponse,
    HTTPClient,
    Message,
    Plugin,
    PluginOptions,
    ProviderContext,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamReply,
    decode_json,
    error_for_status,
    short_text,
)


class OllamaOptions(PluginOptions):
    # How long Ollama keeps the model loaded ("5m", or seconds); server default when unset.
    keep_alive: str | int | None = None
    # Keep constant per model: a different num_ctx makes Ollama reload it.
    num_ctx: int | None = None


class _Options(msgspec.Struct, omit_defaults=True):
    num_predict: int | None = None
    temperature: float | None = None
    num_ctx: int | None = None


class _ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    stream: bool
    think: bool | str
    format: Any = None
    options: _Options | None = None
    keep_alive: str | int | None = None


class _ReplyMessage(msgspec.Struct):
    content: str = ""
    thinking: str | None = None


class _ChatReply(msgspec.Struct):
    model: str = ""
    message: _ReplyMessage | None = None
    done: bool = False
    done_reason: str = ""
    # Absent when zero (omitempty upstream), e.g. a fully cached prompt.
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


class _ErrorReply(msgspec.Struct):
    error: Any = None


_encode = msgspec.json.Encoder().encode
_reply_decoder = msgspec.json.Decoder(_ChatReply)
_error_decoder = msgspec.json.Decoder(_ErrorReply)


def error_from_reply(reply: UpstreamReply, provider: str) -> Exception:
    """Map an Ollama non-2xx reply (``{"error": "text"}``) to the error family."""
    try:
        message = str(_error_decoder.decode(reply.body).error or "")
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = short_text(reply.body)
    return error_for_status(reply.status, message, provider=provider)


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
        reply = await self._http.request("GET", "/api/version", timeout=5)
        return reply.status == 200

    def body(self, request: ChatRequest, model: str) -> bytes:
        options = None
        if (
            request.max_tokens is not None
            or request.temperature is not None
            or self._options.num_ctx is not None
        ):
            options = _Options(request.max_tokens, request.temperature, self._options.num_ctx)
        return _encode(
            _ChatBody(
                model=model,
                messages=request.messages,
                stream=False,
                think=False if request.think is None else request.think,
                format=request.format,
                options=options,
                keep_alive=self._options.keep_alive,
            )
        )

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        reply = await self._http.post_json("/api/chat", self.body(request, model))
        if reply.status != 200:
            raise error_from_reply(reply, self.name)
        data = decode_json(_reply_decoder, reply, self.name)
        if data.error:
            raise UpstreamError(f"{self.name}: {data.error}", provider=self.name)
        if data.message is None or not data.done:
            raise UpstreamBadResponse(
                f"{self.name} answered without a finished message", provider=self.name
            )
        return ChatResponse(
            model=data.model or model,
            provider=self.name,
            content=data.message.content,
            done_reason=data.done_reason or "stop",
            prompt_tokens=data.prompt_eval_count,
            completion_tokens=data.eval_count,
            reasoning=data.message.thinking or None,
        )


PLUGIN = Plugin(
    build=OllamaProvider,
    default_base_url="http://localhost:11434",
    options=OllamaOptions,
    dev_stub="ollama",
)
