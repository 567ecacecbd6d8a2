"""plugins/kimi_anthropic.py: Kimi For Coding through the shared Anthropic
Messages client."""

from __future__ import annotations

import json

import pytest

from lakehouse import errors
from tests import upstream_cases as cases
from tests.support import build_provider, chat_request, mock_upstream

pytestmark = pytest.mark.anyio

KEY = "sk-kimi-0123456789abcdef"
BASE = "https://api.kimi.com/coding/v1"


def test_plugin_defaults() -> None:
    cases.keyed_plugin("kimi_anthropic", BASE)


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [("x-api-key", "x-api-key", KEY), ("bearer", "Authorization", f"Bearer {KEY}")],
)
async def test_request_reaches_messages(auth: str, header: str, value: str) -> None:
    async with cases.started(build_provider("kimi_anthropic", BASE, key=KEY, auth=auth)) as p:
        out, sent = await cases.exchange(
            p,
            BASE + "/messages",
            chat_request(max_tokens=20),
            "kimi-for-coding",
            payload={"content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn"},
        )
    assert out.content == "Hi"
    assert sent.kwargs["headers"][header] == value
    assert json.loads(sent.kwargs["data"])["max_tokens"] == 20


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        # The coding-agent gate, in OpenAI's shape or Anthropic's.
        (
            403,
            {
                "error": {
                    "message": "only available for Coding Agents",
                    "type": "access_terminated_error",
                }
            },
            errors.UpstreamAuth,
        ),
        (
            403,
            {"error": {"message": "Access terminated: usage limit", "type": "permission_error"}},
            errors.UpstreamQuota,
        ),
        (
            401,
            {"type": "error", "error": {"type": "authentication_error", "message": "invalid"}},
            errors.UpstreamAuth,
        ),
        (
            401,
            {"type": "error", "error": {"type": "invalid_authentication_error", "message": "x"}},
            errors.UpstreamAuth,
        ),
        (
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            errors.UpstreamError,
        ),
    ],
)
async def test_errors(status: int, body: object, error: type[errors.ChatdError]) -> None:
    async with cases.started(build_provider("kimi_anthropic", BASE, key=KEY)) as p:
        with mock_upstream() as mock, pytest.raises(errors.ChatdError) as info:
            mock.post(BASE + "/messages", status=status, payload=body)
            await p.chat(chat_request(), "kimi-for-coding")
    assert type(info.value) is error


async def test_probe_carries_the_key() -> None:
    p = build_provider("kimi_anthropic", BASE, key=KEY, probe_path="/models")
    async with cases.started(p):
        with mock_upstream() as mock:
            mock.get(BASE + "/models", payload={"data": []})
            assert await p.probe() is True
            sent = cases.only_request(mock)
    assert sent.kwargs["headers"]["x-api-key"] == KEY
