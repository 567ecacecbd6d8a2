"""Test helpers: a real chatd served on 127.0.0.1 in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import aiohttp
from aioresponses import aioresponses

from lakehouse import config as configuration
from lakehouse.callers.web import create_app
from lakehouse.server import bound_socket, serve
from lakehouse.upstreams.http import HTTPClient

ROOT = Path(__file__).resolve().parent.parent


def make_config(
    text: str = "", overrides: Mapping[str, Any] | None = None, source: str | None = None
) -> configuration.Config:
    return configuration.parse(
        text, source=source or str(ROOT / "tests" / "x.toml"), overrides=overrides
    )


@contextlib.asynccontextmanager
async def running_chatd(
    config: configuration.Config,
    environ: Mapping[str, str] | None = None,
    source: Callable[[], configuration.Config] | None = None,
) -> AsyncIterator[str]:
    """Serve chatd on a real socket; yields its base URL."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    app = create_app(config, environ=environ or {}, source=source)
    task = asyncio.create_task(serve(app, config, sock, stop.wait))
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(base, task)
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        # Hypercorn took the descriptor over (fd:// bind) and closed it.
        sock.detach()


async def _wait_ready(base: str, task: asyncio.Task[None]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if task.done():
                task.result()
                raise RuntimeError("chatd stopped before it was ready")
            try:
                async with session.get(base + "/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError("chatd did not become ready")


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
        )
    )


class _Response(aiohttp.ClientResponse):
    # aiohttp 3.14 made `stream_writer` a required argument and aioresponses
    # 0.7.9 does not pass it (pnuckowski/aioresponses#289, fix unmerged);
    # aiohttp only reads its output_size.
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


async def _send_through_session(
    client: HTTPClient,
    method: str,
    path: str,
    extra: Any,
    body: bytes | None,
    read_timeout: float | None,
) -> aiohttp.ClientResponse:
    return await client.session._request(
        method,
        client._url(path),
        headers=client._headers_for(extra),
        data=body,
        allow_redirects=False,
    )


class mock_upstream(aioresponses):
    """aioresponses, with responses aiohttp 3.14 can build.

    aioresponses replaces ``ClientSession._request``, which HTTPClient's
    lean ``_send`` does not go through; here ``_send`` goes through it, so
    these tests cover everything but ``_send`` itself (the end-to-end tests
    against the stubs on real sockets cover that).
    """

    def start(self) -> None:
        self._send_patcher = patch.object(HTTPClient, "_send", _send_through_session)
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
