"""The native API through a real server on 127.0.0.1, against the Ollama stub.

Long (~380 lines): every route and error of web.py through one fixture;
split it along with web.py itself."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from lakehouse.stubs import Fault, StubUpstream
from tests.stub_world import one_stub
from tests.support import eventually, make_config, provider_table, running_chatd

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

HELLO = [{"role": "user", "content": "hello there"}]
GOOD = {"model": "qwen3.5:latest", "messages": HELLO}


@pytest.fixture
async def chatd() -> AsyncIterator[tuple[str, StubUpstream]]:
    async with one_stub("ollama", {"chatd.max_request_bytes": 4 * 1024 * 1024}) as (base, stub):
        yield base, stub


async def post(
    base: str, body: Any, *, raw: bytes | None = None, path: str = "/chat"
) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + path, data=data, headers={"Content-Type": "application/json"}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def assert_still_serving(base: str) -> None:
    status, body = await post(base, GOOD)
    assert status == 200, body
    assert body["content"]


async def test_chat_answers_in_one_shape(chatd: tuple[str, StubUpstream]) -> None:
    base, stub = chatd
    for path in ("/chat", "/v1/chat"):
        status, body = await post(base, GOOD, path=path)
        assert status == 200
        assert set(body) == {
            "model",
            "provider",
            "content",
            "done_reason",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
        }
        assert body["provider"] == "ollama"
        assert body["model"] == "qwen3.5:latest"
        assert "hello there" in body["content"]
        assert body["done_reason"] == "stop"
        assert body["prompt_tokens"] > 0 and body["completion_tokens"] > 0
        assert isinstance(body["latency_ms"], int) and body["latency_ms"] >= 0
    sent = stub.received[-1]
    assert sent.path == "/api/chat"
    assert sent.json["stream"] is False
    assert sent.json["think"] is False


async def test_providers_health_ready(chatd: tuple[str, StubUpstream]) -> None:
    base, _ = chatd
    async with aiohttp.ClientSession() as session:
        for path in ("/chat/providers", "/v1/chat/providers"):
            async with session.get(base + path) as resp:
                assert resp.status == 200
                assert await resp.json() == {"providers": {"ollama": True}}
        async with session.get(base + "/health") as resp:
            assert resp.status == 200
        async with session.get(base + "/ready") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ready"})
        async with session.get(base + "/chat") as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
        async with session.get(base + "/nowhere") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"


BAD = [
    ("malformed", b'{"model": "x", "messages": [', None),
    ("not an object", b"[1, 2, 3]", "$"),
    ("a string", b'"hello"', "$"),
    ("empty body", b"", None),
    ("model wrong type", b'{"model": 3, "messages": []}', "$.model"),
    ("messages wrong type", b'{"model": "x", "messages": "hi"}', "$.messages"),
    ("missing model", b'{"messages": [{"role": "user", "content": "x"}]}', "$"),
    ("missing messages", b'{"model": "x"}', "$"),
    ("empty model", b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', "$.model"),
    ("empty messages", b'{"model": "x", "messages": []}', "$.messages"),
    (
        "unknown role",
        b'{"model": "x", "messages": [{"role": "wizard", "content": "x"}]}',
        "$.messages[0].role",
    ),
    (
        "empty content",
        b'{"model": "x", "messages": [{"role": "user", "content": ""}]}',
        "$.messages[0].content",
    ),
    (
        "content wrong type",
        b'{"model": "x", "messages": [{"role": "user", "content": 7}]}',
        "$.messages[0].content",
    ),
    (
        "unknown field",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "tempo": 1}',
        "$",
    ),
    (
        "max_tokens string",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
        "$.max_tokens",
    ),
    (
        "max_tokens zero",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        "$.max_tokens",
    ),
    (
        "temperature out of range",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
        "$.temperature",
    ),
    (
        "bad think",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "think": "lots"}',
        "$.think",
    ),
    (
        "bad format",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "format": "yaml"}',
        "$.format",
    ),
    ("invalid utf-8", b'{"model": "\xff\xfe", "messages": []}', None),
    (
        "deep nesting",
        b'{"model": "x", "messages": [{"role": "user", "content": "x"}], "format": '
        + b'{"a":' * 50_000
        + b"1"
        + b"}" * 50_000
        + b"}",
        None,
    ),
    ("deep arrays", b"[" * 100_000 + b"]" * 100_000, "$"),
]


@pytest.mark.parametrize(("name", "raw", "where"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_a_clear_400(
    chatd: tuple[str, StubUpstream], name: str, raw: bytes, where: str | None
) -> None:
    base, stub = chatd
    status, body = await post(base, None, raw=raw)
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["message"]
    if where is not None:
        assert body["error"]["path"] == where
    assert stub.received == []
    await assert_still_serving(base)


async def test_body_over_the_cap_is_413(chatd: tuple[str, StubUpstream]) -> None:
    base, stub = chatd
    big = json.dumps({"model": "x", "messages": [{"role": "user", "content": "a" * 5_000_000}]})
    status, body = await post(base, None, raw=big.encode())
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert stub.received == []
    await assert_still_serving(base)


async def test_a_client_that_writes_its_whole_big_body_reads_the_413(
    chatd: tuple[str, StubUpstream],
) -> None:
    """httpx (like the openai SDK) writes the whole body before it reads: a
    413 sent from the Content-Length alone, with 12 MB still unread, used to
    reach it as a reset (broken pipe) instead of the answer."""
    base, stub = chatd
    big = json.dumps({"model": "x", "messages": [{"role": "user", "content": "a" * 12_000_000}]})
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        resp = await client.post("/chat", content=big.encode())
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "payload_too_large"
        # The same on the OpenAI surface.
        resp = await client.post("/v1/chat/completions", content=big.encode())
        assert resp.status_code == 413
    assert stub.received == []
    await assert_still_serving(base)


async def _raw_connection(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_huge_body_sent_slowly_is_refused_before_it_is_all_read(
    chatd: tuple[str, StubUpstream],
) -> None:
    base, _ = chatd
    reader, writer = await _raw_connection(base)
    writer.write(
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 65536
    sent = 0
    answer = b""
    try:
        while sent < 50 * 1024 * 1024:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            if sent % (1024 * 1024) == 0:
                await asyncio.sleep(0.01)  # slowly
            try:
                answer = await asyncio.wait_for(reader.read(4096), 0.001)
            except TimeoutError:
                continue
            break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
    # Refused (413) or cut off well before 50 MB arrived; never buffered whole.
    assert sent < 8 * 1024 * 1024
    if answer:
        assert answer.startswith(b"HTTP/1.1 413")
    await assert_still_serving(base)


async def test_client_that_disconnects_mid_request(chatd: tuple[str, StubUpstream]) -> None:
    base, stub = chatd
    for _ in range(20):
        _, writer = await _raw_connection(base)
        writer.write(b'POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model":')
        await writer.drain()
        writer.close()
    await asyncio.sleep(0.05)
    assert stub.received == []
    await assert_still_serving(base)


async def test_http2_prior_knowledge_on_the_same_port(chatd: tuple[str, StubUpstream]) -> None:
    base, _ = chatd
    async with httpx.AsyncClient(http1=False, http2=True, base_url=base) as client:
        answers = await asyncio.gather(*(client.post("/chat", json=GOOD) for _ in range(10)))
        for resp in answers:
            assert resp.http_version == "HTTP/2"
            assert resp.status_code == 200
            assert resp.json()["provider"] == "ollama"
        resp = await client.post("/chat", json={"messages": HELLO})
        assert resp.http_version == "HTTP/2"
        assert (resp.status_code, resp.json()["error"]["code"]) == (400, "bad_request")
        resp = await client.get("/chat/providers")
        assert resp.json() == {"providers": {"ollama": True}}
    async with httpx.AsyncClient(base_url=base) as client:
        resp = await client.post("/chat", json=GOOD)
        assert (resp.http_version, resp.status_code) == ("HTTP/1.1", 200)


async def test_routing_errors_through_the_server(chatd: tuple[str, StubUpstream]) -> None:
    base, stub = chatd
    status, body = await post(base, {"model": "kimi-k2.6:cloud", "messages": HELLO})
    assert (status, body["error"]["code"]) == (404, "provider_not_found")
    status, body = await post(base, {"model": "unknown/qwen3.5:latest", "messages": HELLO})
    assert status == 502
    assert "unknown/qwen3.5:latest" in body["error"]["message"]
    assert stub.received[-1].json["model"] == "unknown/qwen3.5:latest"
    status, body = await post(base, {"model": "ollama/qwen3.5:latest", "messages": HELLO})
    assert status == 200
    assert stub.received[-1].json["model"] == "qwen3.5:latest"


async def test_upstream_down_is_502_naming_the_provider() -> None:
    stub = StubUpstream("ollama")
    url = await stub.start()
    await stub.stop()  # nothing listens there now
    config = make_config(
        overrides={**provider_table("ollama", url), "chatd.probe_interval_secs": 0}
    )
    async with running_chatd(config) as base:
        status, body = await post(base, GOOD)
    assert status == 502
    assert body["error"]["code"] == "upstream_unreachable"
    assert body["error"]["provider"] == "ollama"


async def test_unexpected_errors_are_500_without_internals() -> None:
    # A provider with a bug: an exception outside the error family.
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "broken.py").write_text(
            "from lakehouse.plugin_api import Plugin\n"
            "class B:\n"
            "    def __init__(self, ctx):\n        self.name = ctx.name\n"
            "    async def start(self): pass\n"
            "    async def close(self): pass\n"
            "    async def probe(self): return True\n"
            "    async def chat(self, request, model):\n"
            "        raise KeyError('secret internal detail')\n"
            "    async def stream(self, request, model):\n"
            "        yield await self.chat(request, model)\n"
            "PLUGIN = Plugin(build=B, default_base_url='http://b.invalid')\n"
        )
        config = make_config(
            f'[chatd]\nplugin_dirs = ["{folder}"]\ndefault_provider = "broken"\n'
            "probe_interval_secs = 0\n[chatd.providers.broken]\n"
        )
        async with running_chatd(config) as base:
            status, body = await post(base, GOOD)
            assert status == 500
            assert body == {"error": {"code": "internal", "message": "internal error"}}


async def requests_in_flight(client: httpx.AsyncClient) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("chatd_in_flight_requests "):
            return float(line.split()[1])
    raise AssertionError("no chatd_in_flight_requests")


async def test_h2_connection_dropped_mid_request_leaves_no_request_behind() -> None:
    import h2.config
    import h2.connection

    async with (
        one_stub("ollama", {"chatd.server.send_stall_secs": 0.3}) as (base, stub),
        httpx.AsyncClient(http1=False, http2=True, base_url=base) as client,
    ):
        stub.fail_always(Fault(kind="delay", seconds=2))
        _, writer = await _raw_connection(base)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        body = json.dumps(GOOD).encode()
        for _ in range(4):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(
                sid,
                [
                    (":method", "POST"),
                    (":path", "/chat"),
                    (":scheme", "http"),
                    (":authority", "x"),
                    ("content-length", str(len(body))),
                ],
            )
            conn.send_data(sid, body, end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
        await eventually(lambda: len(stub.chats) == 4, what="all four upstream")
        assert await requests_in_flight(client) == 4
        writer.transport.abort()  # gone while all four are waiting upstream
        # Each of the four ends: the callers' leaving cancels the
        # requests, with or without the send bound.

        async def none_in_flight() -> bool:
            return await requests_in_flight(client) == 0

        await eventually(none_in_flight, what="no request in flight")
        stub.clear_faults()
        assert (await client.post("/chat", json=GOOD)).status_code == 200


async def test_405_answers_say_which_methods_are_allowed(chatd: tuple[str, StubUpstream]) -> None:
    base, _ = chatd
    async with httpx.AsyncClient(base_url=base) as client:
        for method, path, allow in [
            ("GET", "/chat", "POST"),
            ("PUT", "/v1/chat", "POST"),
            ("GET", "/v1/chat/completions", "POST"),
            ("POST", "/chat/providers", "GET, HEAD"),
            ("GET", "/admin/reload", "POST"),
        ]:
            resp = await client.request(method, path)
            assert resp.status_code == 405, (method, path)
            assert resp.headers["allow"] == allow, (method, path)


async def test_a_wrong_method_on_a_protected_route_is_answered_after_auth() -> None:
    async with (
        one_stub("ollama", environ={"CHATD_TOKENS": "caller-token-1"}) as (base, _),
        httpx.AsyncClient(base_url=base) as client,
    ):
        for path in ("/chat", "/v1/chat/completions", "/chat/completions", "/admin/reload"):
            method = "GET" if path == "/admin/reload" else "DELETE"
            resp = await client.request(method, path)
            assert resp.status_code == 401, path
            assert "allow" not in resp.headers
            authorized = await client.request(
                method, path, headers={"Authorization": "Bearer caller-token-1"}
            )
            assert authorized.status_code == 405, path


async def lifespan(app: Any) -> tuple[asyncio.Task[None], Any]:
    """Start an ASGI app's lifespan by hand; returns its task and a stopper."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return task, stop


@pytest.mark.parametrize(
    ("client", "tokens", "status"),
    [
        ("192.0.2.9", None, 403),
        ("127.0.0.1", None, 200),
        ("::1", None, 200),
        ("192.0.2.9", "caller-token-1", 200),
    ],
)
async def test_admin_reload_needs_auth_or_a_loopback_caller(
    client: str, tokens: str | None, status: int
) -> None:
    from lakehouse.callers.web import create_app

    config = make_config(overrides={"chatd.probe_interval_secs": 0})
    environ = {"CHATD_TOKENS": tokens} if tokens else {}
    app = create_app(config, environ=environ, source=lambda: config)
    _, stop = await lifespan(app)
    try:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://chatd") as http:
            headers = {"Authorization": f"Bearer {tokens}"} if tokens else {}
            resp = await http.post("/admin/reload", headers=headers)
    finally:
        await stop()
    assert resp.status_code == status, resp.text
    if status == 403:
        assert resp.json()["error"]["code"] == "forbidden"
