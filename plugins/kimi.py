"""Kimi For Coding (the Kimi Code subscription), through the shared OpenAI
Chat Completions client.

The cap is ``max_completion_tokens``, as Moonshot documents it; reasoning
arrives in ``reasoning_content`` and counts against the cap, so a small
budget can end with empty content and ``done_reason`` "length".

Client identity: Kimi For Coding serves only allow-listed coding agents and
answers anything else with 403 ``access_terminated_error``; the gate reads
the ``User-Agent``. chatd ships no default User-Agent, because sending
another vendor's client name is impersonation, and Kimi's terms treat that
kind of spoofing as tampering that may get the seat suspended. Whether and
what to send is the operator's decision, made in the provider table's
``headers`` (for example ``headers = { "User-Agent" = "..." }``).

Options worth knowing here: ``drop_temperature = true`` for K2.5+ models,
which answer 400 "invalid temperature: only 1 is allowed" to any other value.
It is off by default so that models which do accept temperature get it.
"""

from __future__ import annotations

from lakehouse.plugin_api import (
    OPENAI_ERROR_KINDS,
    QUOTA_PHRASES,
    Flavour,
    OpenAICompatOptions,
    OpenAICompatProvider,
    Plugin,
    ProviderContext,
)

FLAVOUR = Flavour(
    cap_field="max_completion_tokens",
    error_kinds=OPENAI_ERROR_KINDS,
    # Kimi's error reference lists "Access terminated" with the billing-cycle
    # usage limit (403); the coding-agent gate says "only available for Coding
    # Agents" instead, so the two stay apart.
    quota_phrases=(*QUOTA_PHRASES, "access terminated"),
)


def build(ctx: ProviderContext) -> OpenAICompatProvider:
    return OpenAICompatProvider(ctx, FLAVOUR)


PLUGIN = Plugin(
    build=build,
    default_base_url="https://api.kimi.com/coding/v1",
    options=OpenAICompatOptions,
    needs_key=True,
)
