"""plugins/opencode.py: OpenCode Zen's defaults and its own error classes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.errors import ConfigError
from lakehouse.registry import build_registry
from tests import upstream_cases as cases
from tests.support import build_provider, chat_request, make_config, mock_upstream

pytestmark = pytest.mark.anyio

KEY = "zen-key-0123456789abcdef0123"
BASE = "https://opencode.ai/zen/v1"
URL = BASE + "/chat/completions"


provider = cases.provider_fixture(lambda: build_provider("opencode", BASE, key=KEY))


def completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "glm-5.2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
        # Zen appends its own cost to non-streamed replies.
        "cost": "0.0012",
    }


async def call(provider: Any, **reply: Any) -> tuple[Any, Any]:
    request = chat_request(max_tokens=50, format="json")
    return await cases.exchange(provider, URL, request, "glm-5.2", **reply)


def test_plugin_defaults() -> None:
    cases.keyed_plugin("opencode", BASE)


async def test_request_and_reply(provider: Any) -> None:
    out, sent = await call(provider, payload=completion(reasoning_content="relayed thoughts"))
    assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.kwargs["data"]) == {
        "model": "glm-5.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }
    assert (out.content, out.reasoning, out.model) == ("Hi!", "relayed thoughts", "glm-5.2")
    assert (out.prompt_tokens, out.completion_tokens) == (4, 2)


def zen(cls: str, message: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": cls, "message": message or f"{cls} happened"}}


@pytest.mark.parametrize(
    "case",
    [
        cases.ErrorReply(401, zen("AuthError"), errors.UpstreamAuth),
        # Zen's 401s that are not about the key.
        cases.ErrorReply(401, zen("CreditsError"), errors.UpstreamQuota),
        cases.ErrorReply(401, zen("MonthlyLimitError"), errors.UpstreamQuota),
        cases.ErrorReply(401, zen("UserLimitError"), errors.UpstreamQuota),
        cases.ErrorReply(401, zen("ModelError"), errors.UpstreamRejected),
        # A class Zen adds later is not proof of a dead key.
        cases.ErrorReply(401, zen("SomeNewError"), errors.UpstreamError),
        cases.ErrorReply(403, zen("RegionError"), errors.UpstreamAuth),
        cases.ErrorReply(
            429,
            zen("RateLimitError"),
            errors.UpstreamRateLimited,
            30.0,
            {"retry-after": "30"},
        ),
        cases.ErrorReply(429, zen("RateLimitError"), errors.UpstreamRateLimited),
        cases.ErrorReply(
            429,
            zen("FreeUsageLimitError"),
            errors.UpstreamQuota,
            3600.0,
            {"retry-after": "3600"},
        ),
        cases.ErrorReply(429, zen("GoUsageLimitError"), errors.UpstreamQuota),
        cases.ErrorReply(429, zen("BlackUsageLimitError"), errors.UpstreamQuota),
        cases.ErrorReply(500, zen("error"), errors.UpstreamError),
    ],
    ids=cases.error_id,
)
async def test_zen_error_classes(provider: Any, case: cases.ErrorReply) -> None:
    await case.check(call(provider, **case.reply), case.body["error"]["message"])


async def test_relayed_upstream_errors_keep_their_shape(provider: Any) -> None:
    # Zen rewrites a routed upstream's 404 to 400 and prefixes the message.
    body = {
        "error": {
            "message": "Error from provider (fireworks): model not found",
            "type": "invalid_request_error",
        }
    }
    with pytest.raises(errors.UpstreamRejected, match="Error from provider"):
        await call(provider, status=400, payload=body)


async def test_relayed_openrouter_style_error(provider: Any) -> None:
    body = {"error": {"code": 429, "message": "Error from provider (x): busy", "metadata": {}}}
    with pytest.raises(errors.UpstreamRateLimited, match="busy"):
        await call(provider, status=429, payload=body)


async def test_zen_auth_error_quoting_the_key_is_redacted(provider: Any) -> None:
    with pytest.raises(errors.UpstreamAuth) as info:
        await call(provider, status=401, payload=zen("AuthError", f"Invalid API key {KEY}."))
    assert KEY not in str(info.value)


# -- the endpoint rule table ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("claude-opus-4-7", "/messages"),
        ("gpt-5.4", "/responses"),
        ("glm-5.2", "/chat/completions"),
        ("minimax-m3-x", "/messages"),
    ],
)
async def test_rules_pick_the_path(model: str, path: str) -> None:
    p = build_provider(
        "opencode", BASE, key=KEY, routes=[{"match": "minimax-m3-*", "endpoint": "messages"}]
    )
    async with cases.started(p):
        reply = (
            {
                "type": "message",
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
            }
            if path == "/messages"
            else {
                "status": "completed",
                "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
            }
            if path == "/responses"
            else completion(content="ok")
        )
        with mock_upstream() as mock:
            mock.post(BASE + path, payload=reply)
            out = await p.chat(chat_request(), model)
        assert out.content == "ok"


async def test_default_routes_can_be_switched_off() -> None:
    p = build_provider("opencode", BASE, key=KEY, default_routes=False)
    async with cases.started(p):
        out, _ = await cases.exchange(
            p, URL, chat_request(), "claude-opus-4-7", payload=completion()
        )
    assert out.content == "Hi!"


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        ("[{ match = 'x-*', endpoint = 'smoke-signals' }]", "options.routes[0].endpoint"),
        ("[{ match = 'x-*', endpoint = 'messages', colour = 'red' }]", "colour"),
        ("[{ endpoint = 'messages' }]", "match"),
    ],
)
def test_a_bad_rule_stops_start_up_naming_it(routes: str, needle: str) -> None:
    text = f'[chatd.providers.opencode]\nkey_env = "K"\noptions = {{ routes = {routes} }}\n'
    with pytest.raises(ConfigError) as info:
        build_registry(make_config(text), {"K": KEY})
    assert "chatd.providers.opencode" in str(info.value) and needle in str(info.value)


async def test_probe_carries_the_key_on_the_shared_session() -> None:
    p = build_provider("opencode", BASE, key=KEY, probe_path="/models")
    async with cases.started(p):
        with mock_upstream() as mock:
            mock.get(BASE + "/models", payload={"object": "list", "data": []})
            assert await p.probe() is True
            sent = cases.only_request(mock)
    assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
