"""How chatd has Hypercorn run a connection when ``chatd.server.tuned`` is
on: two per-request costs of Hypercorn 0.18's ``TCPServer``
(``hypercorn/asyncio/tcp_server.py``) removed, in a subclass of it; and, on
those connections, HTTP/2 run by ``lakehouse.h2_tuning``'s ``H2Protocol``
subclass. ``install_protocols`` also puts chatd's two protocol fixes in
front of Hypercorn's classes on both stacks: ``lakehouse.h2_guard`` (the
HTTP/2 abuse budget) and ``lakehouse.slow_clients`` (HTTP/1.1 read
timeouts). Each part has its own contract check here and its own contract
tests; ``lakehouse.server`` decides what to install and logs what it cannot.
A little over 350 lines: every swap of a Hypercorn class, and the check of
what each relies on, in one place.

This leans on Hypercorn's internals, so it is held to a contract.
``contract_problems()`` checks, when a server is configured, that the
installed Hypercorn is a version the contract tests
(``tests/test_connections_contract.py``, run against the real library)
passed on, and that the names and signatures used below are there; if not,
``lakehouse.server`` logs a warning and serves with the stock
``TCPServer``. ``UPGRADING.md`` says what to do when bumping Hypercorn.

The idle timer. The stock TCPServer watches each connection with an
``AsyncioSingleTask``: ``restart`` (the connection went idle) cancels and
awaits the previous watcher, then starts a task running
``TCPServer._idle_timeout`` (wait for server shutdown or
``keep_alive_timeout``, then close); ``stop`` (a request arrived, or the
connection is closing) cancels it. On a keep-alive connection that is a
cancellation, two task switches and the inner task of ``asyncio.wait_for``
for every request: ~8% of a proxied request's CPU here.
``IdleWatch`` keeps the same interface and behaviour with one watcher per
connection for its whole life: ``restart`` and ``stop`` only move an
"idle since" mark, and the watcher, waking once per ``keep_alive_timeout``,
closes the connection once it has been idle that long, or at once when the
server shuts down. One exception to "at once": a connection that has not
yet sent its first request (accepted just before a worker began to drain,
its request maybe still in flight) gets ``FIRST_REQUEST_GRACE`` to send
it, so a rolling restart does not drop brand-new connections unanswered.

Coalesced writes. The stock TCPServer writes each piece of a response as
it is made (the head at ``http.response.start``, the body, an empty end)
and awaits ``drain()`` after each: two or three ``send()`` system calls
per answer. ``TunedTCPServer.protocol_send`` gathers what one turn of the
event loop writes on a connection and sends it at the end of that turn, in
one call; past 64 KiB gathered, or when the peer reads slowly (bytes left
in the transport's buffer), it sends at once and waits in ``drain()`` as
Hypercorn does. Closing first sends what is gathered; the idle/busy
updates do not: they only move the keep-alive mark, and HTTP/2 sends one
per stream, between other streams' frames, so flushing there split a
turn's answers into a write per stream. Nor does an update that repeats
the last one reach the keep-alive watcher: HTTP/2 says "busy" for every
new stream of a busy connection, and "busy" again as each stream but the
last closes; only a change moves the mark. (Sending HTTP/1.1 answers at the
end of the turn too measured ~5-9% less CPU a request at 16 connections;
bench/README.md.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn import protocol as hypercorn_protocol
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio import tcp_server
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import events as stream_events
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import http_stream
from hypercorn.protocol.events import StreamClosed

from lakehouse.h2_frames import send_data_problems
from lakehouse.h2_guard import GuardMixin
from lakehouse.h2_tuning import tuned_h2_protocol
from lakehouse.h11_tuning import tuned_h11_protocol
from lakehouse.slow_clients import SlowClientMixin
from lakehouse.tasks import wait_closed

# Hypercorn versions the contract tests passed on (a prefix each).
CHECKED_VERSIONS = ("0.18.",)
# h2 versions lakehouse.h2_tuning's contract tests passed on.
CHECKED_H2_VERSIONS = ("4.",)
# h11 versions lakehouse.h11_tuning's contract tests passed on.
CHECKED_H11_VERSIONS = ("0.16.",)
# H2Protocol's constructor, as hypercorn.protocol.ProtocolWrapper calls it.
H2_PARAMETERS = (
    "app",
    "config",
    "context",
    "task_group",
    "connection_state",
    "ssl",
    "client",
    "server",
    "send",
)
# What lakehouse.h2_guard relies on in Hypercorn's H2Protocol.
H2_GUARD_NEEDS = ("_handle_events", "_create_stream", "_flush", "stream_send", "handle", "initiate")
# What lakehouse.slow_clients relies on in Hypercorn's H11Protocol.
SLOW_CLIENT_NEEDS = ("handle", "stream_send", "_handle_events")
# TCPServer's constructor, as hypercorn.asyncio.run calls it.
SERVER_PARAMETERS = ("app", "loop", "config", "context", "state", "reader", "writer")
# Gathered bytes past this are sent at once (asyncio's default high-water
# mark for a transport's buffer): a turn's writes are small answers.
GATHER_LIMIT = 64 * 1024

log = logging.getLogger("chatd.server")

# Seconds a connection with no request yet may still send one once the
# server is shutting down (a request in transit on a just-accepted socket).
FIRST_REQUEST_GRACE = 1.0


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("keep-alive watcher failed", exc_info=task.exception())


class IdleWatch:
    """Stands in for Hypercorn's ``AsyncioSingleTask`` as a TCPServer's
    ``idle_task``; ``action`` is that server's ``_idle_timeout``."""

    def __init__(self, server: TunedTCPServer) -> None:
        self._server = server
        self._idle_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        # No request seen yet, and since when the connection is open.
        self._fresh = True
        self._opened = 0.0

    async def restart(self, task_group: TaskGroup, action: Callable[[], Awaitable[None]]) -> None:
        if self._server.context.terminated.is_set() and not self._fresh:
            # Shutting down: close now, as Hypercorn's own watcher would.
            task_group._task_group.create_task(action())  # type: ignore[arg-type]
            return
        self._idle_since = asyncio.get_running_loop().time()
        if self._task is None:
            if self._fresh:
                self._opened = self._idle_since
            # Outside the connection's task group, which must be able to end
            # (a client gone mid-request) while the watcher waits; the
            # server's _close() always follows and stops it.
            self._task = asyncio.create_task(self._watch())
            self._task.add_done_callback(_report)

    async def stop(self) -> None:
        self._idle_since = None
        self._fresh = False
        task = self._task
        if task is not None and self._server.writer.is_closing():
            self._task = None
            await wait_closed(task)

    async def _watch(self) -> None:
        server = self._server
        loop = asyncio.get_running_loop()
        timeout = server.config.keep_alive_timeout
        terminated = server.context.terminated
        while True:
            since = self._idle_since
            if terminated.is_set():
                if since is None:
                    # Shutting down mid-request: ``restart`` closes the
                    # connection when the request is done.
                    self._task = None
                    return
                grace = self._opened + FIRST_REQUEST_GRACE - loop.time()
                if not self._fresh or grace <= 0:
                    break
                await asyncio.sleep(grace)
                continue
            wait = timeout if since is None else since + timeout - loop.time()
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(terminated.wait(), wait)
            except TimeoutError:
                continue
        self._task = None
        await asyncio.shield(server._initiate_server_close())


