"""StubUpstream: one emulated upstream on a real 127.0.0.1 socket.

Every request is recorded, then: down -> 503; unknown path -> 404, wrong
method -> 405; missing/wrong key -> 401; (kimi) client gate -> 403; then a
chat request takes the next scripted fault, if any, and the dialect builds
the reply. All replies use the flavour's own error shapes.

Over 350 lines: the socket server, the edge checks every dialect shares
(auth in either header, client gate, required headers) and the wire-level
faults are one request path, read top to bottom; the dialects live apart.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from lakehouse.auth import is_loopback_host
from lakehouse.stubs.anthropic import MessagesAPI
from lakehouse.stubs.catalog import Catalog
from lakehouse.stubs.faults import Fault, FaultQueue
from lakehouse.stubs.flavours import Flavour, find_flavour
from lakehouse.stubs.ollama import OllamaAPI
from lakehouse.stubs.openai import OpenAIAPI
from lakehouse.stubs.received import Received, Route, decode_json
from lakehouse.stubs.reply import HTML, JSON, TEXT, Failure, Reply, phrase, text_reply
from lakehouse.stubs.responses import ResponsesAPI

DOWN_MESSAGE = "service unavailable: the upstream is down"
ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body>"
    "</html>\n"
)
GARBAGE = b'{"id": "x", "choices": [{"message": {"content": "unterminated'
# Faults that act on the written frames rather than on what the reply says.
WIRE_FAULTS = frozenset({"truncate", "stall"})
# How long stop() lets in-flight handlers finish; stubs have nothing to save.
SHUTDOWN_TIMEOUT = 0.1
MAX_BODY = 64 * 1024 * 1024
_DIALECTS: dict[str, type[MessagesAPI] | type[ResponsesAPI]] = {
    "messages": MessagesAPI,
    "responses": ResponsesAPI,
}


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting TCP connections as they open and close.

    aiohttp's own bookkeeping keeps a connection until its handler task ends;
    tests need the moment the socket goes away.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, request_factory=self._request, **kwargs)
        self.open: set[RequestHandler] = set()

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # aiohttp caps bodies at 1 MiB by default; real upstreams take long prompts.
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=MAX_BODY,
        )

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.open.add(handler)
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.open.discard(handler)
        super().connection_lost(handler, exc)


def _hang_up(request: web.BaseRequest, *, reset: bool) -> None:
    """Drop the connection: RST when ``reset``, else FIN after what was written."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Zero linger turns close() into a TCP reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


