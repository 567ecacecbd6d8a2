"""lakehouse/upstreams/openai_chat.py against aioresponses: the request it
sends, the replies it understands, and how each failure maps onto the family.

Long (~500 lines): one client serves three upstreams, and its error tables
(openai_chat_errors) are tested through it, case by case, as the provider
meets them; split the error cases out if they grow."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.plugin_api import (
    ChatRequest,
    Flavour,
    Message,
    OpenAICompatOptions,
    OpenAICompatProvider,
)
from tests import upstream_cases as cases
from tests.support import mock_upstream
from tests.test_cli import free_port

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdefSECRET"
BASE = "https://llm.test/v1"
URL = BASE + "/chat/completions"


def make(
    flavour: Flavour | None = None, base: str = BASE, key: str | None = KEY, **options: Any
) -> OpenAICompatProvider:
    ctx = cases.context(
        "compat", base, key, OpenAICompatOptions(**options), headers={"X-Extra": "yes"}
    )
    return OpenAICompatProvider(ctx, flavour or Flavour())


provider = cases.provider_fixture(make)


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(
        model="ignored", messages=[Message("system", "be brief"), Message("user", "hi")], **kw
    )


def completion(message: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1754000000,
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "message": message or {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "system_fingerprint": "fp",
    }
    out.update(kw)
    return out


async def call(provider: OpenAICompatProvider, req: ChatRequest | None = None, **reply: Any) -> Any:
    return await cases.exchange(provider, URL, req or request(), "vendor/model:free", **reply)


async def test_request_path_headers_and_minimal_body(provider: OpenAICompatProvider) -> None:
    out, sent = await call(provider, payload=completion())
    assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent.kwargs["headers"]["Content-Type"] == "application/json"
    assert sent.kwargs["headers"]["X-Extra"] == "yes"
    assert sent.kwargs["allow_redirects"] is False
    assert json.loads(sent.kwargs["data"]) == {
        "model": "vendor/model:free",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": False,
    }
    assert (out.model, out.provider, out.content, out.done_reason) == (
        "served-model",
        "compat",
        "Hello!",
        "stop",
    )
    assert (out.prompt_tokens, out.completion_tokens, out.reasoning) == (12, 3, None)


async def test_cap_temperature_and_json_mode(provider: OpenAICompatProvider) -> None:
    _, sent = await call(
        provider, request(max_tokens=10, temperature=0.3, format="json"), payload=completion()
    )
    body = json.loads(sent.kwargs["data"])
    assert body["max_tokens"] == 10 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.3
    assert body["response_format"] == {"type": "json_object"}


async def test_schema_format_becomes_json_schema(provider: OpenAICompatProvider) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    _, sent = await call(provider, request(format=schema), payload=completion())
    assert json.loads(sent.kwargs["data"])["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


@pytest.mark.parametrize(
    ("flavour", "options", "field"),
    [
        (Flavour(cap_field="max_completion_tokens"), {}, "max_completion_tokens"),
        (Flavour(), {"cap_field": "max_completion_tokens"}, "max_completion_tokens"),
        (Flavour(cap_field="max_completion_tokens"), {"cap_field": "max_tokens"}, "max_tokens"),
    ],
)
async def test_cap_field_from_flavour_or_option(
    flavour: Flavour, options: dict[str, Any], field: str
) -> None:
    async with cases.started(make(flavour, **options)) as p:
        _, sent = await call(p, request(max_tokens=64), payload=completion())
    body = json.loads(sent.kwargs["data"])
    assert body[field] == 64
    assert {"max_tokens", "max_completion_tokens"} & set(body) == {field}


async def test_drop_temperature_option() -> None:
    async with cases.started(make(drop_temperature=True)) as p:
        _, sent = await call(p, request(temperature=0.5, max_tokens=5), payload=completion())
    assert "temperature" not in json.loads(sent.kwargs["data"])


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
async def test_reasoning_is_kept_out_of_content(provider: OpenAICompatProvider, field: str) -> None:
    message = {"role": "assistant", "content": "42", field: "let me think"}
    out, _ = await call(provider, payload=completion(message))
    assert (out.content, out.reasoning) == ("42", "let me think")


async def test_budget_spent_on_reasoning_gives_empty_content(
    provider: OpenAICompatProvider,
) -> None:
    data = completion({"role": "assistant", "content": "", "reasoning_content": "hmm"})
    data["choices"][0]["finish_reason"] = "length"
    out, _ = await call(provider, payload=data)
    assert (out.content, out.done_reason, out.reasoning) == ("", "length", "hmm")


async def test_null_content_is_empty_string(provider: OpenAICompatProvider) -> None:
    out, _ = await call(provider, payload=completion({"role": "assistant", "content": None}))
    assert out.content == ""


async def test_usage_inside_the_choice_or_absent(provider: OpenAICompatProvider) -> None:
    data = completion()
    data["choices"][0]["usage"] = data.pop("usage")
    out, _ = await call(provider, payload=data)
    assert (out.prompt_tokens, out.completion_tokens) == (12, 3)
    data = completion(model=None)
    del data["usage"]
    out, _ = await call(provider, payload=data)
    assert (out.prompt_tokens, out.completion_tokens, out.model) == (0, 0, "vendor/model:free")


async def test_leading_whitespace_and_unknown_fields_are_tolerated(
    provider: OpenAICompatProvider,
) -> None:
    body = "\n\n   " + json.dumps(completion(cost="0.0012", provider="X"))
    out, _ = await call(provider, body=body, content_type="application/json")
    assert out.content == "Hello!"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (completion(choices=[]), "no choices"),
        ({"id": "x", "object": "chat.completion"}, "no choices"),
        (completion(choices=[{"index": 0, "finish_reason": "stop"}]), "no message"),
    ],
)
async def test_unusable_choices_are_bad_response(
    provider: OpenAICompatProvider, data: dict[str, Any], needle: str
) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match=needle):
        await call(provider, payload=data)


@pytest.mark.parametrize(
    "kw",
    [
        {"body": "<html><body>Bad gateway</body></html>", "content_type": "text/html"},
        {"body": "upstream says hello", "content_type": "text/plain"},
        {"body": "{not json", "content_type": "application/json"},
        {"body": '{"choices": "nope"}', "content_type": "application/json"},
        {"body": "", "content_type": "application/json"},
    ],
)
async def test_unusable_200_bodies_are_bad_response(
    provider: OpenAICompatProvider, kw: dict[str, Any]
) -> None:
    with pytest.raises(errors.UpstreamBadResponse) as info:
        await call(provider, status=200, **kw)
    assert info.value.upstream_status == 200


@pytest.mark.parametrize(
    "data",
    [
        {"error": {"code": 502, "message": "Provider disconnected"}},
        completion(error={"code": "server_error", "message": "Provider disconnected"}),
        completion(
            choices=[
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "error",
                    "error": {"code": "server_error", "message": "Provider disconnected"},
                }
            ]
        ),
    ],
)
async def test_200_with_an_error_is_upstream_error(
    provider: OpenAICompatProvider, data: dict[str, Any]
) -> None:
    with pytest.raises(errors.UpstreamError, match="Provider disconnected") as info:
        await call(provider, payload=data)
    assert type(info.value) is errors.UpstreamError and info.value.retryable


async def test_finish_reason_error_without_detail(provider: OpenAICompatProvider) -> None:
    data = completion()
    data["choices"][0]["finish_reason"] = "error"
    with pytest.raises(errors.UpstreamError, match="finish_reason"):
        await call(provider, payload=data)


def oai(message: str, type_: str | None = None, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize(
    "case",
    [
        cases.ErrorReply(
            401,
            oai("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
            errors.UpstreamAuth,
        ),
        cases.ErrorReply(
            403, oai("Forbidden in your region", "permission_error"), errors.UpstreamAuth
        ),
        cases.ErrorReply(
            402,
            {"error": {"code": 402, "message": "Insufficient credits", "metadata": {}}},
            errors.UpstreamQuota,
        ),
        cases.ErrorReply(
            429,
            oai("Rate limit reached", "requests", "rate_limit_exceeded"),
            errors.UpstreamRateLimited,
            7.0,
            {"Retry-After": "7"},
        ),
        cases.ErrorReply(
            429,
            oai("Rate limit reached", "rate_limit_reached_error"),
            errors.UpstreamRateLimited,
            1.5,
            {"retry-after-ms": "1500", "Retry-After": "9"},
        ),
        cases.ErrorReply(429, oai("Slow down"), errors.UpstreamRateLimited),
        cases.ErrorReply(
            429,
            oai("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
            errors.UpstreamQuota,
        ),
        cases.ErrorReply(
            429,
            oai("Your account is suspended", "exceeded_current_quota_error"),
            errors.UpstreamQuota,
        ),
        cases.ErrorReply(
            429, oai("You've reached your usage limit for this period"), errors.UpstreamQuota
        ),
        cases.ErrorReply(
            403, oai("You've reached your usage limit for this billing cycle"), errors.UpstreamQuota
        ),
        cases.ErrorReply(
            400,
            oai("invalid temperature: only 1 is allowed for this model", "invalid_request_error"),
            errors.UpstreamRejected,
        ),
        cases.ErrorReply(
            404,
            oai("The model `x` does not exist", "invalid_request_error", "model_not_found"),
            errors.UpstreamRejected,
        ),
        cases.ErrorReply(408, oai("Request timed out"), errors.UpstreamTimeout),
        cases.ErrorReply(500, oai("The server had an error", "server_error"), errors.UpstreamError),
        cases.ErrorReply(
            503, oai("No provider available"), errors.UpstreamError, 3.0, {"Retry-After": "3"}
        ),
    ],
    ids=cases.error_id,
)
async def test_error_shapes_and_statuses(
    provider: OpenAICompatProvider, case: cases.ErrorReply
) -> None:
    raised = await case.check(call(provider, **case.reply), case.body["error"]["message"])
    assert raised.message.startswith(f"compat answered {case.status}")


@pytest.mark.parametrize(
    ("status", "kw", "error", "needle"),
    [
        (
            502,
            {"body": "<html><h1>502 Bad Gateway</h1></html>", "content_type": "text/html"},
            errors.UpstreamError,
            "502 Bad Gateway",
        ),
        (
            429,
            {"body": "Too Many Requests", "content_type": "text/plain"},
            errors.UpstreamRateLimited,
            "Too Many Requests",
        ),
        (401, {"payload": {"detail": "who are you"}}, errors.UpstreamAuth, "who are you"),
        (
            400,
            {"payload": {"error": "plain string error"}},
            errors.UpstreamRejected,
            "plain string error",
        ),
    ],
)
async def test_non_json_or_odd_error_bodies(
    provider: OpenAICompatProvider,
    status: int,
    kw: dict[str, Any],
    error: type[errors.ChatdError],
    needle: str,
) -> None:
    with pytest.raises(errors.ChatdError) as info:
        await call(provider, status=status, **kw)
    assert type(info.value) is error
    assert needle in info.value.message


async def test_redirect_is_not_followed(provider: OpenAICompatProvider) -> None:
    with mock_upstream() as mock:
        mock.post(URL, status=307, headers={"Location": "https://elsewhere.test/v1"})
        with pytest.raises(errors.UpstreamRedirect):
            await provider.chat(request(), "m")
        assert len([c for cs in mock.requests.values() for c in cs]) == 1


async def test_connection_refused_is_unreachable() -> None:
    async with cases.started(make(base=f"http://127.0.0.1:{free_port()}/v1")) as p:
        with pytest.raises(errors.UpstreamUnreachable) as info:
            await p.chat(request(), "m")
    assert KEY not in info.value.message


async def test_timeout_is_upstream_timeout(provider: OpenAICompatProvider) -> None:
    await cases.check_timeout(provider, URL, request())


@pytest.mark.parametrize(
    ("status", "kw"),
    [
        (401, {"payload": oai(f"Incorrect API key provided: {KEY}", "invalid_request_error")}),
        (401, {"payload": {"type": "error", "error": {"type": "AuthError", "message": KEY}}}),
        (
            400,
            {
                "payload": {
                    "error": {
                        "code": 400,
                        "message": "Provider returned error",
                        "metadata": {"raw": f"bad key {KEY}"},
                    }
                }
            },
        ),
        (403, {"body": f"<html>key {KEY} refused</html>", "content_type": "text/html"}),
        # The key straddles the cut made to keep messages short.
        (429, {"payload": oai("x" * 380 + KEY)}),
        (500, {"body": "y" * 290 + KEY, "content_type": "text/plain"}),
        (200, {"payload": {"error": {"code": 500, "message": f"oops {KEY}"}}}),
    ],
)
async def test_key_never_in_error_messages(
    provider: OpenAICompatProvider, status: int, kw: dict[str, Any]
) -> None:
    with pytest.raises(errors.ChatdError) as info:
        await call(provider, status=status, **kw)
    for text in (info.value.message, str(info.value)):
        assert KEY not in text
        assert KEY[:12] not in text and KEY[-12:] not in text


async def test_probe_is_free_unless_a_path_is_set(provider: OpenAICompatProvider) -> None:
    with mock_upstream() as mock:
        assert await provider.probe() is True
        assert not mock.requests
    async with cases.started(make(probe_path="/models")) as p:
        with mock_upstream() as mock:
            mock.get(BASE + "/models", payload={"data": []})
            assert await p.probe() is True
            sent = cases.only_request(mock)
            assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
        with mock_upstream() as mock:
            mock.get(BASE + "/models", status=401, payload=oai("bad key"))
            assert await p.probe() is False


def test_needs_a_key() -> None:
    with pytest.raises(errors.ConfigError):
        make(key=None)


@pytest.mark.parametrize("path", ["models", "/has space"])
def test_probe_path_must_be_a_path(path: str) -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"probe_path": path}, OpenAICompatOptions)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"drop_temprature": True}, OpenAICompatOptions)
