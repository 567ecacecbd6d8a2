"""Serving chatd with Hypercorn: the only module that imports it.

HTTP/1.1 and h2c (prior knowledge) share one port; with a certificate, h2
is offered by ALPN. One worker is served in this process (so a benchmark's
``taskset`` and ``/proc/<pid>`` see the worker itself). More are run by
``lakehouse.supervisor`` as ``lakehouse.worker`` processes, each serving
the listening socket it inherits through ``serve_inherited``; Hypercorn's
own multi-worker runner is not used (see the supervisor for why).
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn import protocol as hypercorn_protocol
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.asyncio import tcp_server
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.protocol import events as stream_events
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState
from hypercorn.run import run as hypercorn_run

from lakehouse import probe_share
from lakehouse.config import Config
from lakehouse.connections import IdleWatch, corked
from lakehouse.h2_guard import GuardMixin
from lakehouse.h2_tuning import tuned_h2_protocol
from lakehouse.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from lakehouse.slow_clients import SlowClientMixin
from lakehouse.stream_reset import resetting
from lakehouse.supervisor import Supervisor, WorkerPlan

APP_PATH = "lakehouse.asgi:app_from_env()"


def tune_connections() -> None:
    """Have Hypercorn's connections use lakehouse.connections' idle timer
    and coalesced writes, reset HTTP/2 streams left unfinished
    (lakehouse.stream_reset), and run its HTTP/2 layer as
    lakehouse.h2_tuning says (``tune_h2``; the tuned subclass inherits the
    reset). Each process that serves calls this, once or more; it changes
    nothing on a Hypercorn other than 0.18, whose TCPServer and H2Protocol
    they were written against."""
    tune_h2()
    server = tcp_server.TCPServer
    needed = ("_initiate_server_close", "_idle_timeout", "protocol_send")
    if (
        not importlib.metadata.version("hypercorn").startswith("0.18.")
        or not hasattr(tcp_server, "AsyncioSingleTask")
        or not all(hasattr(server, name) for name in needed)
    ):
        return
    tcp_server.AsyncioSingleTask = IdleWatch
    if not getattr(server.protocol_send, "chatd_corked", False):
        send: Any = corked(server.protocol_send, RawData, Closed)
        send.chatd_corked = True
        server.protocol_send = send  # type: ignore[method-assign]
    h2 = H2Protocol
    if all(hasattr(h2, name) for name in ("stream_send", "_flush")) and not getattr(
        h2.stream_send, "chatd_resetting", False
    ):
        reset: Any = resetting(h2.stream_send, StreamClosed, ASGIHTTPState.RESPONSE)
        reset.chatd_resetting = True
        h2.stream_send = reset  # type: ignore[method-assign]


# What lakehouse.h2_guard relies on in Hypercorn's H2Protocol.
H2_GUARD_NEEDS = (
    "_handle_events",
    "_create_stream",
    "_flush",
    "stream_send",
    "handle",
    "initiate",
)


# What lakehouse.slow_clients relies on in Hypercorn's H11Protocol.
SLOW_CLIENT_NEEDS = ("handle", "stream_send", "_handle_events")


def install_guards() -> None:
    """Have Hypercorn's connections keep lakehouse.h2_guard's abuse budget
    (HTTP/2) and lakehouse.slow_clients' read timeout (HTTP/1.1).
    Idempotent; each changes nothing on a Hypercorn other than 0.18, or
    one whose protocol class lacks what it relies on (the stock path)."""
    if not importlib.metadata.version("hypercorn").startswith("0.18."):
        return
    # ProtocolWrapper builds each connection's protocol from these names.
    h2_stock = getattr(hypercorn_protocol, "H2Protocol")  # noqa: B009 - not re-exported
    if not getattr(h2_stock, "chatd_guarded", False) and all(
        hasattr(h2_stock, name) for name in H2_GUARD_NEEDS
    ):

        class GuardedH2Protocol(GuardMixin, h2_stock):  # type: ignore[misc, valid-type]
            chatd_guarded = True
            closed_event = Closed
            stream_closed_event = StreamClosed

        setattr(hypercorn_protocol, "H2Protocol", GuardedH2Protocol)  # noqa: B010
    h11_stock = getattr(hypercorn_protocol, "H11Protocol")  # noqa: B009
    if not getattr(h11_stock, "chatd_guarded", False) and all(
        hasattr(h11_stock, name) for name in SLOW_CLIENT_NEEDS
    ):

        class TimedH11Protocol(SlowClientMixin, h11_stock):  # type: ignore[misc, valid-type]
            chatd_guarded = True
            raw_data_event = RawData
            closed_event = Closed

        setattr(hypercorn_protocol, "H11Protocol", TimedH11Protocol)  # noqa: B010
def tune_h2() -> None:
    """Have Hypercorn's HTTP/2 connections send as lakehouse.h2_tuning
    says (direct DATA frames, response headers checked once). Like
    ``tune_connections``: idempotent, and a no-op on a Hypercorn other than
    the 0.18 whose ``H2Protocol`` it was written against."""
    stock = hypercorn_h2.H2Protocol
    needed = ("stream_send", "_flush", "_send_data", "send_task")
    if (
        not importlib.metadata.version("hypercorn").startswith("0.18.")
        or getattr(hypercorn_protocol, "H2Protocol", None) is not stock
        or not all(hasattr(stock, name) for name in needed)
        or not hasattr(hypercorn_h2.StreamBuffer, "pop")
    ):
        return
    # ProtocolWrapper looks the name up in its module for each connection.
    setattr(hypercorn_protocol, "H2Protocol", tuned_h2_protocol(stock, stream_events))  # noqa: B010


class ServerConfig(HypercornConfig):
    """Hypercorn's config, with the Date header every response carries
    formatted once a second instead of once per response."""

    include_date_header = False  # added here instead
    # lakehouse.slow_clients: a head's and a body pause's time limit.
    chatd_read_timeout = 30.0
    _date_second = -1
    _date: tuple[bytes, bytes]

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = (b"date", email.utils.formatdate(second, usegmt=True).encode())
        return [self._date, *super().response_headers(protocol)]


def hypercorn_config(
    config: Config,
    *,
    bind: str | None = None,
    workers: int | None = None,
    app_path: str = APP_PATH,
) -> HypercornConfig:
    tune_connections()
    install_guards()
    server = config.chatd.server
    h = ServerConfig()
    h.bind = [bind or config.chatd.bind]
    h.workers = workers or server.workers
    h.worker_class = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    h.keep_alive_timeout = server.keep_alive_secs
    h.keep_alive_max_requests = server.keep_alive_max_requests
    h.graceful_timeout = server.graceful_timeout_secs
    h.h2_max_concurrent_streams = server.h2_max_concurrent_streams
    h.chatd_read_timeout = server.read_timeout_secs
    h.backlog = server.backlog
    h.accesslog = None
    # Hypercorn's own lines ("Running on", errors) go through chatd's JSON
    # formatter: a Logger is used as it is (and pickles by name to workers).
    h.errorlog = logging.getLogger("chatd.server")
    h.loglevel = config.chatd.log_level.upper()
    h.include_server_header = False
    if server.certfile and server.keyfile:
        h.certfile = server.certfile
        h.keyfile = server.keyfile
        h.alpn_protocols = ["h2", "http/1.1"]
    h.application_path = app_path
    return h


def run(
    config: Config,
    *,
    bind: str | None = None,
    workers: int | None = None,
    app_path: str = APP_PATH,
) -> int:
    """Serve until SIGTERM/SIGINT, letting in-flight requests finish within
    the graceful timeout. The app is loaded from the environment
    (``LAKEHOUSE_CONFIG``, ``CHATD_OVERRIDES``) the caller has set."""
    h = hypercorn_config(config, bind=bind, workers=workers, app_path=app_path)
    if h.workers == 1:
        h.workers = 0  # Hypercorn's "serve in this process"
        listen_first(h)
        return int(hypercorn_run(h) or 0)
    # Workers are spawned afresh and inherit this: each writes its metrics
    # to files there, and a scrape of any worker merges them.
    server = config.chatd.server
    path, owned = metrics_folder(server.metrics_dir)
    os.environ[MULTIPROC_ENV] = path
    try:
        sock = listening_socket(h.bind[0], server.backlog)
        plan = WorkerPlan(
            count=h.workers,
            app_path=app_path,
            graceful_timeout=server.graceful_timeout_secs,
        )
        return Supervisor(sock, plan).run()
    finally:
        if owned:
            shutil.rmtree(path, ignore_errors=True)


def metrics_folder(configured: str | None) -> tuple[str, bool]:
    """The folder a pool's workers share, and whether it is ours (made
    here, removed at exit). Workers trust its files (metrics summed, probe
    verdicts followed), so the default is made afresh, mode 0700, under an
    unguessable name: never one another user of a shared /tmp made first."""
    if not configured:
        return tempfile.mkdtemp(prefix="chatd-metrics-"), True
    prepare_multiprocess_dir(configured)
    probe_share.reset(configured)
    return configured, False


def listening_socket(bind: str, backlog: int) -> socket.socket:
    """The one socket every worker accepts on: connections wait in its
    queue while a worker is replaced, so the port never stops accepting."""
    h = HypercornConfig()
    h.bind = [bind]
    (sock,) = h.create_sockets().insecure_sockets
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve_inherited(
    config: Config, fd: int, app_path: str, ready: Callable[[], None], lifeline: int | None
) -> None:
    """A worker's life: load the app, serve the inherited socket ``fd``,
    call ``ready`` once it accepts, and drain on SIGTERM/SIGINT (or when
    ``lifeline`` says the supervisor is gone) within the graceful timeout."""
    h = hypercorn_config(config, app_path=app_path)
    h.bind = [f"fd://{fd}"]
    h.workers = 1
    app = load_app(app_path)
    factory = None
    if h.worker_class == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve_until_stopped(app, h, ready, lifeline))


async def _serve_until_stopped(
    app: Callable[..., Awaitable[None]],
    h: HypercornConfig,
    ready: Callable[[], None],
    lifeline: int | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if lifeline is not None:
        watch_lifeline(lifeline, stop.set)

    async def trigger() -> None:
        # Hypercorn awaits the shutdown trigger only once every listener
        # is serving (pinned by tests/test_supervisor.py), so this is the
        # moment the worker accepts connections.
        ready()
        await stop.wait()

    await hypercorn_serve(app, h, shutdown_trigger=trigger)


def watch_lifeline(fd: int, stop: Callable[[], None]) -> None:
    """Call ``stop`` when ``fd`` (the read end of a pipe only the
    supervisor writes to, and never does) reads EOF: it died without
    telling us."""
    loop = asyncio.get_running_loop()

    def gone() -> None:
        # EOF stays readable: left on, this would be called on every turn
        # of the loop, spinning a core for the whole drain.
        loop.remove_reader(fd)
        stop()

    loop.add_reader(fd, gone)


def load_app(app_path: str) -> Callable[..., Awaitable[None]]:
    """``module:factory()`` → the app the factory builds."""
    module, _, attr = app_path.partition(":")
    factory = getattr(importlib.import_module(module), attr.removesuffix("()"))
    app: Callable[..., Awaitable[None]] = factory()
    return app


def listen_first(h: HypercornConfig) -> None:
    """Bind and listen now, and hand Hypercorn the descriptors: it would only
    listen once the app has started, so systemd's READY=1, sent at the end
    of that start-up (lakehouse.sd_notify), would come before the port
    accepts. (One worker, served in this process; a pool's supervisor
    holds its socket from ``listening_socket``.)"""
    sockets = h.create_sockets()
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(h.backlog)

    def handed_over(socks: list[socket.socket]) -> list[str]:
        # detach(): Hypercorn's socket object owns the descriptor from here.
        return [f"fd://{sock.detach()}" for sock in socks]

    if h.ssl_enabled:
        h.bind = handed_over(sockets.secure_sockets)
        h.insecure_bind = handed_over(sockets.insecure_sockets)
    else:
        h.bind = handed_over(sockets.insecure_sockets)


async def serve(
    app: Callable[..., Awaitable[None]],
    config: Config,
    sock: socket.socket,
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """Serve ``app`` in the running loop on an already bound socket, which
    Hypercorn takes over and closes; for tests and tools that need the port
    before the server starts."""
    h = hypercorn_config(config)
    h.bind = [f"fd://{sock.fileno()}"]
    h.workers = 1
    await hypercorn_serve(app, h, shutdown_trigger=shutdown)


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def environ_for(config_path: str, overrides: str | None) -> dict[str, str]:
    env = {"LAKEHOUSE_CONFIG": config_path}
    if overrides:
        env["CHATD_OVERRIDES"] = overrides
    os.environ.update(env)
    return env
