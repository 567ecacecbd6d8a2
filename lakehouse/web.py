"""The HTTP face of chatd: the only module that imports Starlette.

The hot route (``POST /chat`` and ``/v1/chat``) is a plain ASGI callable in
front of Starlette: body bytes → cached msgspec decoder → dispatcher →
msgspec encoder, with no Request/Response objects (PERF-NOTES.md measured
~15% throughput for this). Starlette owns every other route and the
lifespan. Errors become responses in one place: ``error_response``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lakehouse.config import Config
from lakehouse.errors import (
    BadRequest,
    ChatdError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from lakehouse.runtime import Runtime
from lakehouse.wire import (
    ErrorBody,
    ErrorDetail,
    ProvidersListing,
    chat_request_decoder,
    encoder,
)

log = logging.getLogger("chatd")

CHAT_PATHS = frozenset({"/chat", "/v1/chat"})
JSON = b"application/json"
_AT_PATH = re.compile(r" - at `(\$[^`]*)`")


class ClientGone(Exception):
    """The caller hung up before its request body arrived."""


def error_response(
    exc: BaseException, redact: Callable[[str], str] = str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and JSON body for any exception; internals of
    unexpected ones are logged, never sent."""
    if not isinstance(exc, ChatdError):
        log.error("unhandled error: %s", redact(f"{type(exc).__name__}: {exc}"))
        exc = ChatdError("internal error")
    detail = ErrorDetail(
        code=exc.code, message=redact(exc.message), provider=exc.provider, path=exc.path
    )
    headers: list[tuple[bytes, bytes]] = []
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(math.ceil(exc.retry_after)).encode()))
    if exc.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="chatd"'))
    return exc.status, headers, encoder.encode(ErrorBody(detail))


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


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing at once anything over ``limit`` bytes: a
    declared Content-Length is checked before reading, and a body without
    one is counted while it arrives, so no more than ``limit`` is held."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if declared > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ChatEndpoint:
    """``POST /chat``: the hot path, in plain ASGI."""

    def __init__(self, state: Any) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime
        try:
            body = await read_body(scope, receive, runtime.config.chatd.max_request_bytes)
            try:
                request = chat_request_decoder.decode(body)
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                ValueError,
                RecursionError,
            ) as exc:
                raise bad_request_from(exc) from None
            response = await runtime.dispatcher.chat(request)
            await send_json(send, 200, encoder.encode(response))
        except ClientGone:
            return
        except Exception as exc:
            status, headers, payload = error_response(exc, runtime.registry.redact)
            await send_json(send, status, payload, headers)


def json_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def providers(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return json_response(encoder.encode(ProvidersListing(runtime.health.snapshot())))


async def health(request: Request) -> Response:
    return json_response(b'{"status":"ok"}')


async def ready(request: Request) -> Response:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        return json_response(b'{"status":"starting"}', 503)
    return json_response(b'{"status":"ready"}')


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ChatdError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} not allowed on {request.url.path}")
    elif exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    else:
        error = ChatdError(exc.detail or "error")
        error.status = exc.status_code  # type: ignore[misc]
    status, headers, body = error_response(error)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={k.decode(): v.decode() for k, v in headers},
    )


def create_app(config: Config, *, environ: Mapping[str, str] | None = None) -> ASGIApp:
    """The chatd ASGI app; providers are built and opened in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(config, environ)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    routes = [
        Route("/chat/providers", providers, methods=["GET"]),
        Route("/v1/chat/providers", providers, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        # Listed so that a wrong method on the hot path gets a proper 405.
        Route("/chat", _never, methods=["POST"]),
        Route("/v1/chat", _never, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    chat = ChatEndpoint(app.state)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in CHAT_PATHS:
            await chat(scope, receive, send)
        else:
            await app(scope, receive, send)

    return asgi


async def _never(request: Request) -> Response:
    raise AssertionError("POST /chat is served before Starlette")
