"""What the fold of every streamed dialect keeps (Chat Completions chunks,
Messages and Responses events): who is streaming, with which status and
key, and the tool calls being built. Not the text: each piece goes out in
its StreamDelta and is let go (see lakehouse.plugin_api)."""

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
        """The answer's end, once the stream has ended (``done``: with
        ``[DONE]``): model, reason, usage and the whole tool calls; the text
        went out in the deltas."""
        ...


class StreamFold:
    def __init__(
        self, provider: str, model: str, key: str | None = None, *, status: int = 200
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self._key = key
        self._calls = CallFold()
