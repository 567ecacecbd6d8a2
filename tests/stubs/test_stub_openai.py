"""The OpenAI-dialect stubs (OpenRouter, OpenCode Zen, Kimi) against docs/protocols.md §3.

Long (~360 lines): three flavours of one stub module, mostly parametrised
tables of documented bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.stubs.conftest import MakeStub, poster

pytestmark = pytest.mark.anyio

HI = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi there"}]
ANSWER = "Hello from the stub. You said: hi there"
REASONING = {
    "openrouter": "reasoning",
    "opencode": "reasoning_content",
    "kimi": "reasoning_content",
}
MODEL = {"openrouter": "moonshotai/kimi-k2.6", "opencode": "kimi-k2.6", "kimi": "kimi-for-coding"}
AUTH = {"Authorization": "Bearer k"}


chat = poster("/chat/completions", AUTH)


def events(raw: bytes) -> tuple[list[str], list[Any]]:
    """SSE blocks split into comment lines and decoded data payloads ([DONE] kept)."""
    text = raw.decode()
    assert text.endswith("\n\n")
    comments, data = [], []
    for block in text.split("\n\n")[:-1]:
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            else:
                assert line.startswith("data: "), line
                payload = line.removeprefix("data: ")
                data.append(payload if payload == "[DONE]" else json.loads(payload))
    return comments, data


@pytest.mark.parametrize(
    ("flavour", "path"),
    [("openrouter", "/api/v1"), ("opencode", "/zen/v1"), ("kimi", "/coding/v1")],
)
async def test_base_url_names_the_api(make_stub: MakeStub, flavour: str, path: str) -> None:
    stub = await make_stub(flavour)
    assert stub.base_url == f"{stub.origin}{path}"
    assert stub.origin.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("flavour", ["openrouter", "opencode", "kimi"])
async def test_whole_reply(make_stub: MakeStub, http: Any, flavour: str) -> None:
    stub = await make_stub(flavour)
    status, headers, raw = await chat(http, stub, {"model": MODEL[flavour], "messages": HI})
    assert status == 200 and headers["Content-Type"] == "application/json"
    body = json.loads(raw)
    assert body["object"] == "chat.completion" and body["model"] == MODEL[flavour]
    assert isinstance(body["created"], int) and body["id"]
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == ANSWER
    assert choice["message"][REASONING[flavour]].startswith("The user wrote")
    usage = body["usage"]
    assert usage["prompt_tokens"] == 4 and usage["completion_tokens"] == 21
    assert usage["total_tokens"] == 25
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 13
    assert ("cost" in body) == (flavour == "opencode")


@pytest.mark.parametrize("flavour", ["openrouter", "opencode", "kimi"])
async def test_stream_framing(make_stub: MakeStub, http: Any, flavour: str) -> None:
    stub = await make_stub(flavour)
    status, headers, raw = await chat(
        http, stub, {"model": MODEL[flavour], "messages": HI, "stream": True}
    )
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    comments, data = events(raw)
    done = data.index("[DONE]")
    chunks = data[:done]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == ANSWER
    assert "".join(d.get(REASONING[flavour], "") for d in deltas).startswith("The user")
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finishing] == ["stop"]
    if flavour == "openrouter":
        # Keep-alive comments come before the first data event.
        assert comments == [": OPENROUTER PROCESSING"] * 2 and raw.startswith(b": ")
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 25
        assert data[-1] == "[DONE]"
    if flavour == "opencode":
        # Zen appends its cost event after the upstream's [DONE].
        assert chunks[-1]["usage"]["total_tokens"] == 25
        assert data[done + 1]["choices"] == [] and data[done + 1]["cost"]
        assert len(data) == done + 2
    if flavour == "kimi":
        assert comments == [] and data[-1] == "[DONE]"
        assert finishing[0]["choices"][0]["usage"]["total_tokens"] == 25
        assert not any("usage" in c for c in chunks)


async def test_include_usage_adds_usage_chunk(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("kimi")
    body = {
        "model": "kimi-for-coding",
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, data = events((await chat(http, stub, body))[2])
    assert data[-2]["choices"] == [] and data[-2]["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize(
    ("flavour", "cap"),
    [
        ("openrouter", "max_tokens"),
        ("opencode", "max_tokens"),
        ("kimi", "max_completion_tokens"),
        ("kimi", "max_tokens"),
    ],
)
async def test_token_cap(make_stub: MakeStub, http: Any, flavour: str, cap: str) -> None:
    stub = await make_stub(flavour)
    status, _, raw = await chat(http, stub, {"model": MODEL[flavour], "messages": HI, cap: 5})
    assert status == 200
    choice = json.loads(raw)["choices"][0]
    # Reasoning eats the whole budget: empty content, cut for length.
    assert choice["message"]["content"] == "" and choice["finish_reason"] == "length"
    assert json.loads(raw)["usage"]["completion_tokens"] == 5


async def test_cap_field_per_flavour(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("openrouter")
    body = {"model": "openai/gpt-4o-mini", "messages": HI, "max_completion_tokens": 2}
    choice = json.loads((await chat(http, stub, body))[2])["choices"][0]
    assert choice["finish_reason"] == "stop" and "reasoning" not in choice["message"]
    body = {"model": "openai/gpt-4o-mini", "messages": HI, "max_tokens": 2}
    choice = json.loads((await chat(http, stub, body))[2])["choices"][0]
    assert choice["message"]["content"] == "Hello from " and choice["finish_reason"] == "length"


async def test_reasoning_switches(make_stub: MakeStub, http: Any) -> None:
    router = await make_stub("openrouter")
    model = MODEL["openrouter"]
    off = json.loads(
        (
            await chat(
                http, router, {"model": model, "messages": HI, "reasoning": {"enabled": False}}
            )
        )[2]
    )
    assert "reasoning" not in off["choices"][0]["message"] and off["usage"]["total_tokens"] == 12
    hidden = json.loads(
        (
            await chat(
                http, router, {"model": model, "messages": HI, "reasoning": {"exclude": True}}
            )
        )[2]
    )
    assert "reasoning" not in hidden["choices"][0]["message"]
    assert hidden["usage"]["completion_tokens_details"]["reasoning_tokens"] == 13
    kimi = await make_stub("kimi")
    off = json.loads(
        (
            await chat(
                http,
                kimi,
                {"model": "kimi-for-coding", "messages": HI, "thinking": {"type": "disabled"}},
            )
        )[2]
    )
    assert "reasoning_content" not in off["choices"][0]["message"]


async def test_json_mode(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("opencode")
    body = {"model": "big-pickle", "messages": HI, "response_format": {"type": "json_object"}}
    content = json.loads((await chat(http, stub, body))[2])["choices"][0]["message"]["content"]
    assert json.loads(content) == {"reply": ANSWER}
    body["response_format"] = {
        "type": "json_schema",
        "json_schema": {
            "name": "x",
            "schema": {"type": "object", "properties": {"a": {"type": "boolean"}}},
        },
    }
    content = json.loads((await chat(http, stub, body))[2])["choices"][0]["message"]["content"]
    assert json.loads(content) == {"a": True}


@pytest.mark.parametrize(
    ("flavour", "status", "body"),
    [
        (
            "openrouter",
            400,
            {"error": {"code": 400, "message": "nope/x is not a valid model ID", "metadata": {}}},
        ),
        (
            "opencode",
            401,
            {
                "type": "error",
                "error": {"type": "ModelError", "message": "Model nope/x not supported"},
            },
        ),
        (
            "kimi",
            404,
            {
                "error": {
                    "message": "Not found the model nope/x or Permission denied",
                    "type": "resource_not_found_error",
                }
            },
        ),
    ],
)
async def test_unknown_model(
    make_stub: MakeStub, http: Any, flavour: str, status: int, body: Any
) -> None:
    stub = await make_stub(flavour)
    got, headers, raw = await chat(http, stub, {"model": "nope/x", "messages": HI})
    assert (got, json.loads(raw)) == (status, body)
    assert headers["Content-Type"] == "application/json"


async def test_openrouter_defaults_missing_model(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("openrouter")
    status, headers, raw = await chat(http, stub, {"messages": HI})
    assert status == 200 and json.loads(raw)["model"] == "moonshotai/kimi-k2.6"
    assert headers["X-Generation-Id"] == json.loads(raw)["id"]
    assert json.loads(raw)["id"].startswith("gen-")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "kimi-for-coding"},
        {"model": "kimi-for-coding", "messages": []},
        {"messages": HI},
        {"model": "kimi-for-coding", "messages": HI, "max_tokens": 0},
        {"model": "kimi-for-coding", "messages": HI, "response_format": {"type": "yaml"}},
        {"model": "kimi-for-coding", "messages": HI, "stream": "yes"},
    ],
)
async def test_bad_requests(make_stub: MakeStub, http: Any, body: Any) -> None:
    stub = await make_stub("kimi")
    status, _, raw = await chat(http, stub, body)
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


async def test_kimi_fixed_sampling(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("kimi")
    base = {"model": "kimi-for-coding", "messages": HI}
    status, _, raw = await chat(http, stub, {**base, "temperature": 0.5})
    assert status == 400
    assert (
        json.loads(raw)["error"]["message"]
        == "invalid temperature: only 1 is allowed for this model"
    )
    assert (await chat(http, stub, {**base, "temperature": 1, "top_p": 0.95}))[0] == 200


@pytest.mark.parametrize(
    ("flavour", "body"),
    [
        (
            "openrouter",
            {"error": {"code": 401, "message": "No auth credentials found", "metadata": {}}},
        ),
        (
            "opencode",
            {"type": "error", "error": {"type": "AuthError", "message": "Invalid API key."}},
        ),
        (
            "kimi",
            {
                "error": {
                    "type": "invalid_authentication_error",
                    "message": (
                        "The API Key appears to be invalid or may have expired. "
                        "Please verify your credentials and try again."
                    ),
                }
            },
        ),
    ],
)
async def test_key_required(make_stub: MakeStub, http: Any, flavour: str, body: Any) -> None:
    stub = await make_stub(flavour, key="k")
    req = {"model": MODEL[flavour], "messages": HI}
    for headers in ({"X-Other": "1"}, {"Authorization": "Bearer nope"}):
        status, _, raw = await chat(http, stub, req, headers)
        assert (status, json.loads(raw)) == (401, body)
    assert (await chat(http, stub, req))[0] == 200


@pytest.mark.parametrize("flavour", ["openrouter", "opencode", "kimi"])
async def test_hosted_flavours_need_some_key_when_none_is_set(
    make_stub: MakeStub, http: Any, flavour: str
) -> None:
    stub = await make_stub(flavour)
    req = {"model": MODEL[flavour], "messages": HI}
    for headers in ({"X-Other": "1"}, {"Authorization": "Bearer "}, {"Authorization": "k"}):
        assert (await chat(http, stub, req, headers))[0] == 401
    assert (await chat(http, stub, req, {"Authorization": "Bearer whatever"}))[0] == 200


async def test_models_listing_and_its_auth(make_stub: MakeStub, http: Any) -> None:
    router = await make_stub("openrouter", key="k")
    async with http.get(router.base_url + "/models") as resp:  # public catalogue
        ids = [m["id"] for m in (await resp.json())["data"]]
    assert ids == list(router.catalog.names)
    kimi = await make_stub("kimi", key="k")
    async with http.get(kimi.base_url + "/models") as resp:
        assert resp.status == 401
    async with http.get(kimi.base_url + "/models", headers=AUTH) as resp:
        models = (await resp.json())["data"]
    assert models[0]["id"] == "kimi-for-coding" and models[0]["supports_reasoning"] is True


async def test_kimi_client_gate(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("kimi", require_user_agent="KimiCLI/")
    req = {"model": "kimi-for-coding", "messages": HI}
    status, _, raw = await chat(http, stub, req, {**AUTH, "User-Agent": "chatd/0.1"})
    assert status == 403
    error = json.loads(raw)["error"]
    assert error["type"] == "access_terminated_error"
    assert "only available for Coding Agents" in error["message"]
    assert (await chat(http, stub, req, {**AUTH, "User-Agent": "KimiCLI/1.2"}))[0] == 200
