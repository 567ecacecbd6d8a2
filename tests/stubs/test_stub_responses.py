"""The OpenAI Responses dialect of the stubs (Zen's /responses) against
docs/protocols/openai-responses.md."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from lakehouse.stubs import Fault, StubUpstream
from lakehouse.stubs.replies import reply_text
from tests.stubs.conftest import MakeStub

pytestmark = pytest.mark.anyio

KEY = "zen-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {
    "model": "gpt-5.4",
    "instructions": "be brief",
    "input": [{"role": "user", "content": "hi there"}],
}


async def post(http: aiohttp.ClientSession, stub: StubUpstream, body: Any) -> tuple[int, bytes]:
    async with http.post(stub.base_url + "/responses", json=body, headers=AUTH) as resp:
        return resp.status, await resp.read()


def events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name_line.removeprefix("event: ")
        out.append(data)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


async def test_whole_response(make_stub: MakeStub, http: aiohttp.ClientSession) -> None:
    stub = await make_stub("opencode", key=KEY)
    status, raw = await post(http, stub, BODY)
    response = json.loads(raw)
    assert status == 200 and response["object"] == "response"
    assert response["status"] == "completed"
    (message,) = response["output"]
    assert message["content"][0] == {
        "type": "output_text",
        "text": reply_text("hi there"),
        "annotations": [],
    }
    assert response["usage"]["input_tokens"] == 4


async def test_stream_ends_with_a_terminal_event(
    make_stub: MakeStub, http: aiohttp.ClientSession
) -> None:
    stub = await make_stub("opencode", key=KEY)
    body = {
        **BODY,
        "stream": True,
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 16,
    }
    status, raw = await post(http, stub, body)
    assert status == 200 and b"[DONE]" not in raw
    got = events(raw)
    assert got[0]["type"] == "response.created"
    assert got[-1]["type"] == "response.incomplete"
    assert got[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    kinds = {e["type"] for e in got}
    assert {"response.reasoning_summary_text.delta", "response.output_text.delta"} <= kinds


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"max_output_tokens": 10}, "below minimum value"),
        ({"temperature": 0.2}, "Unsupported parameter: 'temperature'"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "'tools[0].name'"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
            "additionalProperties",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "x", "output": "1"}]},
            "No tool call found",
        ),
    ],
)
async def test_refusals(
    make_stub: MakeStub, http: aiohttp.ClientSession, change: dict[str, Any], needle: str
) -> None:
    stub = await make_stub("opencode", key=KEY)
    status, raw = await post(http, stub, {**BODY, **change})
    assert status == 400, raw
    assert needle in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize(("error_type", "last"), [(None, "response.failed"), ("error", "error")])
async def test_midstream_failure(
    make_stub: MakeStub, http: aiohttp.ClientSession, error_type: str | None, last: str
) -> None:
    stub = await make_stub("opencode", key=KEY)
    stub.fail_next(Fault(kind="midstream_error", after=3, error_type=error_type))
    status, raw = await post(http, stub, {**BODY, "stream": True})
    assert status == 200
    assert events(raw)[-1]["type"] == last


async def test_function_call(make_stub: MakeStub, http: aiohttp.ClientSession) -> None:
    stub = await make_stub("opencode", key=KEY)
    tool = {
        "type": "function",
        "name": "f",
        "strict": False,
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    status, raw = await post(http, stub, {**BODY, "tools": [tool], "stream": True})
    assert status == 200
    got = events(raw)
    added = next(e for e in got if e["type"] == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    pieces = [e["delta"] for e in got if e["type"] == "response.function_call_arguments.delta"]
    assert json.loads("".join(pieces)) == {"q": "hi there"}
    assert got[-1]["type"] == "response.completed"
