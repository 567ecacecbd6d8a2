"""OpenCode Zen's whole catalogue through the real server against the Zen
stub: each model family reaches its own endpoint with that protocol's body,
and everything maps back (content, reasoning, tokens, endings, streams,
errors), through native ``/chat`` and the official ``openai`` SDK. Also the
OpenCode Go table and Kimi's Anthropic-compatible endpoint. Tools and
images: tests/test_opencode_tools_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from lakehouse.stubs import Fault, StubUpstream
from lakehouse.stubs.replies import reply_text
from lakehouse.upstreams.anthropic_messages_request import JSON_INSTRUCTION
from tests.support import ROOT, make_config, module_fixtures, running_chatd
from tests.zen_world import HELLO, KIMI_KEY, SAID, ZEN_KEY, World, zen_world

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

# model → the path it must reach on the Zen stub
FAMILIES = {
    "claude-opus-4-7": "/zen/v1/messages",
    "gpt-5.4": "/zen/v1/responses",
    "glm-5.2": "/zen/v1/chat/completions",
}


anyio_backend, world = module_fixtures(zen_world)


@pytest.fixture(autouse=True)
def clean(world: World) -> None:
    world.reset()


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
    # The last line repeats nothing the deltas said.
    assert "".join(d.get("content", "") for d in deltas) == reply_text(SAID)
    assert "content" not in last and "reasoning" not in last
    if model != "glm-5.2":
        assert "".join(d.get("reasoning", "") for d in deltas)
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
