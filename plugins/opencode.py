"""OpenCode Zen, through the shared OpenAI Chat Completions client.

Only some Zen models speak Chat Completions (open-weight ones such as
``glm-5.2`` or ``kimi-k2.6``); GPT, Claude and Gemini models live on other
Zen paths and are not reachable through this provider. Zen passes the body
through, so the cap is ``max_tokens`` as its routed upstreams document.

Zen's own errors use ``{"type":"error","error":{"type":<Class>,...}}`` and
answer 401 for spent credits and unknown models as well as bad keys; the
class, not the status, decides (see ``ZEN_ERROR_KINDS``).
"""

from __future__ import annotations

from lakehouse.plugin_api import (
    ZEN_ERROR_KINDS,
    Flavour,
    OpenAICompatOptions,
    OpenAICompatProvider,
    Plugin,
    ProviderContext,
)

FLAVOUR = Flavour(cap_field="max_tokens", error_kinds=ZEN_ERROR_KINDS)


def build(ctx: ProviderContext) -> OpenAICompatProvider:
    return OpenAICompatProvider(ctx, FLAVOUR)


PLUGIN = Plugin(
    build=build,
    default_base_url="https://opencode.ai/zen/v1",
    options=OpenAICompatOptions,
    needs_key=True,
)
