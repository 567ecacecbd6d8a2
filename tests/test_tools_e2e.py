"""Tools and images through the real server, against every provider's
protocol stub: the calls each upstream makes in its own format, as chatd
answers them on both APIs (native /chat, and OpenAI's through the official
SDK), and what the second turn and images look like when they reach each
upstream."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.stub_world import MODELS, World, stub_world
from tests.support import module_fixtures

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

PROVIDERS = list(MODELS)
OPENAI_STYLE = ["openrouter", "opencode", "kimi"]
OLLAMA_STYLE = ["ollama", "ollama_cloud"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "Paris"}]
ASK_PARALLEL = [{"role": "user", "content": "parallel Paris"}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


anyio_backend, world = module_fixtures(stub_world)


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    world.reset()
    async with httpx.AsyncClient(base_url=world.base, timeout=30) as client:
        yield client


@pytest.fixture
async def sdk(world: World, http: httpx.AsyncClient) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=world.base + "/v1", api_key="x", max_retries=0) as c:
        yield c


def sent(world: World, name: str) -> dict[str, Any]:
    """The body of the last chat call that reached provider ``name``."""
    body = world.stubs[name].chats[-1].json
    assert isinstance(body, dict)
    return body


async def chat(
    http: httpx.AsyncClient,
    name: str,
    messages: list[Any] = ASK,
    *,
    status: int = 200,
    **fields: Any,
) -> httpx.Response:
    """A native /chat to provider ``name``'s model, its status checked."""
    reply = await http.post("/chat", json={"model": MODELS[name], "messages": messages, **fields})
    assert reply.status_code == status, reply.text
    return reply


async def sdk_chat(
    sdk: openai.AsyncOpenAI, name: str, messages: Any = ASK, **fields: Any
) -> ChatCompletion:
    """A completion from provider ``name``'s model through the SDK."""
    completion: ChatCompletion = await sdk.chat.completions.create(
        model=MODELS[name], messages=messages, **fields
    )
    return completion


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


# -- native /chat ------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
async def test_native_single_call(http: httpx.AsyncClient, world: World, name: str) -> None:
    body = (await chat(http, name, tools=[WEATHER, TIME])).json()
    assert body["done_reason"] == "tool_calls"
    (call,) = body["tool_calls"]
    assert call["id"] and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert [t["function"]["name"] for t in sent(world, name)["tools"]] == [
        "get_weather",
        "get_time",
    ]


@pytest.mark.parametrize("name", PROVIDERS)
async def test_native_parallel_calls_streamed(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    reply = await chat(http, name, ASK_PARALLEL, tools=[WEATHER, TIME], stream=True)
    lines = ndjson(reply.text)
    streamed = [c for line in lines[:-1] for c in line.get("tool_calls", [])]
    done = lines[-1]
    assert done["done"] is True and done["done_reason"] == "tool_calls"
    assert [c["function"] for c in streamed] == [
        {"name": "get_weather", "arguments": {"city": "parallel Paris"}},
        {"name": "get_time", "arguments": {"zone": "parallel Paris"}},
    ]
    # Each call once: the done line does not repeat them.
    assert "tool_calls" not in done
    assert len({c["id"] for c in streamed}) == 2


@pytest.mark.parametrize("name", PROVIDERS)
async def test_native_no_parallel_calls_when_asked(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    reply = await chat(http, name, ASK_PARALLEL, tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert [c["function"]["name"] for c in reply.json()["tool_calls"]] == ["get_weather"]


def second_turn(call_id: str) -> list[dict[str, Any]]:
    return [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": call_id, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"},
    ]


@pytest.mark.parametrize("name", PROVIDERS)
async def test_native_arguments_as_json_text_work_on_every_provider(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    # OpenAI's form of the arguments (JSON text) in a native request: every
    # provider takes it, Ollama's too (as the object it wants).
    messages = second_turn("c7")
    messages[1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    reply = await chat(http, name, messages, tools=[WEATHER])
    assert reply.json()["content"] == "The tools said: sunny, 21 C"
    arguments = sent(world, name)["messages"][1]["tool_calls"][0]["function"]["arguments"]
    if name in OLLAMA_STYLE:
        assert arguments == {"city": "Paris"}
    else:
        assert json.loads(arguments) == {"city": "Paris"}


# The second turn (second_turn("c7")) as each kind of upstream receives it.
SECOND_TURN_SENT = {
    "ollama": [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "c7"}
            ],
        },
        {
            "role": "tool",
            "content": "sunny, 21 C",
            "tool_name": "get_weather",
            "tool_call_id": "c7",
        },
    ],
    "openai": [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "c7"},
    ],
}


