"""The one OpenAI Chat Completions client, shared by every provider that
speaks that dialect (OpenRouter, OpenCode Zen, Kimi For Coding).

A plugin configures it with a ``Flavour``: which output-cap field the
upstream documents, and which error classes and phrases mean what. Every
flavour reads all three error-body shapes and both usage locations, since
Zen relays its routed upstream's bodies unchanged and OpenRouter relays
upstream errors: a per-flavour switch would only be a way to be wrong.

Its ``FlavouredProvider`` is also the Anthropic Messages and OpenAI
Responses clients' base (``event_stream``): one relay of an SSE stream
through a dialect's fold, one reading of a whole reply.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from lakehouse.errors import ChatdError, UpstreamBadResponse
from lakehouse.tool_calls import answer_reason, mint_call_id, parse_arguments
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.failures import decode_json
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat_errors import (
    OPENAI_ERROR_KINDS,
    QUOTA_PHRASES,
    ErrorKind,
    classify_error,
    in_band_error,
)
from lakehouse.upstreams.openai_chat_messages import OpenAIMessage, openai_messages
from lakehouse.upstreams.openai_chat_stream import ChoiceLogprobs, ChunkFold, Usage
from lakehouse.upstreams.provider import HTTPProvider, bearer, options_as
from lakehouse.upstreams.stream_fold import Fold
from lakehouse.wire import (
    ChatRequest,
    ChatResponse,
    FunctionCall,
    StreamDelta,
    Tool,
    ToolCall,
    ToolChoice,
)

CapField = Literal["max_tokens", "max_completion_tokens"]


@dataclass(frozen=True)
class Flavour:
    """What differs between upstreams that speak the same dialect."""

    # The output cap each upstream documents (docs/protocols.md §3.1).
    cap_field: CapField = "max_tokens"
    # ``error.type``, a string ``error.code`` or ``error.metadata.limit_source``
    # → its class; checked before the status on 4xx replies.
    error_kinds: Mapping[str, ErrorKind] = field(default_factory=lambda: OPENAI_ERROR_KINDS)
    quota_phrases: tuple[str, ...] = QUOTA_PHRASES


ProbePath = Annotated[str, msgspec.Meta(pattern=r"^(/\S*)?$")]


class OpenAICompatOptions(PluginOptions):
    """Options an operator may set in ``[chatd.providers.<name>.options]``."""

    # Never send the caller's temperature. Kimi K2.5+ (and Moonshot's fixed-
    # sampling models) answer 400 "only 1 is allowed" to any other value.
    drop_temperature: bool = False
    # Override the flavour's output-cap field, for an upstream that has
    # changed which one it accepts; the flavour's choice when unset.
    cap_field: CapField | None = None
    # A GET path under base_url whose 200 means healthy, e.g. "/models".
    # Empty (the default): no probe, since a call may cost money or quota.
    probe_path: ProbePath = ""
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class _JSONSchemaFormat(msgspec.Struct):
    name: str
    schema: dict[str, Any]


class _ResponseFormat(msgspec.Struct, omit_defaults=True):
    type: Literal["json_object", "json_schema"]
    json_schema: _JSONSchemaFormat | None = None


class _StreamOptions(msgspec.Struct):
    # Asks for the usage-only last chunk; OpenRouter and Zen send it anyway.
    include_usage: bool = True


class _Body(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[OpenAIMessage]
    # No default, so always sent: the upstream default never decides.
    stream: bool
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    response_format: _ResponseFormat | None = None
    stream_options: _StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class _ReplyFunction(msgspec.Struct):
    name: str = ""
    arguments: str | None = None


class _ReplyToolCall(msgspec.Struct):
    id: str | None = None
    function: _ReplyFunction | None = None


class _ReplyMessage(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ReplyToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _ReplyMessage | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: Any = None
    logprobs: ChoiceLogprobs | None = None


class _Completion(msgspec.Struct):
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: Usage | None = None
    error: Any = None


_encode = msgspec.json.Encoder().encode
_completion_decoder = msgspec.json.Decoder(_Completion)
# The whole body of a streamed call answered as one JSON reply.
MAX_WHOLE_BODY = 64 * 1024 * 1024


def response_format(fmt: Literal["json"] | dict[str, Any] | None) -> _ResponseFormat | None:
    if fmt is None:
        return None
    if fmt == "json":
        return _ResponseFormat("json_object")
    assert isinstance(fmt, dict)
    # OpenAI requires a name; callers give only the schema.
    return _ResponseFormat("json_schema", _JSONSchemaFormat(name="response", schema=fmt))


class FlavouredProvider(HTTPProvider):
    """A provider that posts to one ``path`` and whose error bodies read as
    its ``flavour`` says; subclasses build the body and parse the reply."""

    flavour: Flavour
    path = ""

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        raise NotImplementedError

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        """The answer of a whole (non-streamed) 2xx reply."""
        raise NotImplementedError

    def fold(self, model: str, status: int) -> Fold:
        """The reading of one event stream."""
        raise NotImplementedError

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        reply = await self._http.post_json(self.path, self.body(request, model), self._auth)
        if not 200 <= reply.status < 300:
            raise self.classify(reply)
        return self.parse(reply, model)

    async def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        body = self.body(request, model, stream=True)
        async with self._http.stream_post(
            self.path, body, self._auth, error=self.classify
        ) as upstream:
            if upstream.content_type == "application/json":
                # An upstream (or proxy) that ignored "stream" answers whole:
                # a stream of one ChatResponse, which the relay sends as its
                # text, then its calls, then the end (plugin_api).
                data = await upstream.read(MAX_WHOLE_BODY)
                yield self.parse(UpstreamReply(upstream.status, upstream.headers, data), model)
                return
            if upstream.content_type not in ("text/event-stream", ""):
                raise upstream.refuse(await upstream.read(300), "an event stream")
            fold = self.fold(model, upstream.status)
            ended = False
            async with aclosing(iter_sse(upstream, provider=self.name)) as events:
                async for data in events:
                    # Chat Completions' end; a relay may add it to the other
                    # dialects' streams too.
                    if data == SSE_DONE:
                        ended = True
                        break
                    delta = fold.add(data)
                    if delta is not None:
                        yield delta
                    if fold.done:
                        break
            yield fold.result(done=ended)
            await upstream.drain()

    def classify(self, reply: UpstreamReply) -> ChatdError:
        return classify_error(
            reply,
            error_kinds=self.flavour.error_kinds,
            quota_phrases=self.flavour.quota_phrases,
            provider=self.name,
            key=self._key,
        )


class OpenAICompatProvider(FlavouredProvider):
    """One OpenAI-dialect upstream: ``POST {base_url}/chat/completions``.
    ``http``: a session shared with the provider that owns it (which then
    starts and closes it); else its own."""

    path = "/chat/completions"

    def __init__(
        self, ctx: ProviderContext, flavour: Flavour, *, http: HTTPClient | None = None
    ) -> None:
        super().__init__(ctx, auth=bearer, http=http)
        self.flavour = flavour
        self._options = options = options_as(ctx, OpenAICompatOptions)
        self._cap: CapField = options.cap_field or flavour.cap_field
        self.probe_path = options.probe_path
        self.probe_timeout = options.probe_timeout_secs

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        cap = request.max_tokens
        temperature = None if self._options.drop_temperature else request.temperature
        return _encode(
            _Body(
                model=model,
                messages=openai_messages(request.messages),
                stream=stream,
                stream_options=_StreamOptions() if stream else None,
                max_tokens=cap if self._cap == "max_tokens" else None,
                max_completion_tokens=cap if self._cap == "max_completion_tokens" else None,
                temperature=temperature,
                top_p=request.top_p,
                seed=request.seed,
                stop=request.stop or None,
                response_format=response_format(request.format),
                tools=request.tools,
                tool_choice=request.tool_choice,
                parallel_tool_calls=request.parallel_tool_calls,
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                logprobs=request.logprobs,
                top_logprobs=request.top_logprobs,
            )
        )

    def fold(self, model: str, status: int) -> ChunkFold:
        return ChunkFold(self.name, model, self._key, status=status)

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        data = decode_json(_completion_decoder, reply, self.name)
        # OpenRouter reports failures after the status is sent as a 200 with
        # an error object (top level or in the choice); never read as content.
        if data.error is not None:
            raise in_band_error(data.error, reply.status, self.name, self._key)
        if not data.choices:
            raise UpstreamBadResponse(
                f"{self.name} answered {reply.status} with no choices",
                provider=self.name,
                upstream_status=reply.status,
            )
        choice = data.choices[0]
        if choice.error is not None or choice.finish_reason == "error":
            raise in_band_error(choice.error, reply.status, self.name, self._key)
        if choice.message is None:
            raise UpstreamBadResponse(
                f"{self.name} answered {reply.status} with a choice that has no message",
                provider=self.name,
                upstream_status=reply.status,
            )
        usage = data.usage or choice.usage or Usage()
        message = choice.message
        calls = _tool_calls(message.tool_calls or [])
        return ChatResponse(
            model=data.model or model,
            provider=self.name,
            # null when the model only called tools.
            content=message.content or "",
            done_reason=answer_reason(choice.finish_reason, calls=bool(calls)),
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            reasoning=message.reasoning or message.reasoning_content or None,
            tool_calls=calls or None,
            logprobs=choice.logprobs.content if choice.logprobs else None,
        )


def _tool_calls(calls: list[_ReplyToolCall]) -> list[ToolCall]:
    return [
        ToolCall(
            id=c.id or mint_call_id(),
            function=FunctionCall(c.function.name, parse_arguments(c.function.arguments or "")),
        )
        for c in calls
        if c.function is not None
    ]
