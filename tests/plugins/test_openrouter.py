"""plugins/openrouter.py: OpenRouter's defaults, headers and failure modes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lakehouse import errors
from tests import upstream_cases as cases
from tests.support import build_provider, chat_request

pytestmark = pytest.mark.anyio

KEY = "sk-or-v1-0123456789abcdef0123456789"
BASE = "https://openrouter.ai/api/v1"
URL = BASE + "/chat/completions"
ATTRIBUTION = {"HTTP-Referer": "https://lakehouse.example", "X-Title": "lakehouse"}


provider = cases.provider_fixture(
    lambda: build_provider("openrouter", BASE, key=KEY, headers=ATTRIBUTION)
)


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
    request = chat_request(max_tokens=100, temperature=0.2)
    return await cases.exchange(provider, URL, request, "anthropic/x:free", **reply)


def test_plugin_defaults() -> None:
    cases.keyed_plugin("openrouter", BASE)


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
    async with cases.started(build_provider("openrouter", BASE, key=KEY)) as p:
        _, sent = await call(p, payload=completion())
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
    "case",
    [
        cases.ErrorReply(
            400, or_error(400, "anthropic/x is not a valid model ID"), errors.UpstreamRejected
        ),
        cases.ErrorReply(401, or_error(401, "No auth credentials found"), errors.UpstreamAuth),
        cases.ErrorReply(
            402,
            or_error(402, "Insufficient credits", limit_source="openrouter_credits"),
            errors.UpstreamQuota,
        ),
        cases.ErrorReply(
            402,
            or_error(402, "Key limit exceeded", limit_source="openrouter_key_limit"),
            errors.UpstreamQuota,
        ),
        # The in-flight budget clears by itself and says when.
        cases.ErrorReply(
            402,
            or_error(402, "In-flight budget", limit_source="openrouter_in_flight_budget"),
            errors.UpstreamRateLimited,
            2.0,
            {"Retry-After": "2"},
        ),
        cases.ErrorReply(
            403,
            or_error(403, "Input flagged", reasons=["x"], flagged_input="..."),
            errors.UpstreamAuth,
        ),
        cases.ErrorReply(408, or_error(408, "Request timed out"), errors.UpstreamTimeout),
        cases.ErrorReply(
            429,
            or_error(429, "Rate limit exceeded"),
            errors.UpstreamRateLimited,
            4.0,
            {"Retry-After": "4"},
        ),
        cases.ErrorReply(429, or_error(429, "Rate limit exceeded"), errors.UpstreamRateLimited),
        cases.ErrorReply(
            502,
            or_error(
                502, "Provider returned error", provider_name="DeepInfra", raw="model overloaded"
            ),
            errors.UpstreamError,
        ),
        cases.ErrorReply(
            503,
            or_error(503, "No endpoints found"),
            errors.UpstreamError,
            10.0,
            {"Retry-After": "10"},
        ),
    ],
    ids=cases.error_id,
)
async def test_error_statuses(provider: Any, case: cases.ErrorReply) -> None:
    await case.check(call(provider, **case.reply), case.body["error"]["message"])


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
