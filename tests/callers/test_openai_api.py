"""The OpenAI surface's mapping, without a server: requests onto chatd's
ChatRequest (and what is refused), answers and errors onto OpenAI's shapes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.callers.openai_errors import openai_error_response
from lakehouse.callers.openai_replies import completion, model_list
from lakehouse.callers.openai_requests import decode_request, to_chat_request
from lakehouse.callers.streaming import ChunkWriter
from lakehouse.dispatcher import Dispatcher
from lakehouse.registry import Registry
from lakehouse.wire import (
    ChatResponse,
    FunctionCall,
    ImagePart,
    ImageURL,
    Message,
    StreamDelta,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolCallChunk,
    TopLogprob,
)

USER = {"role": "user", "content": "hi"}


def mapped(**fields: Any) -> Any:
    body = {"model": "m", "messages": [USER], **fields}
    return to_chat_request(decode_request(json.dumps(body).encode()))


def refused(**fields: Any) -> errors.BadRequest:
    with pytest.raises(errors.BadRequest) as caught:
        mapped(**fields)
    return caught.value


def test_fields_map_onto_the_native_request() -> None:
    request = mapped(
        max_tokens=10,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        stop="END",
        stream=True,
        stream_options={"include_usage": True},
        reasoning_effort="none",
    )
    assert (request.max_tokens, request.temperature, request.top_p) == (10, 0.5, 0.9)
    assert (request.seed, request.stop, request.stream, request.think) == (7, ["END"], True, False)
    assert mapped(max_tokens=10, max_completion_tokens=20).max_tokens == 20
    assert mapped(stop=["a", "b"]).stop == ["a", "b"]
    assert mapped(stop=[]).stop is None
    assert mapped(reasoning_effort="high").think == "high"


def test_response_format() -> None:
    assert mapped(response_format={"type": "text"}).format is None
    assert mapped(response_format={"type": "json_object"}).format == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert mapped(response_format=fmt).format == schema
    assert refused(response_format={"type": "json_schema"}).path == "$.response_format.json_schema"


def test_messages_text_parts_and_roles() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": "ok", "refusal": None, "reasoning_content": "hm"},
    ]
    request = mapped(messages=messages)
    assert request.messages == [
        Message("system", "be brief"),
        Message("user", "one\ntwo"),
        Message("assistant", "ok", thinking="hm"),
    ]


FN = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_tools_tool_calls_results_and_images_map_onto_the_model() -> None:
    image = {
        "type": "image_url",
        "image_url": {"url": "https://example.test/a.png", "detail": "low"},
    }
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    request = mapped(
        messages=messages,
        tools=[FN],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        presence_penalty=0.5,
        frequency_penalty=-1,
        logprobs=True,
        top_logprobs=3,
    )
    user, assistant, tool = request.messages
    assert user.content == [
        TextPart("look"),
        ImagePart(ImageURL("https://example.test/a.png", "low")),
    ]
    assert assistant.tool_calls == [
        ToolCall(id="c1", function=FunctionCall("get_weather", {"city": "Paris"}))
    ]
    assert assistant.content == ""
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "c1", "sunny")
    assert request.tools is not None and request.tools[0].function.name == "get_weather"
    assert request.tool_choice is not None and request.parallel_tool_calls is False
    assert (request.presence_penalty, request.frequency_penalty) == (0.5, -1)
    assert (request.logprobs, request.top_logprobs) == (True, 3)


def test_arguments_that_are_not_a_json_object_are_kept_as_text() -> None:
    broken = {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Pa'}}
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [broken]}]
    (call,) = mapped(messages=messages).messages[1].tool_calls
    assert call.function.arguments == '{"city": "Pa'


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [FN, FN]}, "tools[1].function.name"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters.type",
        ),
        ({"n": 2}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        (
            {"messages": [{"role": "tool", "content": "4", "tool_call_id": "c1"}]},
            "messages[0].tool_call_id",
        ),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [CALL]},
                    {"role": "tool", "content": "4", "tool_call_id": "c2"},
                ]
            },
            "messages[2].tool_call_id",
        ),
        ({"messages": [{"role": "tool", "content": "4"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages[0].extra"),
        ({"stream_options": {"include_usage": True, "other": 1}}, "stream_options.other"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(
    fields: dict[str, Any], param: str
) -> None:
    error = refused(**fields)
    assert error.path == f"$.{param}"
    assert param.split(".")[-1].split("[")[0] in error.message
    status, _, body = openai_error_response(error)
    detail = json.loads(body)["error"]
    assert status == 400
    assert detail == {
        "message": error.message,
        "type": "invalid_request_error",
        "code": "bad_request",
        "param": param,
    }


def test_harmless_fields_pass() -> None:
    request = mapped(
        n=1,
        frequency_penalty=0,
        presence_penalty=0.0,
        logprobs=False,
        tools=[],
        tool_choice="none",
        parallel_tool_calls=True,
        user="u1",
        metadata={"k": "v"},
        store=False,
        modalities=["text"],
        stream_options={"include_usage": False},
        some_future_field=None,
    )
    assert request.model == "m"


def test_wrong_types_are_decode_errors_with_a_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.temperature"):
        decode_request(
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}'
        )
    with pytest.raises(msgspec.ValidationError):
        decode_request(b"[1, 2]")


def answer(**kw: Any) -> ChatResponse:
    fields: dict[str, Any] = {
        "model": "qwen",
        "provider": "ollama",
        "content": "Hello",
        "done_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        **kw,
    }
    return ChatResponse(**fields)


def test_completion_shape() -> None:
    body = json.loads(completion(answer(reasoning="think", done_reason="length"), "rid1", "m"))
    assert body["id"] == "chatcmpl-rid1"
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello",
                "refusal": None,
                "reasoning_content": "think",
            },
            "finish_reason": "length",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert (
        json.loads(completion(answer(done_reason="load"), "r", "m"))["choices"][0]["finish_reason"]
        == "stop"
    )


CALLS = [
    ToolCall(id="c1", function=FunctionCall("get_weather", {"city": "Paris"})),
    ToolCall(id="c2", function=FunctionCall("get_time", '{"tz": "CE')),
]


def test_completion_with_tool_calls_and_logprobs() -> None:
    tokens = [TokenLogprob("Hi", -0.5, [72, 105], [TopLogprob("Hi", -0.5)])]
    body = json.loads(
        completion(
            answer(content="", done_reason="tool_calls", tool_calls=CALLS, logprobs=tokens),
            "r",
            "m",
        )
    )
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {
            "id": "c2",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "CE'},
        },
    ]
    assert choice["logprobs"] == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.5}],
            }
        ],
        "refusal": None,
    }


def test_chunks_carry_tool_call_fragments_as_openai_streams_them() -> None:
    writer = ChunkWriter("r", "m", include_usage=False)
    frames = writer.delta(StreamDelta(tool_calls=[ToolCallChunk(0, "c1", "get_weather", "")]))
    frames += writer.delta(StreamDelta(tool_calls=[ToolCallChunk(0, arguments='{"city"')]))
    frames += writer.delta(StreamDelta(tool_calls=[ToolCallChunk(0, arguments=': "Paris"}')]))
    frames += writer.end(answer(content="", done_reason="tool_calls", tool_calls=CALLS[:1]))
    deltas = [c["choices"][0]["delta"] for c in events(frames)[:-1]]
    assert deltas == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]},
        {},
    ]
    assert events(frames)[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_calls_of_a_whole_answer_are_sent_before_the_finish() -> None:
    writer = ChunkWriter("r", "m", include_usage=False)
    chunks = events(writer.end(answer(content="", done_reason="tool_calls", tool_calls=CALLS)))
    calls = chunks[1]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [
        (0, "c1", "get_weather"),
        (1, "c2", "get_time"),
    ]
    assert chunks[2]["choices"][0]["finish_reason"] == "tool_calls"


def events(frames: bytes) -> list[Any]:
    out = []
    for event in frames.decode().split("\n\n"):
        if event:
            assert event.startswith("data: ")
            data = event[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_chunks_role_first_then_deltas_finish_usage_done() -> None:
    writer = ChunkWriter("r", "tier", include_usage=True)
    frames = writer.delta(StreamDelta(reasoning="hm")) + writer.delta(StreamDelta("Hi"))
    frames += writer.end(answer())
    chunks = events(frames)
    assert chunks[-1] == "[DONE]"
    assert [c["choices"] for c in chunks[:-1]] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "reasoning_content": "hm"},
                "finish_reason": None,
                "logprobs": None,
            }
        ],
        [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}],
        [],
    ]
    assert chunks[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert {(c["id"], c["object"], c["model"]) for c in chunks[:-1]} == {
        ("chatcmpl-r", "chat.completion.chunk", "tier")
    }
    bare = events(ChunkWriter("r", "m", include_usage=False).end(answer()))
    assert [c["choices"][0]["delta"] for c in bare[:-1]] == [
        {"role": "assistant", "content": ""},
        {},
    ]
    assert all("usage" not in c for c in bare[:-1])


@pytest.mark.parametrize(
    ("error", "status", "no_retry"),
    [
        (errors.BadRequest("x"), 400, False),
        (errors.Unauthorized("x"), 401, False),
        (errors.ProviderNotFound("x"), 404, False),
        (errors.PayloadTooLarge("x"), 413, False),
        (errors.UpstreamRateLimited("x", retry_after=2), 429, False),
        (errors.UpstreamQuota("x"), 429, True),
        (errors.UpstreamAuth("x"), 502, True),
        (errors.UpstreamRejected("x", upstream_status=404), 404, True),
        (errors.UpstreamRejected("x", upstream_status=409), 400, True),
        (errors.UpstreamRedirect("x"), 502, True),
        (errors.UpstreamError("x"), 502, False),
        (errors.ProviderUnavailable("x"), 503, False),
        (errors.UpstreamTimeout("x"), 504, False),
        (errors.DeadlineExceeded("x"), 504, True),
        (RuntimeError("secret internals"), 500, False),
    ],
)
def test_error_statuses_and_retry_advice(error: Exception, status: int, no_retry: bool) -> None:
    got, headers, body = openai_error_response(error)
    assert got == status
    assert ((b"x-should-retry", b"false") in headers) == no_retry
    detail = json.loads(body)["error"]
    assert set(detail) == {"message", "type", "code", "param"}
    assert "secret" not in detail["message"]
    if status == 429 and isinstance(error, errors.UpstreamRateLimited):
        assert (b"retry-after", b"2") in headers


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def test_models_are_tiers_and_their_ids_skipping_unroutable() -> None:
    providers: Any = {"ollama": _Named("ollama"), "openrouter": _Named("openrouter")}
    registry = Registry(
        providers,
        default="ollama",
        configured=frozenset({"kimi"}),
        suffix_routes={":cloud": "ollama_cloud"},
    )
    tiers = {
        "fast": "qwen3.5:latest",
        "judge": "qwen3.5:latest",
        "frontier": "openrouter/anthropic/claude",
        "coding": "kimi/kimi-for-coding",
        "cloud": "x:cloud",
    }
    dispatcher = Dispatcher(registry, tiers=tiers)
    listing = json.loads(model_list(dispatcher, 123))
    assert listing["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in listing["data"]] == [
        ("fast", "ollama"),
        ("qwen3.5:latest", "ollama"),
        ("judge", "ollama"),
        ("frontier", "openrouter"),
        ("openrouter/anthropic/claude", "openrouter"),
    ]
    assert {(m["object"], m["created"]) for m in listing["data"]} == {("model", 123)}
