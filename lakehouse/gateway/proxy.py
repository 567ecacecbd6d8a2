"""One request relayed to an upstream and its answer relayed back, in plain ASGI.

Bodies pass through chunk by chunk in both directions and are never held
whole; hop-by-hop headers stay behind; the request ID goes both ways; a
caller that hangs up stops the upstream read at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from lakehouse import request_id
from lakehouse.errors import ChatdError, UpstreamTimeout, UpstreamUnreachable
from lakehouse.plain_asgi import ClientGone, Headers, Message, Receive, Scope, Send, send_json
from lakehouse.tasks import wait_closed
from lakehouse.wire import ErrorBody, ErrorDetail, encoder

log = logging.getLogger("chatd.gateway")

# Meaningful for one connection only (RFC 9110 §7.6.1), plus Host, which
# aiohttp sets from the upstream URL, and Expect, which the server in front
# has already answered. Proxy-* names are dropped by prefix.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
    }
)
# Set by the gateway itself, never passed on as the caller sent them.
OWN_REQUEST_HEADERS = frozenset(
    {b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
# Hypercorn adds its own Date; the request ID is the gateway's.
OWN_RESPONSE_HEADERS = frozenset({b"date", b"x-request-id"})
# The most of an unwanted request body read (and dropped) before answering.
DRAIN_LIMIT = 64 * 1024 * 1024


class Caller:
    """The caller's side of one exchange: its body, read as it arrives,
    and whether it has hung up. Every read goes through one lock, since the
    body stream, ``drain`` and ``hung_up`` may take turns at ``receive``."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._lock = asyncio.Lock()
        self._first: Message | None = None
        self._body_read = asyncio.Event()
        self.gone = False

    async def _next(self) -> Message:
        async with self._lock:
            message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone = True
            self._body_read.set()
        elif not message.get("more_body", False):
            self._body_read.set()
        return message

    async def open(self) -> None:
        """Reads the first body message, to tell an empty body from a stream."""
        if self._first is None:
            self._first = await self._next()

    def body(self) -> bytes | AsyncIterator[bytes] | None:
        assert self._first is not None, "open() first"
        if self._first.get("more_body", False):
            return self._stream(self._first)
        return self._first.get("body", b"") or None

    async def _stream(self, message: Message) -> AsyncIterator[bytes]:
        while True:
            if chunk := message.get("body", b""):
                yield chunk
            if not message.get("more_body", False):
                return
            message = await self._next()
            if message["type"] == "http.disconnect":
                # Raising (not returning) makes aiohttp abort the upstream
                # request instead of ending a chunked body that looks whole.
                raise ClientGone

    async def drain(self) -> None:
        """Reads and drops what is left of the body (up to ``DRAIN_LIMIT``)
        before an answer ends the exchange. Over HTTP/2, Hypercorn 0.18 drops
        the whole connection when data arrives for a stream it has closed
        (pgjones/hypercorn#329); over HTTP/1.1 it closes a connection with
        unread input, and the reset can cost the caller the answer."""
        await self.open()
        dropped = 0
        while not self._body_read.is_set() and dropped <= DRAIN_LIMIT:
            dropped += len((await self._next()).get("body", b""))

    async def hung_up(self) -> None:
        """Returns once the caller has gone; starts listening only when the
        body is in, since until then the body stream sees a hang-up."""
        await self._body_read.wait()
        while not self.gone:
            await self._next()


async def forward(
    session: aiohttp.ClientSession,
    url: URL,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    rid: str,
    route: str,
    timeout: float,
) -> None:
    """Relay one request to ``url`` and its answer back; ``route`` names
    the upstream in errors and logs."""
    caller = Caller(receive)
    await caller.open()
    if caller.gone:
        return
    exchange = asyncio.create_task(
        _exchange(session, url, scope, send, rid, route, timeout, caller)
    )
    hangup = asyncio.create_task(caller.hung_up())
    try:
        await asyncio.wait((exchange, hangup), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await wait_closed(hangup)
        # Still running only when the caller left: stop reading the upstream,
        # which closes that connection rather than pooling it.
        await wait_closed(exchange)


async def _exchange(
    session: aiohttp.ClientSession,
    url: URL,
    scope: Scope,
    send: Send,
    rid: str,
    route: str,
    timeout: float,
    caller: Caller,
) -> None:
    started = False
    try:
        async with session.request(
            scope["method"],
            url,
            headers=upstream_headers(scope, rid),
            data=caller.body(),
            allow_redirects=False,
        ) as resp:
            headers = caller_headers(resp.raw_headers, rid)
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            started = True
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # The upstream may answer (a 413, say) without reading the whole body.
        await caller.drain()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except (aiohttp.ClientError, OSError, TimeoutError, ClientGone) as exc:
        if caller.gone:
            return
        extra = {"route": route, "upstream": str(url.origin()), "reason": str(exc) or repr(exc)}
        if started:
            # Leaving the body unended lets the server cut the response
            # short, so the caller cannot take a partial body for a whole one.
            log.warning("upstream broke off mid-response", extra=extra)
            return
        log.warning("upstream failed", extra=extra)
        await caller.drain()
        await send_error(send, upstream_error(exc, route, timeout), rid)


def upstream_error(exc: BaseException, route: str, timeout: float) -> ChatdError:
    # The edge names the route, never the internal address behind it.
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"the upstream for {route} did not answer in {timeout:g}s")
    return UpstreamUnreachable(f"the upstream for {route} is unreachable")


def header(headers: Headers, name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def _dropped(headers: Headers, own: frozenset[bytes]) -> frozenset[bytes]:
    """Hop-by-hop names, the gateway's own, and any the Connection header lists."""
    listed = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return HOP_BY_HOP | own | listed


def upstream_headers(scope: Scope, rid: str) -> list[tuple[str, str]]:
    headers: Headers = scope["headers"]
    dropped = _dropped(headers, OWN_REQUEST_HEADERS)
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name not in dropped and not name.startswith(b"proxy-")
    ]
    chain = [value.decode("latin-1") for name, value in headers if name == b"x-forwarded-for"]
    if scope.get("client"):
        chain.append(scope["client"][0])
    if chain:
        out.append(("X-Forwarded-For", ", ".join(chain)))
    out.append(("X-Forwarded-Proto", scope["scheme"]))
    host = header(headers, b"host")
    if host:
        out.append(("X-Forwarded-Host", host.decode("latin-1")))
    out.append((request_id.HEADER, rid))
    return out


def caller_headers(raw: tuple[tuple[bytes, bytes], ...], rid: str) -> Headers:
    lowered = [(name.lower(), value) for name, value in raw]
    dropped = _dropped(lowered, OWN_RESPONSE_HEADERS)
    out = [(n, v) for n, v in lowered if n not in dropped and not n.startswith(b"proxy-")]
    out.append((b"x-request-id", rid.encode()))
    return out


async def send_error(send: Send, exc: ChatdError, rid: str) -> None:
    body = encoder.encode(ErrorBody(ErrorDetail(code=exc.code, message=exc.message)))
    await send_json(send, exc.status, body, [(b"x-request-id", rid.encode())])