@pytest.mark.parametrize("name", PROVIDERS)
async def test_native_second_turn_reaches_each_upstream_in_its_format(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    reply = await chat(http, name, second_turn("c7"), tools=[WEATHER])
    assert reply.json()["content"] == "The tools said: sunny, 21 C"
    assert reply.json()["done_reason"] == "stop"
    style = "ollama" if name in OLLAMA_STYLE else "openai"
    assert sent(world, name)["messages"][1:] == SECOND_TURN_SENT[style]
    if style == "ollama":  # with tools, Ollama Cloud too takes /api/chat
        assert world.stubs[name].chats[-1].path == "/api/chat"


async def test_ollama_cloud_takes_tools_to_api_chat(http: httpx.AsyncClient, world: World) -> None:
    await chat(http, "ollama_cloud")
    assert world.stubs["ollama_cloud"].chats[-1].path == "/api/generate"
    for extra in (
        {"tools": [WEATHER]},
        {"messages": [{"role": "user", "content": "x", "images": [PNG]}]},
    ):
        await chat(http, "ollama_cloud", **extra)
        assert world.stubs["ollama_cloud"].chats[-1].path == "/api/chat"


@pytest.mark.parametrize("name", OLLAMA_STYLE)
async def test_images_reach_ollama_as_bare_base64(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    await chat(http, name, [{"role": "user", "content": content, "images": [PNG]}])
    (message,) = sent(world, name)["messages"]
    assert message == {"role": "user", "content": "what is this", "images": [PNG, PNG]}


@pytest.mark.parametrize("name", OLLAMA_STYLE)
async def test_an_image_url_is_refused_for_ollama(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    messages = [{"role": "user", "content": "x", "images": ["https://example.test/cat.png"]}]
    reply = await chat(http, name, messages, status=400)
    assert reply.json()["error"]["path"] == "$.messages[0].images[0]"
    assert "fetch" in reply.json()["error"]["message"]
    assert world.stubs[name].chats == []


@pytest.mark.parametrize("name", OPENAI_STYLE)
async def test_images_reach_openai_style_as_image_url_parts(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    messages = [
        {"role": "user", "content": "what are these", "images": [PNG, "https://example.test/c.png"]}
    ]
    await chat(http, name, messages)
    (message,) = sent(world, name)["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what are these"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.test/c.png"}},
        ],
    }


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "$.tools[0].function.name",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ]
            },
            "$.tools[0].function.parameters.type",
        ),
        ({"tools": [{"type": "function"}]}, "$.tools[0]"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]},
            "$.tool_choice.function.name",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "c9", "content": "x"}]},
            "$.messages[1].tool_call_id",
        ),
        ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "$.messages[1].tool_call_id"),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["not an image!"]}]},
            "$.messages[0].images[0]",
        ),
    ],
)
async def test_native_bad_tools_and_orphan_results_are_refused(
    http: httpx.AsyncClient, fields: dict[str, Any], path: str
) -> None:
    reply = await chat(http, "ollama", **fields, status=400)
    assert reply.json()["error"]["path"] == path


async def test_ollama_refuses_a_tool_choice_it_cannot_enforce(http: httpx.AsyncClient) -> None:
    reply = await chat(http, "ollama", tools=[WEATHER], tool_choice="required", status=400)
    assert reply.json()["error"]["path"] == "$.tool_choice"


@pytest.mark.parametrize("name", [n for n in PROVIDERS if n != "kimi"])
async def test_penalties_reach_every_upstream(
    http: httpx.AsyncClient, world: World, name: str
) -> None:
    await chat(http, name, presence_penalty=0.5, frequency_penalty=-0.5)
    body = sent(world, name)
    where = body["options"] if name in OLLAMA_STYLE else body
    assert (where["presence_penalty"], where["frequency_penalty"]) == (0.5, -0.5)


