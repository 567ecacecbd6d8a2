"""Tools and images through the real server to OpenCode Zen's Messages and
Responses endpoints: each protocol's shape on the way out, tool calls
(whole and streamed) on the way back, through native ``/chat`` and the
official ``openai`` SDK."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from lakehouse.stubs.replies import reply_text
from lakehouse.stubs.tool_use import results_answer
from tests.support import module_fixtures
from tests.zen_world import SAID, World, zen_world

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]


anyio_backend, world = module_fixtures(zen_world)


@pytest.fixture(autouse=True)
def clean(world: World) -> None:
    world.reset()


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
    # Each call once, whole, on the lines before the last (which repeats none).
    calls = [c for line in lines[:-1] for c in line.get("tool_calls", [])]
    assert "tool_calls" not in last
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", {"city": "parallel please"}),
        ("get_time", {"zone": "parallel please"}),
    ]
    assert len({c["id"] for c in calls}) == 2
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


JPEG_BYTES = "/9j/4AAQSkZJRgABAQAAAQABAAD"


@pytest.mark.parametrize(
    ("url", "media"),
    [
        # A PNG labelled as a JPEG (screenshot tools do this): Anthropic
        # refuses the mismatch, OpenAI reads past it.
        ("data:image/jpeg;base64," + PNG.split(",", 1)[1], "image/png"),
        # "image/jpg" is not a type Anthropic takes.
        ("data:image/jpg;base64," + JPEG_BYTES + "=", "image/jpeg"),
    ],
)
async def test_a_mislabelled_image_reaches_claude_as_what_its_bytes_are(
    world: World, url: str, media: str
) -> None:
    async with openai.AsyncOpenAI(base_url=world.base + "/v1", api_key="x", max_retries=0) as sdk:
        done = await sdk.chat.completions.create(
            model="opencode/claude-opus-4-7",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        )
    assert done.choices[0].message.content == reply_text("what is this")
    (sent,) = world.zen.chats
    assert sent.json["messages"][0]["content"][1]["source"]["media_type"] == media


@pytest.mark.parametrize("model", ["claude-opus-4-7", "gpt-5.4"])
async def test_an_image_in_a_system_message_is_refused_naming_it(world: World, model: str) -> None:
    seeing = [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "user", "content": "what is in the system image?"},
    ]
    resp = await world.chat(f"opencode/{model}", messages=seeing)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["path"] == "$.messages[0].content"
    assert world.zen.chats == []
