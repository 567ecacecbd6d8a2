"""lakehouse/upstreams/event_stream.py: the part the Messages and Responses
clients share, driven through both (their dialect details are in
test_anthropic_messages.py and test_openai_responses.py)."""

from __future__ import annotations

from typing import Any

import pytest

from lakehouse.errors import ConfigError
from lakehouse.plugin_api import (
    AnthropicMessagesProvider,
    Flavour,
    MessagesOptions,
    OpenAIResponsesProvider,
    ProviderContext,
    ResponsesOptions,
)
from lakehouse.upstreams.event_stream import EventStreamProvider, keyed_options

KINDS: list[tuple[type[EventStreamProvider], Any]] = [
    (AnthropicMessagesProvider, MessagesOptions),
    (OpenAIResponsesProvider, ResponsesOptions),
]


@pytest.mark.parametrize(("provider", "options"), KINDS)
def test_a_key_and_the_dialects_options_are_required(provider: Any, options: Any) -> None:
    base = {"name": "p", "base_url": "https://up.test/v1", "timeout": 5}
    with pytest.raises(ConfigError, match="needs a key"):
        provider(ProviderContext(**base, key=None), Flavour())
    other = ResponsesOptions() if options is MessagesOptions else MessagesOptions()
    with pytest.raises(ConfigError, match=f"must be a {options.__name__}"):
        provider(ProviderContext(**base, key="k", options=other), Flavour())
    made = provider(ProviderContext(**base, key="k"), Flavour())
    assert isinstance(made, EventStreamProvider)


def test_keyed_options_default_when_none_given() -> None:
    ctx = ProviderContext(name="p", base_url="https://up.test", timeout=5, key="k")
    options, key = keyed_options(ctx, MessagesOptions)
    assert (options, key) == (MessagesOptions(), "k")