class _LetGo:
    """What a closed tuned connection keeps as its protocol and its
    keep-alive watcher: nothing is left to hand an event or to watch."""

    async def handle(self, event: Event) -> None:
        pass

    async def restart(self, task_group: object, action: object) -> None:
        pass

    async def stop(self) -> None:
        pass


class TunedTCPServer(tcp_server.TCPServer):
    """Hypercorn's TCPServer with one keep-alive watcher per connection and
    a loop turn's writes sent in one ``send()`` (see the module's doc)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.idle_task = IdleWatch(self)  # type: ignore[assignment]
        self._chatd_pending: list[bytes] | None = None
        self._chatd_pending_bytes = 0
        # What the protocol last said: idle or busy (None: nothing yet).
        self._chatd_idle: bool | None = None

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            # A connection's objects refer to one another (its protocol holds
            # this server's protocol_send, the keep-alive watcher this server,
            # the task group its tasks): once it is closed, let go of them, so
            # reference counting frees them at once and not the collector's
            # next full collection (gc_pacing makes those rare under load;
            # ~30 objects a connection waited for it). Late calls find no-ops.
            self.protocol = _LetGo()  # type: ignore[assignment]
            self.idle_task = _LetGo()  # type: ignore[assignment]
            self._task_group = None  # type: ignore[assignment]

    async def protocol_send(self, event: Event) -> None:
        if type(event) is not RawData:
            if type(event) is Updated:  # (see the module's doc)
                if event.idle is self._chatd_idle:
                    return
                self._chatd_idle = event.idle
            else:
                self._flush()
            await super().protocol_send(event)
            return
        pending = self._chatd_pending
        if pending is None:
            pending = self._chatd_pending = [event.data]
            self._chatd_pending_bytes = len(event.data)
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            pending.append(event.data)
            self._chatd_pending_bytes += len(event.data)
        behind = self.writer.transport.get_write_buffer_size()
        if behind or self._chatd_pending_bytes >= GATHER_LIMIT:
            # Much to send, or the peer is behind: send now and wait, as
            # Hypercorn would, so a fast writer cannot pile bytes up.
            self._flush()
            async with self.send_lock:
                try:
                    await self.writer.drain()
                except (ConnectionError, RuntimeError):
                    await self.protocol.handle(Closed())

    def _flush(self) -> None:
        pending, self._chatd_pending = self._chatd_pending, None
        if not pending or self.writer.is_closing():
            return
        try:
            self.writer.write(pending[0] if len(pending) == 1 else b"".join(pending))
        except (ConnectionError, RuntimeError):
            gone = self.protocol.handle(Closed())
            try:
                self._task_group._task_group.create_task(gone)
            except RuntimeError:  # the connection is already being wound up
                gone.close()


def server_for(*args: Any) -> tcp_server.TCPServer:
    """What ``hypercorn.asyncio.run`` builds per connection once installed:
    the tuned server when the config asks for it (``ServerConfig.chatd_tuned``),
    Hypercorn's own otherwise."""
    config = args[SERVER_PARAMETERS.index("config")]
    if getattr(config, "chatd_tuned", False):
        return TunedTCPServer(*args)
    return tcp_server.TCPServer(*args)


