"""Test helpers: a real chatd served on 127.0.0.1 in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import aiohttp
import pytest
from aioresponses import aioresponses

from lakehouse import config as configuration
from lakehouse.callers.web import create_app
from lakehouse.server import bound_socket, serve
from lakehouse.upstreams import lean
from lakehouse.upstreams.http import session_send

ROOT = Path(__file__).resolve().parent.parent
# Which stack the tests run chatd on: "tuned" (chatd.server.tuned = true,
# the default) or "stock"; bin/test runs the modules marked `stacks` on both.
STACK = os.environ.get("CHATD_TEST_STACK", "tuned")
if STACK not in ("tuned", "stock"):
    raise RuntimeError(f"CHATD_TEST_STACK={STACK!r}: expected tuned or stock")
TUNED = STACK == "tuned"


def make_config(
    text: str = "", overrides: Mapping[str, Any] | None = None, source: str | None = None
) -> configuration.Config:
    """A config as chatd would parse it, on the stack this run tests unless
    ``overrides`` set ``chatd.server.tuned``."""
    return configuration.parse(
        text,
        source=source or str(ROOT / "tests" / "x.toml"),
        overrides={"chatd.server.tuned": TUNED, **(overrides or {})},
    )


@contextlib.asynccontextmanager
async def running_chatd(
    config: configuration.Config,
    environ: Mapping[str, str] | None = None,
    source: Callable[[], configuration.Config] | None = None,
) -> AsyncIterator[str]:
    """Serve chatd on a real socket; yields its base URL."""
    async with serving(create_app(config, environ=environ or {}, source=source), config) as base:
        yield base


@contextlib.asynccontextmanager
async def serving(
    app: Any, config: configuration.Config, ready: str = "/ready"
) -> AsyncIterator[str]:
    """Serve the ASGI ``app`` as chatd serves one (lakehouse.server.serve)
    on a real socket; yields its base URL once ``ready`` answers 200."""
    sock = bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, sock, stop.wait))
    try:
        await _wait_ready(base, task, ready)
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        # Hypercorn took the descriptor over (fd:// bind) and closed it.
        sock.detach()


async def _wait_ready(base: str, task: asyncio.Task[None], ready: str = "/ready") -> None:
    for _ in range(300):
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it was ready")
        if await _answers_200(base, ready):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{base}{ready} did not answer 200")


async def _answers_200(base: str, path: str) -> bool:
    # A bare socket, not an HTTP client library: a test may count what
    # aiohttp or httpx does, and the readiness check must not add to it.
    host, port = base.removeprefix("http://").split(":")
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
                return (await reader.readline()).startswith(b"HTTP/1.1 200 ")
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False


def module_fixtures(
    opened: Callable[[], contextlib.AbstractAsyncContextManager[Any]], name: str = "world"
) -> tuple[Any, Any]:
    """The fixtures of a test module whose tests share one served world:
    ``name``, what ``opened()`` yields, opened once for the module, and
    the module-scoped ``anyio_backend`` such a fixture needs (the
    conftest's is per test). In the module::

        anyio_backend, world = module_fixtures(lambda: stub_world(OVERRIDES))
    """

    @pytest.fixture(scope="module", name="anyio_backend")
    def backend() -> str:
        return "asyncio"

    @pytest.fixture(scope="module", name=name)
    async def shared() -> AsyncIterator[Any]:
        async with opened() as value:
            yield value

    return backend, shared


async def eventually(check: Callable[[], Any], within: float = 20.0, what: str = "") -> None:
    """Wait until ``check()`` is true (it may be async): for an event
    chatd does not signal, with a bound a loaded CI never reaches."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        done = check()
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {within:g} s: {what or check}")
        await asyncio.sleep(0.02)


def timers_armed(monkeypatch: pytest.MonkeyPatch, method: str) -> list[float]:
    """The first argument (a delay or a loop time) of every timer the
    running loop's ``method`` (``call_later`` or ``call_at``) arms from now
    on; the timers are armed as before."""
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    arm = getattr(loop, method)

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return arm(when, callback, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(loop, method, counting)
    return armed


def config_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a chatd process that refused its config wrote (it
    exits with 2)."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def provider_table(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    """Overrides that add one provider table."""
    out: dict[str, Any] = {f"chatd.providers.{name}.base_url": base_url}
    for key, value in extra.items():
        out[f"chatd.providers.{name}.{key}"] = value
    return out


def builtin_plugin(name: str) -> Any:
    """The PLUGIN of a built-in plugin file (plugins/ is not a package)."""
    from lakehouse.loader import BUILTIN_DIR, import_plugin_file

    return import_plugin_file(BUILTIN_DIR / f"{name}.py").PLUGIN


def build_provider(
    name: str,
    base_url: str,
    *,
    key: str | None = None,
    timeout: float = 5,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> Any:
    """A provider built from a built-in plugin, as the registry would."""
    import msgspec

    from lakehouse.plugin_api import ProviderContext

    plugin = builtin_plugin(name)
    return plugin.build(
        ProviderContext(
            name=name,
            base_url=base_url,
            key=key,
            timeout=timeout,
            headers=dict(headers or {}),
            options=msgspec.convert(options, plugin.options),
            tuned=TUNED,
        )
    )


class _Response(aiohttp.ClientResponse):
    # aiohttp 3.14 made `stream_writer` a required argument and aioresponses
    # 0.7.9 does not pass it (pnuckowski/aioresponses#289, fix unmerged);
    # aiohttp only reads its output_size.
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class mock_upstream(aioresponses):
    """aioresponses, with responses aiohttp 3.14 can build.

    aioresponses replaces ``ClientSession._request``, which HTTPClient's
    lean path (lakehouse.upstreams.lean) does not go through; here every
    request takes the stock path, so these tests cover everything but the
    lean path (tests/upstreams/test_http.py and the end-to-end tests against
    the stubs on real sockets cover that).
    """

    def start(self) -> None:
        self._send_patcher = patch.object(lean, "send", session_send)
        self._send_patcher.start()
        super().start()

    def stop(self) -> None:
        super().stop()
        self._send_patcher.stop()

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(url, method, *args, **kwargs)


def chat_request(**kw: Any) -> Any:
    """A one-message native request, as a provider receives it."""
    from lakehouse.wire import ChatRequest, Message

    return ChatRequest(model="ignored", messages=[Message("user", "hi")], **kw)


async def _never_answers(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def one_connection(
    server_class: Callable[..., Any],
    h: Any,
    app: Callable[..., Any] = _never_answers,
    prepare: Callable[[Any], None] = lambda server: None,
) -> AsyncIterator[tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]]:
    """One real loopback connection served by a Hypercorn TCPServer (class
    ``server_class``, config ``h``, ASGI ``app``; ``prepare`` sees the server
    before it runs); yields the server once running, with the client's
    ends of the connection."""
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.worker_context import WorkerContext

    context = WorkerContext(None)
    made: asyncio.Queue[Any] = asyncio.Queue()
    runs: list[asyncio.Future[Any]] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        server = server_class(ASGIWrapper(app), loop, h, context, {}, reader, writer)
        prepare(server)
        runs.append(asyncio.ensure_future(server.run()))
        await made.put(server)
        await runs[-1]

    listener = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        server = await asyncio.wait_for(made.get(), 5)
        for _ in range(1000):
            if hasattr(server, "protocol"):  # run() has built it
                break
            await asyncio.sleep(0)
        yield server, reader, writer
    finally:
        writer.close()
        # As a server shutting down: the idle timer closes the connection.
        await context.terminated.set()
        await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 10)
        listener.close()
        await listener.wait_closed()
