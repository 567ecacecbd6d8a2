"""Streams through the real server: native NDJSON and OpenAI SSE against
every provider's stub, each failure mode, fallbacks, keep-alives, callers
that hang up, and real clients (httpx, aiohttp, curl over h2c).

Long (~390 lines): each case is short, but both surfaces meet every
provider and failure mode; the fixtures they share keep them in one file."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any, NamedTuple

import aiohttp
import httpx
import pytest

from lakehouse.stubs import Fault
from lakehouse.stubs.replies import reply_text
from tests.h2_client import RawH2, exchange
from tests.stub_world import MODELS, World, stub_world
from tests.support import module_fixtures

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

SAID = "hello there friend"
HELLO = [{"role": "user", "content": SAID}]
KEEPALIVE = b": keep-alive"


OVERRIDES = {
    "chatd.timeout_secs": 0.8,
    "chatd.sse_keepalive_secs": 0.15,
    # Chains on tiers only: the plain model names have none.
    "models.local": "qwen3.5:latest",
    "models.coder": "kimi/kimi-for-coding",
    "chatd.fallbacks": {"local": ["opencode/glm-5.2"], "coder": ["openrouter/openai/gpt-5"]},
}
anyio_backend, world = module_fixtures(lambda: stub_world(OVERRIDES))


@pytest.fixture(autouse=True)
def fresh(world: World) -> None:
    world.reset()


async def ndjson(base: str, model: str, **extra: Any) -> tuple[int, list[Any]]:
    body = {"model": model, "messages": HELLO, "stream": True, **extra}
    async with (
        httpx.AsyncClient(base_url=base, timeout=10) as client,
        client.stream("POST", "/chat", json=body) as resp,
    ):
        if resp.status_code != 200:
            return resp.status_code, [json.loads(await resp.aread())]
        assert resp.headers["content-type"] == "application/x-ndjson"
        return 200, [json.loads(line) async for line in resp.aiter_lines() if line]


async def sse(base: str, model: str, **extra: Any) -> tuple[int, list[bytes]]:
    """Status, and the raw events (comments included) of an SSE answer."""
    body = {"model": model, "messages": HELLO, "stream": True, **extra}
    async with (
        httpx.AsyncClient(base_url=base, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        raw = await resp.aread()
        if resp.status_code != 200:
            return resp.status_code, [raw]
        assert resp.headers["content-type"] == "text/event-stream"
        return 200, [event for event in raw.split(b"\n\n") if event]


async def in_flight(base: str, provider: str) -> float:
    """The provider's upstream calls in flight, from /metrics."""
    async with httpx.AsyncClient(base_url=base) as client:
        text = (await client.get("/metrics")).text
    prefix = f'chatd_provider_calls_in_flight{{provider="{provider}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])


def data(events: list[bytes]) -> list[Any]:
    out = []
    for event in events:
        if event.startswith(b"data: "):
            payload = event.removeprefix(b"data: ")
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


@pytest.mark.parametrize("name", list(MODELS))
async def test_native_stream_through_every_provider(world: World, name: str) -> None:
    status, lines = await ndjson(world.base, MODELS[name], max_tokens=500)
    assert status == 200
    *deltas, final = lines
    assert deltas and all(set(d) <= {"content", "reasoning"} for d in deltas)
    # Every line's content joined is the answer once: the last line has none.
    assert "".join(line.get("content", "") for line in lines) == reply_text(SAID)
    assert "content" not in final and "reasoning" not in final
    assert final["done"] is True and final["provider"] == name
    assert final["done_reason"] == "stop"
    assert final["prompt_tokens"] > 0 and final["completion_tokens"] > 0
    assert final["latency_ms"] >= 0
    if name in ("openrouter", "kimi"):
        assert "".join(d.get("reasoning", "") for d in deltas)
    assert world.stubs[name].chats[-1].json["stream"] is True


