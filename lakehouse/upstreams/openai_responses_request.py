"""chatd's request as an OpenAI Responses body
(docs/protocols/openai-responses.md, "Request").

- system messages become ``instructions`` (joined in order), the rest
  ``input`` items: messages with their role (content a string, or
  ``input_text``/``input_image`` parts when there are images), an
  assistant's tool calls as ``function_call`` items after its text, tool
  turns as ``function_call_output`` items;
- ``max_tokens`` becomes ``max_output_tokens`` (reasoning counts against
  it), raised to Responses' minimum of 16 when smaller;
- ``format`` becomes ``text.format`` (``json_object`` or a named
  ``json_schema``);
- ``think`` becomes ``reasoning.effort`` (``max`` is sent as ``high``) with
  ``summary: auto``, so the reasoning comes back as text; without ``think``
  the model's default effort applies;
- tools are flat ``{type: function, name, description, parameters,
  strict}``; ``strict`` is sent as false unless the caller set it, since
  Responses defaults it to true and then refuses most schemas;
- ``seed`` has no Responses counterpart and is dropped (it is best effort
  everywhere); ``stop``, ``logprobs`` and non-zero penalties are refused
  (400 naming the field);
- ``store: false``: chatd keeps no conversation state upstream.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from lakehouse.errors import BadRequest
from lakehouse.tool_calls import arguments_text
from lakehouse.upstreams.call_ids import pair_calls
from lakehouse.upstreams.unsupported import refuse_unsupported
from lakehouse.wire import ChatRequest, ImagePart, Message, NamedToolChoice, TextPart

# OpenAI refuses a smaller max_output_tokens (400); a smaller cap is raised.
MIN_OUTPUT_TOKENS = 16
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class InputImage(msgspec.Struct, tag="input_image", tag_field="type"):
    # An http(s) URL or a data URL.
    image_url: str
    detail: str


class MessageItem(msgspec.Struct, tag="message", tag_field="type"):
    role: Literal["user", "assistant"]
    content: str | list[InputText | InputImage]


class FunctionCallItem(msgspec.Struct, tag="function_call", tag_field="type"):
    call_id: str
    name: str
    arguments: str


class FunctionOutputItem(msgspec.Struct, tag="function_call_output", tag_field="type"):
    call_id: str
    output: str


Item = MessageItem | FunctionCallItem | FunctionOutputItem


class _Format(msgspec.Struct, omit_defaults=True):
    type: Literal["json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None


class _Text(msgspec.Struct):
    format: _Format


class _Reasoning(msgspec.Struct):
    effort: str
    summary: str = "auto"


class _Tool(msgspec.Struct, omit_defaults=True):
    # No default, so always sent (omit_defaults would drop it).
    type: Literal["function"]
    name: str
    parameters: dict[str, Any]
    strict: bool
    description: str | None = None


class _NamedChoice(msgspec.Struct):
    type: Literal["function"]
    name: str


class Body(msgspec.Struct, omit_defaults=True):
    model: str
    input: list[Item]
    stream: bool
    # No default, so always sent: chatd keeps no state upstream.
    store: bool
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: _Text | None = None
    reasoning: _Reasoning | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | _NamedChoice | None = None
    parallel_tool_calls: bool | None = None


def text_format(fmt: Literal["json"] | dict[str, Any] | None) -> _Text | None:
    if fmt is None:
        return None
    if fmt == "json":
        return _Text(_Format("json_object"))
    assert isinstance(fmt, dict)
    # Responses requires a name; callers give only the schema.
    return _Text(_Format("json_schema", name="response", schema=fmt))


def output_cap(max_tokens: int | None) -> int | None:
    return None if max_tokens is None else max(max_tokens, MIN_OUTPUT_TOKENS)


def reasoning(think: bool | str | None) -> _Reasoning | None:
    if think is None or think is False:
        return None
    return _Reasoning(_EFFORTS["medium" if think is True else str(think)])


def _user_content(message: Message) -> str | list[InputText | InputImage]:
    if not message.has_images():
        return message.text()
    parts: list[InputText | InputImage] = []
    refs = iter(message.image_refs())
    if isinstance(message.content, str):
        if message.content:
            parts.append(InputText(message.content))
    else:
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append(InputText(part.text))
            elif isinstance(part, ImagePart):
                ref = next(refs)
                parts.append(InputImage(ref.data_url(), part.image_url.detail or "auto"))
    parts += [InputImage(ref.data_url(), "auto") for ref in refs]
    return parts


def items(messages: list[Message]) -> tuple[list[str], list[Item]]:
    """The ``instructions`` texts and the ``input`` items."""
    ids = pair_calls(messages)
    instructions: list[str] = []
    out: list[Item] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            instructions.append(message.text())
        elif message.role == "user":
            out.append(MessageItem("user", _user_content(message)))
        elif message.role == "assistant":
            if message.text():
                out.append(MessageItem("assistant", message.text()))
            out += [
                FunctionCallItem(
                    ids.calls[(i, j)], call.function.name, arguments_text(call.function)
                )
                for j, call in enumerate(message.tool_calls or ())
            ]
        else:
            out.append(FunctionOutputItem(ids.results[i], message.text()))
    return instructions, out


def tools(request: ChatRequest) -> list[_Tool] | None:
    if not request.tools:
        return None
    return [
        _Tool(
            type="function",
            name=t.function.name,
            parameters=t.function.parameters or {"type": "object", "properties": {}},
            strict=bool(t.function.strict),
            description=t.function.description,
        )
        for t in request.tools
    ]


def tool_choice(request: ChatRequest) -> str | _NamedChoice | None:
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        return _NamedChoice("function", choice.function.name)
    return choice


def body(request: ChatRequest, model: str, *, stream: bool, sampling: bool, provider: str) -> Body:
    refuse_unsupported(request, provider, "OpenAI Responses", stop=False)
    instructions, inputs = items(request.messages)
    if not inputs:
        raise BadRequest(
            f"{provider}: the Responses API needs a user or assistant message, "
            "not only system ones",
            provider=provider,
        )
    return Body(
        model=model,
        input=inputs,
        stream=stream,
        store=False,
        instructions="\n\n".join(instructions) or None,
        max_output_tokens=output_cap(request.max_tokens),
        temperature=request.temperature if sampling else None,
        top_p=request.top_p if sampling else None,
        text=text_format(request.format),
        reasoning=reasoning(request.think),
        tools=tools(request),
        tool_choice=tool_choice(request),
        parallel_tool_calls=request.parallel_tool_calls,
    )
