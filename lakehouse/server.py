"""Serving chatd with Hypercorn: the only module that imports it.

HTTP/1.1 and h2c (prior knowledge) share one port; with a certificate, h2
is offered by ALPN. One worker is served in this process (so a benchmark's
``taskset`` and ``/proc/<pid>`` see the worker itself); more are spawned
by Hypercorn and load the app through ``lakehouse.asgi``.
"""

from __future__ import annotations

import email.utils
import importlib.util
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.run import run as hypercorn_run

from lakehouse import connections
from lakehouse.config import Config
from lakehouse.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

APP_PATH = "lakehouse.asgi:app_from_env()"

log = logging.getLogger("chatd.server")


def tune_connections(version: str | None = None) -> bool:
    """Have this process's Hypercorn build connections through
    ``lakehouse.connections`` (each server whose config is a ``ServerConfig``
    then runs tuned). False, with a warning, when the installed Hypercorn
    breaks the contract those were written against: then every server runs
    Hypercorn's stock connections. ``version`` stands in for the installed
    Hypercorn's."""
    problems = connections.install(version)
    if problems:
        log.warning(
            "chatd.server.tuned is on but cannot be honoured: %s; serving with "
            "Hypercorn's stock connections (see UPGRADING.md)",
            "; ".join(problems),
        )
    return not problems


class ServerConfig(HypercornConfig):
    """Hypercorn's config, with the Date header every response carries
    formatted once a second instead of once per response, and connections
    run by ``lakehouse.connections.TunedTCPServer``: chatd's tuned stack."""

    chatd_tuned = True
    include_date_header = False  # added here instead
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
    server = config.chatd.server
    # The stock path (chatd.server.tuned = false) is Hypercorn as shipped.
    h = ServerConfig() if server.tuned and tune_connections() else HypercornConfig()
    h.bind = [bind or config.chatd.bind]
    h.workers = workers or server.workers
    h.worker_class = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    h.keep_alive_timeout = server.keep_alive_secs
    h.keep_alive_max_requests = server.keep_alive_max_requests
    h.graceful_timeout = server.graceful_timeout_secs
    h.h2_max_concurrent_streams = server.h2_max_concurrent_streams
    h.accesslog = None
    h.errorlog = "-"
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
    else:
        # Workers are spawned afresh and inherit this: each writes its
        # metrics to files there, and a scrape of any worker merges them.
        path = config.chatd.server.metrics_dir or os.path.join(
            tempfile.gettempdir(), f"chatd-metrics-{os.getpid()}"
        )
        prepare_multiprocess_dir(path)
        os.environ[MULTIPROC_ENV] = path
    listen_first(h)
    return int(hypercorn_run(h) or 0)


def listen_first(h: HypercornConfig) -> None:
    """Bind and listen now, and hand Hypercorn the descriptors: it would only
    listen once the app has started, so systemd's READY=1, sent at the end
    of that start-up (lakehouse.sd_notify), would come before the port
    accepts. Every worker inherits the same listening sockets."""
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