def contract_problems(version: str | None = None) -> list[str]:
    """What keeps the tuned connections from being used with the installed
    Hypercorn (``version`` stands in for its version); empty when nothing."""
    version = version or importlib.metadata.version("hypercorn")
    problems = []
    if not version.startswith(CHECKED_VERSIONS):
        problems.append(f"Hypercorn {version} is not a version the contract tests passed on")
    server = tcp_server.TCPServer
    params = tuple(inspect.signature(server.__init__).parameters)[1:]
    if params != SERVER_PARAMETERS:
        problems.append(f"TCPServer takes {params}, not {SERVER_PARAMETERS}")
    for name in ("protocol_send", "_initiate_server_close", "_idle_timeout", "_close"):
        if not inspect.iscoroutinefunction(getattr(server, name, None)):
            problems.append(f"TCPServer.{name} is not a coroutine function")
    if getattr(hypercorn_run, "TCPServer", None) not in (server, server_for):
        problems.append("hypercorn.asyncio.run does not build its connections from TCPServer")
    return problems


def install(version: str | None = None) -> list[str]:
    """Have Hypercorn build its connections through ``server_for``, unless
    the contract does not hold; returns what does not (empty: installed)."""
    problems = contract_problems(version)
    if not problems:
        hypercorn_run.TCPServer = server_for  # type: ignore[attr-defined,assignment]
    return problems


