"""What a route answers, as data: the server module does the writing.

Handlers build a Reply (status, headers, body frames); faults that act on
the wire (truncate, stall) then cut or pause between frames without knowing
the dialect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgspec

from lakehouse.stubs.faults import Fault

_encoder = msgspec.json.Encoder()

JSON = "application/json"
OLLAMA_JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"


def phrase(status: int) -> str:
    """The reason phrase, also for statuses outside the RFCs (499, 529)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    frames: tuple[bytes, ...]
    # Streams are written frame by frame with chunked encoding; others in one go.
    stream: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        return b"".join(self.frames)


def json_reply(
    status: int, obj: Any, content_type: str = JSON, headers: Mapping[str, str] | None = None
) -> Reply:
    return Reply(status, content_type, (encode(obj),), headers=dict(headers or {}))


def text_reply(status: int, text: str, content_type: str = TEXT) -> Reply:
    return Reply(status, content_type, (text.encode(),))


def ndjson_line(obj: Any) -> bytes:
    return encode(obj) + b"\n"


def sse_event(obj: Any) -> bytes:
    data = obj if isinstance(obj, bytes) else encode(obj)
    return b"data: " + data + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Failure:
    """An upstream error before any byte of the answer, in flavour-neutral terms."""

    status: int
    message: str
    error_type: str | None = None
    metadata: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def overridden_by(self, fault: Fault) -> Failure:
        """This failure with whatever the fault spells out replacing the defaults."""
        return Failure(
            fault.status or self.status,
            fault.message or self.message,
            fault.error_type or self.error_type,
            self.metadata if fault.metadata is None else fault.metadata,
            {**self.headers, **fault.headers()},
        )


class Rejected(Exception):
    """Raised inside a handler to answer with the flavour's error for ``failure``."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def reject(status: int, message: str, error_type: str | None = None) -> Rejected:
    return Rejected(Failure(status, message, error_type))
