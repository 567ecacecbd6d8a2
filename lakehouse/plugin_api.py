"""The plugin API: the one module of chatd a provider plugin imports.

A plugin is a file in a plugin folder that defines ``PLUGIN = Plugin(...)``.
The registry finds the file named by a ``[chatd.providers.<name>]`` table,
checks ``PLUGIN``, decodes the table's ``options`` into the plugin's options
Struct, and calls ``build`` with a ``ProviderContext``. Any mistake stops
start-up with one line naming the provider.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lakehouse.errors import (
    BadRequest,
    ChatdError,
    ConfigError,
    UpstreamAuth,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from lakehouse.upstreams.anthropic_messages import AnthropicMessagesProvider, MessagesOptions
from lakehouse.upstreams.anthropic_messages_reply import ANTHROPIC_ERROR_KINDS
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.failures import (
    decode_json,
    error_for_status,
    parse_retry_after,
    short_text,
)
from lakehouse.upstreams.framing import SSE_DONE, iter_ndjson, iter_sse
from lakehouse.upstreams.http import HTTPClient, UpstreamStream
from lakehouse.upstreams.ollama import (
    OLLAMA_QUOTA_PHRASES,
    OllamaChatBody,
    OllamaGenerateBody,
    OllamaReply,
    OllamaReplyMessage,
    OllamaRuntimeOptions,
    chat_body,
    ollama_error,
    ollama_reply_decoder,
    ollama_response,
    ollama_stream,
    runtime_options,
    think_value,
)
from lakehouse.upstreams.openai_chat import Flavour, OpenAICompatOptions, OpenAICompatProvider
from lakehouse.upstreams.openai_chat_errors import (
    OPENAI_ERROR_KINDS,
    OPENROUTER_ERROR_KINDS,
    QUOTA_PHRASES,
    ZEN_ERROR_KINDS,
    redact_key,
)
from lakehouse.upstreams.openai_responses import OpenAIResponsesProvider, ResponsesOptions
from lakehouse.upstreams.routed import EndpointRule, RoutedProvider
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta

__all__ = [
    "ANTHROPIC_ERROR_KINDS",
    "OLLAMA_QUOTA_PHRASES",
    "OPENAI_ERROR_KINDS",
    "OPENROUTER_ERROR_KINDS",
    "QUOTA_PHRASES",
    "SSE_DONE",
    "ZEN_ERROR_KINDS",
    "AnthropicMessagesProvider",
    "BadRequest",
    "ChatRequest",
    "ChatResponse",
    "ChatdError",
    "ConfigError",
    "EndpointRule",
    "Flavour",
    "HTTPClient",
    "Message",
    "MessagesOptions",
    "OllamaChatBody",
    "OllamaGenerateBody",
    "OllamaReply",
    "OllamaReplyMessage",
    "OllamaRuntimeOptions",
    "OpenAICompatOptions",
    "OpenAICompatProvider",
    "OpenAIResponsesProvider",
    "Plugin",
    "PluginOptions",
    "Provider",
    "ProviderContext",
    "ResponsesOptions",
    "RoutedProvider",
    "StreamDelta",
    "UpstreamAuth",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamQuota",
    "UpstreamRateLimited",
    "UpstreamRedirect",
    "UpstreamRejected",
    "UpstreamReply",
    "UpstreamStream",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "chat_body",
    "decode_json",
    "error_for_status",
    "iter_ndjson",
    "iter_sse",
    "ollama_error",
    "ollama_reply_decoder",
    "ollama_response",
    "ollama_stream",
    "parse_retry_after",
    "redact_key",
    "runtime_options",
    "short_text",
    "think_value",
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
        zero or more StreamDeltas, then exactly one ChatResponse holding the
        whole text, as ``chat`` would have answered.

        Failures before the first item are the errors ``chat`` raises, so a
        caller can still fall back or answer with a status; failures after
        it are ChatdErrors too (UpstreamError for an in-band upstream error,
        UpstreamBadResponse for a stream cut short, UpstreamTimeout when
        nothing arrives for ``timeout`` seconds). Closing the generator early
        (``aclose()``, cancellation) closes the upstream connection at once.
        A provider that cannot stream yields ``await self.chat(...)`` alone.
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
