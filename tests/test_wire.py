from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from lakehouse.errors import BadRequest
from lakehouse.wire import ChatRequest, ChatResponse, chat_request_decoder, encoder


def test_a_stamped_zero_latency_is_still_sent_and_extras_are_omitted() -> None:
    fields: dict[str, Any] = {
        "model": "m",
        "provider": "p",
        "content": "",
        "done_reason": "stop",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_ms": 0,
    }
    response = ChatResponse(**fields)
    assert json.loads(encoder.encode(response)) == fields
    response.tier, response.reasoning, response.fallback, response.attempts = "t", "r", "f", 2
    assert json.loads(encoder.encode(response))["fallback"] == "f"


def test_request_decoder_is_strict() -> None:
    ok = chat_request_decoder.decode(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"think":"high",'
        b'"format":{"type":"object"},"max_tokens":5,"temperature":0.5,"deadline_secs":3}'
    )
    assert isinstance(ok, ChatRequest) and ok.think == "high" and ok.deadline_secs == 3
    with pytest.raises(msgspec.ValidationError, match=r"\$\.messages\[0\]\.role"):
        chat_request_decoder.decode(b'{"model":"m","messages":[{"role":"x","content":"x"}]}')


def decode(**fields: object) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return chat_request_decoder.decode(json.dumps(body))


CALL = {"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_a_tool_conversation_decodes() -> None:
    request = decode(
        messages=[
            {"role": "user", "content": "hi", "images": ["aGk="]},
            {"role": "assistant", "content": "", "tool_calls": [CALL], "thinking": "hm"},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "tool", "tool_name": "f", "content": "43"},
        ],
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert request.uses_tools() and request.has_images()
    assert request.messages[1].tool_calls is not None
    assert request.messages[1].tool_calls[0].function.arguments == {"x": 1}
    assert not decode().uses_tools() and not decode().has_images()


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"tools": [TOOL, TOOL]}, "$.tools[1].function.name"),
        ({"tool_choice": "required"}, "$.tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "$.tool_choice.function.name",
        ),
        ({"top_logprobs": 2}, "$.top_logprobs"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
            "$.messages[0].tool_calls",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_call_id": "c1"}]},
            "$.messages[0].tool_call_id",
        ),
        (
            {"messages": [{"role": "tool", "tool_name": "f", "content": "x"}]},
            "$.messages[0].tool_name",
        ),
        ({"messages": [{"role": "assistant", "content": ""}]}, "$.messages[0].content"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}
                        ],
                    }
                ]
            },
            "$.messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "", "tool_calls": [CALL]},
                    {"role": "tool", "tool_call_id": "c1", "content": "x", "images": ["aGk="]},
                ]
            },
            "$.messages[1].content",
        ),
    ],
)
def test_inconsistent_requests_are_refused_naming_the_field(
    fields: dict[str, object], path: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        decode(**fields)
    assert refused.value.path == path
    assert path.removeprefix("$.") in refused.value.message


def test_bad_tool_names_and_shapes_are_decode_errors_with_a_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.tools\[0\]\.function\.name"):
        decode(tools=[{"type": "function", "function": {"name": "has space"}}])
    with pytest.raises(msgspec.ValidationError, match=r"\$\.tool_choice"):
        decode(tool_choice="sometimes")
    with pytest.raises(msgspec.ValidationError, match=r"\$\.presence_penalty"):
        decode(presence_penalty=3)
