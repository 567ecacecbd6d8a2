"""Streamed Chat Completions (``stream: true``): the view Structs of one SSE
chunk, and the fold of a stream's chunks into deltas and the final reply.

Every upstream's quirks are read, none is switched on by name: reasoning in
``delta.reasoning`` (OpenRouter) or ``delta.reasoning_content`` (Kimi,
Moonshot, DeepSeek-style models behind Zen); usage at the top level or in
``choices[0].usage`` (Moonshot); usage-only chunks with empty ``choices``;
failures as a chunk with an ``error`` object and/or ``finish_reason: "error"``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from lakehouse.errors import UpstreamBadResponse
from lakehouse.tool_calls import answer_reason
from lakehouse.upstreams.failures import decode_event
from lakehouse.upstreams.openai_chat_errors import in_band_error
from lakehouse.upstreams.stream_fold import StreamFold
from lakehouse.wire import ChatResponse, StreamDelta, TokenLogprob, ToolCallChunk


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprob] | None = None


class _DeltaFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _DeltaToolCall(msgspec.Struct):
    # Some upstreams leave it out when each chunk holds whole calls.
    index: int | None = None
    id: str | None = None
    function: _DeltaFunction | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_DeltaToolCall] | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: Any = None
    logprobs: ChoiceLogprobs | None = None


class _Chunk(msgspec.Struct):
    model: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: Usage | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class ChunkFold(StreamFold):
    """What one streamed completion has said so far."""

    # A completion's stream ends with [DONE] (or the body's end), no event.
    done = False

    def __init__(
        self, provider: str, model: str, key: str | None = None, *, status: int = 200
    ) -> None:
        super().__init__(provider, model, key, status=status)
        self._upstream_model: str | None = None
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._choices = False

    def add(self, payload: bytes) -> StreamDelta | None:
        """Take one event's data; the delta to pass on, if it has text."""
        chunk = decode_event(_chunk_decoder, payload, self.provider, self.status)
        if chunk.error is not None:
            raise in_band_error(chunk.error, self.status, self.provider, self._key)
        if chunk.model and self._upstream_model is None:
            self._upstream_model = chunk.model
        if chunk.usage is not None:
            self._usage = chunk.usage
        if not chunk.choices:
            return None
        self._choices = True
        choice = chunk.choices[0]
        if choice.error is not None or choice.finish_reason == "error":
            raise in_band_error(choice.error, self.status, self.provider, self._key)
        if choice.usage is not None:
            self._usage = choice.usage
        if choice.finish_reason:
            self._finish = choice.finish_reason
        delta = choice.delta
        logprobs = choice.logprobs.content if choice.logprobs else None
        if delta is None:
            return StreamDelta(logprobs=logprobs) if logprobs else None
        text = delta.content or ""
        thought = delta.reasoning or delta.reasoning_content or ""
        chunks = [self._chunk(call) for call in delta.tool_calls or ()]
        if not (text or thought or chunks or logprobs):
            return None
        return StreamDelta(text, thought, chunks or None, logprobs)

    def _chunk(self, call: _DeltaToolCall) -> ToolCallChunk:
        function = call.function or _DeltaFunction()
        index = call.index
        if index is None:
            # No index (some upstreams send whole calls so): an id or a
            # name starts the next call, anything else continues the last.
            known = self._calls.indices()
            last = max(known, default=-1)
            index = last + 1 if call.id or function.name or last < 0 else last
        return self._calls.add(
            ToolCallChunk(index, call.id, function.name, function.arguments or "")
        )

    def result(self, *, done: bool) -> ChatResponse:
        """The answer's end, once the stream has ended (``done``: with
        [DONE]); the text and logprobs went out in the deltas."""
        if not self._choices:
            raise UpstreamBadResponse(
                f"{self.provider} streamed no choices",
                provider=self.provider,
                upstream_status=self.status,
            )
        # Some upstreams end without [DONE]; a finish_reason says it was whole.
        if not done and self._finish is None:
            raise UpstreamBadResponse(
                f"{self.provider} ended the stream without [DONE] or a finish_reason",
                provider=self.provider,
                upstream_status=self.status,
            )
        usage = self._usage or Usage()
        calls = self._calls.calls()
        return ChatResponse(
            model=self._upstream_model or self.model,
            provider=self.provider,
            content="",
            done_reason=answer_reason(self._finish, calls=bool(calls)),
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            tool_calls=calls or None,
        )
