"""One chat request, from its first header to its access line, in plain ASGI.

``POST /chat`` (native) and ``POST /v1/chat/completions`` (OpenAI) differ
only in their ``Surface``: how a body decodes, how an answer and an error
are written, and how a stream is framed. Everything else (auth, deadline,
body, dispatch, stream, observe, request ID) is this one flow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

import msgspec

from lakehouse import request_id
from lakehouse.callers import openai_replies, openai_requests
from lakehouse.callers.caller_watch import CallerWatch, gone_already
from lakehouse.callers.http_io import (
    Body,
    bad_request_from,
    error_response,
    parse_deadline,
    server_timing,
)
from lakehouse.callers.openai_errors import openai_error_response
from lakehouse.callers.streaming import CLIENT_GONE, ChunkWriter, Framing, LineWriter, Relay
from lakehouse.dispatcher import CallInfo
from lakehouse.errors import ChatdError, MethodNotAllowed, settled
from lakehouse.generations import Generation
from lakehouse.plain_asgi import ClientGone, Headers, Receive, Send, send_json
from lakehouse.runtime import Runtime
from lakehouse.wire import ChatRequest, ChatResponse, chat_request_decoder, encoder

# Before an early answer (413, 401, 405), a body whose declared length is at
# most this many times max_request_bytes is read and dropped, for at most
# this long, so that the client sees the answer rather than a reset.
DISCARD_FACTOR = 8
DISCARD_SECS = 10.0

Scope = MutableMapping[str, Any]


class Surface(Protocol):
    """What differs between the chat surfaces."""

    # Whether `chatd.sse_keepalive_secs` applies to its streams.
    keepalive: bool

    def decode(self, body: bytes, rid: str, info: CallInfo) -> tuple[ChatRequest, Framing | None]:
        """The request, and its stream's framing when it asked for one."""
        ...

    def encode(self, response: ChatResponse, rid: str, info: CallInfo) -> bytes: ...

    def render(self, exc: BaseException, redact: Any = str) -> tuple[int, Headers, bytes]: ...


class Native:
    keepalive = False

    def decode(self, body: bytes, rid: str, info: CallInfo) -> tuple[ChatRequest, Framing | None]:
        request = chat_request_decoder.decode(body)
        return request, LineWriter() if request.stream else None

    def encode(self, response: ChatResponse, rid: str, info: CallInfo) -> bytes:
        return encoder.encode(response)

    def render(self, exc: BaseException, redact: Any = str) -> tuple[int, Headers, bytes]:
        return error_response(exc, redact)


class OpenAI:
    keepalive = True

    def decode(self, body: bytes, rid: str, info: CallInfo) -> tuple[ChatRequest, Framing | None]:
        asked = openai_requests.decode_request(body)
        request = openai_requests.to_chat_request(asked)
        if not asked.stream:
            return request, None
        options = asked.stream_options
        usage = options is not None and options.include_usage
        return request, ChunkWriter(rid, lambda: info.model, include_usage=usage)

    def encode(self, response: ChatResponse, rid: str, info: CallInfo) -> bytes:
        return openai_replies.completion(response, rid, info.model)

    def render(self, exc: BaseException, redact: Any = str) -> tuple[int, Headers, bytes]:
        return openai_error_response(exc, redact)


def timing_trailer(scope: Scope, info: CallInfo, started: float) -> Callable[[], bytes] | None:
    """A stream's Server-Timing, sent as a trailer when the caller accepts
    them (``TE: trailers``) and the server can send them (HTTP/2); an
    HTTP/1.1 stream goes without (Hypercorn sends no chunked trailers)."""
    if "http.response.trailers" not in scope.get("extensions", {}):
        return None
    if not any(name == b"te" and value == b"trailers" for name, value in scope["headers"]):
        return None
    return lambda: server_timing(info.upstream_s, time.perf_counter() - started, info.wait_s)


