"""The OpenAI-compatible surface's answers: completions, their usage and
finish reasons, and the model listing (``GET /v1/models``)."""

from __future__ import annotations

import time
from typing import Literal

import msgspec

from lakehouse.dispatcher import Dispatcher
from lakehouse.errors import ChatdError
from lakehouse.tool_calls import arguments_text
from lakehouse.wire import ChatResponse, TokenLogprob, ToolCall


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Function(msgspec.Struct):
    name: str
    # JSON text, as OpenAI sends it.
    arguments: str


class OpenAIToolCall(msgspec.Struct):
    id: str
    type: Literal["function"]
    function: Function


class AssistantMessage(msgspec.Struct):
    role: Literal["assistant"]
    # null when the model only called tools, as OpenAI answers.
    content: str | None
    refusal: None = None
    tool_calls: list[OpenAIToolCall] | msgspec.UnsetType = msgspec.UNSET
    # An extension (as Moonshot and DeepSeek name it): the model's reasoning.
    reasoning_content: str | msgspec.UnsetType = msgspec.UNSET


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(msgspec.Struct):
    id: str
    object: Literal["chat.completion"]
    created: int
    # The model chatd routed to (as in the chunks of a stream).
    model: str
    choices: list[Choice]
    usage: Usage
    # An extension (OpenRouter has one too): the provider that answered.
    provider: str


class DeltaFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(msgspec.Struct, omit_defaults=True):
    """OpenAI's streamed call: ``index``, then ``id``, ``type`` and the name
    on the call's first chunk, and a fragment of ``arguments`` on each."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    # The model chatd routed to: the tier resolved, the routing prefix
    # stripped (as in a whole completion).
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(msgspec.Struct):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[Model]


_encode = msgspec.json.Encoder().encode
_FINISH = frozenset({"stop", "length", "content_filter", "tool_calls"})


def finish_reason(done_reason: str) -> str:
    # Ollama's "load"/"unload" and anything unknown read as a normal stop.
    return done_reason if done_reason in _FINISH else "stop"


def usage(response: ChatResponse) -> Usage:
    prompt, completion = response.prompt_tokens, response.completion_tokens
    return Usage(prompt, completion, prompt + completion)


def tool_calls(calls: list[ToolCall]) -> list[OpenAIToolCall]:
    return [
        OpenAIToolCall(c.id, "function", Function(c.function.name, arguments_text(c.function)))
        for c in calls
    ]


def choice_logprobs(tokens: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    return None if tokens is None else ChoiceLogprobs(tokens)


def completion(response: ChatResponse, rid: str, model: str) -> bytes:
    """``model``: the model chatd routed to, the one rule for completions
    and chunks (an upstream may name its answer otherwise, e.g. a dated
    snapshot, but chunks go out before it says)."""
    calls = response.tool_calls
    message = AssistantMessage(
        "assistant",
        None if calls and not response.content else response.content,
        tool_calls=tool_calls(calls) if calls else msgspec.UNSET,
        reasoning_content=response.reasoning or msgspec.UNSET,
    )
    reason = finish_reason(response.done_reason)
    return _encode(
        ChatCompletion(
            id=f"chatcmpl-{rid}",
            object="chat.completion",
            created=int(time.time()),
            model=model or response.model,
            choices=[Choice(0, message, reason, choice_logprobs(response.logprobs))],
            usage=usage(response),
            provider=response.provider,
        )
    )


def models(dispatcher: Dispatcher, created: int) -> list[Model]:
    """Each tier and the model id it resolves to, owned by the provider it
    routes to; names that route to no registered provider are left out."""
    listed: dict[str, Model] = {}
    for tier, model_id in dispatcher.tiers.items():
        for name in (tier, model_id):
            if name in listed:
                continue
            try:
                route, _ = dispatcher.route(name)
            except ChatdError:
                continue
            listed[name] = Model(name, "model", created, route.provider.name)
    return list(listed.values())


def model_list(dispatcher: Dispatcher, created: int) -> bytes:
    return _encode(ModelList("list", models(dispatcher, created)))


def model_entry(dispatcher: Dispatcher, created: int, name: str) -> bytes | None:
    found = next((m for m in models(dispatcher, created) if m.id == name), None)
    return None if found is None else _encode(found)
