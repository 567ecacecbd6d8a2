"""The OpenAI-compatible surface's requests (``POST /v1/chat/completions``):
their wire Structs and their mapping onto chatd's ChatRequest.

Requests are strict in one direction only: a field that would change the
answer and that no provider can honour (``n`` > 1, audio, non-function
tools, …) is refused with a 400 naming it, never dropped; fields that
change nothing (``user``, ``metadata``, ``store``, ``n: 1``, …) pass. Tools,
images, penalties and logprobs go on to the provider, which refuses by name
what its upstream cannot do. An unknown field is refused too, unless its
value is null.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from lakehouse.errors import BadRequest
from lakehouse.tool_calls import parse_arguments
from lakehouse.wire import (
    ChatRequest,
    FunctionCall,
    ImagePart,
    ImageURL,
    Message,
    NonEmpty,
    Part,
    Penalty,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)


class ContentPart(msgspec.Struct):
    """One part of an array ``content``: ``text`` and ``image_url`` parts are
    taken, others (audio, files) refused by their path."""

    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class CallFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: NonEmpty
    # JSON text, as OpenAI sends it.
    arguments: str


class AssistantToolCall(msgspec.Struct, forbid_unknown_fields=True):
    id: NonEmpty
    type: Literal["function"]
    function: CallFunction


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    # A participant's name: refused (no provider here uses it), except on a
    # tool message, where it is the function's (a legacy form).
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: NonEmpty | None = None
    # Refused when set: the pre-tools function calling, and audio output.
    function_call: Any = None
    audio: Any = None
    # Fields of an earlier answer sent back as history: harmless.
    refusal: str | None = None
    annotations: list[Any] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False
    # chatd never pads chunks, so either value is honoured.
    include_obfuscation: bool | None = None


class JSONSchemaSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


Tokens = Annotated[int, msgspec.Meta(ge=1)]


class CompletionRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: NonEmpty
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    # Passed on as chatd's native ``think`` (honoured where it is).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    # Accepted only with the value that changes nothing (1).
    n: int | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    # Bookkeeping of the caller's: nothing to do with the answer.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


_request_decoder = msgspec.json.Decoder(CompletionRequest)
_FIELDS = frozenset(CompletionRequest.__struct_fields__)
_THINK: dict[str, bool | Literal["low", "medium", "high"]] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
}


_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`(?: - at `\$\.?([^`]*)`)?$")


def decode_request(body: bytes) -> CompletionRequest:
    """The request; an unknown field is a BadRequest naming it (or, at the
    top level and null, as good as absent: some clients send every optional
    field, null when unset)."""
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if _unknown_field(exc) != "":
            raise
    data = msgspec.json.decode(body)
    assert isinstance(data, dict)
    for key, value in list(data.items()):
        if key not in _FIELDS:
            if value is not None:
                raise unsupported(key)
            del data[key]
    try:
        return msgspec.convert(data, CompletionRequest)
    except msgspec.ValidationError as exc:
        _unknown_field(exc)
        raise


def _unknown_field(exc: msgspec.ValidationError) -> str | None:
    """Raises BadRequest naming a nested unknown field; "" for one at the
    top level, None when ``exc`` is about something else."""
    match = _UNKNOWN.match(str(exc))
    if match is None:
        return None
    name, where = match.groups()
    if where:
        raise unsupported(f"{where}.{name}") from None
    return ""


def unsupported(param: str, what: str = "is not supported by chatd") -> BadRequest:
    return BadRequest(f"`{param}` {what}", path=f"$.{param}")


def _refuse_unhonourable(req: CompletionRequest) -> None:
    if req.n not in (None, 1):
        raise unsupported("n", "must be 1: chatd returns one choice")
    if req.modalities not in (None, ["text"]):
        raise unsupported("modalities", "is not supported by chatd: text only")


def _content(message: ChatMessage, at: str) -> str | list[Part]:
    content = message.content
    if content is None:
        if message.tool_calls:
            return ""
        raise BadRequest(f"`{at}.content` is required", path=f"$.{at}.content")
    if isinstance(content, str):
        return content
    parts: list[Part] = []
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        if part.type == "text":
            if part.text is None:
                raise unsupported(f"{where}.text", "is required")
            parts.append(TextPart(part.text))
        elif part.type == "image_url":
            if part.image_url is None:
                raise unsupported(f"{where}.image_url", "is required")
            parts.append(ImagePart(part.image_url))
        else:
            raise unsupported(
                where, f"is of type {part.type!r}: chatd takes text and image_url parts"
            )
    # Text parts alone read as one string: what every upstream takes.
    if all(isinstance(p, TextPart) for p in parts):
        return "\n".join(p.text for p in parts if isinstance(p, TextPart))
    return parts


def _message(message: ChatMessage, index: int) -> Message:
    at = f"messages[{index}]"
    for name in ("function_call", "audio"):
        if getattr(message, name):
            raise unsupported(f"{at}.{name}")
    if message.name and message.role != "tool":
        raise unsupported(f"{at}.name")
    calls = [
        ToolCall(
            id=c.id, function=FunctionCall(c.function.name, parse_arguments(c.function.arguments))
        )
        for c in message.tool_calls or ()
    ]
    role = "system" if message.role == "developer" else message.role
    return Message(
        role=role,
        content=_content(message, at),
        tool_calls=calls or None,
        tool_call_id=message.tool_call_id,
        tool_name=message.name if message.role == "tool" and not message.tool_call_id else None,
        thinking=(message.reasoning_content or message.reasoning) if role == "assistant" else None,
    )


def to_chat_request(req: CompletionRequest) -> ChatRequest:
    """chatd's request for an OpenAI one (after refusing what it cannot honour)."""
    _refuse_unhonourable(req)
    fmt: Literal["json"] | dict[str, Any] | None = None
    if req.response_format is not None and req.response_format.type != "text":
        if req.response_format.type == "json_object":
            fmt = "json"
        elif req.response_format.json_schema is None:
            raise unsupported("response_format.json_schema", "is required for type json_schema")
        else:
            fmt = req.response_format.json_schema.schema or {"type": "object"}
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    effort = req.reasoning_effort
    return ChatRequest(
        model=req.model,
        messages=[_message(m, i) for i, m in enumerate(req.messages)],
        format=fmt,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
        think=None if effort is None else _THINK[effort],
        stream=req.stream,
        stop=stop or None,
        seed=req.seed,
        top_p=req.top_p,
        tools=req.tools,
        tool_choice=req.tool_choice,
        parallel_tool_calls=req.parallel_tool_calls,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
    )
