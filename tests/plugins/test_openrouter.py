"""plugins/openrouter.py: OpenRouter's defaults, headers and failure modes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lakehouse import errors
from tests.support import build_provider, builtin_plugin, chat_request, mock_upstream

pytestmark = pytest.mark.anyio

KEY = "sk-or-v1-0123456789abcdef0123456789"
BASE = "https://openrouter.ai/api/v1"
URL = BASE + "/chat/completions"
ATTRIBUTION = {"HTTP-Referer": "https://lakehouse.example", "X-Title": "lakehouse"}


@pytest.fixture
async def provider() -> AsyncIterator[Any]:
    p = build_provider("openrouter", BASE, key=KEY, headers=ATTRIBUTION)
    await p.start()
    yield p
    await p.close()


def completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "provider": "Anthropic",
        "model": "anthropic/claude-opus-4-7",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", **message},
                "finish_reason": "stop",
                "native_finish_reason": "end_turn",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "cost": 0.0001},
    }


async def call(provider: Any, **reply: Any) -> tuple[Any, Any]:
    with mock_upstream() as mock:
        mock.post(URL, **reply)
        out = await provider.chat(chat_request(max_tokens=100, temperature=0.2), "anthropic/x:free")
        (sent,) = [c for cs in mock.requests.values() for c in cs]
        return out, sent


def test_plugin_defaults() -> None:
    plugin = builtin_plugin("openrouter")
    assert plugin.default_base_url == BASE
    assert plugin.needs_key is True


async def test_request_uses_max_tokens_and_operator_headers(provider: Any) -> None:
    out, sent = await call(provider, payload=completion())
    headers = sent.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["HTTP-Referer"] == "https://lakehouse.example"
    assert headers["X-Title"] == "lakehouse"
    assert json.loads(sent.kwargs["data"]) == {
        "model": "anthropic/x:free",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "max_tokens": 100,
        "temperature": 0.2,
    }
    assert (out.content, out.prompt_tokens, out.completion_tokens) == ("Hi!", 5, 2)


async def test_no_attribution_headers_unless_configured() -> None:
    p = build_provider("openrouter", BASE, key=KEY)
    await p.start()
    _, sent = await call(p, payload=completion())
    await p.close()
    assert "HTTP-Referer" not in sent.kwargs["headers"]
    assert "X-Title" not in sent.kwargs["headers"]


async def test_reasoning_field_is_separate(provider: Any) -> None:
    out, _ = await call(
        provider,
        payload=completion(
            reasoning="thinking...", reasoning_details=[{"type": "reasoning.text", "text": "t"}]
        ),
    )
    assert (out.content, out.reasoning) == ("Hi!", "thinking...")


def or_error(code: int, message: str, **metadata: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "metadata": metadata}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "retry_after"),
    [
        (
            400,
            or_error(400, "anthropic/x is not a valid model ID"),
            {},
            errors.UpstreamRejected,
            None,
        ),
        (401, or_error(401, "No auth credentials found"), {}, errors.UpstreamAuth, None),
        (
            402,
            or_error(402, "Insufficient credits", limit_source="openrouter_credits"),
            {},
            errors.UpstreamQuota,
            None,
        ),
        (
            402,
            or_error(402, "Key limit exceeded", limit_source="openrouter_key_limit"),
            {},
            errors.UpstreamQuota,
            None,
        ),
        # The in-flight budget clears by itself and says when.
        (
            402,
            or_error(402, "In-flight budget", limit_source="openrouter_in_flight_budget"),
            {"Retry-After": "2"},
            errors.UpstreamRateLimited,
            2.0,
        ),
        (
            403,
            or_error(403, "Input flagged", reasons=["x"], flagged_input="..."),
            {},
            errors.UpstreamAuth,
            None,
        ),
        (408, or_error(408, "Request timed out"), {}, errors.UpstreamTimeout, None),
        (
            429,
            or_error(429, "Rate limit exceeded"),
            {"Retry-After": "4"},
            errors.UpstreamRateLimited,
            4.0,
        ),
        (429, or_error(429, "Rate limit exceeded"), {}, errors.UpstreamRateLimited, None),
        (
            502,
            or_error(
                502, "Provider returned error", provider_name="DeepInfra", raw="model overloaded"
            ),
            {},
            errors.UpstreamError,
            None,
        ),
        (
            503,
            or_error(503, "No endpoints found"),
            {"Retry-After": "10"},
            errors.UpstreamError,
            10.0,
        ),
    ],
)
async def test_error_statuses(
    provider: Any,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    error: type[errors.ChatdError],
    retry_after: float | None,
) -> None:
    with pytest.raises(errors.ChatdError) as info:
        await call(provider, status=status, payload=body, headers=headers)
    assert type(info.value) is error
    assert info.value.upstream_status == status
    assert info.value.retry_after == retry_after
    assert body["error"]["message"] in info.value.message


async def test_relayed_raw_error_is_shown(provider: Any) -> None:
    body = or_error(502, "Provider returned error", provider_name="DeepInfra", raw="overloaded")
    with pytest.raises(errors.UpstreamError, match="via DeepInfra: overloaded"):
        await call(provider, status=502, payload=body)


async def test_error_after_status_sent_arrives_as_200(provider: Any) -> None:
    # What OpenRouter sends once a 200 is committed: a top-level error whose
    # code is a string, and a choice that finished with "error".
    data = completion()
    data["error"] = {"code": "server_error", "message": "Provider disconnected unexpectedly"}
    data["choices"][0]["finish_reason"] = "error"
    with pytest.raises(errors.UpstreamError, match="Provider disconnected") as info:
        await call(provider, payload=data)
    assert info.value.upstream_status == 200
    assert info.value.retryable


async def test_choice_error_without_top_level_error(provider: Any) -> None:
    data = completion()
    data["choices"][0]["error"] = {"code": 502, "message": "upstream died"}
    data["choices"][0]["finish_reason"] = "error"
    with pytest.raises(errors.UpstreamError, match="upstream died"):
        await call(provider, payload=data)


async def test_html_from_the_edge_is_bad_response(provider: Any) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="text/html"):
        await call(provider, body="<!DOCTYPE html><html>cf</html>", content_type="text/html")


async def test_key_quoted_back_is_redacted(provider: Any) -> None:
    with pytest.raises(errors.UpstreamAuth) as info:
        await call(provider, status=401, payload=or_error(401, f"Invalid key {KEY}"))
    assert KEY not in str(info.value)
    assert "[redacted]" in str(info.value)
