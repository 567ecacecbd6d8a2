"""Kimi For Coding through its Anthropic-compatible endpoint (the one Claude
Code uses), with the shared Anthropic Messages client.

Same subscription, key and base URL as the ``kimi`` plugin
(``https://api.kimi.com/coding/v1``; chatd appends ``/messages``); the key
goes in ``x-api-key`` (``options.auth = "bearer"`` sends it as a Bearer
token instead). The coding-agent gate and the User-Agent decision are as
in plugins/kimi.py: chatd sends no client identity of its own.

    [chatd.providers.kimi_claude]
    plugin = "kimi_anthropic"
    key_env = "KIMI_API_KEY"
"""

from __future__ import annotations

from lakehouse.plugin_api import (
    ANTHROPIC_ERROR_KINDS,
    OPENAI_ERROR_KINDS,
    QUOTA_PHRASES,
    AnthropicMessagesProvider,
    Flavour,
    MessagesOptions,
    Plugin,
    ProviderContext,
)

FLAVOUR = Flavour(
    # Kimi keeps its own type names inside Anthropic's envelope, where a 401
    # of an unknown type would not be read as a bad key.
    error_kinds={
        **OPENAI_ERROR_KINDS,
        **ANTHROPIC_ERROR_KINDS,
        "invalid_authentication_error": "auth",
    },
    # Kimi's billing-cycle limit says "Access terminated" (403).
    quota_phrases=(*QUOTA_PHRASES, "access terminated"),
)


def build(ctx: ProviderContext) -> AnthropicMessagesProvider:
    return AnthropicMessagesProvider(ctx, FLAVOUR)


PLUGIN = Plugin(
    build=build,
    default_base_url="https://api.kimi.com/coding/v1",
    options=MessagesOptions,
    needs_key=True,
)
