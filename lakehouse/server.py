"""Serving chatd with Hypercorn: the only module that imports it.

HTTP/1.1 and h2c (prior knowledge) share one port; with a certificate, h2
is offered by ALPN. One worker is served in this process (so a benchmark's
``taskset`` and ``/proc/<pid>`` see the worker itself). More are run by
``lakehouse.supervisor`` as ``lakehouse.worker`` processes, each serving
the listening socket it inherits through ``serve_inherited``; Hypercorn's
own multi-worker runner is not used (see the supervisor for why), nor its
single-process one: both serve through ``hypercorn.asyncio.serve`` with
chatd's shutdown trigger, which tells systemd STOPPING=1 at the signal.

A few lines over 350: Hypercorn's configuration, its listening socket and
both ways of serving (in process and inherited) stay in the one module
that imports Hypercorn.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
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

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState

from lakehouse import connections, probe_share, sd_notify
from lakehouse.config import Config
from lakehouse.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from lakehouse.stream_reset import resetting
from lakehouse.supervisor import Supervisor, WorkerPlan

APP_PATH = "lakehouse.asgi:app_from_env()"

log = logging.getLogger("chatd.server")


def tune_connections(version: str | None = None) -> bool:
    """Have this process's Hypercorn build connections through
    ``lakehouse.connections`` (each server whose config is a ``ServerConfig``
    then runs tuned) and, for those, its HTTP/2 layer as
    ``lakehouse.h2_tuning`` says (``tune_h2``). False, with a warning, when
    the installed Hypercorn breaks the contract the connections were written
    against: then every server runs Hypercorn's stock connections (and stock
    HTTP/2). ``version`` stands in for the installed Hypercorn's."""
    reset_unfinished_streams()
    problems = connections.install(version)
    if problems:
        log.warning(
            "chatd.server.tuned is on but cannot be honoured: %s; serving with "
            "Hypercorn's stock connections (see UPGRADING.md)",
            "; ".join(problems),
        )
        return False
    tune_h2(version)
    tune_h11(version)
    return True


def tune_h2(version: str | None = None, h2_version: str | None = None) -> bool:
    """Have tuned servers' HTTP/2 connections run ``lakehouse.h2_tuning``'s
    protocol (chosen per connection by its config, like the TCPServer);
    False, with a warning, when the installed Hypercorn or h2 breaks that
    contract: then HTTP/2 runs stock. The versions stand in for the
    installed ones."""
    problems = connections.h2_contract_problems(version, h2_version)
    return _tuned("HTTP/2", "H2Protocol", problems, version, tuned_h2=True)


def tune_h11(version: str | None = None, h11_version: str | None = None) -> bool:
    """Have tuned servers' HTTP/1.1 connections run ``lakehouse.h11_tuning``'s
    protocol (chosen per connection, like HTTP/2's); False, with a warning,
    when the installed Hypercorn or h11 breaks that contract: then HTTP/1.1
    runs stock. The versions stand in for the installed ones."""
    problems = connections.h11_contract_problems(version, h11_version)
    return _tuned("HTTP/1.1", "H11Protocol", problems, version, tuned_h11=True)


def _tuned(
    protocol: str, stock: str, problems: list[str], version: str | None, **tuning: bool
) -> bool:
    """Install a protocol tuning (``tuning``: install_protocols' switch for
    it), or, with ``problems``, warn and leave ``protocol`` stock."""
    if problems:
        log.warning(
            "chatd.server.tuned is on but its %s tuning cannot be honoured: %s; "
            "serving %s with Hypercorn's stock %s (see UPGRADING.md)",
            protocol,
            "; ".join(problems),
            protocol,
            stock,
        )
        return False
    guarded = not connections.guard_problems(version)
    connections.install_protocols(guarded=guarded, **tuning)
    return True


def reset_unfinished_streams() -> None:
    """Have Hypercorn reset the HTTP/2 streams an app leaves unfinished
    (lakehouse.stream_reset). A fix, not a speed-up: both stacks get it."""
    h2 = H2Protocol
    if all(hasattr(h2, name) for name in ("stream_send", "_flush")) and not getattr(
        h2.stream_send, "chatd_resetting", False
    ):
        reset: Any = resetting(h2.stream_send, StreamClosed, ASGIHTTPState.RESPONSE)
        reset.chatd_resetting = True
        h2.stream_send = reset  # type: ignore[method-assign]


def install_guards(version: str | None = None) -> bool:
    """Have Hypercorn's connections, tuned or stock, carry chatd's fixes:
    unfinished HTTP/2 streams reset (lakehouse.stream_reset), the HTTP/2
    abuse budget (lakehouse.h2_guard) and HTTP/1.1 read timeouts
    (lakehouse.slow_clients). False, with a warning, when the installed
    Hypercorn breaks the guards' contract: then they are left out.
    ``version`` stands in for the installed Hypercorn's."""
    reset_unfinished_streams()
    problems = connections.guard_problems(version)
    if problems:
        log.warning(
            "chatd's HTTP/2 abuse guard and slow-client timeouts cannot be installed: %s; "
            "serving without them (see UPGRADING.md)",
            "; ".join(problems),
        )
    connections.install_protocols(tuned_h2=False, guarded=not problems)
    return not problems


def prepare_hypercorn(config: Config) -> bool:
    """What each serving process does before Hypercorn serves: the fixes
    always (``install_guards``), the tuned connections and HTTP/2 when
    ``chatd.server.tuned`` (and their contracts hold); whether the
    connections run tuned."""
    install_guards()
    return config.chatd.server.tuned and tune_connections()


class StockConfig(HypercornConfig):
    """Hypercorn's config as shipped, with what chatd's fixes read (both
    stacks)."""

    # lakehouse.slow_clients: a head's and a body pause's time limit.
    chatd_read_timeout = 30.0


class ServerConfig(StockConfig):
    """Hypercorn's config, with the Date header every response carries
    formatted once a second instead of once per response, and connections
    run by ``lakehouse.connections.TunedTCPServer`` (HTTP/2 by
    ``lakehouse.h2_tuning``): chatd's tuned stack."""

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
    h = ServerConfig() if prepare_hypercorn(config) else StockConfig()
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
        listen_first(h)
        # As a pool's worker is served (not Hypercorn's own runner, which
        # keeps SIGTERM to itself): STOPPING=1 can go out at the signal.
        _serve_here(h, lambda: None, None)
        return 0
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
    _serve_here(h, ready, lifeline)


def _serve_here(h: HypercornConfig, ready: Callable[[], None], lifeline: int | None) -> None:
    """Serve ``h``'s app on its bound sockets in this process until
    SIGTERM/SIGINT (or the lifeline's end), then drain."""
    h.workers = 1
    app = load_app(h.application_path)
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
        # Draining begins: systemd hears it now, not once the requests in
        # flight are done. (A pool's workers have no notify socket: the
        # supervisor speaks for them.)
        sd_notify.notify("STOPPING=1")

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
