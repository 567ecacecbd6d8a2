"""Streamed Anthropic Messages (``stream: true``): the fold of a stream's SSE
events into deltas and the final reply.

Events, as docs/protocols/anthropic-messages.md lists them: ``message_start``
(model, input usage), ``content_block_start``/``_delta``/``_stop`` (text,
thinking and tool-input deltas, by block index), ``message_delta`` (stop
reason, cumulative output usage), ``message_stop`` (the end), ``ping``, and
``error`` (a failure after the 200 was sent). Unknown event types are
skipped, as Anthropic's versioning policy asks of clients.
"""

from __future__ import annotations

from typing import Any

import msgspec

from lakehouse.errors import UpstreamBadResponse
from lakehouse.upstreams.anthropic_messages_reply import (
    Usage,
    done_reason,
    prompt_tokens,
)
from lakehouse.upstreams.failures import decode_event
from lakehouse.upstreams.openai_chat_errors import in_band_error
from lakehouse.upstreams.stream_fold import StreamFold
from lakehouse.wire import ChatResponse, StreamDelta, ToolCallChunk


class _Block(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None


class _Delta(msgspec.Struct):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Start(msgspec.Struct):
    model: str | None = None
    usage: Usage | None = None


class _Event(msgspec.Struct):
    type: str = ""
    index: int | None = None
    message: _Start | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: Usage | None = None
    error: Any = None


_event_decoder = msgspec.json.Decoder(_Event)


class MessagesFold(StreamFold):
    """What one streamed Message has said so far."""

    def __init__(
        self, provider: str, model: str, key: str | None = None, *, status: int = 200
    ) -> None:
        super().__init__(provider, model, key, status=status)
        self._upstream_model: str | None = None
        self._usage = Usage()
        self._stop: str | None = None
        # Block index → the position of its tool call in the answer.
        self._call_at: dict[int, int] = {}
        self._started = False
        self.done = False

    def add(self, payload: bytes) -> StreamDelta | None:
        """Take one event's data; the delta to pass on, if it has text."""
        event = decode_event(_event_decoder, payload, self.provider, self.status)
        kind = event.type
        if kind == "error" or event.error is not None:
            raise in_band_error(event.error, self.status, self.provider, self._key)
        if kind == "message_start" and event.message is not None:
            self._started = True
            self._upstream_model = event.message.model
            if event.message.usage is not None:
                self._usage = self._usage.merged(event.message.usage)
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason:
                self._stop = event.delta.stop_reason
            if event.usage is not None:
                # Cumulative counts: the last message_delta holds the totals.
                self._usage = self._usage.merged(event.usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.type == "tool_use" and event.index is not None:
                at = self._call_at[event.index] = len(self._call_at)
                return self._call(ToolCallChunk(at, id=block.id, name=block.name))
        elif kind == "content_block_delta" and event.delta is not None:
            return self._delta(event.index, event.delta)
        return None

    def _call(self, chunk: ToolCallChunk) -> StreamDelta:
        # The chunk as the fold hands it back: with the id it minted for a
        # call that came without one, so the relayed call and the final agree.
        return StreamDelta(tool_calls=[self._calls.add(chunk)])

    def _delta(self, index: int | None, delta: _Delta) -> StreamDelta | None:
        if delta.type == "input_json_delta" and delta.partial_json:
            at = self._call_at.get(index) if index is not None else None
            if at is None:
                raise UpstreamBadResponse(
                    f"{self.provider} streamed tool input for a block that is not a tool_use",
                    provider=self.provider,
                    upstream_status=self.status,
                )
            return self._call(ToolCallChunk(at, arguments=delta.partial_json))
        if delta.type == "text_delta" and delta.text:
            return StreamDelta(content=delta.text)
        if delta.type == "thinking_delta" and delta.thinking:
            # Reasoning stays out of content, as on every other provider.
            return StreamDelta(reasoning=delta.thinking)
        return None

    def result(self, *, done: bool = False) -> ChatResponse:
        """The answer's end, once the stream has ended with ``message_stop``
        (``done``, a ``[DONE]`` seen, is not this protocol's end and says
        nothing)."""
        if not self._started:
            raise UpstreamBadResponse(
                f"{self.provider} streamed no message_start",
                provider=self.provider,
                upstream_status=self.status,
            )
        if not self.done:
            raise UpstreamBadResponse(
                f"{self.provider} ended the stream without message_stop",
                provider=self.provider,
                upstream_status=self.status,
            )
        return ChatResponse(
            model=self._upstream_model or self.model,
            provider=self.provider,
            content="",
            done_reason=done_reason(self._stop, calls=bool(self._calls)),
            prompt_tokens=prompt_tokens(self._usage),
            completion_tokens=self._usage.output_tokens or 0,
            tool_calls=self._calls.calls() or None,
        )
