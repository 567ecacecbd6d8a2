"""Ollama's native API (``/api/chat``, ``/api/generate``), shared by the
local and the cloud provider: request and reply Structs, and the mapping
of its ``{"error": "text"}`` bodies onto chatd's error family.

A little over 350 lines: one API's bodies, replies, stream and the client
base both Ollama plugins configure (``OllamaClient``) read best together.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import msgspec

from lakehouse.errors import ChatdError, UpstreamBadResponse, UpstreamError
from lakehouse.keys import redact_key
from lakehouse.tool_calls import answer_reason, arguments_text, mint_call_id
from lakehouse.upstreams.contract import UpstreamReply
from lakehouse.upstreams.failures import (
    decode_json,
    decode_or_refuse,
    error_for_status,
    parse_retry_after,
    short_text,
)
from lakehouse.upstreams.framing import iter_ndjson
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.ollama_messages import OllamaMessage, ollama_messages, ollama_tools
from lakehouse.upstreams.provider import HTTPProvider
from lakehouse.wire import (
    ChatRequest,
    ChatResponse,
    FunctionCall,
    StreamDelta,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallChunk,
)

# Ollama Cloud's plan quotas answer 429 with "... session usage limit ...",
# "weekly usage limit" or "hourly usage limit": waiting a moment won't help.
OLLAMA_QUOTA_PHRASES = ("usage limit",)


class OllamaRuntimeOptions(msgspec.Struct, omit_defaults=True):
    """The request's ``options`` object."""

    num_predict: int | None = None
    temperature: float | None = None
    num_ctx: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class OllamaChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[OllamaMessage]
    # Required, so always sent: Ollama streams when ``stream`` is absent.
    stream: bool
    think: bool | str
    format: Any = None
    options: OllamaRuntimeOptions | None = None
    keep_alive: str | int | None = None
    tools: list[Tool] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class OllamaGenerateBody(msgspec.Struct, omit_defaults=True):
    model: str
    prompt: str
    stream: bool
    think: bool | str
    # Overrides the Modelfile's system prompt; left out when there is none.
    system: str | None = None
    format: Any = None
    options: OllamaRuntimeOptions | None = None
    keep_alive: str | int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class _ReplyFunction(msgspec.Struct):
    name: str = ""
    arguments: dict[str, Any] = {}


class _ReplyToolCall(msgspec.Struct):
    function: _ReplyFunction
    # Newer servers number the calls; older ones give no id.
    id: str = ""


class OllamaReplyMessage(msgspec.Struct):
    content: str = ""
    thinking: str | None = None
    tool_calls: list[_ReplyToolCall] | None = None


class OllamaReply(msgspec.Struct):
    """A non-streamed reply of either endpoint: ``/api/chat`` puts the text
    in ``message``, ``/api/generate`` in ``response`` and ``thinking``."""

    model: str = ""
    message: OllamaReplyMessage | None = None
    response: str | None = None
    thinking: str | None = None
    done: bool = False
    done_reason: str = ""
    # Absent when zero (omitempty upstream), e.g. a fully cached prompt.
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None
    # Present when asked for (``logprobs: true``), per chunk when streamed.
    logprobs: list[TokenLogprob] | None = None


class _ErrorReply(msgspec.Struct):
    error: Any = None


ollama_reply_decoder = msgspec.json.Decoder(OllamaReply)
_NO_OPTIONS = OllamaRuntimeOptions()
_error_decoder = msgspec.json.Decoder(_ErrorReply)


def runtime_options(
    request: ChatRequest, num_ctx: int | None = None
) -> OllamaRuntimeOptions | None:
    """``max_tokens`` → ``num_predict``; ``temperature``, ``top_p``, ``seed``,
    ``stop`` and the penalties as they are; None when nothing is set, so the
    server's defaults apply."""
    options = OllamaRuntimeOptions(
        num_predict=request.max_tokens,
        temperature=request.temperature,
        num_ctx=num_ctx,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop or None,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
    )
    return None if options == _NO_OPTIONS else options


def chat_body(
    request: ChatRequest,
    model: str,
    *,
    stream: bool,
    num_ctx: int | None = None,
    keep_alive: str | int | None = None,
) -> OllamaChatBody:
    """The ``/api/chat`` body for ``request``: BadRequest, naming the field,
    for what Ollama cannot take (ollama_messages)."""
    return OllamaChatBody(
        model=model,
        messages=ollama_messages(request.messages),
        stream=stream,
        think=think_value(request),
        format=request.format,
        options=runtime_options(request, num_ctx),
        keep_alive=keep_alive,
        tools=ollama_tools(request),
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
    )


def tool_calls(calls: list[_ReplyToolCall], request: ChatRequest) -> list[ToolCall]:
    """Ollama's calls with an id each (older servers give none); only the
    first when the caller asked for no parallel calls, which Ollama cannot
    be told."""
    if request.parallel_tool_calls is False:
        calls = calls[:1]
    return [
        ToolCall(
            id=c.id or mint_call_id(), function=FunctionCall(c.function.name, c.function.arguments)
        )
        for c in calls
    ]


def think_value(request: ChatRequest) -> bool | str:
    # Off unless asked: thinking models otherwise think by default and a
    # low max_tokens budget ends before any content.
    return False if request.think is None else request.think


