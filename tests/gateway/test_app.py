"""The /v1 gateway on real sockets: in front of a real chatd, and of a tiny
aiohttp upstream for what chatd cannot show (streams, headers, timeouts).

Long (~470 lines): covers gateway/app and gateway/proxy together (a relay
is only observable through the app), with upstream fixtures every case
shares."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from lakehouse.config import Config
from lakehouse.gateway.app import create_gateway
from lakehouse.stubs import StubUpstream
from tests.stub_world import one_stub
from tests.support import ROOT, config_error, make_config, serving

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

GOOD = {"model": "qwen3.5:latest", "messages": [{"role": "user", "content": "hello there"}]}
MIB = 1024 * 1024
GATEWAY = (sys.executable, "-m", "lakehouse.cli", "gateway")


def gateway_config(routes: dict[str, str], **overrides: Any) -> Config:
    return make_config(
        overrides={
            "gateway.routes": routes,
            "gateway.timeout_secs": 5,
            # A test that leaves a stream open should not hold shutdown for a minute.
            "chatd.server.graceful_timeout_secs": 1,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def running_gateway(config: Config) -> AsyncIterator[str]:
    """Serve the gateway on a real socket; yields its base URL."""
    async with serving(create_gateway(config), config, ready="/health") as base:
        yield base


def h2(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(http1=False, http2=True, base_url=base, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def chatd() -> AsyncIterator[tuple[str, StubUpstream]]:
    async with one_stub("ollama", {"chatd.max_request_bytes": 4 * MIB}) as (base, stub):
        yield base, stub


@pytest.fixture
async def gateway(chatd: tuple[str, StubUpstream]) -> AsyncIterator[str]:
    async with running_gateway(gateway_config({"/v1/chat": chatd[0]})) as base:
        yield base


class Tiny:
    """An upstream for what chatd cannot show: it echoes what reached it,
    streams on cue, takes uploads chunk by chunk and can be slow."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.first_chunk = asyncio.Event()
        self.aborted = asyncio.Event()
        app = web.Application()
        app.router.add_get("/tiny/drip", self.drip)
        app.router.add_get("/tiny/forever", self.forever)
        app.router.add_post("/tiny/upload", self.upload)
        app.router.add_get("/tiny/slow", self.slow)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.content.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path.partition("?")[0],
                "query": request.rel_url.raw_query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "size": len(body),
            },
            headers={"X-Upstream": "tiny"},
        )

    async def drip(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"first\n")
        # The second chunk waits until the test has seen the first.
        await asyncio.wait_for(self.release.wait(), 10)
        await resp.write(b"second\n")
        await resp.write_eof()
        return resp

    async def forever(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            for _ in range(500):
                await resp.write(b"tick\n")
                await asyncio.sleep(0.02)
        except ConnectionResetError:
            self.aborted.set()
        return resp

    async def upload(self, request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            self.first_chunk.set()
        return web.json_response({"size": size})

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})


@pytest.fixture
async def tiny() -> AsyncIterator[tuple[Tiny, str]]:
    upstream = Tiny()
    url = await upstream.start()
    try:
        yield upstream, url
    finally:
        await upstream.stop()


@pytest.fixture
async def tiny_gateway(tiny: tuple[Tiny, str]) -> AsyncIterator[tuple[Tiny, str]]:
    upstream, url = tiny
    async with running_gateway(gateway_config({"/v1/tiny": url})) as base:
        yield upstream, base


async def test_chat_through_the_gateway_over_http2(
    gateway: str, chatd: tuple[str, StubUpstream]
) -> None:
    async with h2(gateway) as client:
        resp = await client.post("/v1/chat", json=GOOD)
    assert resp.http_version == "HTTP/2"
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["provider"] == "ollama"
    assert "hello there" in body["content"]
    assert chatd[1].received[-1].path == "/api/chat"


async def test_providers_listing_through_the_gateway(gateway: str) -> None:
    async with h2(gateway) as client:
        resp = await client.get("/v1/chat/providers")
    assert resp.status_code == 200
    assert resp.json() == {"providers": {"ollama": True}}


@pytest.mark.parametrize("path", ["/v1/chatty", "/other", "/v1", "/"])
async def test_unrouted_paths_answer_404_json(gateway: str, path: str) -> None:
    async with h2(gateway) as client:
        resp = await client.post(path, json=GOOD)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    assert resp.headers["x-request-id"]


async def test_own_health(gateway: str) -> None:
    async with h2(gateway) as client:
        resp = await client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


