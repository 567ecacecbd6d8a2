"""What the fold of every streamed dialect keeps (Chat Completions chunks,
Messages and Responses events): who is streaming, with which status and
key, the text and reasoning said so far, and the tool calls being built."""

from __future__ import annotations

from lakehouse.tool_calls import CallFold


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
