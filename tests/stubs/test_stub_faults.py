"""Every scripted fault, as a client sees it on the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from lakehouse.stubs import Fault, StubUpstream
from tests.stubs.conftest import MakeStub, posted

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "hi there"}]
CHAT = {
    "ollama": "/api/chat",
    "ollama_cloud": "/api/chat",
    "openrouter": "/chat/completions",
    "opencode": "/chat/completions",
    "kimi": "/chat/completions",
}
MODEL = {
    "ollama": "qwen3",
    "ollama_cloud": "glm-5.2",
    "openrouter": "openai/gpt-4o-mini",
    "opencode": "big-pickle",
    "kimi": "kimi-for-coding",
}
FLAVOURS = list(CHAT)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # The hosted flavours refuse requests without a Bearer key, any key when unset.
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer any"}) as session:
        yield session


def request(stub: StubUpstream, stream: bool = False) -> tuple[str, dict[str, Any]]:
    return (
        stub.base_url + CHAT[stub.flavour],
        {"model": MODEL[stub.flavour], "messages": HI, "stream": stream},
    )


async def call(
    http: aiohttp.ClientSession, stub: StubUpstream, stream: bool = False, **kw: Any
) -> tuple[int, Any, bytes]:
    url, body = request(stub, stream)
    return await posted(http, url, body, **kw)


async def until_closed(stub: StubUpstream) -> int:
    for _ in range(100):
        if stub.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    return stub.open_connections


@pytest.mark.parametrize(
    ("flavour", "body"),
    [
        ("ollama", {"error": "overloaded"}),
        ("ollama_cloud", {"error": "overloaded"}),
        ("openrouter", {"error": {"code": 503, "message": "overloaded", "metadata": {}}}),
        ("opencode", {"type": "error", "error": {"type": "error", "message": "overloaded"}}),
        ("kimi", {"error": {"message": "overloaded", "type": "engine_overloaded_error"}}),
    ],
)
async def test_status_in_flavour_shape(
    make_stub: MakeStub, http: Any, flavour: str, body: Any
) -> None:
    stub = await make_stub(flavour)
    stub.fail_next(Fault(kind="status", status=503, message="overloaded", retry_after="7"))
    status, headers, raw = await call(http, stub)
    assert (status, json.loads(raw)) == (503, body)
    assert headers["Retry-After"] == "7" and headers["Content-Type"].startswith("application/json")
    assert (await call(http, stub))[0] == 200  # one fault, one request


async def test_status_fault_fields(make_stub: MakeStub, http: Any) -> None:
    zen = await make_stub("opencode")
    zen.fail_next(Fault(kind="status", status=429, retry_after_ms="1500"))
    status, headers, raw = await call(http, zen)
    assert status == 429 and headers["retry-after-ms"] == "1500"
    assert json.loads(raw)["error"] == {"type": "RateLimitError", "message": "Too Many Requests"}
    router = await make_stub("openrouter")
    router.fail_next(Fault(kind="status", status=402, metadata={"limit_source": "x"}, message="m"))
    assert json.loads((await call(http, router))[2])["error"]["metadata"] == {"limit_source": "x"}


@pytest.mark.parametrize("status", [499, 529])
async def test_nonstandard_status(make_stub: MakeStub, http: Any, status: int) -> None:
    stub = await make_stub("openrouter")
    stub.fail_next(Fault(kind="status", status=status))
    got, _, raw = await call(http, stub)
    assert (got, json.loads(raw)["error"]["code"]) == (status, status)


@pytest.mark.parametrize(
    ("flavour", "status", "error"),
    [
        (
            "ollama_cloud",
            429,
            {
                "error": "you (alice) have reached your session usage limit, "
                "upgrade for higher limits: https://ollama.com/upgrade"
            },
        ),
        (
            "openrouter",
            402,
            {
                "error": {
                    "code": 402,
                    "message": "Insufficient credits. Add more "
                    "using https://openrouter.ai/settings/credits",
                    "metadata": {"limit_source": "openrouter_credits"},
                }
            },
        ),
        (
            "opencode",
            401,
            {
                "type": "error",
                "error": {
                    "type": "CreditsError",
                    "message": "Insufficient balance. Add credits at https://opencode.ai/zen",
                },
            },
        ),
        ("kimi", 429, None),
    ],
)
async def test_quota(make_stub: MakeStub, http: Any, flavour: str, status: int, error: Any) -> None:
    stub = await make_stub(flavour)
    stub.fail_next(Fault(kind="quota"))
    got, headers, raw = await call(http, stub)
    assert got == status and "Retry-After" not in headers
    if error is None:
        assert (
            "You've reached your usage limit for this period" in json.loads(raw)["error"]["message"]
        )
    else:
        assert json.loads(raw) == error


@pytest.mark.parametrize(
    ("kind", "ctype"),
    [
        ("html", "text/html; charset=utf-8"),
        ("wrong_content_type", "text/plain; charset=utf-8"),
        ("garbage", "application/json"),
    ],
)
async def test_bad_bodies_with_200(make_stub: MakeStub, http: Any, kind: str, ctype: str) -> None:
    stub = await make_stub("openrouter")
    stub.fail_next(Fault(kind=kind))  # type: ignore[arg-type]
    status, headers, raw = await call(http, stub)
    assert status == 200 and headers["Content-Type"] == ctype
    with pytest.raises(ValueError):
        json.loads(raw)


async def test_empty_choices(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("kimi")
    stub.fail_next(Fault(kind="empty_choices"), times=2)
    assert json.loads((await call(http, stub))[2])["choices"] == []
    raw = (await call(http, stub, stream=True))[2].decode()
    chunks = [json.loads(b[6:]) for b in raw.split("\n\n")[:-1] if b != "data: [DONE]"]
    assert [c["choices"] for c in chunks] == [[]] and raw.endswith("data: [DONE]\n\n")
    with pytest.raises(ValueError, match="OpenAI-dialect"):
        (await make_stub("ollama")).fail_next(Fault(kind="empty_choices"))


async def test_redirect_is_visible(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("ollama")
    stub.fail_next(Fault(kind="redirect"))
    url, body = request(stub)
    async with http.post(url, json=body, allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == url
    # A client that follows turns the POST into a body-less GET, which fails loudly.
    stub.fail_next(Fault(kind="redirect"))
    async with http.post(url, json=body) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert await resp.json() == {"error": "method not allowed"}
    assert [(r.method, r.path) for r in stub.received[-2:]] == [
        ("POST", "/api/chat"),
        ("GET", "/api/chat"),
    ]
    stub.fail_next(Fault(kind="redirect", status=308, location="http://127.0.0.1:9/x"))
    async with http.post(url, json=body, allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "http://127.0.0.1:9/x"


@pytest.mark.parametrize("stream", [False, True])
async def test_reset(make_stub: MakeStub, http: Any, stream: bool) -> None:
    stub = await make_stub("opencode")
    stub.fail_next(Fault(kind="reset"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, stub, stream)
    assert await until_closed(stub) == 0
    assert (await call(http, stub, stream))[0] == 200


async def test_truncate_whole_body(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("openrouter")
    stub.fail_next(Fault(kind="truncate"))
    url, body = request(stub)
    async with http.post(url, json=body) as resp:
        assert resp.status == 200 and resp.content_length is not None
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert await until_closed(stub) == 0


@pytest.mark.parametrize("flavour", ["ollama", "openrouter"])
async def test_truncate_stream(make_stub: MakeStub, http: Any, flavour: str) -> None:
    stub = await make_stub(flavour)
    stub.fail_next(Fault(kind="truncate", after=3))
    url, body = request(stub, stream=True)
    got: list[bytes] = []
    async with http.post(url, json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                got.append(chunk)
    text = b"".join(got).decode()
    assert text and 'done":true' not in text and "[DONE]" not in text
    assert text.count("\n\n" if flavour == "openrouter" else "\n") == 3


@pytest.mark.parametrize("flavour", ["openrouter", "opencode", "kimi"])
async def test_midstream_error_event(make_stub: MakeStub, http: Any, flavour: str) -> None:
    stub = await make_stub(flavour)
    stub.fail_next(Fault(kind="midstream_error", after=4))
    status, _, raw = await call(http, stub, stream=True)
    blocks = raw.decode().split("\n\n")[:-1]
    assert status == 200 and len(blocks) == 5 and "data: [DONE]" not in blocks
    last = json.loads(blocks[-1].removeprefix("data: "))
    assert "error" in last
    if flavour == "openrouter":
        assert last["choices"][0]["finish_reason"] == "error"
        assert last["error"]["code"] == "server_error"


async def test_midstream_error_whole(make_stub: MakeStub, http: Any) -> None:
    router = await make_stub("openrouter")
    router.fail_next(Fault(kind="midstream_error"))
    status, _, raw = await call(http, router)
    choice = json.loads(raw)["choices"][0]
    assert status == 200 and choice["finish_reason"] == "error" and choice["error"]["message"]
    kimi = await make_stub("kimi")
    kimi.fail_next(Fault(kind="midstream_error"))
    status, _, raw = await call(http, kimi)
    assert status == 500 and json.loads(raw)["error"]["type"] == "server_error"


async def test_delay_is_cancelled_when_the_client_leaves(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("ollama")
    stub.fail_next(Fault(kind="delay", seconds=30))
    with pytest.raises(asyncio.TimeoutError):
        await call(http, stub, timeout=aiohttp.ClientTimeout(total=0.2))
    assert await until_closed(stub) == 0
    stub.fail_next(Fault(kind="delay", seconds=0.05))
    assert (await call(http, stub))[0] == 200


async def test_stall_pauses_then_finishes(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("ollama")
    stub.fail_next(Fault(kind="stall", seconds=0.3, after=2))
    url, body = request(stub, stream=True)
    async with http.post(url, json=body) as resp:
        first = [await resp.content.readline(), await resp.content.readline()]
        assert all(line.endswith(b"\n") for line in first)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(resp.content.readline(), 0.1)
        rest = await resp.read()
    assert json.loads(rest.splitlines()[-1])["done"] is True


async def test_queue_always_and_clear(make_stub: MakeStub, http: Any) -> None:
    stub = await make_stub("kimi")
    stub.fail_next(Fault(kind="status", status=500), times=2)
    stub.fail_always(Fault(kind="status", status=502))
    # Health and listing routes never take faults.
    async with http.get(stub.base_url + "/models") as resp:
        assert resp.status == 200
    assert [(await call(http, stub))[0] for _ in range(4)] == [500, 500, 502, 502]
    stub.clear_faults()
    assert (await call(http, stub))[0] == 200


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "bogus"},
        {"kind": "status"},
        {"kind": "status", "status": 200},
        {"kind": "redirect", "status": 500},
        {"kind": "delay"},
        {"kind": "truncate", "after": -1},
    ],
)
def test_fault_validation(options: Any) -> None:
    with pytest.raises(ValueError):
        Fault(**options)


async def test_fail_next_checks_arguments(make_stub: MakeStub) -> None:
    stub = await make_stub("ollama")
    with pytest.raises(ValueError):
        stub.fail_next(Fault(kind="reset"), times=0)
    with pytest.raises(TypeError):
        stub.fail_next("reset")  # type: ignore[arg-type]
