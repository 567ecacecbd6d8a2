"""What the Anthropic Messages and OpenAI Responses clients share beyond
``FlavouredProvider`` (which posts, relays an SSE stream through a dialect's
fold and classifies errors for every SSE dialect, Chat Completions too): a
key that must be there, fixed auth headers, a probe path. A dialect supplies
its path, body, whole-reply parser and fold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from lakehouse.errors import ConfigError
from lakehouse.upstreams.contract import PluginOptions, ProviderContext
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import Flavour, FlavouredProvider
from lakehouse.upstreams.provider import options_as

Options = TypeVar("Options", bound=PluginOptions)


def keyed_options(ctx: ProviderContext, kind: type[Options]) -> tuple[Options, str]:
    """The provider's options (defaults when none) and its key, for a
    dialect that needs one; ConfigError otherwise."""
    if not ctx.key:
        raise ConfigError("this provider needs a key")
    return options_as(ctx, kind), ctx.key


class EventStreamProvider(FlavouredProvider):
    """One upstream of an SSE dialect. ``http``: a session shared with the
    provider that owns it (which then starts and closes it); else its own."""

    path = ""

    def __init__(
        self,
        ctx: ProviderContext,
        flavour: Flavour,
        auth: Mapping[str, str],
        *,
        probe: tuple[str, float],
        http: HTTPClient | None = None,
    ) -> None:
        # The auth headers go in an own session, or with each request on a
        # shared one (HTTPProvider).
        super().__init__(ctx, auth=lambda key: auth, http=http)
        self.flavour = flavour
        self.probe_path, self.probe_timeout = probe

    # A dialect supplies body, parse and fold (FlavouredProvider's).
