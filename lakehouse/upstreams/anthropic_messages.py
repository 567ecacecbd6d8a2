"""The Anthropic Messages client (``POST {base_url}/messages``), for any
upstream that speaks it: OpenCode Zen's Claude models, Kimi For Coding's
Anthropic-compatible endpoint. The facts it relies on are in
docs/protocols/anthropic-messages.md; how chatd's request maps is in
``anthropic_messages_request``, how the reply maps back in
``anthropic_messages_reply`` and ``anthropic_messages_stream``.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from lakehouse.upstreams.anthropic_messages_reply import parse_message
from lakehouse.upstreams.anthropic_messages_request import body as messages_body
from lakehouse.upstreams.anthropic_messages_stream import MessagesFold
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.event_stream import EventStreamProvider, keyed_options
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import Flavour, ProbePath
from lakehouse.wire import ChatRequest, ChatResponse

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


class AnthropicMessagesProvider(EventStreamProvider):
    """One Messages upstream. ``http``: a session shared with the provider
    that owns it (which then starts and closes it); else its own."""

    path = "/messages"

    def __init__(
        self, ctx: ProviderContext, flavour: Flavour, *, http: HTTPClient | None = None
    ) -> None:
        options, key = keyed_options(ctx, MessagesOptions)
        super().__init__(
            ctx,
            flavour,
            auth_headers(options, key),
            probe=(options.probe_path, options.probe_timeout_secs),
            http=http,
        )
        self._options = options

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

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        return parse_message(reply, model, self.name, self._key)

    def fold(self, model: str, status: int) -> MessagesFold:
        return MessagesFold(self.name, model, self._key, status=status)
