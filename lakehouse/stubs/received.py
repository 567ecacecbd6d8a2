"""What reached the stub, kept for tests to inspect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from lakehouse.stubs.faults import Fault
from lakehouse.stubs.reply import Failure, Reply


class Received(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    # Lower-cased names; repeated headers joined with ", ".
    headers: dict[str, str]
    body: bytes
    # The decoded body, or None when it is empty or not JSON.
    json: Any = None
    query: str = ""


def decode_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


# Handlers are pure: the request (and the fault meant for it) in, a Reply out.
Handler = Callable[[Received, Fault | None], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    # Chat routes take scripted faults; health and listing routes do not.
    chat: bool = False
    # Where the key travels: Anthropic's Messages reads ``x-api-key``.
    auth: Literal["bearer", "x-api-key"] = "bearer"
    # The route's own error shape, when it is not the flavour's.
    error: Callable[[Failure], Reply] | None = None
