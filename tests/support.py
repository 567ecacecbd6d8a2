"""Test helpers: a real chatd served on 127.0.0.1 in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from lakehouse import config as configuration
from lakehouse.server import bound_socket, serve
from lakehouse.web import create_app

ROOT = Path(__file__).resolve().parent.parent


def make_config(text: str = "", overrides: Mapping[str, Any] | None = None,
                source: str | None = None) -> configuration.Config:
    return configuration.parse(text, source=source or str(ROOT / "tests" / "x.toml"),
                               overrides=overrides)


@contextlib.asynccontextmanager
async def running_chatd(
    config: configuration.Config, environ: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """Serve chatd on a real socket; yields its base URL."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    app = create_app(config, environ=environ or {})
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
