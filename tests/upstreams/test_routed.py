"""lakehouse/upstreams/routed.py: which endpoint a model's rule picks."""

from __future__ import annotations

from typing import Any

import pytest

from lakehouse import errors
from lakehouse.plugin_api import (
    ConfigError,
    EndpointRule,
    HTTPClient,
    ProviderContext,
    RoutedProvider,
)
from lakehouse.upstreams.routed import pick_rule

RULES = [
    EndpointRule(match="claude-haiku-3*", endpoint="chat_completions"),
    EndpointRule(match="claude-*", endpoint="messages"),
    EndpointRule(match="gpt-*", endpoint="responses"),
    EndpointRule(match="gemini-*", endpoint="refuse", family="Gemini"),
]


@pytest.mark.parametrize(
    ("model", "endpoint"),
    [
        ("claude-opus-4-7", "messages"),
        ("Claude-Sonnet-4-6", "messages"),
        # The first matching rule wins, so a narrower one goes first.
        ("claude-haiku-3-5", "chat_completions"),
        ("gpt-5.4", "responses"),
        ("gemini-3-pro", "refuse"),
        ("glm-5.2", "chat_completions"),
        ("my-gpt-5", "chat_completions"),
    ],
)
def test_first_matching_rule(model: str, endpoint: str) -> None:
    assert pick_rule(RULES, model).endpoint == endpoint


def make(clients: dict[str, Any]) -> RoutedProvider:
    http = HTTPClient(ProviderContext(name="zen", base_url="http://x.test", key="k", timeout=1))
    return RoutedProvider("zen", http, clients, RULES, gateway="Zen")  # type: ignore[arg-type]


def test_a_refused_family_is_a_400_naming_it() -> None:
    provider = make({"chat_completions": object(), "messages": object(), "responses": object()})
    with pytest.raises(errors.BadRequest, match="Zen serves Gemini models") as info:
        provider.client("gemini-3-pro")
    assert "zen/gemini-3-pro" in info.value.message


def test_a_rule_without_its_client_fails_at_build() -> None:
    with pytest.raises(ConfigError, match="responses"):
        make({"chat_completions": object(), "messages": object()})