class ChatFlow:
    """A chat route for one surface; ``state.runtime`` is read per request."""

    def __init__(self, state: Any, surface: Surface) -> None:
        self._state = state
        self._surface = surface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = self._state.runtime
        rid_header = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid_header = value
                break
        rid = request_id.accept_or_mint(rid_header, runtime.mint)
        token = request_id.current.set(rid)
        try:
            # The generation is taken once and held to the end (its stream's
            # included), so a reload meanwhile never mixes or closes it.
            with runtime.generations.current as generation:
                await self._serve(scope, receive, send, runtime, generation, rid)
        finally:
            request_id.current.reset(token)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        runtime: Runtime,
        generation: Generation,
        rid: str,
    ) -> None:
        started = time.perf_counter()
        surface = self._surface
        redact = generation.registry.redact
        declared = authorization = deadline_header = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-chatd-deadline":
                deadline_header = value
        path = scope["path"]
        info = CallInfo()
        request: ChatRequest | None = None
        error: ChatdError | None = None
        limit = generation.config.chatd.max_request_bytes
        reader = Body(receive)
        try:
            # Auth first: a caller without a token learns nothing of routes.
            generation.gate.check(path, authorization)
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} not allowed on {path}", allow=("POST",))
            deadline = parse_deadline(deadline_header)
            body = await reader.read(limit, declared)
            try:
                request, framing = surface.decode(body, rid, info)
            except (msgspec.DecodeError, ValueError, RecursionError) as exc:
                raise bad_request_from(exc) from None
            if framing is not None:
                relay = Relay(
                    send,
                    receive,
                    framing,
                    headers=[(b"x-request-id", rid.encode())],
                    refuse=lambda exc: surface.render(exc, redact),
                    redact=redact,
                    keepalive_secs=(
                        generation.config.chatd.sse_keepalive_secs if surface.keepalive else 0.0
                    ),
                    trailer=timing_trailer(scope, info, started),
                )
                stream = generation.dispatcher.stream(request, info, deadline=deadline)
                outcome = await relay.run(stream)
                runtime.log.observe(
                    generation,
                    path,
                    rid,
                    request,
                    info,
                    outcome.status,
                    started,
                    outcome.final,
                    outcome.error,
                )
                return
            if gone_already(receive):
                raise ClientGone
            watch = CallerWatch(receive)
            info.on_wait = watch.now
            try:
                status, response, error = await self._answer(
                    send, generation, request, info, deadline, rid, started
                )
            except asyncio.CancelledError:
                if not watch.stop():
                    raise
                status, response = CLIENT_GONE, None
            else:
                if watch.stop():
                    status = CLIENT_GONE
            runtime.log.observe(
                generation, path, rid, request, info, status, started, response, error
            )
            return
        except ClientGone:
            runtime.log.observe(
                generation, path, rid, request, info, CLIENT_GONE, started, None, None
            )
            return
        except Exception as exc:
            status, headers, payload = surface.render(exc, redact)
            error = settled(exc) if isinstance(exc, ChatdError) else None
        await reader.discard(declared, DISCARD_FACTOR * limit, DISCARD_SECS)
        await answer(send, status, payload, headers, rid, info, started)
        runtime.log.observe(generation, path, rid, request, info, status, started, None, error)

    async def _answer(
        self,
        send: Send,
        generation: Generation,
        request: ChatRequest,
        info: CallInfo,
        deadline: float | None,
        rid: str,
        started: float,
    ) -> tuple[int, ChatResponse | None, ChatdError | None]:
        """Dispatch and send the whole answer (the part a caller's leaving
        cancels); its status, response and error."""
        response: ChatResponse | None = None
        error: ChatdError | None = None
        headers: Headers = []
        try:
            response = await generation.dispatcher.chat(request, info, deadline=deadline)
            status, payload = 200, self._surface.encode(response, rid, info)
        except Exception as exc:
            status, headers, payload = self._surface.render(exc, generation.registry.redact)
            error = settled(exc) if isinstance(exc, ChatdError) else None
            response = None
        await answer(send, status, payload, headers, rid, info, started)
        return status, response, error


async def answer(
    send: Send,
    status: int,
    payload: bytes,
    headers: Headers,
    rid: str,
    info: CallInfo,
    started: float,
) -> None:
    """A chat route's whole answer, with its request ID and Server-Timing."""
    headers.append((b"x-request-id", rid.encode()))
    timing = server_timing(info.upstream_s, time.perf_counter() - started, info.wait_s)
    headers.append((b"server-timing", timing))
    await send_json(send, status, payload, headers)