async def test_native_stream_read_with_aiohttp_and_tier_in_the_last_line() -> None:
    async with stub_world({"models.fast": "qwen3.5:latest"}) as world:
        body = {"model": "fast", "messages": HELLO, "stream": True}
        lines = []
        async with (
            aiohttp.ClientSession() as session,
            session.post(world.base + "/v1/chat", json=body) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["x-request-id"]
            async for line in resp.content:
                lines.append(json.loads(line))
    assert lines[-1]["tier"] == "fast" and lines[-1]["done"] is True
    assert [set(line) for line in lines[:-1]] == [{"content"}] * (len(lines) - 1)


async def test_without_stream_the_answer_is_unchanged(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.base) as client:
        resp = await client.post("/chat", json={"model": "qwen3.5:latest", "messages": HELLO})
    assert resp.headers["content-type"] == "application/json"
    assert "done" not in resp.json() and resp.json()["content"] == reply_text(SAID)
    assert world.stubs["ollama"].chats[-1].json["stream"] is False


MID_STREAM = [
    ("midstream_error", Fault(kind="midstream_error", after=5), "upstream_error"),
    ("truncate", Fault(kind="truncate", after=5), "upstream_bad_response"),
    ("stall", Fault(kind="stall", seconds=2, after=5), "upstream_timeout"),
]


class MidStream(NamedTuple):
    name: str  # the provider
    kind: str  # as in MID_STREAM
    code: str  # the error code the caller gets


@pytest.fixture(
    params=[(name, *case) for case in MID_STREAM for name in MODELS],
    ids=[f"{case[0]}-{name}" for case in MID_STREAM for name in MODELS],
)
def mid_stream(request: pytest.FixtureRequest, world: World) -> MidStream:
    """A provider whose next stream fails mid-answer as MID_STREAM says
    (the autouse ``fresh`` has run first)."""
    name, kind, fault, code = request.param
    world.stubs[name].fail_next(fault)
    return MidStream(name, kind, code)


async def test_a_failure_mid_stream_ends_the_native_stream_with_an_error_line(
    world: World, mid_stream: MidStream
) -> None:
    status, lines = await ndjson(world.base, MODELS[mid_stream.name])
    assert status == 200
    error = lines[-1]["error"]
    assert lines[-1] == {
        "error": {"code": mid_stream.code, "message": error["message"], "provider": mid_stream.name}
    }
    assert not any(line.get("done") for line in lines)
    assert await in_flight(world.base, mid_stream.name) == 0


async def test_a_failure_mid_stream_ends_the_sse_stream_with_an_error_event(
    world: World, mid_stream: MidStream
) -> None:
    status, events = await sse(world.base, MODELS[mid_stream.name])
    assert status == 200
    payloads = data(events)
    assert payloads[-1]["error"]["code"] == mid_stream.code
    assert set(payloads[-1]["error"]) == {"message", "type", "code", "param"}
    assert "[DONE]" not in payloads
    if mid_stream.kind == "stall":
        # 0.8 s of silence against a 0.15 s keep-alive: comments kept it open.
        assert KEEPALIVE in events


@pytest.mark.parametrize("name", list(MODELS))
async def test_a_reset_before_the_first_byte_is_a_status(world: World, name: str) -> None:
    world.stubs[name].fail_next(Fault(kind="reset"))
    status, lines = await ndjson(world.base, MODELS[name])
    assert (status, lines[0]["error"]["code"]) == (502, "upstream_unreachable")
    world.stubs[name].fail_next(Fault(kind="reset"))
    status, events = await sse(world.base, MODELS[name])
    assert status == 502
    assert json.loads(events[0])["error"]["code"] == "upstream_unreachable"


async def test_streams_fall_back_before_the_first_byte_only(world: World) -> None:
    ollama, opencode = world.stubs["ollama"], world.stubs["opencode"]
    ollama.fail_next(Fault(kind="status", status=500))
    status, lines = await ndjson(world.base, "local")
    assert status == 200
    assert (lines[-1]["provider"], lines[-1]["fallback"]) == ("opencode", "opencode/glm-5.2")
    assert lines[-1]["attempts"] == 2

    kimi, openrouter = world.stubs["kimi"], world.stubs["openrouter"]
    kimi.fail_next(Fault(kind="status", status=503))
    status, events = await sse(world.base, "coder")
    assert status == 200 and data(events)[-1] == "[DONE]"
    assert openrouter.chats[-1].json["model"] == "openai/gpt-5"

    before = len(opencode.chats)
    ollama.fail_next(Fault(kind="midstream_error", after=2))
    status, lines = await ndjson(world.base, "local")
    assert status == 200 and lines[-1]["error"]["code"] == "upstream_error"
    assert len(opencode.chats) == before  # no fallback once the stream had started


async def test_keep_alives_through_silences_on_sse_only(world: World) -> None:
    stub = world.stubs["openrouter"]
    stub.fail_next(Fault(kind="stall", seconds=0.6, after=4))
    status, events = await sse(world.base, MODELS["openrouter"])
    assert status == 200
    assert events.count(KEEPALIVE) >= 2
    payloads = data(events)
    assert payloads[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content", "") for c in payloads[:-1] if c["choices"]
    )
    assert text == reply_text(SAID)

    # A silence before the first chunk commits the stream to 200 with comments.
    world.stubs["ollama"].fail_next(Fault(kind="delay", seconds=0.6))
    status, events = await sse(world.base, MODELS["ollama"])
    assert status == 200 and events[0] == KEEPALIVE
    assert data(events)[-1] == "[DONE]"

    # NDJSON has no comments: every line is an answer line.
    world.stubs["ollama"].fail_next(Fault(kind="stall", seconds=0.6, after=2))
    status, lines = await ndjson(world.base, MODELS["ollama"])
    assert status == 200 and lines[-1]["done"] is True


async def test_curl_over_h2c_streams_both_framings(world: World) -> None:
    curl = shutil.which("curl") or "/usr/bin/curl"
    for path, body in [
        ("/chat", {"model": "qwen3.5:latest", "messages": HELLO, "stream": True}),
        ("/v1/chat/completions", {"model": "opencode/glm-5.2", "messages": HELLO, "stream": True}),
    ]:
        proc = await asyncio.create_subprocess_exec(
            curl, "--http2-prior-knowledge", "-sS", "-N", "-i", world.base + path,
            "-H", "content-type: application/json", "-d", json.dumps(body),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        head, _, rest = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/2 200")
        if path == "/chat":
            lines = [json.loads(line) for line in rest.splitlines() if line]
            assert lines[-1]["done"] is True
            assert "".join(x.get("content", "") for x in lines[:-1]) == reply_text(SAID)
        else:
            assert rest.rstrip().endswith(b"data: [DONE]")


async def test_stream_outcomes_are_counted(world: World) -> None:
    world.stubs["opencode"].fail_next(Fault(kind="midstream_error", after=3))
    await sse(world.base, MODELS["opencode"])
    async with httpx.AsyncClient(base_url=world.base) as client:
        text = (await client.get("/metrics")).text
    assert (
        'chatd_requests_total{provider="opencode",route="chat_completions",status="502",tier=""}'
        in text
    )
    assert 'chatd_upstream_errors_total{code="upstream_error",provider="opencode"}' in text


async def start_then_cancel(caller: RawH2, path: str, body: bytes) -> int:
    """The status of a stream cancelled with RST_STREAM on its first data
    (httpx sends none when a response is closed early)."""
    sid = caller.start("POST", path, body)
    try:
        assert await caller.until_data(sid), "stream ended before it was cut"
        return caller.status[sid]
    finally:
        caller.reset(sid)


async def test_a_thousand_streams_abandoned_mid_answer_leak_nothing() -> None:
    async with stub_world() as world:
        stub = world.stubs["ollama"]
        # Two lines, then a minute of silence: every stream is cut mid-answer.
        stub.fail_always(Fault(kind="stall", seconds=60, after=2))
        bodies = [
            ("/chat", json.dumps({"model": "qwen3.5:latest", "messages": HELLO, "stream": True})),
            ("/v1/chat/completions", json.dumps({"model": "qwen3.5:latest", "messages": HELLO,
                                                 "stream": True})),
        ]  # fmt: skip

        async def over_h1(client: httpx.AsyncClient, path: str, body: str) -> None:
            async with client.stream("POST", path, content=body) as resp:
                assert resp.status_code == 200
                async for _ in resp.aiter_raw():
                    break  # leaving closes the connection mid-answer

        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=world.base, timeout=10, limits=limits) as client:
            h2s = [await RawH2.connect(world.base) for _ in range(2)]
            try:
                for _ in range(10):
                    h1_calls = [over_h1(client, *bodies[i % 2]) for i in range(50)]
                    h2_calls = [
                        start_then_cancel(h2s[i % 2], bodies[i % 2][0], bodies[i % 2][1].encode())
                        for i in range(50)
                    ]
                    statuses = await asyncio.gather(*h1_calls, *h2_calls)
                    assert set(statuses[50:]) == {200}
            finally:
                for caller in h2s:
                    await caller.close()
        assert len(stub.chats) == 1000
        assert await world.settled("ollama") == 0
        assert await in_flight(world.base, "ollama") == 0
        stub.clear_faults()
        status, lines = await ndjson(world.base, MODELS["ollama"])
        assert status == 200 and lines[-1]["done"] is True
        status, events = await sse(world.base, MODELS["ollama"])
        assert status == 200 and data(events)[-1] == "[DONE]"


@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
async def test_streams_send_server_timing_as_a_trailer_over_h2(world: World, path: str) -> None:
    payload = json.dumps({"model": "qwen3.5:latest", "messages": HELLO, "stream": True}).encode()
    headers, data, trailers = await exchange(
        world.base, "POST", path, payload, [(b"te", b"trailers")]
    )
    assert headers[b":status"] == b"200" and headers[b"trailer"] == b"server-timing"
    assert data
    timing = dict(part.strip().split(b";dur=") for part in trailers[b"server-timing"].split(b","))
    assert float(timing[b"upstream"]) > 0 and float(timing[b"chatd"]) >= 0
    # A caller that did not offer TE: trailers gets none, and no promise of one.
    headers, data, trailers = await exchange(world.base, "POST", path, payload)
    assert b"trailer" not in headers and trailers == {} and data