def h2_contract_problems(version: str | None = None, h2_version: str | None = None) -> list[str]:
    """What keeps ``lakehouse.h2_tuning``'s protocol from being used with the
    installed Hypercorn and h2 (the versions stand in for theirs); empty
    when nothing. ``tests/test_h2_tuning.py`` holds the contract."""
    stock = hypercorn_h2.H2Protocol
    problems = _protocol_problems("h2", stock, version, h2_version, CHECKED_H2_VERSIONS)
    for name in (
        "stream_send", "_flush", "_send_data", "send_task", "_handle_events", "_create_stream",
        "_close_stream",
    ):  # fmt: skip
        if not inspect.iscoroutinefunction(getattr(stock, name, None)):
            problems.append(f"H2Protocol.{name} is not a coroutine function")
    if not callable(getattr(hypercorn_h2.StreamBuffer, "pop", None)):
        problems.append("H2Protocol's StreamBuffer has no pop")
    if not callable(getattr(hypercorn_h2, "filter_pseudo_headers", None)):
        problems.append("hypercorn.protocol.h2 has no filter_pseudo_headers")
    stream = getattr(http_stream, "HTTPStream", None)
    if not inspect.iscoroutinefunction(getattr(stream, "app_send", None)):
        problems.append("HTTPStream.app_send is not a coroutine function")
    state = getattr(http_stream, "ASGIHTTPState", None)
    if not (hasattr(state, "RESPONSE") and hasattr(state, "CLOSED")):
        problems.append("HTTPStream has no RESPONSE and CLOSED states")
    if not callable(getattr(http_stream, "suppress_body", None)):
        problems.append("hypercorn.protocol.http_stream has no suppress_body")
    problems += send_data_problems()
    problems += _wrapper_problems()
    return problems


def _protocol_problems(
    library: str,
    stock: type[Any],
    version: str | None,
    library_version: str | None,
    checked: tuple[str, ...],
) -> list[str]:
    """What every protocol tuning needs: a Hypercorn and a ``library`` (h2,
    h11) of versions its contract tests passed on, and Hypercorn's ``stock``
    protocol built with the arguments it was written against."""
    version = version or importlib.metadata.version("hypercorn")
    library_version = library_version or importlib.metadata.version(library)
    problems = []
    if not version.startswith(CHECKED_VERSIONS):
        problems.append(
            f"Hypercorn {version} is not a version the {library} contract tests passed on"
        )
    if not library_version.startswith(checked):
        problems.append(
            f"{library} {library_version} is not a version the {library} contract tests passed on"
        )
    params = tuple(inspect.signature(stock.__init__).parameters)[1:]
    if params != H2_PARAMETERS:
        problems.append(f"{stock.__name__} takes {params}, not {H2_PARAMETERS}")
    return problems


def guard_problems(version: str | None = None) -> list[str]:
    """What keeps ``lakehouse.h2_guard`` and ``lakehouse.slow_clients`` from
    being put in front of the installed Hypercorn's protocols; empty when
    nothing. ``tests/test_h2_guard.py`` and ``tests/test_slow_clients.py``
    hold the contract."""
    version = version or importlib.metadata.version("hypercorn")
    problems = []
    if not version.startswith(CHECKED_VERSIONS):
        problems.append(f"Hypercorn {version} is not a version the guard contract tests passed on")
    for cls, needs in (
        (hypercorn_h2.H2Protocol, H2_GUARD_NEEDS),
        (hypercorn_h11.H11Protocol, SLOW_CLIENT_NEEDS),
    ):
        missing = [name for name in needs if not hasattr(cls, name)]
        if missing:
            problems.append(f"{cls.__name__} has no {', '.join(missing)}")
    return problems + _wrapper_problems()


def _wrapper_problems() -> list[str]:
    current = getattr(hypercorn_protocol, "H2Protocol", None)
    if current is not hypercorn_h2.H2Protocol and not isinstance(current, H2Choice):
        return ["hypercorn.protocol does not build HTTP/2 connections from H2Protocol"]
    return []


@dataclasses.dataclass(frozen=True)
class H2Choice:
    """What ``hypercorn.protocol.ProtocolWrapper`` calls as ``H2Protocol``
    (and as ``H11Protocol``: both take the same arguments) once installed:
    each connection's protocol class, picked by its server's config
    (``ServerConfig.chatd_tuned``), as ``server_for`` picks the TCPServer;
    a process may serve tuned and stock servers at once."""

    tuned: type[Any]
    stock: type[Any]

    def pick(self, config: Any) -> type[Any]:
        return self.tuned if getattr(config, "chatd_tuned", False) else self.stock

    def __call__(self, *args: Any) -> Any:
        return self.pick(args[H2_PARAMETERS.index("config")])(*args)


def installed_h2() -> H2Choice | None:
    current = getattr(hypercorn_protocol, "H2Protocol", None)
    return current if isinstance(current, H2Choice) else None


