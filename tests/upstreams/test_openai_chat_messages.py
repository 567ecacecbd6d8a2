from __future__ import annotations

import base64

import msgspec

from lakehouse.upstreams.openai_chat_messages import openai_messages
from lakehouse.wire import FunctionCall, ImagePart, ImageURL, Message, TextPart, ToolCall

JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 8).decode()


def encoded(messages: list[Message]) -> object:
    return msgspec.json.decode(msgspec.json.encode(openai_messages(messages)))


def test_parts_keep_their_order_and_inline_images_become_data_urls() -> None:
    parts = [
        TextPart("a"),
        ImagePart(ImageURL("https://example.test/1.png", "high")),
        TextPart("b"),
        ImagePart(ImageURL(JPEG)),
    ]
    assert encoded([Message("user", parts, images=[JPEG])]) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.test/1.png", "detail": "high"},
                },
                {"type": "text", "text": "b"},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
            ],
        }
    ]
    assert encoded([Message("user", "plain")]) == [{"role": "user", "content": "plain"}]


def test_calls_without_ids_get_one_and_results_by_name_follow_it() -> None:
    call = ToolCall(function=FunctionCall("f", {"a": 1}))
    messages = [
        Message("user", "x"),
        Message("assistant", "", tool_calls=[call], thinking="hm"),
        Message("tool", "42", tool_name="f"),
    ]
    assert encoded(messages)[1:] == [  # type: ignore[index]
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1_0",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a":1}'},
                }
            ],
            "reasoning_content": "hm",
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1_0"},
    ]