async def test_callers_request_id_reaches_chatd_and_comes_back(
    gateway: str, chatd: tuple[str, StubUpstream]
) -> None:
    async with h2(gateway) as client:
        resp = await client.post("/v1/chat", json=GOOD, headers={"X-Request-ID": "trace-42"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "trace-42"
    assert chatd[1].received[-1].headers["x-request-id"] == "trace-42"


async def test_a_request_id_is_minted_when_the_caller_has_none(
    gateway: str, chatd: tuple[str, StubUpstream]
) -> None:
    async with h2(gateway) as client:
        resp = await client.post("/v1/chat", json=GOOD)
    minted = resp.headers["x-request-id"]
    assert len(minted) == 16 and int(minted, 16) >= 0
    assert chatd[1].received[-1].headers["x-request-id"] == minted


async def test_a_3mb_body_streams_through(gateway: str, chatd: tuple[str, StubUpstream]) -> None:
    big = {**GOOD, "messages": [{"role": "system", "content": "a" * (3 * MIB)}, *GOOD["messages"]]}
    async with h2(gateway) as client:
        resp = await client.post("/v1/chat", json=big)
    assert resp.status_code == 200, resp.text
    assert len(chatd[1].received[-1].body) > 3 * MIB


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "unsized"])
async def test_chatds_own_413_over_4mib_comes_through(gateway: str, declared: bool) -> None:
    head = b'{"model": "m", "messages": [{"role": "user", "content": "'
    # A declared length is refused before the body is read; without one,
    # chatd counts up to its limit.
    first = head if declared else head + b"a" * (4 * MIB)
    rest = b"a" * (5 * MIB)

    async def body() -> AsyncIterator[bytes]:
        yield first
        # chatd answers as soon as it knows and closes without reading on;
        # the pause lets its answer reach the gateway before more is written
        # (README, "Gateway": a write racing an upstream's close is a 502).
        await asyncio.sleep(0.5)
        yield rest

    headers = {"Content-Length": str(len(first) + len(rest))} if declared else {}
    async with h2(gateway) as client:
        resp = await client.post("/v1/chat", content=body(), headers=headers)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


async def test_request_body_streams_before_the_caller_finishes_it(
    tiny_gateway: tuple[Tiny, str],
) -> None:
    upstream, base = tiny_gateway

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 65536
        # A gateway that buffered the body would never let this wait end.
        await asyncio.wait_for(upstream.first_chunk.wait(), 10)
        yield b"y" * 65536

    async with h2(base) as client:
        resp = await client.post("/v1/tiny/upload", content=body())
    assert resp.status_code == 200
    assert resp.json() == {"size": 2 * 65536}


async def test_response_streams_chunk_by_chunk(tiny_gateway: tuple[Tiny, str]) -> None:
    upstream, base = tiny_gateway
    async with h2(base) as client, client.stream("GET", "/v1/tiny/drip") as resp:
        chunks = resp.aiter_raw()
        first = await asyncio.wait_for(anext(chunks), 10)
        assert first == b"first\n"
        assert not upstream.release.is_set()
        upstream.release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"second\n"
    assert resp.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_caller_hanging_up_stops_the_upstream_read(
    tiny_gateway: tuple[Tiny, str], http2: bool
) -> None:
    upstream, base = tiny_gateway
    async with (
        httpx.AsyncClient(http1=not http2, http2=http2, base_url=base) as client,
        client.stream("GET", "/v1/tiny/forever") as resp,
    ):
        assert await anext(resp.aiter_raw())
    # The caller's connection is closed; the upstream's must follow.
    await asyncio.wait_for(upstream.aborted.wait(), 5)