def installed_h11() -> H2Choice | None:
    """The HTTP/1.1 choice (an ``H2Choice`` of ``H11Protocol`` classes: both
    take the same arguments), once ``install_protocols`` put one in."""
    current = getattr(hypercorn_protocol, "H11Protocol", None)
    return current if isinstance(current, H2Choice) else None


def h11_contract_problems(version: str | None = None, h11_version: str | None = None) -> list[str]:
    """What keeps ``lakehouse.h11_tuning``'s protocol from being used with
    the installed Hypercorn and h11 (the versions stand in for theirs);
    empty when nothing. ``tests/test_h11_tuning.py`` holds the contract."""
    stock = hypercorn_h11.H11Protocol
    problems = _protocol_problems("h11", stock, version, h11_version, CHECKED_H11_VERSIONS)
    if not inspect.iscoroutinefunction(getattr(stock, "stream_send", None)):
        problems.append("H11Protocol.stream_send is not a coroutine function")
    current = getattr(hypercorn_protocol, "H11Protocol", None)
    plain = isinstance(current, type) and issubclass(current, stock)
    if not (plain or isinstance(current, H2Choice)):
        problems.append("hypercorn.protocol does not build HTTP/1.1 connections from H11Protocol")
    return problems


def install_protocols(*, guarded: bool, tuned_h2: bool = False, tuned_h11: bool = False) -> None:
    """Have Hypercorn build each connection's protocol as chatd runs it:
    its own classes, with ``lakehouse.h2_guard`` (HTTP/2) and
    ``lakehouse.slow_clients`` (HTTP/1.1) in front when ``guarded`` (fixes:
    both stacks), and for a tuned server's connections
    ``lakehouse.h2_tuning``'s subclass underneath when ``tuned_h2`` (HTTP/2)
    and ``lakehouse.h11_tuning``'s when ``tuned_h11`` (HTTP/1.1). The
    caller checks the contracts first (``guard_problems``,
    ``h2_contract_problems``, ``h11_contract_problems``). Idempotent; once a
    process has a tuned protocol it keeps it (a stock server's connections
    never get it: the choice is per connection)."""
    current = installed_h2()
    has_tuned = current is not None and current.tuned is not current.stock
    current11 = installed_h11()
    has_tuned11 = current11 is not None and current11.tuned is not current11.stock
    if (
        current is not None
        and current11 is not None
        and getattr(current.stock, "chatd_guarded", False) == guarded
        and (has_tuned or not tuned_h2)
        and (has_tuned11 or not tuned_h11)
    ):
        return
    # The classes Hypercorn ships: only the package's names are replaced.
    stock: type[Any] = hypercorn_h2.H2Protocol
    plain = guard_h2(stock) if guarded else stock
    tuned = plain
    if tuned_h2 or has_tuned:
        base = tuned_h2_protocol(stock, stream_events, http_stream)
        tuned = guard_h2(base) if guarded else base
    # ProtocolWrapper looks these names up in its module for each connection.
    hypercorn_protocol.H2Protocol = H2Choice(tuned, plain)  # type: ignore[attr-defined,assignment]
    stock11: type[Any] = hypercorn_h11.H11Protocol
    plain11 = guard_h11(stock11) if guarded else stock11
    tuned11 = plain11
    if tuned_h11 or has_tuned11:
        base11 = tuned_h11_protocol(stock11, stream_events, RawData)
        tuned11 = guard_h11(base11) if guarded else base11
    hypercorn_protocol.H11Protocol = H2Choice(tuned11, plain11)  # type: ignore[attr-defined,assignment]


def guard_h2(base: type[Any]) -> type[Any]:
    """``base`` (an ``H2Protocol``) with ``lakehouse.h2_guard`` in front."""

    class GuardedH2Protocol(GuardMixin, base):  # type: ignore[misc]
        chatd_guarded = True
        closed_event = Closed
        stream_closed_event = StreamClosed

    return GuardedH2Protocol


def guard_h11(base: type[Any]) -> type[Any]:
    """``base`` (an ``H11Protocol``) with ``lakehouse.slow_clients`` in front."""

    class TimedH11Protocol(SlowClientMixin, base):  # type: ignore[misc]
        chatd_guarded = True
        raw_data_event = RawData
        closed_event = Closed

    return TimedH11Protocol
