"""plugins/ollama_cloud.py: flattening for /api/generate, the /api/chat
alternative, model-name markers, and Ollama Cloud's failures."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.loader import BUILTIN_DIR, import_plugin_file
from lakehouse.wire import ChatRequest, Message
from tests import upstream_cases as cases
from tests.support import build_provider, mock_upstream
from tests.test_cli import free_port

pytestmark = pytest.mark.anyio

KEY = "ollama-cloud-key-0123456789abcdef"
BASE = "https://ollama.com"
GENERATE = BASE + "/api/generate"
CHAT = BASE + "/api/chat"


def plugin_module() -> ModuleType:
    return import_plugin_file(BUILTIN_DIR / "ollama_cloud.py")


provider = cases.provider_fixture(lambda: build_provider("ollama_cloud", BASE, key=KEY))


def request(*messages: tuple[str, str], **kw: Any) -> ChatRequest:
    msgs = [Message(role, content) for role, content in messages] or [Message("user", "hi")]
    return ChatRequest(model="ignored", messages=msgs, **kw)  # type: ignore[arg-type]


def generated(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "kimi-k2.6",
        "created_at": "2026-08-01T10:00:00Z",
        "response": "Hello!",
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 21,
        "eval_count": 4,
    }
    out.update(kw)
    return out


async def call(
    provider: Any, req: ChatRequest | None = None, model: str = "kimi-k2.6:cloud", **reply: Any
) -> tuple[Any, Any]:
    return await cases.exchange(provider, GENERATE, req or request(), model, **reply)


def test_plugin_defaults() -> None:
    assert cases.keyed_plugin("ollama_cloud", BASE).options().endpoint == "generate"


async def test_single_user_message_is_the_prompt(provider: Any) -> None:
    out, sent = await call(
        provider, request(("system", "be brief"), ("user", "hi")), payload=generated()
    )
    assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.kwargs["data"]) == {
        "model": "kimi-k2.6",
        "prompt": "hi",
        "system": "be brief",
        "stream": False,
        "think": False,
    }
    assert (out.model, out.content, out.done_reason) == ("kimi-k2.6", "Hello!", "stop")
    assert (out.prompt_tokens, out.completion_tokens, out.reasoning) == (21, 4, None)


def test_transcript_flattening() -> None:
    system, prompt = plugin_module().flatten(
        [
            Message("system", "rule one"),
            Message("user", "What is 2+2?"),
            Message("assistant", "4"),
            Message("system", "rule two"),
            Message("tool", '{"ok": true}'),
            Message("user", "And 3+3?"),
        ]
    )
    assert system == "rule one\n\nrule two"
    assert prompt == (
        'User: What is 2+2?\n\nAssistant: 4\n\nTool: {"ok": true}\n\nUser: And 3+3?\n\nAssistant:'
    )


def test_flattening_edges() -> None:
    flatten = plugin_module().flatten
    assert flatten([Message("user", "hi")]) == (None, "hi")
    # A lone non-user message is still a transcript.
    assert flatten([Message("assistant", "Once")]) == (None, "Assistant: Once\n\nAssistant:")
    with pytest.raises(errors.BadRequest):
        flatten([Message("system", "only rules")])


async def test_system_only_request_never_reaches_upstream(provider: Any) -> None:
    with mock_upstream() as mock:
        with pytest.raises(errors.BadRequest):
            await provider.chat(request(("system", "x")), "m")
        assert not mock.requests


async def test_options_format_and_think(provider: Any) -> None:
    schema = {"type": "object"}
    out, sent = await call(
        provider,
        request(max_tokens=10, temperature=0.1, format=schema, think="high"),
        payload=generated(thinking="pondering", response='{"a": 1}'),
    )
    body = json.loads(sent.kwargs["data"])
    assert body["options"] == {"num_predict": 10, "temperature": 0.1}
    assert body["format"] == schema
    assert body["think"] == "high"
    assert "system" not in body
    assert (out.content, out.reasoning) == ('{"a": 1}', "pondering")
    _, sent = await call(provider, request(format="json", think=True), payload=generated())
    body = json.loads(sent.kwargs["data"])
    assert (body["format"], body["think"]) == ("json", True)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("kimi-k2.6:cloud", "kimi-k2.6"),
        ("qwen3-coder:480b:cloud", "qwen3-coder:480b"),
        ("qwen3:CLOUD", "qwen3"),
        ("gpt-oss:120b-cloud", "gpt-oss:120b"),
        ("gpt-oss:120B-Cloud", "gpt-oss:120B"),
        ("org/model:cloud", "org/model"),
        ("gpt-oss:120b", "gpt-oss:120b"),
        ("my-cloud-model", "my-cloud-model"),
        # No tag: not a marker in Ollama's own grammar.
        ("my-cloud", "my-cloud"),
    ],
)
async def test_model_markers_are_stripped(provider: Any, given: str, sent: str) -> None:
    out, call_ = await call(provider, model=given, payload=generated(model=""))
    assert json.loads(call_.kwargs["data"])["model"] == sent
    assert out.model == sent


@pytest.mark.parametrize(
    "model", ["x:cloud:local", "x:local:cloud", "gpt-oss:120b-cloud:cloud", "x:local", ":cloud"]
)
async def test_contradictory_markers_are_bad_requests(provider: Any, model: str) -> None:
    with mock_upstream() as mock:
        with pytest.raises(errors.BadRequest):
            await provider.chat(request(), model)
        assert not mock.requests


async def test_chat_endpoint_sends_native_messages() -> None:
    reply = {
        "model": "glm-5.2",
        "message": {"role": "assistant", "content": "Hey", "thinking": "greeting"},
        "done": True,
        "done_reason": "stop",
        "eval_count": 2,
    }
    async with cases.started(build_provider("ollama_cloud", BASE, key=KEY, endpoint="chat")) as p:
        out, sent = await cases.exchange(
            p,
            CHAT,
            request(("system", "s"), ("user", "hi"), max_tokens=5),
            "glm-5.2:cloud",
            payload=reply,
        )
    assert json.loads(sent.kwargs["data"]) == {
        "model": "glm-5.2",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "stream": False,
        "think": False,
        "options": {"num_predict": 5},
    }
    assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert (out.content, out.reasoning, out.prompt_tokens, out.completion_tokens) == (
        "Hey",
        "greeting",
        0,
        2,
    )


@pytest.mark.parametrize(
    "case",
    [
        cases.ErrorReply(401, {"error": "unauthorized"}, errors.UpstreamAuth),
        cases.ErrorReply(403, {"error": "forbidden"}, errors.UpstreamAuth),
        cases.ErrorReply(404, {"error": 'model "kimi-k2.5" not found'}, errors.UpstreamRejected),
        cases.ErrorReply(400, {"error": "invalid think value"}, errors.UpstreamRejected),
        cases.ErrorReply(
            429,
            {
                "error": "you (alice) have reached your session usage limit, upgrade for higher "
                "limits: https://ollama.com/upgrade"
            },
            errors.UpstreamQuota,
        ),
        cases.ErrorReply(
            429, {"error": "you (alice) have reached your weekly usage limit"}, errors.UpstreamQuota
        ),
        cases.ErrorReply(
            429, {"error": "too many concurrent requests"}, errors.UpstreamRateLimited
        ),
        cases.ErrorReply(500, {"error": "internal error"}, errors.UpstreamError),
        cases.ErrorReply(503, {"error": "service unavailable"}, errors.UpstreamError),
    ],
    ids=cases.error_id,
)
async def test_error_bodies(provider: Any, case: cases.ErrorReply) -> None:
    await case.check(call(provider, **case.reply), case.body["error"])


async def test_retry_after_is_kept_when_sent(provider: Any) -> None:
    with pytest.raises(errors.UpstreamRateLimited) as info:
        await call(
            provider, status=429, payload={"error": "slow down"}, headers={"Retry-After": "5"}
        )
    assert info.value.retry_after == 5.0


@pytest.mark.parametrize(
    ("kw", "error", "needle"),
    [
        (
            {"status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"},
            errors.UpstreamError,
            "Bad Gateway",
        ),
        (
            {"body": "<html>login</html>", "content_type": "text/html"},
            errors.UpstreamBadResponse,
            "text/html",
        ),
        ({"body": "ok", "content_type": "text/plain"}, errors.UpstreamBadResponse, "text/plain"),
        (
            {"body": "{garbage", "content_type": "application/json"},
            errors.UpstreamBadResponse,
            "unusable",
        ),
        ({"payload": generated(done=False)}, errors.UpstreamBadResponse, "finished"),
        ({"payload": {"model": "m", "done": True}}, errors.UpstreamBadResponse, "finished"),
        (
            {"payload": {"error": "an error was encountered while running the model"}},
            errors.UpstreamError,
            "running the model",
        ),
    ],
)
async def test_unusable_replies(
    provider: Any, kw: dict[str, Any], error: type[errors.ChatdError], needle: str
) -> None:
    with pytest.raises(errors.ChatdError) as info:
        await call(provider, **kw)
    assert type(info.value) is error
    assert needle in info.value.message


async def test_redirect_is_not_followed() -> None:
    # api.ollama.com answers 301 to ollama.com; following would drop the body.
    p = build_provider("ollama_cloud", "https://api.ollama.com", key=KEY)
    async with cases.started(p):
        with mock_upstream() as mock:
            mock.post(
                "https://api.ollama.com/api/generate",
                status=301,
                headers={"Location": "https://ollama.com/api/generate"},
            )
            with pytest.raises(errors.UpstreamRedirect):
                await p.chat(request(), "m")
            cases.only_request(mock)


async def test_connection_refused_and_timeout(provider: Any) -> None:
    p = build_provider("ollama_cloud", f"http://127.0.0.1:{free_port()}", key=KEY)
    async with cases.started(p):
        with pytest.raises(errors.UpstreamUnreachable):
            await p.chat(request(), "m")
    await cases.check_timeout(provider, GENERATE, request())


@pytest.mark.parametrize(
    ("status", "kw"),
    [
        (401, {"payload": {"error": f"invalid key {KEY}"}}),
        (500, {"body": "z" * 290 + KEY, "content_type": "text/plain"}),
        (200, {"payload": {"error": f"bad key {KEY}"}}),
    ],
)
async def test_key_never_in_error_messages(provider: Any, status: int, kw: dict[str, Any]) -> None:
    with pytest.raises(errors.ChatdError) as info:
        await call(provider, status=status, **kw)
    assert KEY not in str(info.value)
    assert KEY[:12] not in str(info.value) and KEY[-12:] not in str(info.value)


async def test_probe(provider: Any) -> None:
    with mock_upstream() as mock:
        mock.get(BASE + "/api/tags", payload={"models": []})
        assert await provider.probe() is True
    with mock_upstream() as mock:
        mock.get(BASE + "/api/tags", status=503)
        assert await provider.probe() is False
    async with cases.started(build_provider("ollama_cloud", BASE, key=KEY, probe_path="")) as p:
        with mock_upstream() as mock:
            assert await p.probe() is True
            assert not mock.requests
