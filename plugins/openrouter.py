"""OpenRouter, through the shared OpenAI Chat Completions client.

OpenRouter documents ``max_tokens``. Attribution headers (``HTTP-Referer``,
``X-Title``) are optional and come from the provider table's ``headers``:
they name the operator's own app, so chatd ships none. Its 402s say which
limit was hit in ``metadata.limit_source``, and failures after the status
was sent arrive as a 200 with an ``error`` object; the shared client reads both.
"""

from __future__ import annotations

from lakehouse.plugin_api import (
    OPENROUTER_ERROR_KINDS,
    Flavour,
    OpenAICompatOptions,
    OpenAICompatProvider,
    Plugin,
    ProviderContext,
)

FLAVOUR = Flavour(cap_field="max_tokens", error_kinds=OPENROUTER_ERROR_KINDS)


def build(ctx: ProviderContext) -> OpenAICompatProvider:
    return OpenAICompatProvider(ctx, FLAVOUR)


PLUGIN = Plugin(
    build=build,
    default_base_url="https://openrouter.ai/api/v1",
    options=OpenAICompatOptions,
    needs_key=True,
)
