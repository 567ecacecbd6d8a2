"""What the fold of every streamed dialect keeps (Chat Completions chunks,
Messages and Responses events): who is streaming, with which status and
key, the text and reasoning said so far, and the tool calls being built."""

from __future__ import annotations

from typing import Protocol

from lakehouse.tool_calls import CallFold
from lakehouse.wire import ChatResponse, StreamDelta


class Fold(Protocol):
    """A dialect's reading of one event stream."""

    @property
    def done(self) -> bool:
        """Whether the stream's terminal event has come (never, in a dialect
        that ends with ``[DONE]``)."""
        ...

    def add(self, payload: bytes) -> StreamDelta | None: ...

    def result(self, *, done: bool) -> ChatResponse:
        """The whole reply, once the stream has ended (``done``: with
        ``[DONE]``)."""
        ...


class StreamFold:
    def __init__(
        self, provider: str, model: str, key: str | None = None, *, status: int = 200
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self._key = key
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls = CallFold()
