"""plugins/ollama.py against aioresponses: the request it sends, the
replies it understands, and how each failure maps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.wire import ChatRequest, Message
from tests import upstream_cases as cases
from tests.support import build_provider, mock_upstream

pytestmark = pytest.mark.anyio

BASE = "http://ollama.test:11434"
URL = BASE + "/api/chat"


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(
        model="ignored", messages=[Message("system", "be brief"), Message("user", "hi")], **kw
    )


def reply(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "qwen3.5:latest",
        "created_at": "2026-08-01T10:00:00Z",
        "message": {"role": "assistant", "content": "Hello!"},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1812345678,
        "prompt_eval_count": 26,
        "eval_count": 12,
    }
    out.update(kw)
    return out


provider = cases.provider_fixture(lambda: build_provider("ollama", BASE))


def sent(mock: mock_upstream) -> dict[str, Any]:
    calls = [c for key, cs in mock.requests.items() for c in cs]
    assert len(calls) == 1
    return json.loads(calls[0].kwargs["data"])


async def test_request_is_native_chat_with_stream_and_think_off(provider: Any) -> None:
    with mock_upstream() as mock:
        mock.post(URL, payload=reply())
        out = await provider.chat(request(), "qwen3.5:latest")
        body = sent(mock)
    assert body == {
        "model": "qwen3.5:latest",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": False,
        "think": False,
    }
    assert (out.content, out.done_reason, out.prompt_tokens, out.completion_tokens) == (
        "Hello!",
        "stop",
        26,
        12,
    )
    assert out.provider == "ollama" and out.model == "qwen3.5:latest"
    assert out.reasoning is None


async def test_options_format_and_think_pass_through(provider: Any) -> None:
    with mock_upstream() as mock:
        mock.post(
            URL, payload=reply(message={"role": "assistant", "content": "{}", "thinking": "hmm"})
        )
        out = await provider.chat(
            request(max_tokens=10, temperature=0.2, format="json", think="high"), "m"
        )
        body = sent(mock)
    assert body["options"] == {"num_predict": 10, "temperature": 0.2}
    assert body["format"] == "json"
    assert body["think"] == "high"
    assert out.reasoning == "hmm"
    assert out.content == "{}"


async def test_schema_format_and_plugin_options() -> None:
    p = build_provider("ollama", BASE, keep_alive="10m", num_ctx=8192)
    await p.start()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with mock_upstream() as mock:
        mock.post(URL, payload=reply())
        await p.chat(request(format=schema, think=True), "m")
        body = sent(mock)
    await p.close()
    assert body["format"] == schema
    assert body["think"] is True
    assert body["keep_alive"] == "10m"
    assert body["options"] == {"num_ctx": 8192}


async def test_missing_counts_default_to_zero(provider: Any) -> None:
    data = reply()
    del data["prompt_eval_count"], data["eval_count"], data["done_reason"]
    with mock_upstream() as mock:
        mock.post(URL, payload=data)
        out = await provider.chat(request(), "m")
    assert (out.prompt_tokens, out.completion_tokens, out.done_reason) == (0, 0, "stop")


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (404, {"error": "model 'x' not found"}, errors.UpstreamRejected, "upstream_rejected"),
        (
            400,
            {"error": '"x" does not support thinking'},
            errors.UpstreamRejected,
            "upstream_rejected",
        ),
        (401, {"error": "unauthorized"}, errors.UpstreamAuth, "upstream_auth"),
        (403, {"error": "ollama cloud is disabled"}, errors.UpstreamAuth, "upstream_auth"),
        (429, {"error": "too many"}, errors.UpstreamRateLimited, "upstream_rate_limited"),
        (500, {"error": "runner crashed"}, errors.UpstreamError, "upstream_error"),
        (503, {"error": "server busy, please try again."}, errors.UpstreamError, "upstream_error"),
    ],
)
async def test_error_bodies_map_to_the_family(
    provider: Any, status: int, body: Any, error: type[Exception], code: str
) -> None:
    with mock_upstream() as mock:
        mock.post(URL, status=status, payload=body)
        with pytest.raises(error) as info:
            await provider.chat(request(), "x")
    assert info.value.code == code  # type: ignore[attr-defined]
    assert body["error"] in str(info.value)
    assert info.value.upstream_status == status  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"body": "<html>oops</html>", "content_type": "text/html"}, "text/html"),
        ({"body": "not json", "content_type": "application/json"}, "unusable"),
        ({"payload": {"model": "m", "done": False}}, "without a finished message"),
    ],
)
async def test_unusable_200_is_bad_response(provider: Any, kw: dict[str, Any], needle: str) -> None:
    with mock_upstream() as mock:
        mock.post(URL, status=200, **kw)
        with pytest.raises(errors.UpstreamBadResponse, match=needle):
            await provider.chat(request(), "m")


async def test_redirect_is_not_followed(provider: Any) -> None:
    with mock_upstream() as mock:
        mock.post(URL, status=301, headers={"Location": BASE + "/elsewhere"})
        with pytest.raises(errors.UpstreamRedirect):
            await provider.chat(request(), "m")


async def test_connection_refused_and_timeout(provider: Any) -> None:
    import aiohttp

    with mock_upstream() as mock:
        mock.post(
            URL,
            exception=aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey(
                    "ollama.test", 11434, False, True, None, None, None
                ),
                OSError(111, "Connection refused"),
            ),
        )
        with pytest.raises(errors.UpstreamUnreachable, match="cannot connect to ollama"):
            await provider.chat(request(), "m")
    with mock_upstream() as mock:
        mock.post(URL, exception=TimeoutError())
        with pytest.raises(errors.UpstreamTimeout):
            await provider.chat(request(), "m")


async def test_probe_asks_for_the_version(provider: Any) -> None:
    with mock_upstream() as mock:
        mock.get(BASE + "/api/version", payload={"version": "0.12.0"})
        assert await provider.probe() is True
    with mock_upstream() as mock:
        mock.get(BASE + "/api/version", status=503)
        assert await provider.probe() is False
