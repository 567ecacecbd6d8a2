"""The Anthropic Messages client (``POST {base_url}/messages``), for any
upstream that speaks it: OpenCode Zen's Claude models, Kimi For Coding's
Anthropic-compatible endpoint. The facts it relies on are in
docs/protocols/anthropic-messages.md.

What differs from Chat Completions, and how chatd's request maps:
- system messages go to the top-level ``system`` (joined in order);
- ``max_tokens`` is required: the request's, else ``default_max_tokens``;
- ``stop`` becomes ``stop_sequences``; there is no ``seed`` (dropped);
- there is no JSON mode: ``format`` becomes an instruction appended to
  ``system`` (a deviation, named in the README);
- ``think`` becomes ``thinking: {type: enabled, budget_tokens}``, whose
  budget must be at least 1024 and below ``max_tokens``; Anthropic refuses
  ``temperature``/``top_p`` with thinking on, so they are dropped then.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import msgspec

from lakehouse.errors import BadRequest, ChatdError, ConfigError
from lakehouse.upstreams.anthropic_messages_reply import parse_message
from lakehouse.upstreams.anthropic_messages_stream import MessagesFold
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour, ProbePath
from lakehouse.upstreams.openai_chat_errors import classify_error
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

ANTHROPIC_VERSION = "2023-06-01"
# Thinking budgets per level; Anthropic's minimum is 1024.
THINK_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "max": 32000}
MIN_THINK_BUDGET = 1024
JSON_INSTRUCTION = "Respond with one JSON object and nothing else: no prose, no code fence."


class MessagesOptions(PluginOptions):
    """Options of a Messages upstream (``[chatd.providers.<name>.options]``)."""

    # Sent when the caller gives no max_tokens: Messages requires one.
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096
    # Anthropic's own API and Zen read ``x-api-key``; some compatible
    # endpoints want ``Authorization: Bearer`` instead.
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    anthropic_version: str = ANTHROPIC_VERSION
    probe_path: ProbePath = ""
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class _Message(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str


class _Thinking(msgspec.Struct):
    budget_tokens: int
    type: str = "enabled"


class _Body(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[_Message]
    max_tokens: int
    stream: bool
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    thinking: _Thinking | None = None


_encode = msgspec.json.Encoder().encode


def _format_instruction(fmt: Literal["json"] | dict[str, Any] | None) -> str | None:
    if fmt is None:
        return None
    if fmt == "json":
        return JSON_INSTRUCTION
    return f"{JSON_INSTRUCTION} It must follow this JSON Schema: {json.dumps(fmt)}"


def thinking(think: bool | str | None, max_tokens: int) -> _Thinking | None:
    """The thinking block for ``think``; None when off, or when ``max_tokens``
    leaves no room for the 1024-token minimum budget."""
    if think is None or think is False:
        return None
    budget = THINK_BUDGETS["medium" if think is True else str(think)]
    budget = min(budget, max_tokens - 1)
    return _Thinking(budget) if budget >= MIN_THINK_BUDGET else None


def auth_headers(options: MessagesOptions, key: str) -> dict[str, str]:
    headers = {"anthropic-version": options.anthropic_version}
    if options.auth == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    else:
        headers["x-api-key"] = key
    return headers


class AnthropicMessagesProvider:
    """One Messages upstream. ``http``: a session shared with the provider
    that owns it (which then starts and closes it); else its own."""

    path = "/messages"

    def __init__(
        self, ctx: ProviderContext, flavour: Flavour, *, http: HTTPClient | None = None
    ) -> None:
        if not ctx.key:
            raise ConfigError("this provider needs a key")
        options = ctx.options if ctx.options is not None else MessagesOptions()
        if not isinstance(options, MessagesOptions):
            raise ConfigError("options must be a MessagesOptions")
        self.name = ctx.name
        self.flavour = flavour
        self._options = options
        self._key = ctx.key
        self._auth = auth_headers(options, ctx.key)
        self._http = http or HTTPClient(ctx)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        return await self._http.probe(self._options.probe_path, self._options.probe_timeout_secs)

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        system: list[str] = []
        turns: list[_Message] = []
        for message in request.messages:
            if message.role == "system":
                system.append(message.content)
            elif message.role == "assistant":
                turns.append(_Message("assistant", message.content))
            else:
                # A tool result without the tool-call model is the user's text.
                turns.append(_Message("user", message.content))
        if not turns:
            raise BadRequest(
                f"{self.name}: the Messages API needs a user or assistant message, "
                "not only system ones",
                provider=self.name,
            )
        instruction = _format_instruction(request.format)
        if instruction:
            system.append(instruction)
        cap = request.max_tokens or self._options.default_max_tokens
        think = thinking(request.think, cap)
        return _encode(
            _Body(
                model=model,
                messages=turns,
                max_tokens=cap,
                stream=stream,
                system="\n\n".join(system) or None,
                temperature=None if think else request.temperature,
                top_p=None if think else request.top_p,
                stop_sequences=request.stop or None,
                thinking=think,
            )
        )

    def classify(self, reply: UpstreamReply) -> ChatdError:
        return classify_error(
            reply,
            error_kinds=self.flavour.error_kinds,
            quota_phrases=self.flavour.quota_phrases,
            provider=self.name,
            key=self._key,
        )

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        reply = await self._http.post_json(self.path, self.body(request, model), self._auth)
        if not 200 <= reply.status < 300:
            raise self.classify(reply)
        return parse_message(reply, model, self.name, self._key)

    async def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        body = self.body(request, model, stream=True)
        async with self._http.stream_post(
            self.path, body, self._auth, error=self.classify
        ) as upstream:
            if upstream.content_type == "application/json":
                # An upstream (or proxy) that ignored "stream" answers whole.
                data = await upstream.read(MAX_WHOLE_BODY)
                reply = UpstreamReply(upstream.status, upstream.headers, data)
                whole = parse_message(reply, model, self.name, self._key)
                if whole.content or whole.reasoning:
                    yield StreamDelta(whole.content, whole.reasoning or "")
                yield whole
                return
            if upstream.content_type not in ("text/event-stream", ""):
                raise upstream.refuse(await upstream.read(300), "an event stream")
            fold = MessagesFold(self.name, model, self._key, status=upstream.status)
            async with aclosing(iter_sse(upstream, provider=self.name)) as events:
                async for data in events:
                    delta = fold.add(data)
                    if delta is not None:
                        yield delta
                    if fold.done:
                        break
            yield fold.result()
            await upstream.drain()
