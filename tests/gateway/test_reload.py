"""The gateway re-reads its routes in place (SIGHUP, which the unit's
ExecReload sends): new routes serve at once, requests under way finish on
the old ones, and a bad config leaves the running routes alone."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from lakehouse import config as configuration
from lakehouse.errors import ConfigError
from lakehouse.gateway.app import Gateway
from tests.gateway.test_app import Tiny, free_port, gateway_config
from tests.support import ROOT, serving
from tests.test_sd_notify import WAIT, accepts, notify_socket, states

pytestmark = pytest.mark.anyio


async def test_reload_swaps_routes_and_lets_requests_under_way_finish() -> None:
    tiny = Tiny()
    url = await tiny.start()
    configs: list[Callable[[], configuration.Config]] = [
        lambda: gateway_config({"/v1/tiny": url}),
    ]

    def source() -> configuration.Config:
        return configs[-1]()

    gateway = Gateway(source(), source)
    try:
        async with (
            serving(gateway, source(), ready="/health") as base,
            httpx.AsyncClient(base_url=base) as client,
        ):
            async with client.stream("GET", "/v1/tiny/drip") as under_way:
                chunks = under_way.aiter_text()
                assert await anext(chunks) == "first\n"

                configs.append(lambda: gateway_config({"/v1/other": url}))
                await gateway.reload()
                assert (await client.get("/v1/tiny/echo")).status_code == 404
                moved = await client.get("/v1/other/echo")
                assert moved.status_code == 200
                assert moved.json()["path"] == "/other/echo"

                # The old table's session still carries the stream.
                tiny.release.set()
                assert [chunk async for chunk in chunks] == ["second\n"]

            def broken() -> configuration.Config:
                raise ConfigError("x.toml: unknown key `gateway.rutes`")

            configs.append(broken)
            await gateway.reload()
            assert (await client.get("/v1/other/echo")).status_code == 200
    finally:
        await tiny.stop()


def write_routes(path: Path, routes: dict[str, str]) -> None:
    table = ", ".join(f'"{prefix}" = "{url}"' for prefix, url in routes.items())
    path.write_text(
        f"[gateway]\nroutes = {{ {table} }}\n[chatd.server]\ngraceful_timeout_secs = 1\n"
    )


async def test_sighup_reloads_the_file_and_says_so_to_systemd(tmp_path: Path) -> None:
    tiny = Tiny()
    url = await tiny.start()
    path = tmp_path / "lakehouse.toml"
    write_routes(path, {"/v1/tiny": url})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LAKEHOUSE_CONFIG"}
    try:
        with notify_socket(tmp_path, abstract=True) as (sock, value):
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "lakehouse.cli", "gateway", "--config", str(path)),
                *("--bind", f"127.0.0.1:{port}"),
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env={**env, "NOTIFY_SOCKET": value},
            )
            try:
                assert await asyncio.to_thread(states, sock) == {"READY": "1"}
                assert accepts(port)
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base) as client:
                    assert (await client.get("/v1/tiny/echo")).status_code == 200

                    write_routes(path, {"/v1/other": url})
                    proc.send_signal(signal.SIGHUP)
                    assert (await asyncio.to_thread(states, sock))["RELOADING"] == "1"
                    assert await asyncio.to_thread(states, sock) == {"READY": "1"}
                    assert (await client.get("/v1/tiny/echo")).status_code == 404
                    assert (await client.get("/v1/other/echo")).status_code == 200

                    path.write_text("[gateway]\nrutes = {}\n")
                    proc.send_signal(signal.SIGHUP)
                    assert (await asyncio.to_thread(states, sock))["RELOADING"] == "1"
                    assert await asyncio.to_thread(states, sock) == {"READY": "1"}
                    assert (await client.get("/v1/other/echo")).status_code == 200
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        await tiny.stop()
    assert proc.returncode == 0, err
    assert "routes reloaded" in err.decode()
    assert "reload refused, the running routes stay" in err.decode()
    assert "unknown key `gateway.rutes`" in err.decode()
