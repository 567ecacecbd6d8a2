"""The Anthropic Messages client (``POST {base_url}/messages``), for any
upstream that speaks it: OpenCode Zen's Claude models, Kimi For Coding's
Anthropic-compatible endpoint. The facts it relies on are in
docs/protocols/anthropic-messages.md; how chatd's request maps is in
``anthropic_messages_request``, how the reply maps back in
``anthropic_messages_reply`` and ``anthropic_messages_stream``.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Literal

import msgspec

from lakehouse.errors import ChatdError, ConfigError
from lakehouse.upstreams.anthropic_messages_reply import parse_message
from lakehouse.upstreams.anthropic_messages_request import body as messages_body
from lakehouse.upstreams.anthropic_messages_stream import MessagesFold
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour, ProbePath
from lakehouse.upstreams.openai_chat_errors import classify_error
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

ANTHROPIC_VERSION = "2023-06-01"


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


_encode = msgspec.json.Encoder().encode


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
        return await self._http.probe(
            self._options.probe_path, self._options.probe_timeout_secs, self._auth
        )

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        return _encode(
            messages_body(
                request,
                model,
                stream=stream,
                default_max_tokens=self._options.default_max_tokens,
                provider=self.name,
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
                    # Not this protocol's ending; a relay may add it anyway.
                    if data == SSE_DONE:
                        break
                    delta = fold.add(data)
                    if delta is not None:
                        yield delta
                    if fold.done:
                        break
            yield fold.result()
            await upstream.drain()
