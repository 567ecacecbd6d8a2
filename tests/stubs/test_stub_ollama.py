"""The Ollama and Ollama Cloud stubs against docs/protocols.md §1-2, over real sockets."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from lakehouse.stubs import Fault
from tests.stubs.conftest import MakeStub

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "hi there"}]


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, str, bytes]:
    async with http.post(url, json=body, **kw) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def lines(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode().split("\n")[:-1]]


async def test_streams_ndjson_when_stream_is_absent(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    status, ctype, raw = await post(
        http, stub.base_url + "/api/chat", {"model": "qwen3.5", "messages": HI}
    )
    assert (status, ctype) == (200, "application/x-ndjson")
    objs = lines(raw)
    *deltas, final = objs
    assert all(o["done"] is False and "done_reason" not in o for o in deltas)
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (
        "".join(o["message"]["content"] for o in objs) == "Hello from the stub. You said: hi there"
    )
    thinking = "".join(o["message"].get("thinking", "") for o in objs)
    assert thinking.startswith("The user wrote 2 words")
    # Reasoning deltas come before any content.
    first_content = next(i for i, o in enumerate(deltas) if o["message"]["content"])
    assert all("thinking" not in o["message"] for o in deltas[first_content:])
    assert final["eval_count"] == len(deltas) and final["prompt_eval_count"] == 2
    assert final["model"] == "qwen3.5"


async def test_whole_reply_when_stream_false(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    url = stub.base_url + "/api/chat"
    body = {"model": "qwen3.5:latest", "messages": HI, "stream": False}
    status, ctype, raw = await post(http, url, body)
    assert (status, ctype) == (200, "application/json; charset=utf-8")
    reply = json.loads(raw)
    assert reply["message"]["content"] == "Hello from the stub. You said: hi there"
    assert reply["message"]["thinking"]
    assert reply["done"] is True and reply["done_reason"] == "stop"
    for name in (
        "prompt_eval_count",
        "eval_count",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ):
        assert isinstance(reply[name], int) and reply[name] > 0, name
    # Warm now: a zero load_duration is omitted, not sent as 0.
    again = json.loads((await post(http, url, body))[2])
    assert "load_duration" not in again


async def test_think_false_and_num_predict(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    url = stub.base_url + "/api/chat"
    base = {"model": "qwen3", "messages": HI, "stream": False}
    off = json.loads((await post(http, url, {**base, "think": False}))[2])
    assert "thinking" not in off["message"] and off["eval_count"] == 8
    # Thinking spends the budget first: empty content, cut for length.
    starved = json.loads((await post(http, url, {**base, "options": {"num_predict": 5}}))[2])
    assert starved["message"]["content"] == "" and starved["done_reason"] == "length"
    assert starved["eval_count"] == 5
    capped = json.loads(
        (await post(http, url, {**base, "think": False, "options": {"num_predict": 3}}))[2]
    )
    assert capped["message"]["content"] == "Hello from the "
    assert capped["done_reason"] == "length" and capped["eval_count"] == 3


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (
            {"model": "llama3.2", "messages": HI, "think": True},
            400,
            '"llama3.2" does not support thinking',
        ),
        ({"model": "qwen3", "messages": HI, "think": "extreme"}, 400, "invalid think value"),
        ({"messages": HI}, 400, "model is required"),
        ({"model": "  ", "messages": HI}, 400, "model is required"),
        ({"model": "nope", "messages": HI}, 404, "model 'nope' not found"),
        (
            {"model": "qwen3", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            400,
            "cannot unmarshal array",
        ),
        ({"model": "qwen3", "messages": HI, "options": {"num_predict": "9"}}, 400, "num_predict"),
        ({"model": "qwen3", "messages": HI, "format": "xml"}, 400, "invalid format"),
    ],
)
async def test_validation(
    make_stub: MakeStub, http: Any, body: Any, status: int, error: str
) -> None:
    stub = await make_stub()
    got, ctype, raw = await post(http, stub.base_url + "/api/chat", body)
    assert (got, ctype) == (status, "application/json; charset=utf-8")
    assert error in json.loads(raw)["error"]


async def test_missing_and_bad_body(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    for data, error in ((b"", "missing request body"), (b"{nope", "")):
        async with http.post(stub.base_url + "/api/chat", data=data) as resp:
            assert resp.status == 400
            assert error in (await resp.json())["error"]


async def test_think_levels_and_non_thinking_model(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    url = stub.base_url + "/api/chat"
    high = json.loads(
        (
            await post(
                http, url, {"model": "qwen3", "messages": HI, "stream": False, "think": "high"}
            )
        )[2]
    )
    assert high["message"]["thinking"]
    plain = json.loads(
        (await post(http, url, {"model": "llama3.2", "messages": HI, "stream": False}))[2]
    )
    assert "thinking" not in plain["message"]


async def test_json_format(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    url = stub.base_url + "/api/chat"
    body = {"model": "llama3.2", "messages": HI, "stream": False, "format": "json"}
    content = json.loads((await post(http, url, body))[2])["message"]["content"]
    assert json.loads(content) == {"reply": "Hello from the stub. You said: hi there"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    content = json.loads((await post(http, url, {**body, "format": schema}))[2])
    assert set(json.loads(content["message"]["content"])) == {"n", "s"}


async def test_generate(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    url = stub.base_url + "/api/generate"
    whole = json.loads(
        (await post(http, url, {"model": "llama3.2", "prompt": "why blue", "stream": False}))[2]
    )
    assert whole["response"] == "Hello from the stub. You said: why blue"
    assert whole["done_reason"] == "stop" and whole["context"]
    status, ctype, raw = await post(http, url, {"model": "qwen3", "prompt": "why blue"})
    assert (status, ctype) == (200, "application/x-ndjson")
    objs = lines(raw)
    assert "".join(o["response"] for o in objs) == "Hello from the stub. You said: why blue"
    assert "".join(o.get("thinking", "") for o in objs)
    assert objs[-1]["done"] is True and objs[-1]["response"] == ""


async def test_empty_messages_load_and_unload(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    url = stub.base_url + "/api/chat"
    load = json.loads((await post(http, url, {"model": "qwen3", "messages": []}))[2])
    assert load["done_reason"] == "load" and load["done"] is True
    async with http.get(stub.base_url + "/api/ps") as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == ["qwen3:latest"]
    unload = json.loads(
        (await post(http, url, {"model": "qwen3", "messages": [], "keep_alive": 0}))[2]
    )
    assert unload["done_reason"] == "unload"


async def test_health_and_listings(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    async with http.get(stub.base_url + "/") as resp:
        assert await resp.text() == "Ollama is running"
    async with http.head(stub.base_url + "/") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.get(stub.base_url + "/api/version") as resp:
        assert (await resp.json())["version"].count(".") == 2
    async with http.get(stub.base_url + "/api/tags") as resp:
        names = [m["name"] for m in (await resp.json())["models"]]
    assert names == ["qwen3.5:latest", "qwen3:latest", "llama3.2:latest"]
    async with http.post(stub.base_url + "/api/show", json={"model": "qwen3"}) as resp:
        assert "thinking" in (await resp.json())["capabilities"]
    async with http.post(stub.base_url + "/api/show", json={"model": "llama3.2"}) as resp:
        assert "thinking" not in (await resp.json())["capabilities"]
    async with http.post(stub.base_url + "/api/show", json={"model": "x"}) as resp:
        assert resp.status == 404


async def test_custom_models_and_thinking(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub(models=["tiny:1b", "org/big"], thinking=["org/big"])
    url = stub.base_url + "/api/chat"
    assert (
        await post(
            http, url, {"model": "ORG/big:latest", "messages": HI, "stream": False, "think": True}
        )
    )[0] == 200
    assert (await post(http, url, {"model": "tiny:1b", "messages": HI, "think": True}))[0] == 400
    assert (await post(http, url, {"model": "qwen3", "messages": HI}))[0] == 404


async def test_cloud_needs_key_and_bare_names(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("ollama_cloud", key="sekrit")
    assert stub.base_url == stub.origin and stub.base_url.startswith("http://127.0.0.1:")
    url = stub.base_url + "/api/chat"
    body = {"model": "gpt-oss:120b", "messages": HI, "stream": False}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "sekrit"}):
        status, _, raw = await post(http, url, body, headers=headers)
        assert (status, json.loads(raw)) == (401, {"error": "unauthorized"})
    auth = {"Authorization": "Bearer sekrit"}
    status, _, raw = await post(http, url, {**body, "think": False}, headers=auth)
    # GPT-OSS ignores boolean think: its trace cannot be switched off.
    assert status == 200 and json.loads(raw)["message"]["thinking"]
    for name in ("gpt-oss:120b-cloud", "gpt-oss:120b:cloud", "glm-5.2:cloud"):
        status, _, raw = await post(http, url, {**body, "model": name}, headers=auth)
        assert (status, json.loads(raw)) == (404, {"error": f'model "{name}" not found'})
    # The listing answers without a key, like ollama.com's.
    async with http.get(stub.base_url + "/api/tags") as resp:
        assert resp.status == 200


async def test_midstream_error_line(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub()
    stub.fail_next(Fault(kind="midstream_error", after=3))
    status, ctype, raw = await post(
        http, stub.base_url + "/api/chat", {"model": "qwen3", "messages": HI}
    )
    assert (status, ctype) == (200, "application/x-ndjson")
    objs = lines(raw)
    assert len(objs) == 4 and not any(o.get("done") for o in objs)
    assert objs[-1] == {"error": "an error was encountered while running the model"}
    # Without streaming the failure comes before the first byte: a real status.
    stub.fail_next(Fault(kind="midstream_error"))
    status, _, raw = await post(
        http, stub.base_url + "/api/chat", {"model": "qwen3", "messages": HI, "stream": False}
    )
    assert status == 500 and "error" in json.loads(raw)


async def test_tool_call_ids_are_fresh_per_call(make_stub: MakeStub, http: Any) -> None:
    # Ollama mints a random id for every call: the same call in two answers
    # (a loop calling one tool again) never shares an id.
    stub = await make_stub()
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "qwen3.5", "messages": HI, "stream": False, "tools": [tool]}
    ids = []
    for _ in range(2):
        status, _, raw = await post(http, stub.base_url + "/api/chat", body)
        assert status == 200
        ids += [c["id"] for c in json.loads(raw)["message"]["tool_calls"]]
    assert len(ids) == 2 and ids[0] != ids[1] and all(i.startswith("call_") for i in ids)
