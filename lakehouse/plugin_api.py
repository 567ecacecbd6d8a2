"""The plugin API: the one module of chatd a provider plugin imports.

A plugin is a file in a plugin folder that defines ``PLUGIN = Plugin(...)``.
The registry finds the file named by a ``[chatd.providers.<name>]`` table,
checks ``PLUGIN``, decodes the table's ``options`` into the plugin's options
Struct, and calls ``build`` with a ``ProviderContext``. Any mistake stops
start-up with one line naming the provider.

``__all__`` is what a plugin needs to configure one of the shared clients
(see ``plugins/``); a plugin for a new wire protocol belongs with a new
client in ``lakehouse/upstreams/``, exported here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lakehouse.errors import BadRequest, ConfigError
from lakehouse.upstreams.anthropic_messages import AnthropicMessagesProvider, MessagesOptions
from lakehouse.upstreams.anthropic_messages_reply import ANTHROPIC_ERROR_KINDS
from lakehouse.upstreams.contract import PluginOptions, ProviderContext
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.ollama import (
    OllamaClient,
    OllamaGenerateBody,
    chat_body,
    runtime_options,
    think_value,
)
from lakehouse.upstreams.openai_chat import Flavour, OpenAICompatOptions, OpenAICompatProvider
from lakehouse.upstreams.openai_chat_errors import (
    OPENAI_ERROR_KINDS,
    OPENROUTER_ERROR_KINDS,
    QUOTA_PHRASES,
    ZEN_ERROR_KINDS,
)
from lakehouse.upstreams.openai_responses import OpenAIResponsesProvider, ResponsesOptions
from lakehouse.upstreams.provider import HTTPProvider, bearer
from lakehouse.upstreams.routed import EndpointRule, RoutedProvider
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta

__all__ = [  # noqa: RUF022 (grouped by what a plugin does with each, not sorted)
    # What a plugin file is and what it builds.
    "Plugin",
    "PluginOptions",
    "Provider",
    "ProviderContext",
    # chatd's own request and answer, as a provider receives and returns them.
    "ChatRequest",
    "ChatResponse",
    "Message",
    "StreamDelta",
    # What a plugin raises itself: a request it cannot serve, a bad option.
    "BadRequest",
    "ConfigError",
    # The shared clients a plugin configures. Any provider over HTTP, and
    # the session several clients of one upstream may share:
    "HTTPProvider",
    "bearer",
    "HTTPClient",
    # Ollama's native API (a subclass builds the path and the body):
    "OllamaClient",
    "chat_body",
    "OllamaGenerateBody",
    "runtime_options",
    "think_value",
    # OpenAI Chat Completions (a Flavour says what differs per upstream):
    "OpenAICompatProvider",
    "OpenAICompatOptions",
    "Flavour",
    "OPENAI_ERROR_KINDS",
    "OPENROUTER_ERROR_KINDS",
    "ZEN_ERROR_KINDS",
    "QUOTA_PHRASES",
    # Anthropic Messages and OpenAI Responses (configured with a Flavour too):
    "AnthropicMessagesProvider",
    "MessagesOptions",
    "ANTHROPIC_ERROR_KINDS",
    "OpenAIResponsesProvider",
    "ResponsesOptions",
    # One upstream, several endpoints: the first matching rule picks one.
    "RoutedProvider",
    "EndpointRule",
]


@runtime_checkable
class Provider(Protocol):
    """One configured upstream. ``model`` is the name as the upstream wants
    it: the routing prefix is already stripped."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse: ...

    def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        """The answer as it is generated (an ``async def`` with ``yield``):
        zero or more StreamDeltas, then exactly one ChatResponse: the answer
        as ``chat`` would have given it, except that after any StreamDelta
        its content, reasoning and logprobs may be left empty (the deltas
        carried them; the relay never sends them twice), so a stream need
        keep nothing of the text it has passed on.

        Failures before the first item are the errors ``chat`` raises, so a
        caller can still fall back or answer with a status; failures after
        it are ChatdErrors too (UpstreamError for an in-band upstream error,
        UpstreamBadResponse for a stream cut short, UpstreamTimeout when
        nothing arrives for ``timeout`` seconds). Closing the generator early
        (``aclose()``, cancellation) closes the upstream connection at once.
        A provider that cannot stream yields ``await self.chat(...)`` alone
        (as the built-ins do with an upstream that answered whole): the
        caller is sent its text, then its tool calls, then the end.
        """
        ...

    async def probe(self) -> bool:
        """A cheap health check; False (or an exception) means unhealthy.
        Providers with nothing free to ask return True."""
        ...


@dataclass(frozen=True)
class Plugin:
    build: Callable[[ProviderContext], Provider]
    default_base_url: str
    options: type[PluginOptions] = PluginOptions
    # A provider that needs a key and has none is not registered.
    needs_key: bool = False
    # The flavour of lakehouse.stubs that `chatd --dev` may serve in place of
    # this provider's upstream when it is the default and is not reachable.
    dev_stub: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.build):
            raise ConfigError("Plugin.build must be callable")
        if not (isinstance(self.options, type) and issubclass(self.options, PluginOptions)):
            raise ConfigError("Plugin.options must be a PluginOptions subclass")
