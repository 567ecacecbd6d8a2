"""Every provider through the real server against its protocol stub: the
seven routing forms of the README's model-name table, what reached each upstream, and every
failure mode with its documented status and code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lakehouse.stubs import Fault, StubUpstream
from tests.stub_world import ENV, KEYS, World, one_stub, provider, stub_world
from tests.support import eventually, make_config, running_chatd

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
# The extra model ROUTES reach, and kimi's client gate turned on.
STUB_OPTIONS = {
    "ollama_cloud": {"models": ["kimi-k2.6", "gpt-oss:120b", "qwen3-coder:480b"]},
    "kimi": {"require_user_agent": "chatd-test/"},
}
HEADERS = {
    "chatd.providers.kimi.headers": {"User-Agent": "chatd-test/1.0"},
    "chatd.providers.openrouter.headers": {
        "HTTP-Referer": "https://lake.example",
        "X-Title": "lakehouse",
    },
}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    # One call per request (stub_world): these tests check how each
    # failure maps; retries and fallbacks have tests of their own
    # (test_dispatcher_e2e).
    async with stub_world(HEADERS, stub_options=STUB_OPTIONS) as w:
        yield w


async def chat(world: World, model: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=world.base, timeout=30) as client:
        return await client.post("/chat", json={"model": model, "messages": HELLO, **extra})


ROUTES = [
    # model asked for, stub it must reach, path there, model name the stub sees
    ("qwen3.5:latest", "ollama", "/api/chat", "qwen3.5:latest"),
    ("ollama/qwen3.5:latest", "ollama", "/api/chat", "qwen3.5:latest"),
    ("kimi-k2.6:cloud", "ollama_cloud", "/api/generate", "kimi-k2.6"),
    ("ollama_cloud/gpt-oss:120b", "ollama_cloud", "/api/generate", "gpt-oss:120b"),
    (
        "openrouter/anthropic/claude-opus-4-7",
        "openrouter",
        "/api/v1/chat/completions",
        "anthropic/claude-opus-4-7",
    ),
    ("opencode/glm-5.2", "opencode", "/zen/v1/chat/completions", "glm-5.2"),
    ("kimi/kimi-for-coding", "kimi", "/coding/v1/chat/completions", "kimi-for-coding"),
]


@pytest.mark.parametrize(("model", "name", "path", "upstream_model"), ROUTES)
async def test_each_routing_form_reaches_the_right_upstream(
    world: World, model: str, name: str, path: str, upstream_model: str
) -> None:
    resp = await chat(world, model, max_tokens=50, format="json")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["provider"] == name
    assert body["content"] and body["prompt_tokens"] > 0 and body["completion_tokens"] > 0
    for other, stub in world.stubs.items():
        if other != name:
            assert stub.chats == [], f"{model} also reached {other}"
    sent = world.stubs[name].chats[-1]
    assert (sent.method, sent.path) == ("POST", path)
    assert sent.json["model"] == upstream_model
    assert sent.json["stream"] is False
    assert sent.headers["content-type"] == "application/json"
    if name in KEYS:
        assert sent.headers["authorization"] == f"Bearer {KEYS[name]}"
    else:
        assert "authorization" not in sent.headers
    if name.startswith("ollama"):
        assert sent.json["think"] is False
        assert sent.json["format"] == "json"
        assert sent.json["options"]["num_predict"] == 50
    else:
        assert sent.json["response_format"] == {"type": "json_object"}
        cap = "max_completion_tokens" if name == "kimi" else "max_tokens"
        assert sent.json[cap] == 50
        assert sent.json["messages"][0] == {"role": "system", "content": "be brief"}


async def test_ollama_cloud_flattens_roles_into_system_and_prompt(world: World) -> None:
    resp = await chat(world, "kimi-k2.6:cloud")
    assert resp.status_code == 200
    sent = world.stubs["ollama_cloud"].chats[-1].json
    assert sent["system"] == "be brief"
    assert sent["prompt"] == "hello there"


async def test_extra_headers_from_config(world: World) -> None:
    await chat(world, "openrouter/openai/gpt-5")
    sent = world.stubs["openrouter"].chats[-1].headers
    assert (sent["http-referer"], sent["x-title"]) == ("https://lake.example", "lakehouse")
    resp = await chat(world, "kimi/kimi-for-coding")
    assert resp.status_code == 200
    assert world.stubs["kimi"].chats[-1].headers["user-agent"] == "chatd-test/1.0"


async def test_reasoning_is_kept_out_of_content(world: World) -> None:
    for model in ("openrouter/openai/gpt-5", "kimi/kimi-for-coding"):
        body = (await chat(world, model, max_tokens=500)).json()
        assert body.get("reasoning"), body
        assert body["reasoning"] not in body["content"]


async def test_listing_shows_all_five(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.base) as client:
        listing = (await client.get("/chat/providers")).json()
    assert listing == {"providers": {n: True for n in sorted(world.stubs)}}
    assert not any(key in str(listing) for key in KEYS.values())


FAILURES = [
    # provider model, fault, status to the caller, code
    ("openrouter/openai/gpt-5", Fault(kind="status", status=500), 502, "upstream_error"),
    ("opencode/glm-5.2", Fault(kind="status", status=503), 502, "upstream_error"),
    ("kimi/kimi-for-coding", Fault(kind="status", status=502), 502, "upstream_error"),
    ("kimi-k2.6:cloud", Fault(kind="status", status=500), 502, "upstream_error"),
    ("openrouter/openai/gpt-5", Fault(kind="status", status=401), 502, "upstream_auth"),
    ("kimi/kimi-for-coding", Fault(kind="status", status=403), 502, "upstream_auth"),
    ("openrouter/openai/gpt-5", Fault(kind="quota"), 502, "upstream_quota"),
    ("opencode/glm-5.2", Fault(kind="quota"), 502, "upstream_quota"),
    ("kimi/kimi-for-coding", Fault(kind="quota"), 502, "upstream_quota"),
    ("kimi-k2.6:cloud", Fault(kind="quota"), 502, "upstream_quota"),
    ("openrouter/openai/gpt-5", Fault(kind="status", status=429), 502, "upstream_rate_limited"),
    ("qwen3.5:latest", Fault(kind="html"), 502, "upstream_bad_response"),
    ("openrouter/openai/gpt-5", Fault(kind="html"), 502, "upstream_bad_response"),
    ("opencode/glm-5.2", Fault(kind="wrong_content_type"), 502, "upstream_bad_response"),
    ("kimi/kimi-for-coding", Fault(kind="garbage"), 502, "upstream_bad_response"),
    ("kimi-k2.6:cloud", Fault(kind="garbage"), 502, "upstream_bad_response"),
    ("openrouter/openai/gpt-5", Fault(kind="empty_choices"), 502, "upstream_bad_response"),
    ("qwen3.5:latest", Fault(kind="truncate"), 502, "upstream_bad_response"),
    ("openrouter/openai/gpt-5", Fault(kind="midstream_error"), 502, "upstream_error"),
    ("qwen3.5:latest", Fault(kind="reset"), 502, "upstream_unreachable"),
    ("opencode/glm-5.2", Fault(kind="reset"), 502, "upstream_unreachable"),
    ("qwen3.5:latest", Fault(kind="redirect"), 502, "upstream_redirect"),
    ("openrouter/openai/gpt-5", Fault(kind="redirect", status=302), 502, "upstream_redirect"),
    ("kimi-k2.6:cloud", Fault(kind="redirect"), 502, "upstream_redirect"),
    ("qwen3.5:latest", Fault(kind="delay", seconds=5), 504, "upstream_timeout"),
    ("kimi/kimi-for-coding", Fault(kind="delay", seconds=5), 504, "upstream_timeout"),
]


def stub_for(model: str) -> str:
    if model.endswith(":cloud"):
        return "ollama_cloud"
    prefix = model.split("/", 1)[0]
    return prefix if prefix in KEYS else "ollama"


@pytest.mark.parametrize(
    ("model", "fault", "status", "code"),
    FAILURES,
    ids=[f"{m.split('/')[0]}-{f.kind}-{f.status}" for m, f, _, _ in FAILURES],
)
async def test_failure_modes_through_the_server(
    world: World, model: str, fault: Fault, status: int, code: str
) -> None:
    stub = world.stubs[stub_for(model)]
    stub.fail_next(fault)
    resp = await chat(world, model)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["provider"] == stub_for(model)
    assert not any(key in resp.text for key in KEYS.values())
    if fault.kind == "redirect":
        # Not followed: nothing but the one POST reached the upstream.
        assert [r.method for r in stub.chats] == ["POST"]
    # The server keeps serving that provider.
    assert (await chat(world, model)).status_code == 200


async def test_timeout_releases_the_upstream_connection(world: World) -> None:
    stub = world.stubs["ollama"]
    stub.fail_next(Fault(kind="delay", seconds=30), times=3)
    answers = await asyncio.gather(*(chat(world, "qwen3.5:latest") for _ in range(3)))
    assert [r.status_code for r in answers] == [504, 504, 504]
    await eventually(lambda: stub.open_connections == 0, what="upstream connections closed")


async def test_retry_after_is_passed_on(world: World) -> None:
    world.stubs["openrouter"].fail_next(Fault(kind="status", status=429, retry_after="7"))
    resp = await chat(world, "openrouter/openai/gpt-5")
    assert (resp.status_code, resp.headers["retry-after"]) == (502, "7")
    assert resp.json()["error"]["code"] == "upstream_rate_limited"
    world.stubs["opencode"].fail_next(Fault(kind="status", status=503, retry_after_ms="2500"))
    resp = await chat(world, "opencode/glm-5.2")
    assert resp.headers["retry-after"] == "3"


async def test_a_key_echoed_by_the_upstream_is_redacted(world: World) -> None:
    key = KEYS["openrouter"]
    world.stubs["openrouter"].fail_next(
        Fault(kind="status", status=401, message=f"Invalid API key {key} (check it)")
    )
    resp = await chat(world, "openrouter/openai/gpt-5")
    assert resp.status_code == 502
    assert key not in resp.text
    assert "check it" in resp.json()["error"]["message"]


async def test_wrong_key_and_unknown_model(world: World) -> None:
    resp = await chat(world, "ollama_cloud/no-such-model")
    assert (resp.status_code, resp.json()["error"]["code"]) == (502, "upstream_rejected")
    resp = await chat(world, "openrouter/nobody/nothing")
    assert resp.status_code == 502


async def test_kimi_gate_without_an_allowed_user_agent() -> None:
    async with (
        one_stub("kimi", require_user_agent="KimiCLI/") as (base, _),
        httpx.AsyncClient(base_url=base) as c,
    ):
        resp = await c.post("/chat", json={"model": "kimi/kimi-for-coding", "messages": HELLO})
    assert (resp.status_code, resp.json()["error"]["code"]) == (502, "upstream_auth")
    assert "Coding Agents" in resp.json()["error"]["message"]


async def test_unreachable_upstream_names_the_provider_not_the_key() -> None:
    stub = StubUpstream("openrouter")
    url = await stub.start()
    await stub.stop()
    config = make_config(overrides={**provider("openrouter", url), "chatd.probe_interval_secs": 0})
    async with running_chatd(config, ENV) as base, httpx.AsyncClient(base_url=base) as c:
        resp = await c.post("/chat", json={"model": "openrouter/x/y", "messages": HELLO})
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert (error["code"], error["provider"]) == ("upstream_unreachable", "openrouter")
    assert KEYS["openrouter"] not in resp.text
