"""``GET /openapi.json``: a valid OpenAPI 3.1 document for every route, whose
schemas (generated from the wire Structs) accept what the server sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from lakehouse.callers.openapi import document
from tests.stub_world import World, stub_world

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hello"}]
ROUTES = {
    "/chat": {"post"},
    "/v1/chat": {"post"},
    "/chat/providers": {"get"},
    "/v1/chat/providers": {"get"},
    "/health": {"get"},
    "/ready": {"get"},
    "/metrics": {"get"},
    "/admin/reload": {"post"},
    "/v1/chat/completions": {"post"},
    "/chat/completions": {"post"},
    "/v1/models": {"get"},
    "/models": {"get"},
    "/v1/models/{model}": {"get"},
    "/models/{model}": {"get"},
    "/openapi.json": {"get"},
}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_the_document_is_valid_openapi_3_1_covering_every_route() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert {path: set(ops) for path, ops in doc["paths"].items()} == ROUTES
    schemas = doc["components"]["schemas"]
    found = list(refs(doc))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_schemas_come_from_the_structs() -> None:
    schemas = document()["components"]["schemas"]
    chat = schemas["ChatRequest"]
    assert set(chat["required"]) == {"model", "messages"}
    assert {"stream", "stop", "seed", "top_p", "format", "think"} <= set(chat["properties"])
    completion = schemas["CompletionRequest"]["properties"]
    assert "tools" in completion and "response_format" in completion
    assert schemas["StreamDone"]["properties"]["done"] == {"enum": [True]}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with stub_world({"models.fast": "qwen3.5:latest"}) as w:
        yield w


TOOLS = [
    {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "g"}},
]


def check(doc: dict[str, Any], name: str, instance: Any) -> None:
    """``instance`` against a component schema, refs resolved in ``doc``."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


async def test_what_the_server_sends_fits_its_own_document(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.base) as client:
        resp = await client.get("/openapi.json")
        assert resp.status_code == 200
        doc = resp.json()
        assert doc == json.loads(json.dumps(document()))
        chat = {"model": "fast", "messages": HELLO}
        check(doc, "ChatResponse", (await client.post("/chat", json=chat)).json())
        streamed = await client.post("/chat", json={**chat, "stream": True})
        *deltas, done = [json.loads(line) for line in streamed.text.splitlines()]
        for delta in deltas:
            check(doc, "StreamLine", delta)
        check(doc, "StreamDone", done)
        tooled = {**chat, "messages": [{"role": "user", "content": "parallel x"}], "tools": TOOLS}
        check(doc, "ChatResponse", (await client.post("/chat", json=tooled)).json())
        streamed = await client.post("/chat", json={**tooled, "stream": True})
        *deltas, done = [json.loads(line) for line in streamed.text.splitlines()]
        assert any("tool_calls" in d for d in deltas) and "tool_calls" not in done
        for delta in deltas:
            check(doc, "StreamLine", delta)
        check(doc, "StreamDone", done)
        check(doc, "ChatRequest", tooled)
        completion = await client.post("/v1/chat/completions", json=tooled)
        assert completion.json()["choices"][0]["message"]["tool_calls"]
        check(doc, "ChatCompletion", completion.json())
        sse = await client.post("/v1/chat/completions", json={**tooled, "stream": True})
        events = [e.removeprefix("data: ") for e in sse.text.split("\n\n") if e]
        assert any("tool_calls" in e for e in events)
        for event in events[:-1]:
            check(doc, "ChatCompletionChunk", json.loads(event))
        check(doc, "ErrorBody", (await client.post("/chat", json={"model": 1})).json())
        check(doc, "ProvidersListing", (await client.get("/chat/providers")).json())
        check(doc, "Status", (await client.get("/ready")).json())
        completion = await client.post("/v1/chat/completions", json=chat)
        check(doc, "ChatCompletion", completion.json())
        sse = await client.post("/v1/chat/completions", json={**chat, "stream": True})
        events = [e.removeprefix("data: ") for e in sse.text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        for event in events[:-1]:
            check(doc, "ChatCompletionChunk", json.loads(event))
        bad = await client.post("/v1/chat/completions", json={**chat, "n": 3})
        check(doc, "OpenAIErrorBody", bad.json())
        check(doc, "ModelList", (await client.get("/v1/models")).json())
        check(doc, "Model", (await client.get("/v1/models/fast")).json())
        # And requests the decoders accept fit the request schemas.
        check(doc, "ChatRequest", {**chat, "stream": True, "stop": ["x"], "seed": 1})
        check(doc, "CompletionRequest", {**chat, "max_completion_tokens": 5, "stop": "x"})
