"""Plain-ASGI plumbing of the chat endpoints: reading a capped body, the
caller's deadline header, and the native error response (the one place an
exception becomes a status and a body). What the gateway shares with them
is in ``lakehouse.plain_asgi``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable

import msgspec

from lakehouse.errors import BadRequest, ChatdError, MethodNotAllowed, PayloadTooLarge
from lakehouse.plain_asgi import ClientGone, Headers, Receive
from lakehouse.wire import ErrorBody, ErrorDetail, encoder

log = logging.getLogger("chatd")

_AT_PATH = re.compile(r" - at `(\$[^`]*)`")


def known_error(exc: BaseException, redact: Callable[[str], str] = str) -> ChatdError:
    """``exc`` as a member of the error family; internals of unexpected
    ones are logged, never sent."""
    if isinstance(exc, ChatdError):
        return exc
    log.error("unhandled error: %s", redact(f"{type(exc).__name__}: {exc}"))
    return ChatdError("internal error")


def error_headers(exc: ChatdError) -> Headers:
    headers: Headers = []
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(math.ceil(exc.retry_after)).encode()))
    if exc.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="chatd"'))
    if isinstance(exc, MethodNotAllowed) and exc.allow:
        headers.append((b"allow", ", ".join(exc.allow).encode()))
    return headers


def error_response(
    exc: BaseException, redact: Callable[[str], str] = str
) -> tuple[int, Headers, bytes]:
    """Status, headers and JSON body of the native API for any exception."""
    error = known_error(exc, redact)
    detail = ErrorDetail(
        code=error.code, message=redact(error.message), provider=error.provider, path=error.path
    )
    return error.status, error_headers(error), encoder.encode(ErrorBody(detail))


def bad_request_from(exc: Exception) -> BadRequest:
    """A 400 that names what is wrong and, when known, where."""
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        match = _AT_PATH.search(text)
        return BadRequest(f"invalid request: {text}", path=match.group(1) if match else "$")
    if isinstance(exc, RecursionError):
        return BadRequest("invalid request: JSON nested too deeply")
    if isinstance(exc, UnicodeDecodeError):
        return BadRequest("invalid request: body is not valid UTF-8")
    return BadRequest(f"malformed JSON: {exc}")


class Body:
    """A request's body as the app reads it, and whether any of it is still
    unread: an answer sent before the body was read whole (a 413, a 401)
    leaves the rest in flight, and closing on it makes the kernel reset the
    connection, so a client still writing never reads the answer."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.unread = True

    async def read(self, limit: int, declared: bytes | None) -> bytes:
        """The whole body, refusing at once anything over ``limit`` bytes: a
        declared Content-Length is checked before reading, and a body without
        one is counted while it arrives, so no more than ``limit`` is held."""
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if size > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.unread = False
                raise ClientGone
            chunk = message.get("body", b"")
            self.unread = message.get("more_body", False)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
            chunks.append(chunk)
            if not self.unread:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def discard(self, declared: bytes | None, limit: int, seconds: float) -> None:
        """Before an early answer, read and drop what is left of a body
        whose declared length is at most ``limit`` bytes, for at most
        ``seconds``: a client that writes its whole body before reading (the
        openai SDK, httpx) then gets the answer instead of a reset, since
        Hypercorn closes the connection as soon as the answer is sent.
        Larger or undeclared bodies are refused at once, as before."""
        if not self.unread or declared is None:
            return
        try:
            if int(declared) > limit:
                return
        except ValueError:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self.unread:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        break
                    self.unread = message.get("more_body", False)
        self.unread = False


def parse_deadline(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise BadRequest("X-Chatd-Deadline must be a positive number of seconds")
    return seconds


def server_timing(upstream_s: float, total_s: float, wait_s: float = 0.0) -> bytes:
    """Where the time went, for callers: the upstream calls, chatd's own
    share, and (when there were any) waits for retries or a slot."""
    overhead = max(0.0, total_s - upstream_s - wait_s)
    timing = f"upstream;dur={upstream_s * 1000:.3f}, chatd;dur={overhead * 1000:.3f}"
    if wait_s:
        timing += f", wait;dur={wait_s * 1000:.3f}"
    return timing.encode()