async def test_path_is_stripped_of_v1_and_headers_are_forwarded(
    tiny_gateway: tuple[Tiny, str],
) -> None:
    _, base = tiny_gateway
    headers = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic eDp5",
        "X-Forwarded-For": "10.0.0.1",
        "X-Custom": "kept",
        "User-Agent": "caller/1.0",
    }
    async with httpx.AsyncClient(base_url=base) as client:
        resp = await client.put("/v1/tiny/a/b%20c?x=1&y=%20", content=b"abc", headers=headers)
    assert resp.status_code == 200
    seen = resp.json()
    assert seen["method"] == "PUT"
    assert seen["path"] == "/tiny/a/b%20c"
    assert seen["query"] == "x=1&y=%20"
    assert seen["size"] == 3
    got = seen["headers"]
    assert got["x-custom"] == "kept"
    assert got["user-agent"] == "caller/1.0"
    assert got["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == base.removeprefix("http://")
    assert len(got["x-request-id"]) == 16
    for gone in ("x-hop", "keep-alive", "proxy-authorization"):
        assert gone not in got
    assert resp.headers["x-upstream"] == "tiny"
    assert resp.headers["x-request-id"] == got["x-request-id"]
    assert len(resp.headers.get_list("date")) == 1


async def test_longest_prefix_wins_at_segment_boundaries(tiny: tuple[Tiny, str]) -> None:
    _, url = tiny
    routes = {"/v1": url + "/outer", "/v1/tiny": url + "/inner"}
    async with running_gateway(gateway_config(routes)) as base, h2(base) as client:
        inner = (await client.get("/v1/tiny/x")).json()["path"]
        exact = (await client.get("/v1/tiny")).json()["path"]
        outer = (await client.get("/v1/tinyx")).json()["path"]
    assert inner == "/inner/tiny/x"
    assert exact == "/inner/tiny"
    assert outer == "/outer/tinyx"


async def test_dot_segments_are_refused(tiny_gateway: tuple[Tiny, str]) -> None:
    _, base = tiny_gateway
    async with h2(base) as client:
        resp = await client.get("/v1/tiny/%2e%2e/secret")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "bad_request"


async def test_upstream_down_is_a_502_naming_the_route() -> None:
    config = gateway_config({"/v1/chat": f"http://127.0.0.1:{free_port()}"})
    async with running_gateway(config) as base, h2(base) as client:
        resp = await client.post("/v1/chat", json=GOOD, headers={"X-Request-ID": "down-1"})
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert "/v1/chat" in error["message"]
    assert resp.headers["x-request-id"] == "down-1"


async def test_slow_upstream_is_a_504(tiny: tuple[Tiny, str]) -> None:
    _, url = tiny
    config = gateway_config({"/v1/tiny": url}, **{"gateway.timeout_secs": 0.3})
    async with running_gateway(config) as base, h2(base) as client:
        resp = await client.get("/v1/tiny/slow")
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAKEHOUSE_CONFIG", None)
    env.pop("CHATD_OVERRIDES", None)
    return env


def gateway_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean_env(),
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[gateway]\nroutes = {"/v1/chat" = "127.0.0.1:3220"}\n', "`gateway.routes./v1/chat`"),
        ("[chatd]\n", "no `[gateway]` table"),
        ("[gateway]\nroutes = {}\n", "`gateway.routes` is empty"),
        ("[gateway]\nroute = {}\n", "unknown key `gateway.route`"),
    ],
)
def test_bad_gateway_config_stops_startup_with_one_line(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    line = config_error(gateway_process("--config", str(path)))
    assert line.startswith("chatd gateway: config error:")
    assert needle in line


async def test_gateway_process_proxies_to_a_running_chatd(
    tmp_path: Path, chatd: tuple[str, StubUpstream]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nroutes = {{"/v1/chat" = "{chatd[0]}"}}\n')
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the loop, not in it
        [*GATEWAY, "--config", str(path), "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with h2(f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            resp = await client.post("/v1/chat", json=GOOD, headers={"X-Request-ID": "proc-1"})
        assert resp.http_version == "HTTP/2"
        assert resp.status_code == 200, resp.text
        assert resp.json()["provider"] == "ollama"
        assert chatd[1].received[-1].headers["x-request-id"] == "proc-1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def test_the_gateway_writes_one_access_line_per_request(
    tiny: tuple[Tiny, str], capfd: pytest.CaptureFixture[str]
) -> None:
    import json
    import logging

    _, url = tiny
    access = logging.getLogger("chatd.access")
    access.setLevel(logging.INFO)
    try:
        async with (
            running_gateway(gateway_config({"/v1/tiny": url})) as base,
            h2(base) as client,
        ):
            ok = await client.get("/v1/tiny/x", headers={"X-Request-ID": "gw-1"})
            missing = await client.get("/v1/elsewhere", headers={"X-Request-ID": "gw-2"})
    finally:
        access.setLevel(logging.NOTSET)
    assert (ok.status_code, missing.status_code) == (200, 404)
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if '"chatd.gateway.access"' in line]
    by_id = {line["request_id"]: line for line in lines}
    assert {"gw-1", "gw-2"} <= set(by_id), err
    assert (by_id["gw-1"]["status"], by_id["gw-1"]["route"], by_id["gw-1"]["path"]) == (
        200,
        "/v1/tiny",
        "/v1/tiny/x",
    )
    assert by_id["gw-2"]["status"] == 404 and "route" not in by_id["gw-2"]
    assert by_id["gw-1"]["duration_ms"] > 0 and by_id["gw-1"]["method"] == "GET"


def test_aiohttp_connectors_connect_as_opening_bound_wraps_it() -> None:
    # OpeningBound overrides BaseConnector.connect ("get from pool or create
    # new connection"); the counting test below patches _create_connection.
    import inspect

    import aiohttp

    for method in (aiohttp.TCPConnector.connect, aiohttp.TCPConnector._create_connection):
        assert list(inspect.signature(method).parameters) == ["self", "req", "traces", "timeout"]


async def test_the_gateway_opens_a_few_upstream_connections_at_a_time(
    tiny: tuple[Tiny, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    from lakehouse.gateway.app import OPENING

    original = aiohttp.TCPConnector._create_connection
    opening = peak = opened = 0

    async def counted(self: Any, req: Any, traces: Any, timeout: Any) -> Any:
        nonlocal opening, peak, opened
        opening += 1
        opened += 1
        peak = max(peak, opening)
        try:
            await asyncio.sleep(0.05)  # a connect that takes a while
            return await original(self, req, traces, timeout)
        finally:
            opening -= 1

    monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", counted)
    _, url = tiny
    async with running_gateway(gateway_config({"/v1/tiny": url})) as base, h2(base) as client:
        answers = await asyncio.gather(*(client.get("/v1/tiny/slow") for _ in range(3 * OPENING)))
    assert [r.status_code for r in answers] == [200] * (3 * OPENING)
    # Every slow request held its own connection, opened OPENING at a time.
    assert opened == 3 * OPENING
    assert peak == OPENING
