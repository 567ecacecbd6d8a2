"""What every flavour shares: recording, connection counting, down, routing."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

from lakehouse.stubs import Fault, Received, StubUpstream
from tests.stubs.conftest import MakeStub

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "hi"}]


async def settle(stub: StubUpstream, want: int) -> int:
    for _ in range(100):
        if stub.open_connections == want:
            break
        await asyncio.sleep(0.01)
    return stub.open_connections


async def test_received_records_everything_in_order(make_stub: MakeStub) -> None:
    stub = await make_stub("openrouter", key="k")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            stub.base_url + "/chat/completions?x=1",
            json={"model": "openai/gpt-4o-mini", "messages": HI},
            headers={"Authorization": "Bearer k", "X-Title": "chatd"},
        ):
            pass
        async with http.get(stub.base_url + "/nowhere"):
            pass
        async with http.post(stub.base_url + "/chat/completions", data=b"not json"):
            pass
    first, second, third = stub.received
    assert isinstance(first, Received)
    assert (first.method, first.path, first.query) == ("POST", "/api/v1/chat/completions", "x=1")
    assert first.headers["authorization"] == "Bearer k" and first.headers["x-title"] == "chatd"
    assert all(name == name.lower() for name in first.headers)
    assert first.json == {"model": "openai/gpt-4o-mini", "messages": HI}
    assert json.loads(first.body) == first.json
    assert (second.method, second.path, second.body, second.json) == (
        "GET",
        "/api/v1/nowhere",
        b"",
        None,
    )
    assert third.body == b"not json" and third.json is None


async def test_open_connections_follow_the_client(make_stub: MakeStub) -> None:
    stub = await make_stub("ollama")
    assert stub.open_connections == 0
    body = {"model": "qwen3", "messages": HI, "stream": False}
    http = aiohttp.ClientSession()
    try:
        await asyncio.gather(*[http.post(stub.base_url + "/api/chat", json=body) for _ in range(3)])
        # Responses not yet released: three sockets in use.
        assert await settle(stub, 3) == 3
    finally:
        await http.close()
    assert await settle(stub, 0) == 0
    # Keep-alive: a released connection stays open until the client closes it.
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(stub.base_url + "/api/chat", json=body) as resp:
                await resp.read()
        assert stub.open_connections == 1
    assert await settle(stub, 0) == 0


@pytest.mark.parametrize(
    ("flavour", "path", "body"),
    [
        ("ollama", "/api/version", {"error": "service unavailable: the upstream is down"}),
        ("ollama_cloud", "/", {"error": "service unavailable: the upstream is down"}),
        (
            "openrouter",
            "/models",
            {
                "error": {
                    "code": 503,
                    "message": "service unavailable: the upstream is down",
                    "metadata": {},
                }
            },
        ),
        (
            "opencode",
            "/models",
            {
                "type": "error",
                "error": {"type": "error", "message": "service unavailable: the upstream is down"},
            },
        ),
        (
            "kimi",
            "/models",
            {
                "error": {
                    "message": "service unavailable: the upstream is down",
                    "type": "engine_overloaded_error",
                }
            },
        ),
    ],
)
async def test_down_answers_503_everywhere(
    make_stub: MakeStub, flavour: str, path: str, body: Any
) -> None:
    stub = await make_stub(flavour)
    assert stub.down is False
    stub.set_down(True)
    assert stub.down is True
    chat = "/api/chat" if flavour.startswith("ollama") else "/chat/completions"
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as http:
        for method, url in (("GET", stub.base_url + path), ("POST", stub.base_url + chat)):
            async with http.request(method, url, json={}) as resp:
                assert (resp.status, await resp.json()) == (503, body)
        stub.set_down(False)
        async with http.get(stub.base_url + path) as resp:
            assert resp.status == 200


async def test_unknown_paths_and_methods(make_stub: MakeStub) -> None:
    ollama = await make_stub("ollama")
    kimi = await make_stub("kimi")
    async with aiohttp.ClientSession() as http:
        async with http.get(ollama.base_url + "/api/nope") as resp:
            assert (resp.status, await resp.text()) == (404, "404 page not found")
        async with http.get(ollama.base_url + "/api/generate") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
        async with http.post(kimi.base_url + "/models") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "GET"
            assert (await resp.json())["error"]["message"] == "method not allowed"
        async with http.get(kimi.origin + "/v1/chat/completions") as resp:
            assert resp.status == 404 and "error" in await resp.json()


async def test_ollama_key_guards_chat_not_health(make_stub: MakeStub) -> None:
    stub = await make_stub("ollama", key="k")
    async with aiohttp.ClientSession() as http:
        async with http.get(stub.base_url + "/api/version") as resp:
            assert resp.status == 200
        async with http.post(stub.base_url + "/api/chat", json={"model": "qwen3"}) as resp:
            assert resp.status == 401
        # A fault waits for a request that gets past the key check.
        stub.fail_next(Fault(kind="status", status=500))
        async with http.post(stub.base_url + "/api/chat", json={"model": "qwen3"}) as resp:
            assert resp.status == 401
        async with http.post(
            stub.base_url + "/api/chat",
            json={"model": "qwen3"},
            headers={"Authorization": "Bearer k"},
        ) as resp:
            assert resp.status == 500


async def test_context_manager_and_restart_guard() -> None:
    async with StubUpstream("opencode") as stub:
        assert stub.base_url.endswith("/zen/v1")
        with pytest.raises(RuntimeError):
            await stub.start()
        async with aiohttp.ClientSession() as http, http.get(stub.base_url + "/models") as resp:
            assert resp.status == 200
    assert stub.open_connections == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(stub.base_url + "/models"):
            pass


async def test_fixed_port_and_port_in_use(make_stub: MakeStub) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stub = StubUpstream("kimi")
    assert await stub.start(port=port) == f"http://127.0.0.1:{port}/coding/v1"
    try:
        with pytest.raises(OSError):
            await StubUpstream("kimi").start(port=port)
    finally:
        await stub.stop()


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (("nope",), {}),
        (("ollama",), {"require_user_agent": "KimiCLI/"}),
        (("ollama",), {"models": []}),
        (("ollama",), {"models": ["a"], "thinking": ["b"]}),
    ],
)
def test_construction_errors(args: Any, options: Any) -> None:
    with pytest.raises(ValueError):
        StubUpstream(*args, **options)


async def test_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await StubUpstream("ollama").start(host="0.0.0.0")


async def test_chats_leaves_out_probes(make_stub: MakeStub) -> None:
    stub = await make_stub("ollama")
    async with aiohttp.ClientSession() as http:
        for method, path in (
            ("GET", "/api/version"),
            ("POST", "/api/chat"),
            ("GET", "/api/tags"),
            ("POST", "/api/generate"),
        ):
            async with http.request(method, stub.base_url + path, json={}):
                pass
    assert len(stub.received) == 4
    assert [r.path for r in stub.chats] == ["/api/chat", "/api/generate"]


async def test_stop_does_not_wait_for_a_delayed_reply(make_stub: MakeStub) -> None:
    stub = await make_stub("ollama")
    stub.fail_always(Fault(kind="delay", seconds=30))
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.post(stub.base_url + "/api/chat", json={}))
        assert await settle(stub, 1) == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stub.stop()
        assert loop.time() - started < 2 and stub.open_connections == 0
        with pytest.raises(aiohttp.ClientError):
            await pending
