"""The Anthropic Messages dialect of the stubs (Zen's /messages, Kimi's
Anthropic-compatible endpoint) against docs/protocols/anthropic-messages.md."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from lakehouse.stubs import Fault
from lakehouse.stubs.replies import reply_text
from tests.stubs.conftest import MakeStub, poster

pytestmark = pytest.mark.anyio

KEY = "zen-key"
BODY = {
    "model": "claude-opus-4-7",
    "max_tokens": 100,
    "system": "be brief",
    "messages": [{"role": "user", "content": "hi there"}],
}


post = poster("/messages", {"x-api-key": KEY})


def events(raw: bytes) -> list[tuple[str, Any]]:
    """Each SSE block's event name and decoded data; the names must match
    the data's type, as Anthropic sends them."""
    out = []
    for block in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        out.append((name, data))
    return out


async def test_whole_message(make_stub: MakeStub, http: aiohttp.ClientSession) -> None:
    stub = await make_stub("opencode", key=KEY)
    status, headers, raw = await post(http, stub, BODY)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    message = json.loads(raw)
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": reply_text("hi there")}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] == 4
    assert message["usage"]["output_tokens"] == len(reply_text("hi there").split())


async def test_stream_framing(make_stub: MakeStub, http: aiohttp.ClientSession) -> None:
    stub = await make_stub("opencode", key=KEY)
    body = {
        **BODY,
        "stream": True,
        "max_tokens": 2000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    status, headers, raw = await post(http, stub, body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    names = [name for name, _ in events(raw)]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "[DONE]" not in raw.decode()
    deltas = [d["delta"] for n, d in events(raw) if n == "content_block_delta"]
    kinds = {d["type"] for d in deltas}
    assert kinds == {"thinking_delta", "signature_delta", "text_delta"}
    text = "".join(d.get("text", "") for d in deltas)
    assert text == reply_text("hi there")


def one_image(media_type: str, data: str) -> dict[str, Any]:
    """A request change: one user turn holding one base64 image."""
    source = {"type": "base64", "media_type": media_type, "data": data}
    return {"messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "greater than or equal to 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "must be greater than"),
        (
            {
                "max_tokens": 4000,
                "temperature": 0.5,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            "temperature",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}],
                    }
                ]
            },
            "tool_use_id",
        ),
        (
            one_image("image/tiff", "AAAA"),
            "media_type",
        ),
        (
            # PNG bytes said to be JPEG.
            one_image("image/jpeg", "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"),
            "appears to be a image/png image",
        ),
    ],
)
async def test_refusals_in_anthropics_envelope(
    make_stub: MakeStub, http: aiohttp.ClientSession, change: dict[str, Any], needle: str
) -> None:
    stub = await make_stub("kimi", key=KEY, models=["kimi-for-coding"])
    body = {**BODY, "model": "kimi-for-coding", **change}
    body = {k: v for k, v in body.items() if v is not None}
    status, _, raw = await post(http, stub, body)
    error = json.loads(raw)
    assert status == 400, raw
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert needle in error["error"]["message"]


async def test_key_in_x_api_key(make_stub: MakeStub, http: aiohttp.ClientSession) -> None:
    stub = await make_stub("kimi", key=KEY, models=["kimi-for-coding"])
    body = {**BODY, "model": "kimi-for-coding"}
    status, _, raw = await post(http, stub, body, {"Authorization": f"Bearer {KEY}"})
    assert status == 401
    # Kimi's own type name, in Anthropic's envelope.
    error = json.loads(raw)
    assert (error["type"], error["error"]["type"]) == ("error", "invalid_authentication_error")
    # Zen's own errors keep Zen's classes on /messages.
    zen = await make_stub("opencode", key=KEY)
    status, _, raw = await post(http, zen, BODY, {})
    assert status == 401 and json.loads(raw)["error"]["type"] == "AuthError"


async def test_overloaded_and_midstream_error(
    make_stub: MakeStub, http: aiohttp.ClientSession
) -> None:
    stub = await make_stub("kimi", key=KEY, models=["kimi-for-coding"])
    body = {**BODY, "model": "kimi-for-coding"}
    stub.fail_next(Fault(kind="status", status=529, retry_after="2"))
    status, headers, raw = await post(http, stub, body)
    assert status == 529 and headers["Retry-After"] == "2"
    assert json.loads(raw)["error"]["type"] == "overloaded_error"
    stub.fail_next(Fault(kind="midstream_error", after=3))
    status, _, raw = await post(http, stub, {**body, "stream": True})
    assert status == 200
    name, data = events(raw)[-1]
    assert name == "error" and data["error"]["type"] == "overloaded_error"


async def test_tool_use(make_stub: MakeStub, http: aiohttp.ClientSession) -> None:
    stub = await make_stub("opencode", key=KEY)
    tool = {
        "name": "f",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    status, _, raw = await post(http, stub, {**BODY, "tools": [tool]})
    message = json.loads(raw)
    assert status == 200 and message["stop_reason"] == "tool_use"
    (use,) = message["content"]
    assert (use["type"], use["name"], use["input"]) == ("tool_use", "f", {"q": "hi there"})
    status, _, raw = await post(http, stub, {**BODY, "tools": [tool], "stream": True})
    parts = [d["delta"]["partial_json"] for n, d in events(raw) if n == "content_block_delta"]
    assert json.loads("".join(parts)) == {"q": "hi there"}


async def test_opencode_go_wants_a_session(
    make_stub: MakeStub, http: aiohttp.ClientSession
) -> None:
    stub = await make_stub("opencode_go", key=KEY)
    body = {**BODY, "model": "minimax-m2.5"}
    status, _, raw = await post(http, stub, body)
    assert status == 400 and json.loads(raw)["error"]["type"] == "MissingSessionID"
    status, _, raw = await post(http, stub, body, {"x-api-key": KEY, "x-opencode-session": "s"})
    assert status == 200, raw
