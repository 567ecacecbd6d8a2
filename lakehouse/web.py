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
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lakehouse import request_id
from lakehouse.config import Config
from lakehouse.dispatcher import CallInfo
from lakehouse.errors import (
    BadRequest,
    ChatdError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ReloadRefused,
)
from lakehouse.runtime import ConfigSource, Runtime
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


async def read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
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
        started = time.perf_counter()
        runtime: Runtime = self._state.runtime
        declared = rid_header = authorization = deadline_header = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"x-request-id":
                rid_header = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-chatd-deadline":
                deadline_header = value
        rid = request_id.accept_or_mint(rid_header)
        token = request_id.current.set(rid)
        info = CallInfo()
        request = None
        error: ChatdError | None = None
        try:
            runtime.gate.check(scope["path"], authorization)
            deadline = parse_deadline(deadline_header)
            body = await read_body(receive, runtime.config.chatd.max_request_bytes, declared)
            try:
                request = chat_request_decoder.decode(body)
            except (msgspec.DecodeError, ValueError, RecursionError) as exc:
                raise bad_request_from(exc) from None
            response = await runtime.dispatcher.chat(request, info, deadline=deadline)
            headers: list[tuple[bytes, bytes]] = []
            status, payload = 200, encoder.encode(response)
        except ClientGone:
            runtime.observe(scope["path"], rid, request, info, 499, started, None, None)
            request_id.current.reset(token)
            return
        except Exception as exc:
            status, headers, payload = error_response(exc, runtime.registry.redact)
            error = exc if isinstance(exc, ChatdError) else None
            response = None
        total = time.perf_counter() - started
        headers.append((b"x-request-id", rid.encode()))
        headers.append((b"server-timing", server_timing(info.upstream_s, total)))
        await send_json(send, status, payload, headers)
        runtime.observe(scope["path"], rid, request, info, status, started, response, error)
        request_id.current.reset(token)


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


def server_timing(upstream_s: float, total_s: float) -> bytes:
    """Where the time went, for callers: the upstream call and chatd's own share."""
    overhead = max(0.0, total_s - upstream_s)
    return f"upstream;dur={upstream_s * 1000:.3f}, chatd;dur={overhead * 1000:.3f}".encode()


def guarded(app: ASGIApp, state: Any) -> ASGIApp:
    """Every other route: the auth gate, and an ``X-Request-ID`` on the answer."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = request_id.accept_or_mint(headers.get(b"x-request-id")).encode()
        runtime: Runtime | None = getattr(state, "runtime", None)
        if runtime is not None:
            try:
                runtime.gate.check(scope["path"], headers.get(b"authorization"))
            except ChatdError as exc:
                status, extra, payload = error_response(exc)
                await send_json(send, status, payload, [*extra, (b"x-request-id", rid)])
                return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        await app(scope, receive, send_with_id)

    return wrapped


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


async def reload(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    refused = await runtime.reload()
    if refused is not None:
        raise ReloadRefused(refused)
    listing = ProvidersListing(runtime.health.snapshot())
    return json_response(encoder.encode(listing))


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(runtime.metrics.exposition), media_type=content_type)


async def chatd_error(request: Request, exc: Exception) -> Response:
    runtime: Runtime = request.app.state.runtime
    status, headers, body = error_response(exc, runtime.registry.redact)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={k.decode(): v.decode() for k, v in headers},
    )


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


def create_app(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    source: ConfigSource | None = None,
    handle_sighup: bool = False,
) -> ASGIApp:
    """The chatd ASGI app; providers are built and opened in its lifespan.
    ``source`` re-reads the config for ``POST /admin/reload`` (and SIGHUP
    when ``handle_sighup``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(config, environ, source=source, handle_sighup=handle_sighup)
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
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/reload", reload, methods=["POST"]),
        # Listed so that a wrong method on the hot path gets a proper 405.
        Route("/chat", _never, methods=["POST"]),
        Route("/v1/chat", _never, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, ChatdError: chatd_error},
    )
    chat = ChatEndpoint(app.state)
    others = guarded(app, app.state)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in CHAT_PATHS:
            await chat(scope, receive, send)
        else:
            await others(scope, receive, send)

    return asgi


async def _never(request: Request) -> Response:
    raise AssertionError("POST /chat is served before Starlette")
