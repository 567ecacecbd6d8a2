"""systemd's readiness protocol (``Type=notify``), without a dependency.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named
in ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading
``@``). It is what libsystemd's ``sd_notify`` does, and small enough to write:
a service without the variable (run by hand, under tests) sends nothing.

``announcing`` wraps a served ASGI app: READY=1 once its lifespan start-up
has completed (``lakehouse.server`` listens before Hypercorn loads the app,
so the port already accepts by then). STOPPING=1 is sent by the server at
SIGTERM/SIGINT, as draining begins: the app hears of the shutdown only once
the requests in flight have finished. ``reloading`` brackets a
configuration reload with RELOADING=1 and READY=1. With several workers the
supervisor (the main process) speaks for the pool instead
(``lakehouse.supervisor``) and workers send nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

log = logging.getLogger("chatd.sd_notify")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def address(environ: Mapping[str, str] | None = None) -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names, as ``socket`` takes it;
    None when unset or of a kind not spoken here (``vsock:``)."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); False when there is no socket or
    the send failed. A failure is logged, never raised: systemd's view of
    the service is not worth failing a request or a shutdown for."""
    target = address(environ)
    if target is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def monotonic_usec() -> int:
    # systemd (Type=notify-reload) pairs RELOADING=1 with the clock it reads.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@contextlib.asynccontextmanager
async def reloading() -> AsyncIterator[None]:
    """RELOADING=1 before, READY=1 after (refused or not: the old config
    keeps serving either way)."""
    notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
    try:
        yield
    finally:
        notify("READY=1")


def announcing(app: ASGIApp) -> ASGIApp:
    """``app`` telling systemd when it is ready; ``app`` itself when no
    notify socket is set, so tests and hand runs pay nothing."""
    if address() is None:
        return app

    async def wrapped(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def lifespan_send(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                notify("READY=1")

        await app(scope, receive, lifespan_send)

    return wrapped
