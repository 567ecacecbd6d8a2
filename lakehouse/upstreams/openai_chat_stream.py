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
from lakehouse.upstreams.failures import decode_or_refuse
from lakehouse.upstreams.openai_chat_errors import in_band_error
from lakehouse.wire import ChatResponse, StreamDelta


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: Any = None


class _Chunk(msgspec.Struct):
    model: str | None = None
    choices: list[_ChunkChoice] | None = None
    usage: Usage | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class ChunkFold:
    """What one streamed completion has said so far."""

    def __init__(
        self, provider: str, model: str, key: str | None = None, *, status: int = 200
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self._key = key
        self._upstream_model: str | None = None
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._choices = False

    def add(self, payload: bytes) -> StreamDelta | None:
        """Take one event's data; the delta to pass on, if it has text."""
        chunk = decode_or_refuse(
            _chunk_decoder, payload, self.provider, self.status, "sent an unusable stream event"
        )
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
        if delta is None:
            return None
        text = delta.content or ""
        thought = delta.reasoning or delta.reasoning_content or ""
        if not (text or thought):
            return None
        self._content.append(text)
        self._reasoning.append(thought)
        return StreamDelta(text, thought)

    def result(self, *, done: bool) -> ChatResponse:
        """The whole reply, once the stream has ended (``done``: with [DONE])."""
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
        return ChatResponse(
            model=self._upstream_model or self.model,
            provider=self.provider,
            content="".join(self._content),
            done_reason=self._finish or "stop",
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            reasoning="".join(self._reasoning) or None,
        )
