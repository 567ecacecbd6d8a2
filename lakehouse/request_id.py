"""The request ID of the request being served, for logs and upstream calls.

A ContextVar rather than an argument: it follows the request into plugins
(which send it upstream through HTTPClient) and into every log line
without changing the Provider protocol.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable
from contextvars import ContextVar

HEADER = "X-Request-ID"
current: ContextVar[str | None] = ContextVar("chatd_request_id", default=None)

# Caller-chosen IDs are echoed into headers and logs: keep them printable.
_VALID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


def accept_or_mint(value: bytes | None, mint: Callable[[], str] | None = None) -> str:
    if value is not None and _VALID.fullmatch(value):
        return value.decode("ascii")
    return mint() if mint is not None else secrets.token_hex(8)


class Minter:
    """Unique IDs without a syscall each: a random per-process prefix and a
    counter (IDs must be unique, not secret)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):08x}"
