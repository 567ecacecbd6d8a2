"""A whole Anthropic Messages reply: its view Structs and their mapping onto
chatd's answer (docs/protocols/anthropic-messages.md, "Response").

Text blocks make the content; thinking blocks the reasoning, never the
content; ``tool_use`` blocks the tool calls (``input`` is the arguments
object); ``redacted_thinking`` has no readable text and is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from lakehouse.errors import UpstreamBadResponse
from lakehouse.tool_calls import answer_reason, mint_call_id
from lakehouse.upstreams.contract import UpstreamReply
from lakehouse.upstreams.failures import decode_json
from lakehouse.upstreams.openai_chat_errors import ErrorKind, in_band_error
from lakehouse.wire import ChatResponse, FunctionCall, ToolCall

# Anthropic's own error types (docs/protocols/anthropic-messages.md, "Errors")
# that the status alone would misread: its envelope is Zen's, and a 401 in
# that envelope with an unknown class is not taken as a dead key. Statuses
# decide the rest (permission_error is a 403, overloaded_error a 529), so
# a 403 whose text says a quota is spent (Kimi) can still read as quota.
ANTHROPIC_ERROR_KINDS: Mapping[str, ErrorKind] = {
    "authentication_error": "auth",
    "billing_error": "quota",
    "rate_limit_error": "rate_limited",
}

# stop_reason → chatd's done_reason, in the OpenAI vocabulary the other
# providers answer with; an unknown reason is passed through as sent.
_DONE_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def merged(self, later: Usage) -> Usage:
        """These counts, updated by the fields a later event sets."""
        return Usage(
            later.input_tokens if later.input_tokens is not None else self.input_tokens,
            later.output_tokens if later.output_tokens is not None else self.output_tokens,
            later.cache_creation_input_tokens
            if later.cache_creation_input_tokens is not None
            else self.cache_creation_input_tokens,
            later.cache_read_input_tokens
            if later.cache_read_input_tokens is not None
            else self.cache_read_input_tokens,
        )


def prompt_tokens(usage: Usage) -> int:
    # input_tokens leaves out the prompt read from or written to the cache;
    # the caller's prompt is all three, as Chat Completions counts it.
    return (
        (usage.input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
    )


def done_reason(stop_reason: str | None, *, calls: bool = False) -> str:
    # A reply with tool calls ends in "tool_calls", unless it was cut short.
    reason = None if stop_reason is None else _DONE_REASONS.get(stop_reason, stop_reason)
    return answer_reason(reason, calls=calls)


class Block(msgspec.Struct):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Message(msgspec.Struct):
    type: str | None = None
    model: str | None = None
    content: list[Block] | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    error: Any = None


_message_decoder = msgspec.json.Decoder(_Message)


def parse_message(reply: UpstreamReply, model: str, provider: str, key: str | None) -> ChatResponse:
    data = decode_json(_message_decoder, reply, provider)
    if data.type == "error" or data.error is not None:
        raise in_band_error(data.error, reply.status, provider, key)
    if data.content is None:
        raise UpstreamBadResponse(
            f"{provider} answered {reply.status} with no content blocks",
            provider=provider,
            upstream_status=reply.status,
        )
    text = "".join(b.text or "" for b in data.content if b.type == "text")
    thought = "".join(b.thinking or "" for b in data.content if b.type == "thinking")
    calls = [tool_call(b) for b in data.content if b.type == "tool_use"]
    usage = data.usage or Usage()
    return ChatResponse(
        model=data.model or model,
        provider=provider,
        content=text,
        done_reason=done_reason(data.stop_reason, calls=bool(calls)),
        prompt_tokens=prompt_tokens(usage),
        completion_tokens=usage.output_tokens or 0,
        reasoning=thought or None,
        tool_calls=calls or None,
    )


def tool_call(block: Block) -> ToolCall:
    arguments = block.input if isinstance(block.input, dict) else {}
    return ToolCall(
        id=block.id or mint_call_id(),
        function=FunctionCall(name=block.name or "", arguments=arguments),
    )
