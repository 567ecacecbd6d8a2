from __future__ import annotations

import base64

import msgspec
import pytest

from lakehouse.errors import BadRequest
from lakehouse.upstreams.ollama_messages import ollama_messages, ollama_tools
from lakehouse.wire import ChatRequest, FunctionCall, Message, Tool, ToolCall, chat_request_decoder

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 8).decode()


def request(**fields: object) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return chat_request_decoder.decode(msgspec.json.encode(body))


def test_a_conversation_in_ollamas_shape() -> None:
    messages = [
        Message("user", [], images=[f"data:image/png;base64,{PNG}", PNG]),
        Message(
            "assistant",
            "",
            tool_calls=[ToolCall(id="c1", function=FunctionCall("f", {"a": 1}))],
            thinking="hm",
        ),
        Message("tool", "42", tool_call_id="c1"),
    ]
    encoded = msgspec.json.decode(msgspec.json.encode(ollama_messages(messages)))
    assert encoded == [
        {"role": "user", "content": "", "images": [PNG, PNG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}, "id": "c1"}],
            "thinking": "hm",
        },
        # The tool's name, which Ollama's templates use, found from the call.
        {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "c1"},
    ]


def test_what_ollama_cannot_take_is_refused_naming_it() -> None:
    with pytest.raises(BadRequest) as url:
        ollama_messages([Message("user", "x", images=[PNG, "https://example.test/a.png"])])
    assert url.value.path == "$.messages[0].images[1]"
    text_args = ToolCall(id="c1", function=FunctionCall("f", '{"a": '))
    with pytest.raises(BadRequest) as args:
        ollama_messages([Message("user", "x"), Message("assistant", "", tool_calls=[text_args])])
    assert args.value.path == "$.messages[1].tool_calls[0].function.arguments"


def test_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    offered = ollama_tools(request(tools=tools, tool_choice="auto"))
    assert offered == [msgspec.convert(tools[0], Tool)]
    assert ollama_tools(request(tools=tools, tool_choice="none")) is None
    with pytest.raises(BadRequest) as required:
        ollama_tools(request(tools=tools, tool_choice="required"))
    assert required.value.path == "$.tool_choice"


def test_arguments_given_as_json_text_reach_ollama_as_an_object() -> None:
    text_args = ToolCall(id="c1", function=FunctionCall("f", '{"a": 1}'))
    (_, called) = ollama_messages(
        [Message("user", "x"), Message("assistant", "", tool_calls=[text_args])]
    )
    assert called.tool_calls is not None
    assert called.tool_calls[0].function.arguments == {"a": 1}
