"""What the fold of every streamed dialect keeps (Chat Completions chunks,
Messages and Responses events): who is streaming, with which status, and
the text and reasoning said so far; and the decoding of one event."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from lakehouse.upstreams.failures import decode_or_refuse

T = TypeVar("T")


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

    def decode(self, decoder: msgspec.json.Decoder[T], payload: bytes) -> T:
        """One event's data, or UpstreamBadResponse when it is unusable."""
        return decode_or_refuse(
            decoder, payload, self.provider, self.status, "sent an unusable stream event"
        )
