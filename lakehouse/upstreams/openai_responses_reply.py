"""A whole OpenAI Responses object: its view Structs and their mapping onto
chatd's answer (docs/protocols/openai-responses.md, "Response object").

``message`` items' ``output_text`` parts make the content, and so do their
``refusal`` parts (a model declining, as under a JSON schema), which end the
answer in ``content_filter`` as Anthropic's ``refusal`` does; ``reasoning``
items (their summaries, or their reasoning text) the reasoning, never the
content; ``function_call`` items the tool calls (``call_id`` is the id a
result names). ``status`` decides the ending: ``incomplete`` is ``length`` (or
``content_filter``), ``failed`` is an upstream error.
"""

from __future__ import annotations

from typing import Any

import msgspec

from lakehouse.errors import UpstreamBadResponse, UpstreamError
from lakehouse.tool_calls import answer_reason, mint_call_id, parse_arguments
from lakehouse.upstreams.contract import UpstreamReply
from lakehouse.upstreams.failures import decode_json
from lakehouse.upstreams.openai_chat_errors import in_band_error
from lakehouse.wire import ChatResponse, FunctionCall, ToolCall


class Part(msgspec.Struct):
    type: str = ""
    text: str | None = None
    refusal: str | None = None


class Item(msgspec.Struct):
    type: str = ""
    id: str | None = None
    content: list[Part] | None = None
    summary: list[Part] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class Response(msgspec.Struct):
    model: str | None = None
    status: str | None = None
    output: list[Item] | None = None
    usage: Usage | None = None
    incomplete_details: _Incomplete | None = None
    error: Any = None


_response_decoder = msgspec.json.Decoder(Response)


def item_text(item: Item) -> str:
    if item.type != "message" or not item.content:
        return ""
    return "".join(
        (p.text or "") if p.type == "output_text" else (p.refusal or "")
        for p in item.content
        if p.type in ("output_text", "refusal")
    )


def refused(response: Response) -> bool:
    """Whether a message of the response declines (a ``refusal`` part)."""
    return any(
        p.type == "refusal"
        for item in response.output or ()
        if item.type == "message"
        for p in item.content or ()
    )


def item_reasoning(item: Item) -> str:
    if item.type != "reasoning":
        return ""
    # Summaries are what OpenAI shows of its own models' reasoning; other
    # models behind a Responses endpoint may send the raw reasoning text.
    parts = [p.text or "" for p in item.summary or () if p.type == "summary_text"]
    parts += [p.text or "" for p in item.content or () if p.type == "reasoning_text"]
    return "".join(parts)


def tool_call(item: Item) -> ToolCall:
    return ToolCall(
        id=item.call_id or item.id or mint_call_id(),
        function=FunctionCall(
            name=item.name or "", arguments=parse_arguments(item.arguments or "")
        ),
    )


def ending(response: Response, provider: str, status: int, key: str | None) -> str:
    """The done_reason of a finished response; raises for a failed one."""
    if response.status == "failed" or response.error is not None:
        raise in_band_error(response.error, status, provider, key)
    if response.status == "incomplete":
        reason = response.incomplete_details.reason if response.incomplete_details else None
        return "content_filter" if reason == "content_filter" else "length"
    if response.status not in (None, "completed"):
        raise UpstreamError(
            f"{provider} answered {status} with a response that is {response.status}",
            provider=provider,
            upstream_status=status,
        )
    return "stop"


def to_answer(
    response: Response,
    *,
    model: str,
    provider: str,
    status: int,
    key: str | None,
    content: str | None = None,
    reasoning: str | None = None,
    calls: list[ToolCall] | None = None,
) -> ChatResponse:
    """chatd's answer; ``content``/``reasoning`` when a stream already
    gathered them from its deltas."""
    done = ending(response, provider, status, key)
    if done == "stop" and refused(response):
        done = "content_filter"
    output = response.output or []
    if content is None:
        content = "".join(item_text(i) for i in output)
    if reasoning is None:
        reasoning = "".join(item_reasoning(i) for i in output)
    if calls is None:
        calls = [tool_call(i) for i in output if i.type == "function_call"]
    usage = response.usage or Usage()
    return ChatResponse(
        model=response.model or model,
        provider=provider,
        content=content,
        done_reason=answer_reason(done, calls=bool(calls)),
        prompt_tokens=usage.input_tokens or 0,
        completion_tokens=usage.output_tokens or 0,
        reasoning=reasoning or None,
        tool_calls=calls or None,
    )


def parse_response(
    reply: UpstreamReply, model: str, provider: str, key: str | None
) -> ChatResponse:
    response = decode_json(_response_decoder, reply, provider)
    if response.output is None and response.error is None:
        raise UpstreamBadResponse(
            f"{provider} answered {reply.status} with no output",
            provider=provider,
            upstream_status=reply.status,
        )
    return to_answer(response, model=model, provider=provider, status=reply.status, key=key)