class StubUpstream:
    """An upstream emulator. ``key``: requests must carry ``Authorization: Bearer
    <key>`` (paths a real upstream serves without a key excepted); with None,
    local Ollama checks nothing and the hosted flavours take any Bearer key
    but refuse a request without one. ``models``: names it knows (flavour
    defaults otherwise);
    ``thinking``: which of them reason (default: by family name).
    ``require_user_agent`` (kimi): the User-Agent prefix let through.
    """

    def __init__(
        self,
        flavour: str,
        *,
        key: str | None = None,
        models: Iterable[str] | None = None,
        require_user_agent: str | None = None,
        thinking: Iterable[str] | None = None,
    ) -> None:
        self.flavour = flavour
        self.spec: Flavour = find_flavour(flavour)
        if require_user_agent is not None and self.spec.client_gate is None:
            raise ValueError(f"require_user_agent is not a {flavour} feature")
        self.key = key
        self.require_user_agent = require_user_agent
        self.catalog = Catalog(
            self.spec.models if models is None else models,
            thinking,
            ollama_names=self.spec.dialect == "ollama",
        )
        api = (OllamaAPI if self.spec.dialect == "ollama" else OpenAIAPI)(self.spec, self.catalog)
        routes = api.routes()
        for dialect in self.spec.extra_dialects:
            routes += _DIALECTS[dialect](self.spec, self.catalog).routes()
        self._routes: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in routes}
        self._methods: dict[str, list[str]] = {}
        for method, path in self._routes:
            self._methods.setdefault(path, []).append(method)
        self.received: list[Received] = []
        self._faults = FaultQueue(self.spec.dialect)
        # Requests whose handler is still running (cancelled when the client goes).
        self.in_flight = 0
        self._down = False
        self._server: _CountingServer | None = None
        self._runner: web.ServerRunner | None = None
        self.origin = ""
        self.base_url = ""

    # -- lifecycle -----------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("stub already started")
        if not is_loopback_host(host):
            raise ValueError(f"stubs listen on loopback only, not {host!r}")
        server = _CountingServer(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._server, self._runner = server, runner
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.origin = f"http://{shown}:{bound}"
        self.base_url = self.origin + self.spec.base_path
        return self.base_url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._server is not None:
            # Every socket is closed by now; let their connection_lost callbacks run.
            for _ in range(10):
                if not self._server.open:
                    break
                await asyncio.sleep(0.01)

    async def __aenter__(self) -> StubUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- scripting -----------------------------------------------------------

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` chat requests."""
        self._faults.fail_next(fault, times)

    def fail_always(self, fault: Fault) -> None:
        """Apply ``fault`` to every chat request (after any queued ones) until cleared."""
        self._faults.fail_always(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def open_connections(self) -> int:
        return 0 if self._server is None else len(self._server.open)

    @property
    def chats(self) -> list[Received]:
        """The recorded requests that went to a chat route (health probes left out)."""
        return [r for r in self.received if self._is_chat(r)]

    def _is_chat(self, received: Received) -> bool:
        route = self._routes.get((received.method, received.path))
        return route is not None and route.chat

    @property
    def down(self) -> bool:
        return self._down

    def set_down(self, down: bool) -> None:
        """While down every path answers 503 in the flavour's error shape
        (a refusing port would need the stub to give up its port)."""
        self._down = down

    # -- request handling ----------------------------------------------------

    def _record(self, request: web.BaseRequest, body: bytes) -> Received:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        received = Received(
            method=request.method,
            path=request.path,
            headers=headers,
            body=body,
            json=decode_json(body),
            query=request.query_string,
        )
        self.received.append(received)
        return received

    def _authorized(self, route: Route, received: Received) -> bool:
        if route.auth == "x-api-key":
            token = given = received.headers.get("x-api-key", "")
            prefix = ""
        else:
            given = received.headers.get("authorization", "")
            token, prefix = given.removeprefix("Bearer "), "Bearer "
            if token == given:
                token = ""
        if self.key is not None:
            return given == f"{prefix}{self.key}"
        # Hosted upstreams turn away a request with no key even when the test
        # did not pick one; any key will do then.
        return not self.spec.needs_key or token.strip() != ""

    def _error(self, route: Route | None, failure: Failure) -> Reply:
        if route is not None and route.error is not None:
            return route.error(failure)
        return self.spec.error(failure)

    def _gate(self, route: Route, received: Received) -> Reply | None:
        """The checks a real edge makes before the model sees anything."""
        relative = route.path.removeprefix(self.spec.base_path) or "/"
        if relative not in self.spec.public_paths and not self._authorized(route, received):
            return self._error(route, self.spec.unauthorized)
        gate = self.spec.client_gate
        if gate is not None and self.require_user_agent is not None:
            agent = received.headers.get("user-agent", "")
            if not agent.startswith(self.require_user_agent):
                return self._error(route, gate)
        needed = self.spec.required_header
        header = self.spec.required_header_name
        if needed is not None and route.chat and not received.headers.get(header, "").strip():
            return self._error(route, needed)
        return None

    def _unrouted(self, received: Received) -> Reply:
        allowed = self._methods.get(received.path)
        if allowed is not None:
            reply = self.spec.fail(405, "method not allowed")
            return Reply(
                reply.status,
                reply.content_type,
                reply.frames,
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        if self.spec.dialect == "ollama":
            return text_reply(404, "404 page not found")  # gin's default
        return self.spec.fail(404, f"no route for {received.method} {received.path}")

    def _faulted(self, fault: Fault, request: web.BaseRequest, route: Route) -> Reply | None:
        """The reply a fault replaces the answer with; None lets the dialect answer."""
        kind = fault.kind
        if kind == "status":
            status = fault.status or 500
            return self._error(route, Failure(status, phrase(status)).overridden_by(fault))
        if kind == "quota":
            return self._error(route, self.spec.quota.overridden_by(fault))
        if kind == "html":
            return Reply(fault.status or 200, HTML, (ERROR_PAGE.encode(),))
        if kind == "wrong_content_type":
            text = fault.message or "Hello from a server that is not the upstream."
            return Reply(fault.status or 200, TEXT, (text.encode(),))
        if kind == "garbage":
            return Reply(fault.status or 200, JSON, (GARBAGE,))
        if kind == "redirect":
            location = fault.location or f"{self.origin}{request.path_qs}"
            return Reply(
                fault.status or 301, TEXT, (b"Moved Permanently",), headers={"Location": location}
            )
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        received = self._record(request, await request.read())
        method = "GET" if request.method == "HEAD" else request.method
        route = self._routes.get((method, request.path))
        fault: Fault | None = None
        if self._down:
            reply = self.spec.fail(503, DOWN_MESSAGE)
        elif route is None:
            reply = self._unrouted(received)
        elif (refused := self._gate(route, received)) is not None:
            reply = refused
        else:
            fault = self._faults.take() if route.chat else None
            if fault is not None and fault.kind == "reset":
                _hang_up(request, reset=True)
                return web.Response()  # never written: the socket is gone
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.seconds)  # cancelled if the client leaves
                fault = None
            replaced = None if fault is None else self._faulted(fault, request, route)
            reply = replaced or route.handler(received, fault)
        return await self._write(request, reply, fault)

    async def _write(
        self, request: web.BaseRequest, reply: Reply, fault: Fault | None
    ) -> web.StreamResponse:
        headers = {"Content-Type": reply.content_type, **reply.headers}
        cut = fault if fault is not None and fault.kind in WIRE_FAULTS else None
        if cut is None and not reply.stream:
            return web.Response(status=reply.status, body=reply.body, headers=headers)
        response = web.StreamResponse(status=reply.status, headers=headers)
        frames = reply.frames
        if not reply.stream:
            # A whole body declared by Content-Length, sent in two halves.
            body = reply.body
            response.content_length = len(body)
            frames = (body[: len(body) // 2], body[len(body) // 2 :])
        await response.prepare(request)
        keep = -1 if cut is None else min(cut.after, len(frames) - 1)
        for i, frame in enumerate(frames):
            if i == keep and cut is not None:
                if cut.kind == "truncate":
                    _hang_up(request, reset=False)
                    return response
                await asyncio.sleep(cut.seconds)
            await response.write(frame)
        await response.write_eof()
        return response
