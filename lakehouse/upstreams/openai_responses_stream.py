"""Streamed OpenAI Responses (``stream: true``): the fold of a stream's
semantic SSE events into deltas and the final reply.

The stream has no ``[DONE]``: it ends with ``response.completed``,
``response.incomplete`` or ``response.failed``, each carrying the whole
response object (status, usage); an ``error`` event reports a failure
after the 200. Text arrives in ``response.output_text.delta`` (or
``response.refusal.delta`` when the model declines), reasoning in
``response.reasoning_summary_text.delta`` (or ``response.reasoning_text.delta``).
Other events (created, in_progress, output_item.*, content_part.*, *.done)
say nothing new and are skipped (docs/protocols/openai-responses.md).
"""

from __future__ import annotations

from typing import Any

import msgspec

from lakehouse.errors import UpstreamBadResponse
from lakehouse.upstreams.failures import decode_event
from lakehouse.upstreams.openai_chat_errors import in_band_error
from lakehouse.upstreams.openai_responses_reply import Item, Response, to_answer
from lakehouse.upstreams.stream_fold import StreamFold
from lakehouse.wire import ChatResponse, StreamDelta, ToolCallChunk

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# A refusal is the answer's text too (its ending says content_filter).
_TEXT = frozenset({"response.output_text.delta", "response.refusal.delta"})
_REASONING = frozenset({"response.reasoning_summary_text.delta", "response.reasoning_text.delta"})


class _Event(msgspec.Struct):
    type: str = ""
    delta: str | None = None
    response: Response | None = None
    item: Item | None = None
    output_index: int | None = None
    # The ``error`` event's own fields.
    code: Any = None
    message: str | None = None


_event_decoder = msgspec.json.Decoder(_Event)


class ResponsesFold(StreamFold):
    """What one streamed response has said so far."""

    def __init__(
        self, provider: str, model: str, key: str | None = None, *, status: int = 200
    ) -> None:
        super().__init__(provider, model, key, status=status)
        self._final: Response | None = None
        # Output index of a function_call item → its position in the answer.
        self._call_at: dict[int, int] = {}

    @property
    def done(self) -> bool:
        return self._final is not None

    def add(self, payload: bytes) -> StreamDelta | None:
        """Take one event's data; the delta to pass on, if it has text."""
        event = decode_event(_event_decoder, payload, self.provider, self.status)
        kind = event.type
        if kind == "error":
            error = {"code": event.code, "message": event.message or ""}
            raise in_band_error(error, self.status, self.provider, self._key)
        if kind in TERMINAL:
            if event.response is None:
                raise UpstreamBadResponse(
                    f"{self.provider} sent {kind} without its response",
                    provider=self.provider,
                    upstream_status=self.status,
                )
            self._final = event.response
            if kind == "response.failed" and event.response.status is None:
                event.response.status = "failed"
            return None
        if kind == "response.output_item.added" and event.item is not None:
            return self._added(event.item, event.output_index)
        if not event.delta:
            return None
        if kind == "response.function_call_arguments.delta":
            at = self._call_at.get(event.output_index) if event.output_index is not None else None
            if at is None:
                raise UpstreamBadResponse(
                    f"{self.provider} streamed arguments for an item that is not a function_call",
                    provider=self.provider,
                    upstream_status=self.status,
                )
            return self._call(ToolCallChunk(at, arguments=event.delta))
        if kind in _TEXT:
            return StreamDelta(content=event.delta)
        if kind in _REASONING:
            return StreamDelta(reasoning=event.delta)
        return None

    def _added(self, item: Item, index: int | None) -> StreamDelta | None:
        if item.type != "function_call":
            return None
        at = len(self._call_at)
        self._call_at[len(self._call_at) if index is None else index] = at
        chunk = ToolCallChunk(
            at, id=item.call_id or item.id, name=item.name, arguments=item.arguments or ""
        )
        return self._call(chunk)

    def _call(self, chunk: ToolCallChunk) -> StreamDelta:
        # The chunk as the fold hands it back: with the id it minted for a
        # call that came without one, so the relayed call and the final agree.
        return StreamDelta(tool_calls=[self._calls.add(chunk)])

    def result(self, *, done: bool = False) -> ChatResponse:
        """The answer's end, once a terminal event has arrived (``done``,
        a ``[DONE]`` seen, is not this protocol's end and says nothing)."""
        if self._final is None:
            raise UpstreamBadResponse(
                f"{self.provider} ended the stream without response.completed",
                provider=self.provider,
                upstream_status=self.status,
            )
        return to_answer(
            self._final,
            model=self.model,
            provider=self.provider,
            status=self.status,
            key=self._key,
            # Sent in the deltas: not gathered again from the response's output.
            content="",
            reasoning="",
            calls=self._calls.calls() if self._calls else None,
        )