async def test_kimi_refuses_penalties_itself(http: httpx.AsyncClient, world: World) -> None:
    # Kimi's K2.5+ models take only 0 (the kimi stub answers as they do): its refusal is
    # relayed, not pre-empted, since other Kimi models may take them.
    reply = await chat(http, "kimi", presence_penalty=0.5, status=502)
    assert "presence_penalty" in reply.json()["error"]["message"]
    assert sent(world, "kimi")["presence_penalty"] == 0.5


# -- the OpenAI surface, through the official SDK ----------------------------


@pytest.mark.parametrize("name", PROVIDERS)
async def test_sdk_parses_tool_calls(sdk: openai.AsyncOpenAI, name: str) -> None:
    completion = await sdk_chat(sdk, name, ASK_PARALLEL, tools=[WEATHER, TIME])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "parallel Paris"}),
        ("get_time", {"zone": "parallel Paris"}),
    ]
    assert all(c.id and c.type == "function" for c in calls)


@pytest.mark.parametrize("name", PROVIDERS)
async def test_sdk_assembles_streamed_tool_calls(sdk: openai.AsyncOpenAI, name: str) -> None:
    async with sdk.chat.completions.stream(
        model=MODELS[name],
        messages=ASK_PARALLEL,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
    ) as stream:
        done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    assert [e.name for e in done] == ["get_weather", "get_time"]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len({c.id for c in calls}) == 2 and all(c.id and c.type == "function" for c in calls)
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "parallel Paris"},
        {"zone": "parallel Paris"},
    ]


@pytest.mark.parametrize("name", OPENAI_STYLE)
async def test_openai_style_fragments_are_relayed_as_they_arrive(
    http: httpx.AsyncClient, name: str
) -> None:
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": MODELS[name], "messages": ASK, "tools": [WEATHER], "stream": True},
    )
    events = [
        json.loads(e[len("data: ") :]) for e in reply.text.split("\n\n") if e.startswith("data: {")
    ]
    calls = [c for e in events for ch in e["choices"] for c in ch["delta"].get("tool_calls", [])]
    # The stub streams the head, then the arguments in several fragments.
    assert len(calls) > 3
    assert calls[0]["id"] and calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert all("id" not in c and "name" not in c["function"] for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'


@pytest.mark.parametrize("name", PROVIDERS)
async def test_sdk_second_turn_with_an_image(
    sdk: openai.AsyncOpenAI, world: World, name: str
) -> None:
    first = await sdk_chat(sdk, name, tools=[WEATHER])
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    history: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "Paris"}, image]},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = await sdk_chat(sdk, name, history, tools=[WEATHER])
    assert second.choices[0].message.content == "The tools said: sunny"
    assert second.choices[0].finish_reason == "stop"
    user, assistant, tool = sent(world, name)["messages"]
    if name in OLLAMA_STYLE:
        assert user == {"role": "user", "content": "Paris", "images": [PNG]}
        assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
        assert tool["tool_name"] == "get_weather" and tool["tool_call_id"] == call.id
    else:
        assert user["content"][1] == image
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
        assert tool == {"role": "tool", "content": "sunny", "tool_call_id": call.id}


async def test_sdk_bad_tool_and_orphan_result_name_the_field(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk_chat(
            sdk,
            "ollama",
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
            ],
        )
    assert bad.value.param == "tools[0].function.parameters.type"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk_chat(
            sdk, "ollama", [*ASK, {"role": "tool", "tool_call_id": "nope", "content": "x"}]
        )
    assert bad.value.param == "messages[1].tool_call_id"


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_pass_through(
    sdk: openai.AsyncOpenAI, world: World, name: str, stream: bool
) -> None:
    asked: dict[str, Any] = {
        "model": MODELS[name],
        "messages": ASK,
        "logprobs": True,
        "top_logprobs": 2,
    }
    if stream:
        async with sdk.chat.completions.stream(**asked) as events:
            final = await events.get_final_completion()
    else:
        final = await sdk.chat.completions.create(**asked)
    body = sent(world, name)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    choice = final.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    text = "".join(t.token for t in choice.logprobs.content)
    assert text == choice.message.content
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)


async def test_native_logprobs(http: httpx.AsyncClient) -> None:
    for name in ("ollama", "openrouter"):
        body = (await chat(http, name, logprobs=True)).json()
        assert "".join(t["token"] for t in body["logprobs"]) == body["content"]
