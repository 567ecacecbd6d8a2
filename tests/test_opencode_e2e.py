"""OpenCode Zen's whole catalogue through the real server against the Zen
stub: each model family reaches its own endpoint with that protocol's body,
and everything maps back (content, reasoning, tokens, endings, streams,
errors), through native ``/chat`` and the official ``openai`` SDK. Also the
OpenCode Go table and Kimi's Anthropic-compatible endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from lakehouse.stubs import Fault, StubUpstream
from lakehouse.stubs.replies import reply_text
from lakehouse.stubs.tool_use import results_answer
from lakehouse.upstreams.anthropic_messages_request import JSON_INSTRUCTION
from tests.support import ROOT, make_config, running_chatd

pytestmark = pytest.mark.anyio

ZEN_KEY = "zen-key-0123456789abcdef"
KIMI_KEY = "sk-kimi-0123456789abcdef"
ENV = {"OPENCODE_KEY": ZEN_KEY, "KIMI_KEY": KIMI_KEY}
SAID = "hello there friend"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": SAID}]
ZEN_MODELS = ["glm-5.2", "claude-opus-4-7", "gpt-5.4", "gemini-3-pro", "minimax-m3-beta"]
# model → the path it must reach on the Zen stub
FAMILIES = {
    "claude-opus-4-7": "/zen/v1/messages",
    "gpt-5.4": "/zen/v1/responses",
    "glm-5.2": "/zen/v1/chat/completions",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class World:
    base: str
    zen: StubUpstream
    go: StubUpstream
    kimi: StubUpstream

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as client:
            return await client.post("/chat", json={"model": model, "messages": HELLO, **extra})

    async def lines(self, model: str, **extra: Any) -> tuple[int, list[Any]]:
        body = {"model": model, "messages": HELLO, "stream": True, **extra}
        async with (
            httpx.AsyncClient(base_url=self.base, timeout=30) as client,
            client.stream("POST", "/chat", json=body) as resp,
        ):
            raw = await resp.aread()
        return resp.status_code, [json.loads(line) for line in raw.splitlines() if line]


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    zen = StubUpstream("opencode", key=ZEN_KEY, models=ZEN_MODELS)
    go = StubUpstream("opencode_go", key=ZEN_KEY)
    kimi = StubUpstream("kimi", key=KIMI_KEY, models=["kimi-for-coding"])
    try:
        overrides: dict[str, Any] = {
            "chatd.probe_interval_secs": 0,
            "chatd.timeout_secs": 5,
            "chatd.retry.attempts": 0,
            "chatd.failure_threshold": 1000,
            "chatd.providers.opencode.base_url": await zen.start(),
            "chatd.providers.opencode.key_env": "OPENCODE_KEY",
            # A family Zen adds later: one line of config, no code.
            "chatd.providers.opencode.options": {
                "routes": [{"match": "minimax-m3-*", "endpoint": "messages"}]
            },
            "chatd.providers.opencode_go.plugin": "opencode",
            "chatd.providers.opencode_go.base_url": await go.start(),
            "chatd.providers.opencode_go.key_env": "OPENCODE_KEY",
            "chatd.providers.opencode_go.headers": {"x-opencode-session": "chatd-test"},
            "chatd.providers.opencode_go.options": {
                "routes": [{"match": "minimax-*", "endpoint": "messages"}]
            },
            "chatd.providers.kimi_claude.plugin": "kimi_anthropic",
            "chatd.providers.kimi_claude.base_url": await kimi.start(),
            "chatd.providers.kimi_claude.key_env": "KIMI_KEY",
        }
        async with running_chatd(make_config(overrides=overrides), ENV) as base:
            yield World(base, zen, go, kimi)
    finally:
        for stub in (zen, go, kimi):
            await stub.stop()


@pytest.fixture(autouse=True)
def clean(world: World) -> None:
    for stub in (world.zen, world.go, world.kimi):
        stub.clear_faults()
        stub.received.clear()


@pytest.mark.parametrize(("model", "path"), FAMILIES.items())
async def test_each_family_reaches_its_endpoint(world: World, model: str, path: str) -> None:
    resp = await world.chat(f"opencode/{model}", max_tokens=50)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["provider"] == "opencode"
    assert body["content"] == reply_text(SAID)
    assert body["done_reason"] == "stop"
    # A stub token is a word; glm reasons by default, and reasoning is billed.
    thought = len((body.get("reasoning") or "").split())
    assert body["prompt_tokens"] == 5 and body["completion_tokens"] == 9 + thought
    (sent,) = world.zen.chats
    assert (sent.method, sent.path) == ("POST", path)
    assert sent.json["model"] == model
    assert sent.json["stream"] is False


async def test_messages_body(world: World) -> None:
    resp = await world.chat("opencode/claude-opus-4-7", temperature=0.2, stop=["END"])
    assert resp.status_code == 200, resp.text
    (sent,) = world.zen.chats
    assert sent.headers["x-api-key"] == ZEN_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-opus-4-7",
        "system": "be brief",
        "messages": [{"role": "user", "content": SAID}],
        # Messages requires max_tokens: the configured default.
        "max_tokens": 4096,
        "stream": False,
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }


async def test_responses_body(world: World) -> None:
    resp = await world.chat("opencode/gpt-5.4", max_tokens=40, temperature=0.2)
    assert resp.status_code == 200, resp.text
    (sent,) = world.zen.chats
    assert sent.headers["authorization"] == f"Bearer {ZEN_KEY}"
    # GPT-5 refuses temperature: it is not sent.
    assert sent.json == {
        "model": "gpt-5.4",
        "instructions": "be brief",
        "input": [{"type": "message", "role": "user", "content": SAID}],
        "max_output_tokens": 40,
        "stream": False,
        "store": False,
    }


async def test_json_format_on_both(world: World) -> None:
    for model in ("claude-opus-4-7", "gpt-5.4"):
        resp = await world.chat(f"opencode/{model}", format="json")
        assert resp.status_code == 200, resp.text
        assert json.loads(resp.json()["content"]) == {"reply": reply_text(SAID)}
    claude, gpt = world.zen.chats
    assert claude.json["system"] == f"be brief\n\n{JSON_INSTRUCTION}"
    assert gpt.json["text"] == {"format": {"type": "json_object"}}


async def test_reasoning_stays_out_of_content(world: World) -> None:
    for model in ("claude-opus-4-7", "gpt-5.4"):
        resp = await world.chat(f"opencode/{model}", think=True, max_tokens=2000)
        body = resp.json()
        assert resp.status_code == 200, resp.text
        assert body["content"] == reply_text(SAID)
        assert body["reasoning"].startswith("The user wrote 3 words")
        assert body["completion_tokens"] > 9
    claude, gpt = world.zen.chats
    assert claude.json["thinking"] == {"type": "enabled", "budget_tokens": 1999}
    assert gpt.json["reasoning"] == {"effort": "medium", "summary": "auto"}


@pytest.mark.parametrize(
    ("model", "think", "sent"),
    [("claude-opus-4-7", None, 5), ("gpt-5.4", "low", 16)],
)
async def test_cut_by_the_cap_is_length(
    world: World, model: str, think: str | None, sent: int
) -> None:
    resp = await world.chat(f"opencode/{model}", max_tokens=5, think=think)
    body = resp.json()
    assert resp.status_code == 200, resp.text
    assert body["done_reason"] == "length"
    assert body["completion_tokens"] == sent
    # Responses refuses a cap under 16: chatd raises it.
    cap = world.zen.chats[-1].json
    assert cap.get("max_tokens", cap.get("max_output_tokens")) == sent


@pytest.mark.parametrize("model", list(FAMILIES))
async def test_native_stream(world: World, model: str) -> None:
    status, lines = await world.lines(f"opencode/{model}", think=True, max_tokens=3000)
    assert status == 200
    *deltas, last = lines
    assert last["done"] is True and last["provider"] == "opencode"
    assert len(deltas) > 3
    assert "".join(d.get("content", "") for d in deltas) == last["content"] == reply_text(SAID)
    if model != "glm-5.2":
        assert "".join(d.get("reasoning", "") for d in deltas) == last["reasoning"]
    assert last["prompt_tokens"] == 5 and last["completion_tokens"] > 9
    assert world.zen.chats[-1].json["stream"] is True


async def test_sdk_through_claude_and_gpt(world: World) -> None:
    async with openai.AsyncOpenAI(
        base_url=world.base + "/v1", api_key="x", max_retries=0
    ) as client:
        for model in ("opencode/claude-opus-4-7", "opencode/gpt-5.4"):
            answer = await client.chat.completions.create(model=model, messages=HELLO)
            assert answer.choices[0].message.content == reply_text(SAID)
            assert answer.choices[0].finish_reason == "stop"
            assert answer.usage is not None and answer.usage.completion_tokens == 9
            stream = await client.chat.completions.create(
                model=model,
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage = [], None
            async for chunk in stream:
                text += [c.delta.content or "" for c in chunk.choices]
                usage = chunk.usage or usage
            assert "".join(text) == reply_text(SAID)
            assert usage is not None and usage.prompt_tokens == 5
    assert [c.path for c in world.zen.chats] == [
        "/zen/v1/messages",
        "/zen/v1/messages",
        "/zen/v1/responses",
        "/zen/v1/responses",
    ]


async def test_gemini_is_a_clear_400(world: World) -> None:
    resp = await world.chat("opencode/gemini-3-pro")
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "bad_request"
    assert "Gemini" in error["message"] and "gemini-3-pro" in error["message"]
    assert world.zen.received == []


async def test_a_configured_rule_routes_a_new_family(world: World) -> None:
    resp = await world.chat("opencode/minimax-m3-beta", max_tokens=50)
    assert resp.status_code == 200, resp.text
    assert [c.path for c in world.zen.chats] == ["/zen/v1/messages"]


ZEN_FAULTS = [
    # (fault, chatd status, chatd code)
    (Fault(kind="quota"), 502, "upstream_quota"),
    (Fault(kind="status", status=401, error_type="AuthError"), 502, "upstream_auth"),
    (Fault(kind="status", status=401, error_type="ModelError"), 502, "upstream_rejected"),
    (Fault(kind="status", status=529, error_type="overloaded_error"), 502, "upstream_error"),
    (Fault(kind="status", status=429, retry_after="7"), 502, "upstream_rate_limited"),
    (Fault(kind="garbage"), 502, "upstream_bad_response"),
]


@pytest.mark.parametrize(("fault", "status", "code"), ZEN_FAULTS)
@pytest.mark.parametrize("model", list(FAMILIES))
async def test_zen_errors_map_on_every_endpoint(
    world: World, model: str, fault: Fault, status: int, code: str
) -> None:
    world.zen.fail_next(fault)
    resp = await world.chat(f"opencode/{model}")
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert ZEN_KEY not in resp.text
    if fault.retry_after:
        assert resp.headers["retry-after"] == "7"


@pytest.mark.parametrize("model", ["claude-opus-4-7", "gpt-5.4"])
async def test_midstream_error_in_the_callers_framing(world: World, model: str) -> None:
    world.zen.fail_next(Fault(kind="midstream_error", after=5, message="GPU fell over"))
    status, lines = await world.lines(f"opencode/{model}")
    assert status == 200
    *deltas, last = lines
    assert deltas and all("content" in d for d in deltas)
    assert last["error"]["code"] == "upstream_error"
    assert "GPU fell over" in last["error"]["message"]


@pytest.mark.parametrize("model", ["claude-opus-4-7", "gpt-5.4"])
async def test_a_stream_cut_short_is_a_bad_response(world: World, model: str) -> None:
    world.zen.fail_next(Fault(kind="truncate", after=4))
    status, lines = await world.lines(f"opencode/{model}")
    assert status == 200
    assert lines[-1]["error"]["code"] == "upstream_bad_response"


async def test_opencode_go_by_configuration(world: World) -> None:
    for model, path in (
        ("glm-5", "/zen/go/v1/chat/completions"),
        ("minimax-m2.5", "/zen/go/v1/messages"),
    ):
        resp = await world.chat(f"opencode_go/{model}", max_tokens=50)
        assert resp.status_code == 200, resp.text
        assert resp.json()["provider"] == "opencode_go"
        sent = world.go.chats[-1]
        assert sent.path == path
        assert sent.headers["x-opencode-session"] == "chatd-test"


async def test_kimi_anthropic_endpoint(world: World) -> None:
    resp = await world.chat("kimi_claude/kimi-for-coding", max_tokens=50)
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"] == reply_text(SAID)
    (sent,) = world.kimi.chats
    assert sent.path == "/coding/v1/messages"
    assert sent.headers["x-api-key"] == KIMI_KEY
    world.kimi.fail_next(Fault(kind="status", status=529))
    resp = await world.chat("kimi_claude/kimi-for-coding")
    assert resp.json()["error"]["code"] == "upstream_error"
    assert "overloaded_error" in resp.json()["error"]["message"]


# -- tools and images -------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": SAID}]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"
PHOTO = "https://example.test/cat.jpg"


@pytest.mark.parametrize("model", ["claude-opus-4-7", "gpt-5.4"])
async def test_tool_call_and_result_round_trip(world: World, model: str) -> None:
    resp = await world.chat(f"opencode/{model}", messages=ASK, tools=[WEATHER])
    assert resp.status_code == 200, resp.text
    first = resp.json()
    assert first["done_reason"] == "tool_calls" and first["content"] == ""
    (call,) = first["tool_calls"]
    assert call["id"] and call["function"] == {
        "name": "get_weather",
        "arguments": {"city": SAID},
    }
    assert first["completion_tokens"] > 0
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny and warm"},
    ]
    resp = await world.chat(f"opencode/{model}", messages=history, tools=[WEATHER])
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["content"] == results_answer(["sunny and warm"])
    assert second["done_reason"] == "stop" and "tool_calls" not in second
    offer, answer = world.zen.chats
    if model.startswith("claude"):
        assert offer.json["tools"] == [
            {
                "name": "get_weather",
                "description": "The weather in a city.",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ]
        assert answer.json["messages"][1:] == [
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": "get_weather",
                        "input": {"city": SAID},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny and warm"}
                ],
            },
        ]
    else:
        assert offer.json["tools"] == [
            {
                "type": "function",
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["function"]["parameters"],
                # Responses defaults strict to true: sent as the caller set it.
                "strict": False,
            }
        ]
        assert answer.json["input"][1:] == [
            {
                "type": "function_call",
                "call_id": call["id"],
                "name": "get_weather",
                "arguments": json.dumps({"city": SAID}, separators=(",", ":")),
            },
            {"type": "function_call_output", "call_id": call["id"], "output": "sunny and warm"},
        ]


@pytest.mark.parametrize("model", ["claude-opus-4-7", "gpt-5.4"])
async def test_streamed_parallel_tool_calls(world: World, model: str) -> None:
    # The stub calls every tool when the user says "parallel".
    clock = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "additionalProperties": False,
            },
        },
    }
    ask = [{"role": "user", "content": "parallel please"}]
    status, lines = await world.lines(f"opencode/{model}", messages=ask, tools=[WEATHER, clock])
    assert status == 200
    last = lines[-1]
    assert last["done_reason"] == "tool_calls"
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in last["tool_calls"]] == [
        ("get_weather", {"city": "parallel please"}),
        ("get_time", {"zone": "parallel please"}),
    ]
    assert len({c["id"] for c in last["tool_calls"]}) == 2
    # Every delta line before the last carried part of the calls, not content.
    assert all("content" not in line for line in lines[:-1])


async def test_results_named_by_tool_name_pair_with_calls_without_ids(world: World) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": "snow"},
    ]
    for model in ("claude-opus-4-7", "gpt-5.4"):
        resp = await world.chat(f"opencode/{model}", messages=history, tools=[WEATHER])
        assert resp.status_code == 200, resp.text
        assert resp.json()["content"] == results_answer(["snow"])
    claude, gpt = world.zen.chats
    assert claude.json["messages"][1]["content"][0]["id"] == "call_1_0"
    assert claude.json["messages"][2]["content"][0]["tool_use_id"] == "call_1_0"
    assert gpt.json["input"][1]["call_id"] == gpt.json["input"][2]["call_id"] == "call_1_0"


CHOICES = [
    # (tool_choice, parallel_tool_calls, Messages' tool_choice, Responses' tool_choice)
    ("required", None, {"type": "any"}, "required"),
    ("none", None, {"type": "none"}, "none"),
    (
        {"type": "function", "function": {"name": "get_weather"}},
        False,
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        {"type": "function", "name": "get_weather"},
    ),
]


@pytest.mark.parametrize(("choice", "parallel", "messages", "responses"), CHOICES)
async def test_tool_choice(
    world: World, choice: Any, parallel: bool | None, messages: Any, responses: Any
) -> None:
    extra: dict[str, Any] = {"tools": [WEATHER], "tool_choice": choice, "messages": ASK}
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    for model in ("claude-opus-4-7", "gpt-5.4"):
        resp = await world.chat(f"opencode/{model}", **extra)
        assert resp.status_code == 200, resp.text
        assert (resp.json()["done_reason"] == "tool_calls") == (choice != "none")
    claude, gpt = world.zen.chats
    assert claude.json["tool_choice"] == messages
    assert gpt.json["tool_choice"] == responses
    assert gpt.json.get("parallel_tool_calls") == parallel


async def test_images_reach_both_in_their_own_shape(world: World) -> None:
    seeing = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ],
            "images": [PHOTO],
        }
    ]
    for model in ("claude-opus-4-7", "gpt-5.4"):
        resp = await world.chat(f"opencode/{model}", messages=seeing)
        assert resp.status_code == 200, resp.text
        assert resp.json()["content"] == reply_text("what is this")
    claude, gpt = world.zen.chats
    assert claude.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": PNG.split(",", 1)[1],
                    },
                },
                {"type": "image", "source": {"type": "url", "url": PHOTO}},
            ],
        }
    ]
    assert gpt.json["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "what is this"},
                {"type": "input_image", "image_url": PNG, "detail": "auto"},
                {"type": "input_image", "image_url": PHOTO, "detail": "auto"},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("claude-opus-4-7", "logprobs", True),
        ("claude-opus-4-7", "presence_penalty", 0.5),
        ("gpt-5.4", "logprobs", True),
        ("gpt-5.4", "stop", ["END"]),
        ("gpt-5.4", "frequency_penalty", 1.0),
    ],
)
async def test_what_a_protocol_cannot_carry_is_refused_before_the_upstream(
    world: World, model: str, field: str, value: Any
) -> None:
    resp = await world.chat(f"opencode/{model}", **{field: value})
    assert resp.status_code == 400
    assert resp.json()["error"]["path"] == f"$.{field}"
    assert world.zen.received == []


async def test_the_shipped_frontier_free_tier_reaches_claude_on_messages() -> None:
    # conf/lakehouse.toml as shipped, its opencode table pointed at the stub.
    text = (ROOT / "conf" / "lakehouse.toml").read_text()
    async with StubUpstream("opencode", key=ZEN_KEY) as zen:
        overrides = {
            "chatd.probe_interval_secs": 0,
            "chatd.providers.opencode.base_url": zen.base_url,
            "chatd.providers.opencode.key_file": "",
        }
        config = make_config(text, overrides=overrides)
        async with (
            running_chatd(config, {"OPENCODE_API_KEY": ZEN_KEY}) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            resp = await client.post("/chat", json={"model": "frontier_free", "messages": HELLO})
        assert resp.status_code == 200, resp.text
        assert (resp.json()["tier"], resp.json()["provider"]) == ("frontier_free", "opencode")
        (sent,) = zen.chats
        assert (sent.path, sent.json["model"]) == ("/zen/v1/messages", "claude-opus-4-7")


@pytest.mark.parametrize("model", ["opencode/claude-opus-4-7", "opencode/gpt-5.4"])
async def test_sdk_tool_calls_whole_and_streamed(world: World, model: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=world.base + "/v1", api_key="x", max_retries=0
    ) as client:
        answer = await client.chat.completions.create(
            model=model,
            messages=ASK,
            tools=[WEATHER],
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": SAID}
        stream = await client.chat.completions.create(
            model=model,
            messages=ASK,
            tools=[WEATHER],
            stream=True,
        )
        fragments, finish = [], None
        async for chunk in stream:
            for c in chunk.choices:
                fragments += [
                    t.function.arguments or ""
                    for t in c.delta.tool_calls or ()
                    if t.function is not None
                ]
                finish = c.finish_reason or finish
        # Relayed as the upstream sent them: the first with the name, then pieces.
        assert len(fragments) > 2
        assert json.loads("".join(fragments)) == {"city": SAID}
        assert finish == "tool_calls"
