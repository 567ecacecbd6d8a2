"""``bin/chatd gateway``: the lakehouse's ``/v1`` edge.

The reference system fronts its services with a gateway that forwards by
path prefix and strips ``/v1``; this is that gateway for the routes in
``[gateway]``, and only those. Plain ASGI rather than Starlette, so the
proxy path holds no request or response object (see ``lakehouse.gateway.proxy``).

A little over 350 lines: the route table, its reload on SIGHUP, the access
line and the gateway's command line are the gateway's whole life cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from lakehouse import reload_signal, request_id, sd_notify, startup
from lakehouse.config import (
    Config,
    add_cli_options,
    check_url,
    default_config_path,
    load,
    parse_overrides,
)
from lakehouse.errors import BadRequest, ChatdError, ConfigError, NotFound
from lakehouse.gateway import legacy
from lakehouse.gateway.proxy import Caller, forward, header, send_error
from lakehouse.logs import AccessLog, GatewayAccessEntry, setup_logging
from lakehouse.plain_asgi import ASGIApp, Message, Receive, Scope, Send, send_json

APP_PATH = "lakehouse.gateway.app:app_from_env()"
# Headers aiohttp would add on its own; the upstream sees the caller's only.
NOT_AUTOMATIC = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
KEEPALIVE_SECS = 30.0
# Connections opened to one upstream at once. A burst of callers on a cold
# pool (200 h2 streams at once) would otherwise send as many SYNs at once
# into the upstream's listen backlog (Hypercorn's default: 100): the ones
# dropped wait out a 1 s SYN retransmit. Opened a few at a time they are
# accepted in turn, and pooled for the next burst.
OPENING = 16


class OpeningBound(aiohttp.TCPConnector):
    """A TCPConnector that opens at most ``opening`` connections at once
    (the pool itself stays unbounded: a stream holds its connection as long
    as it runs). ``connect`` (aiohttp's documented "get from pool or create
    new connection") runs under the bound, so a request that waited for its
    turn takes a connection that came back to the pool meanwhile, if any,
    rather than opening one more; taking a pooled one does not wait on I/O."""

    def __init__(self, *, opening: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._opening = asyncio.Semaphore(opening)

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        async with self._opening:
            return await super().connect(req, traces, timeout)


log = logging.getLogger("chatd.gateway")


@dataclass(frozen=True)
class Route:
    prefix: str
    upstream: str
    # The prefix as it appears in a raw (percent-encoded) path, without a
    # trailing slash, so "/" becomes b"" and takes every path.
    match: bytes

    @classmethod
    def build(cls, prefix: str, url: str) -> Route:
        if not prefix.startswith("/"):
            raise ConfigError(f"`gateway.routes` key {prefix!r} must start with /")
        upstream = check_url(url, f"gateway.routes.{prefix}")
        return cls(prefix, upstream, quote(prefix.rstrip("/")).encode("ascii"))

    @property
    def origin(self) -> str:
        parts = urlsplit(self.upstream)
        return f"{parts.scheme}://{parts.netloc}"

    def matches(self, raw_path: bytes) -> bool:
        """At segment boundaries: ``/v1/chat`` takes ``/v1/chat/x``, not ``/v1/chatty``."""
        return raw_path == self.match or raw_path.startswith(self.match + b"/")

    def target(self, raw_path: bytes, query: bytes) -> URL:
        path = raw_path[3:] if raw_path == b"/v1" or raw_path.startswith(b"/v1/") else raw_path
        url = self.upstream + (path or b"/").decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        return URL(url, encoded=True)


def routes_from(config: Config) -> list[Route]:
    """The configured routes, longest prefix first; none is an error."""
    if config.gateway is None:
        raise ConfigError("no `[gateway]` table: nothing to proxy")
    # The Go gateway's <service>_url keys, else the routes table (never both).
    table = legacy.legacy_routes(config.legacy) or config.gateway.routes
    if not table:
        raise ConfigError("`gateway.routes` is empty: nothing to proxy")
    routes = [Route.build(prefix, url) for prefix, url in table.items()]
    return sorted(routes, key=lambda route: len(route.match), reverse=True)


class Table:
    """One reading of the config: its routes, and one pooled session per
    upstream origin. A reload swaps in a new table; the old one closes once
    the requests it carries have finished."""

    def __init__(self, config: Config) -> None:
        self.routes = routes_from(config)
        assert config.gateway is not None
        self.timeout = config.gateway.timeout_secs
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.busy = 0

    def open(self) -> None:
        # Connect and idle-read limits only: a long stream may take as long
        # as it keeps sending.
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout)
        for origin in {route.origin for route in self.routes}:
            self.sessions[origin] = aiohttp.ClientSession(
                connector=OpeningBound(opening=OPENING, limit=0, keepalive_timeout=KEEPALIVE_SECS),
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=NOT_AUTOMATIC,
                raise_for_status=False,
            )

    async def close(self) -> None:
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            await session.close()

    def route(self, path: str, raw_path: bytes) -> Route:
        # An upstream may resolve "..", and so reach what no route names.
        if any(segment in (".", "..") for segment in path.split("/")):
            raise BadRequest("path has dot segments")
        for route in self.routes:
            if route.matches(raw_path):
                return route
        raise NotFound(f"no route {path}")


class Gateway:
    """The ASGI app: the current table, opened and closed in the lifespan.
    With a config ``source``, SIGHUP re-reads the routes in place."""

    def __init__(self, config: Config, source: Callable[[], Config] | None = None) -> None:
        self._table = Table(config)
        self._source = source
        self._tasks: set[asyncio.Task[None]] = set()
        self._access = AccessLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._table.open()
                if self._source is not None:
                    loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
                    reload_signal.release()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._source is not None:
                    loop.remove_signal_handler(signal.SIGHUP)
                for task in list(self._tasks):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await self._table.close()
                self._access.flush()
                log.info("gateway stopped")
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _on_sighup(self) -> None:
        self._spawn(self.reload())

    async def reload(self) -> None:
        """Swap in the routes the config source gives now; a config that does
        not load is refused with one log line and the running routes stay."""
        assert self._source is not None
        async with sd_notify.reloading():
            try:
                fresh = Table(self._source())
            except ConfigError as exc:
                log.error("reload refused, the running routes stay: %s", exc)
                return
            fresh.open()
            old, self._table = self._table, fresh
            log.info("routes reloaded: %s", describe(fresh.routes))
        self._spawn(self._retire(old))

    async def _retire(self, old: Table) -> None:
        # Requests already under way finish on the old table's sessions.
        try:
            while old.busy:  # noqa: ASYNC110 - a rare, idle wait
                await asyncio.sleep(0.1)
        finally:
            await old.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id.accept_or_mint(header(scope["headers"], b"x-request-id"))
        token = request_id.current.set(rid)
        table = self._table
        table.busy += 1
        if not self._access.enabled:
            try:
                await self._serve(table, scope, receive, send, rid)
            finally:
                table.busy -= 1
                request_id.current.reset(token)
            return
        started = time.perf_counter()
        status = 499
        route: list[str] = []

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._serve(table, scope, receive, send_seen, rid, route)
        finally:
            table.busy -= 1
            request_id.current.reset(token)
            self._access.write(
                GatewayAccessEntry(
                    ts=self._access.timestamp(time.time()),
                    level="info",
                    logger="chatd.gateway.access",
                    msg="request",
                    request_id=rid,
                    method=scope["method"],
                    path=scope["path"][:200],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                    route=route[0] if route else None,
                )
            )

    async def _serve(
        self,
        table: Table,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: str,
        seen: list[str] | None = None,
    ) -> None:
        """One request: the gateway's own /health, or a route's upstream;
        ``seen`` gets the route taken."""
        if scope["path"] == "/health":
            await send_json(send, 200, b'{"status":"ok"}', [(b"x-request-id", rid.encode())])
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            route = table.route(scope["path"], raw_path)
        except ChatdError as exc:
            await Caller(receive).drain()
            await send_error(send, exc, rid)
            return
        if seen is not None:
            seen.append(route.prefix)
        session = table.sessions.get(route.origin)
        if session is None:
            raise RuntimeError("gateway called before its lifespan started")
        url = route.target(raw_path, scope["query_string"])
        await forward(
            session,
            url,
            scope,
            receive,
            send,
            rid=rid,
            route=route.prefix,
            timeout=table.timeout,
        )


def describe(routes: list[Route]) -> str:
    return ", ".join(f"{route.prefix} → {route.upstream}" for route in routes)


def create_gateway(config: Config, source: Callable[[], Config] | None = None) -> ASGIApp:
    """The gateway ASGI app; a config without routes is refused. With
    ``source`` (what re-reads the config), SIGHUP reloads the routes."""
    return Gateway(config, source)


def app_from_env() -> ASGIApp:
    """For Hypercorn workers, which learn the config from the environment
    (as in ``lakehouse.asgi``)."""
    overrides = json.loads(os.environ.get("CHATD_OVERRIDES") or "{}")
    path = default_config_path()
    config = load(path, overrides)
    setup_logging(config.chatd.log_level)
    from lakehouse.server import prepare_hypercorn

    prepare_hypercorn(config)  # spawned workers import Hypercorn afresh, as chatd's do
    return sd_notify.announcing(create_gateway(config, source=lambda: load(path, overrides)))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chatd gateway",
        description="The lakehouse /v1 edge: proxies the [gateway] routes to their upstreams.",
    )
    add_cli_options(parser, "gateway")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check everything a start checks (config, routes, bind address, TLS), then exit",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = (args.config or default_config_path()).resolve()
    try:
        overrides = parse_overrides(args.set)
        flags = {key: f"--set {key}" for key in overrides}
        if args.bind:
            flags["gateway.bind"] = "--bind"
        origins = startup.Origins(path, flags)
        config = load(path, overrides)
        setup_logging(config.chatd.log_level)
        try:
            routes = routes_from(config)
            assert config.gateway is not None
            bind = args.bind or config.gateway.bind
            startup.check_bind(bind, "gateway.bind")
            warnings = startup.check_tls(config.chatd.server)
        except ConfigError as exc:
            raise origins.blame(exc) from None
    except ConfigError as exc:
        print(f"chatd gateway: config error: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        log.warning(warning)
    if args.check:
        print(f"config ok: {path}; routes: {describe(routes)}")
        return 0
    from lakehouse import server

    legacy.log_renames(config.legacy, log)
    server.environ_for(str(path), json.dumps(overrides) if overrides else None)
    try:
        startup.check_listen(bind)
        where = startup.address(config, bind)
        print(f"chatd gateway serving on {where}: {describe(routes)}", file=sys.stderr, flush=True)
        return server.run(config, bind=bind, workers=args.workers, app_path=APP_PATH)
    except OSError as exc:
        if exc.errno not in startup.LISTEN_ERRNOS:
            raise
        print(f"chatd gateway: {startup.listen_failure(bind, exc)}", file=sys.stderr)
        return 2
