"""plugins/kimi.py: Kimi For Coding's cap field, reasoning, client gate and
documented error strings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.wire import ChatRequest
from tests import upstream_cases as cases
from tests.support import build_provider, chat_request

pytestmark = pytest.mark.anyio

KEY = "sk-kimi-0123456789abcdef0123456789"
BASE = "https://api.kimi.com/coding/v1"
URL = BASE + "/chat/completions"


provider = cases.provider_fixture(lambda: build_provider("kimi", BASE, key=KEY))


def completion(content: str | None = "Hi!", finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "kimi-for-coding",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **extra},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 10},
    }


async def call(provider: Any, req: ChatRequest | None = None, **reply: Any) -> tuple[Any, Any]:
    return await cases.exchange(provider, URL, req or chat_request(), "kimi-for-coding", **reply)


def test_plugin_defaults() -> None:
    cases.keyed_plugin("kimi", BASE)


async def test_cap_is_max_completion_tokens_and_no_client_impersonation(provider: Any) -> None:
    _, sent = await call(
        provider, chat_request(max_tokens=10, temperature=1.0), payload=completion()
    )
    body = json.loads(sent.kwargs["data"])
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body
    assert body["temperature"] == 1.0
    assert body["stream"] is False
    headers = sent.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    # No shipped default that claims to be another vendor's client.
    assert "User-Agent" not in headers
    assert not any(k.lower().startswith("x-msh-") for k in headers)


async def test_operator_chosen_user_agent_is_sent() -> None:
    p = build_provider("kimi", BASE, key=KEY, headers={"User-Agent": "lakehouse-chatd/1"})
    async with cases.started(p):
        _, sent = await call(p, payload=completion())
    assert sent.kwargs["headers"]["User-Agent"] == "lakehouse-chatd/1"


async def test_drop_temperature_for_fixed_sampling_models() -> None:
    async with cases.started(build_provider("kimi", BASE, key=KEY, drop_temperature=True)) as p:
        _, sent = await call(p, chat_request(temperature=0.5), payload=completion())
    assert "temperature" not in json.loads(sent.kwargs["data"])


async def test_small_budget_spent_on_reasoning(provider: Any) -> None:
    out, _ = await call(
        provider, payload=completion("", "length", reasoning_content="The user says hi...")
    )
    assert (out.content, out.done_reason, out.reasoning) == ("", "length", "The user says hi...")
    assert out.completion_tokens == 10


async def test_usage_inside_the_choice(provider: Any) -> None:
    data = completion()
    data["choices"][0]["usage"] = data.pop("usage")
    out, _ = await call(provider, payload=data)
    assert (out.prompt_tokens, out.completion_tokens) == (9, 10)


@pytest.mark.parametrize(
    ("status", "message", "kind", "error"),
    [
        (
            401,
            "The API Key appears to be invalid or may have expired",
            "invalid_authentication_error",
            errors.UpstreamAuth,
        ),
        (
            402,
            "We were unable to verify your membership benefits",
            "invalid_request_error",
            errors.UpstreamQuota,
        ),
        (
            403,
            "Kimi For Coding is currently only available for Coding Agents such "
            "as Kimi CLI, Claude Code, Roo Code, Kilo Code, etc.",
            "access_terminated_error",
            errors.UpstreamAuth,
        ),
        (
            403,
            "You've reached your usage limit for this billing cycle",
            "access_terminated_error",
            errors.UpstreamQuota,
        ),
        (403, "Access terminated", "access_terminated_error", errors.UpstreamQuota),
        (
            429,
            "The engine is currently overloaded, please try again later",
            "engine_overloaded_error",
            errors.UpstreamRateLimited,
        ),
        (
            429,
            "We're receiving too many requests at the moment",
            "rate_limit_reached_error",
            errors.UpstreamRateLimited,
        ),
        (
            429,
            "You've reached your usage limit for this period",
            "invalid_request_error",
            errors.UpstreamQuota,
        ),
        (
            429,
            "You've reached kimi monthly usage limit",
            "invalid_request_error",
            errors.UpstreamQuota,
        ),
        (
            400,
            "invalid temperature: only 1 is allowed for this model",
            "invalid_request_error",
            errors.UpstreamRejected,
        ),
        (
            400,
            "Your request exceeded model token limit: 262144",
            "invalid_request_error",
            errors.UpstreamRejected,
        ),
        (
            404,
            "Not found the model kimi-for-coding or Permission denied",
            "resource_not_found_error",
            errors.UpstreamRejected,
        ),
        (500, "internal error", "server_error", errors.UpstreamError),
    ],
)
async def test_documented_errors(
    provider: Any, status: int, message: str, kind: str, error: type[errors.ChatdError]
) -> None:
    case = cases.ErrorReply(status, {"error": {"message": message, "type": kind}}, error)
    await case.check(call(provider, **case.reply), message)
