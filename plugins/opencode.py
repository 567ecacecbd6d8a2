"""OpenCode Zen (and, by configuration, OpenCode Go): every model of the
catalogue, each on the endpoint Zen serves it on.

Zen serves Claude models only on ``/messages`` (Anthropic Messages), GPT-5
models only on ``/responses`` (OpenAI Responses), Gemini on Google's own
API, and the rest on ``/chat/completions`` (docs/protocols/opencode-zen.md).
The rule table in ``options.routes`` is checked first, then the defaults
below (unless ``default_routes = false``); a model no rule matches goes to
Chat Completions. Adding a family is one line of config:

    options = { routes = [{ match = "qwen3.7-*", endpoint = "messages" }] }

Gemini is refused with a 400 naming the family: chatd does not speak
Google's generateContent.

Zen's own errors use ``{"type":"error","error":{"type":<Class>,...}}`` on
every endpoint and answer 401 for spent credits and unknown models as well
as bad keys; the class, not the status, decides (``ZEN_ERROR_KINDS``).

OpenCode Go is the same gateway under ``https://opencode.ai/zen/go/v1``; it
refuses requests without an ``x-opencode-session`` header. A second table
with this plugin reaches it (see the README, "OpenCode Zen and Go").
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import msgspec

from lakehouse.plugin_api import (
    ANTHROPIC_ERROR_KINDS,
    ZEN_ERROR_KINDS,
    AnthropicMessagesProvider,
    EndpointRule,
    Flavour,
    HTTPClient,
    MessagesOptions,
    OpenAICompatOptions,
    OpenAICompatProvider,
    OpenAIResponsesProvider,
    Plugin,
    ProviderContext,
    ResponsesOptions,
    RoutedProvider,
)

FLAVOUR = Flavour(cap_field="max_tokens", error_kinds=ZEN_ERROR_KINDS)
# Zen relays Anthropic's own errors on /messages, beside its own classes.
MESSAGES_FLAVOUR = Flavour(error_kinds={**ANTHROPIC_ERROR_KINDS, **ZEN_ERROR_KINDS})

DEFAULT_ROUTES = (
    EndpointRule(match="claude-*", endpoint="messages"),
    EndpointRule(match="gpt-*", endpoint="responses"),
    EndpointRule(match="gemini-*", endpoint="refuse", family="Gemini"),
)


class ZenOptions(OpenAICompatOptions):
    # Checked in order before the defaults; the first match wins.
    routes: list[EndpointRule] = msgspec.field(default_factory=list)
    default_routes: bool = True
    # Messages requires max_tokens; sent when the caller gives none.
    messages_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096


def build(ctx: ProviderContext) -> RoutedProvider:
    options = ctx.options if ctx.options is not None else ZenOptions()
    http = HTTPClient(ctx)
    chat = OpenAICompatProvider(ctx, FLAVOUR, http=http)
    messages = AnthropicMessagesProvider(
        dataclasses.replace(
            ctx, options=MessagesOptions(default_max_tokens=options.messages_max_tokens)
        ),
        MESSAGES_FLAVOUR,
        http=http,
    )
    responses = OpenAIResponsesProvider(
        dataclasses.replace(ctx, options=ResponsesOptions()), FLAVOUR, http=http
    )
    rules = [*options.routes, *(DEFAULT_ROUTES if options.default_routes else ())]
    return RoutedProvider(
        ctx.name,
        http,
        {"chat_completions": chat, "messages": messages, "responses": responses},
        rules,
        gateway="OpenCode Zen",
    )


PLUGIN = Plugin(
    build=build,
    default_base_url="https://opencode.ai/zen/v1",
    options=ZenOptions,
    needs_key=True,
)