def ollama_error(reply: UpstreamReply, provider: str, key: str | None = None) -> ChatdError:
    """Map a non-2xx reply (``{"error": "text"}``) to the error family."""
    body = redact_key(reply.body, key)
    try:
        message = str(_error_decoder.decode(body).error or "")
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = short_text(body)
    quota = any(phrase in message.lower() for phrase in OLLAMA_QUOTA_PHRASES)
    return error_for_status(
        reply.status,
        message,
        provider=provider,
        retry_after=parse_retry_after(reply.headers),
        quota=quota,
    )


def ollama_response(
    data: OllamaReply,
    *,
    provider: str,
    model: str,
    request: ChatRequest,
    key: str | None = None,
) -> ChatResponse:
    """The ChatResponse for a decoded 200 reply of either endpoint."""
    if data.error:
        raise UpstreamError(f"{provider}: {redact_key(data.error, key)}", provider=provider)
    content: str | None = data.response
    thinking = data.thinking
    calls: list[ToolCall] | None = None
    if data.message is not None:
        content, thinking = data.message.content, data.message.thinking
        if data.message.tool_calls:
            calls = tool_calls(data.message.tool_calls, request)
    if content is None or not data.done:
        raise UpstreamBadResponse(
            f"{provider} answered without a finished message", provider=provider
        )
    return ChatResponse(
        model=data.model or model,
        provider=provider,
        content=content,
        # Ollama says "stop" after a call; callers are told why it stopped.
        done_reason=answer_reason(data.done_reason, calls=bool(calls)),
        prompt_tokens=data.prompt_eval_count,
        completion_tokens=data.eval_count,
        reasoning=thinking or None,
        tool_calls=calls,
        logprobs=data.logprobs or None,
    )


# A server that ignored ``stream`` sends one JSON object: a one-line stream.
_STREAM_TYPES = ("application/x-ndjson", "application/json", "")


def _pieces(data: OllamaReply) -> tuple[str, str]:
    """``(content, thinking)`` of one object of either endpoint."""
    if data.message is not None:
        return data.message.content, data.message.thinking or ""
    return data.response or "", data.thinking or ""


async def ollama_stream(
    http: HTTPClient,
    path: str,
    body: bytes,
    *,
    model: str,
    request: ChatRequest,
    key: str | None = None,
) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
    """Stream ``body`` (with ``stream: true``) from ``path``: a StreamDelta per
    line with text, tool calls (which Ollama sends whole: one chunk each) or
    logprobs, then the ChatResponse built from the ``done`` line."""
    provider = http.provider
    async with http.stream_post(
        path, body, error=lambda reply: ollama_error(reply, provider, key)
    ) as upstream:
        if upstream.content_type not in _STREAM_TYPES:
            raise upstream.refuse(await upstream.read(300), "an NDJSON stream")
        calls: list[ToolCall] = []
        final: OllamaReply | None = None
        async with aclosing(iter_ndjson(upstream, provider=provider)) as lines:
            async for line in lines:
                data = decode_or_refuse(
                    ollama_reply_decoder,
                    line,
                    provider,
                    upstream.status,
                    "sent an unusable stream line",
                )
                if data.error:
                    # Mid-stream failures come in-band: the status is long sent.
                    text = redact_key(data.error, key)
                    raise UpstreamError(f"{provider}: {text}", provider=provider)
                text, thought = _pieces(data)
                new = _new_calls(data, request, len(calls))
                calls += new
                if data.done:
                    final = data
                delta = None
                if text or thought or new or data.logprobs:
                    delta = StreamDelta(
                        text, thought, _chunks(new, len(calls) - len(new)), data.logprobs or None
                    )
                # Not kept while the caller is sent the delta (see plugin_api).
                del line, data, text, thought
                if delta is not None:
                    yield delta
                if final is not None:
                    break
        if final is None:
            raise UpstreamBadResponse(
                f"{provider} ended the stream without its done line",
                provider=provider,
                upstream_status=upstream.status,
            )
        yield ChatResponse(
            model=final.model or model,
            provider=provider,
            content="",
            done_reason=answer_reason(final.done_reason, calls=bool(calls)),
            prompt_tokens=final.prompt_eval_count,
            completion_tokens=final.eval_count,
            tool_calls=calls or None,
        )
        await upstream.drain()


def _new_calls(data: OllamaReply, request: ChatRequest, made: int) -> list[ToolCall]:
    if data.message is None or not data.message.tool_calls:
        return []
    if request.parallel_tool_calls is False and made:
        return []
    return tool_calls(data.message.tool_calls, request)


def _chunks(calls: list[ToolCall], first: int) -> list[ToolCallChunk] | None:
    """Whole calls as stream chunks: id, name and all the arguments at once."""
    return [
        ToolCallChunk(first + n, c.id, c.function.name, arguments_text(c.function))
        for n, c in enumerate(calls)
    ] or None


class OllamaClient(HTTPProvider):
    """The base of a provider that speaks Ollama's native API: the plugin
    builds the path and body, ``call`` and ``call_stream`` send them and read
    the reply, whole or as it arrives."""

    async def call(self, path: str, body: bytes, model: str, request: ChatRequest) -> ChatResponse:
        reply = await self._http.post_json(path, body)
        if reply.status != 200:
            raise ollama_error(reply, self.name, self._key)
        data = decode_json(ollama_reply_decoder, reply, self.name)
        return ollama_response(
            data, provider=self.name, model=model, request=request, key=self._key
        )

    def call_stream(
        self, path: str, body: bytes, model: str, request: ChatRequest
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        return ollama_stream(self._http, path, body, model=model, request=request, key=self._key)
