"""The HTTP face of chatd: the only module that imports Starlette.

The chat routes (``POST /chat``, ``/v1/chat`` and the OpenAI surface's
``/v1/chat/completions``) are ``chat_flow.ChatFlow`` plain ASGI callables in
front of Starlette, one per surface, with no Request/Response objects
(measured ~15% more throughput; see bench/README.md). Starlette owns every
other route and the lifespan. Errors become responses in one place per
surface: ``http_io.error_response`` (native) and
``openai_errors.openai_error_response``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
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
from lakehouse.auth import is_loopback
from lakehouse.callers import openai_replies, openapi
from lakehouse.callers.chat_flow import ChatFlow, Native, OpenAI
from lakehouse.callers.http_io import error_response
from lakehouse.callers.openai_errors import openai_error_response
from lakehouse.callers.send_stall import BoundedSend, PeerGone, StallSweep
from lakehouse.config import Config
from lakehouse.errors import ChatdError, Forbidden, MethodNotAllowed, NotFound, ReloadRefused
from lakehouse.plain_asgi import send_json
from lakehouse.runtime import ConfigSource, Runtime
from lakehouse.upstreams.pool import hosts_listing
from lakehouse.wire import ProvidersListing, encoder

CHAT_PATHS = frozenset({"/chat", "/v1/chat"})
# Also without /v1, like the native routes: the lakehouse gateway strips it.
COMPLETIONS_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
MODELS_PATHS = ("/v1/models", "/models")


def is_openai_path(path: str) -> bool:
    """Paths whose errors take OpenAI's shape."""
    return path in COMPLETIONS_PATHS or path.startswith(MODELS_PATHS)


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
                render = openai_error_response if is_openai_path(scope["path"]) else error_response
                status, extra, payload = render(exc)
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
    listing = ProvidersListing(runtime.health.snapshot(), hosts_listing(runtime.registry))
    return json_response(encoder.encode(listing))


async def health(request: Request) -> Response:
    return json_response(b'{"status":"ok"}')


async def ready(request: Request) -> Response:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        return json_response(b'{"status":"starting"}', 503)
    return json_response(b'{"status":"ready"}')


async def reload(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    client = request.client.host if request.client else ""
    if not runtime.gate.enabled and not is_loopback(f"[{client}]:0"):
        # Without auth anyone who can reach chatd could reload it.
        raise Forbidden("POST /admin/reload needs [chatd.auth] on, or a caller on loopback")
    refused = await runtime.reload()
    if refused is not None:
        raise ReloadRefused(refused)
    listing = ProvidersListing(runtime.health.snapshot(), hosts_listing(runtime.registry))
    return json_response(encoder.encode(listing))


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(runtime.metrics.exposition), media_type=content_type)


async def openai_models(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return json_response(openai_replies.model_list(runtime.dispatcher, request.app.state.created))


async def openai_model(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    name = request.path_params["model"]
    entry = openai_replies.model_entry(runtime.dispatcher, request.app.state.created, name)
    if entry is None:
        raise NotFound(f"model {name!r} is not listed at {MODELS_PATHS[0]}")
    return json_response(entry)


def error_json(request: Request, error: ChatdError, redact: Any = str) -> Response:
    render = openai_error_response if is_openai_path(request.url.path) else error_response
    status, headers, body = render(error, redact)
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={k.decode(): v.decode() for k, v in headers},
    )


async def chatd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatdError)
    runtime: Runtime = request.app.state.runtime
    return error_json(request, exc, runtime.registry.redact)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ChatdError
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(
            f"{request.method} not allowed on {request.url.path}",
            # Sorted: Starlette keeps a route's methods in a set.
            allow=tuple(sorted(m.strip() for m in allow.split(",") if m.strip())),
        )
    elif exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    else:
        error = ChatdError(exc.detail or "error")
        error.status = exc.status_code  # type: ignore[misc]
    return error_json(request, error)


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

    # The HTTP/2 send stall bound (see send_stall): one sweep for the app.
    stall = config.chatd.server.send_stall_secs
    sweep = StallSweep(stall) if stall else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(config, environ, source=source, handle_sighup=handle_sighup)
        app.state.runtime = runtime
        try:
            yield
        finally:
            if sweep is not None:
                sweep.close()
            await runtime.close()

    spec = msgspec.json.encode(openapi.document())

    async def openapi_json(request: Request) -> Response:
        return json_response(spec)

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
        *(Route(path, openai_models, methods=["GET"]) for path in MODELS_PATHS),
        *(Route(path + "/{model:path}", openai_model, methods=["GET"]) for path in MODELS_PATHS),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, ChatdError: chatd_error},
    )
    # The `created` of every model listed: when this chatd started.
    app.state.created = int(time.time())
    chat = ChatFlow(app.state, Native())
    completions = ChatFlow(app.state, OpenAI())
    others = guarded(app, app.state)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await others(scope, receive, send)
            return
        if sweep is not None and scope.get("http_version") == "2":
            send = BoundedSend(send, sweep)
        in_flight = app.state.runtime.metrics.in_flight
        if scope["method"] == "POST" and scope["path"] in CHAT_PATHS:
            with contextlib.suppress(PeerGone), in_flight.track_inprogress():
                await chat(scope, receive, send)
            return
        if scope["path"] in COMPLETIONS_PATHS:
            with contextlib.suppress(PeerGone), in_flight.track_inprogress():
                await completions(scope, receive, send)
            return
        await others(scope, receive, send)

    return asgi


async def _never(request: Request) -> Response:
    raise AssertionError("POST /chat is served before Starlette")
