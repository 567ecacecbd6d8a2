"""One request, one generation: a reload while a request retries or
streams leaves it on the generation it started on, whose sessions close
when it ends, through the real server."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from lakehouse import config as configuration
from lakehouse.stubs import Fault, StubUpstream
from tests.support import make_config, provider_table, running_chatd

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "hello"}]


async def until(check: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


class Reloadable:
    """Config whose ollama provider points at one stub, then another."""

    def __init__(self, old: StubUpstream, new: StubUpstream, **extra: Any) -> None:
        self.old, self.new = old, new
        self.extra = extra
        self.target = old

    def __call__(self) -> configuration.Config:
        return make_config(
            overrides={
                **provider_table("ollama", self.target.base_url),
                "chatd.probe_interval_secs": 0,
                "chatd.timeout_secs": 10,
                **self.extra,
            }
        )


async def two_stubs() -> tuple[StubUpstream, StubUpstream]:
    old, new = StubUpstream("ollama"), StubUpstream("ollama")
    await old.start()
    await new.start()
    return old, new


async def reload(client: httpx.AsyncClient, source: Reloadable) -> None:
    source.target = source.new
    resp = await client.post("/admin/reload")
    assert resp.status_code == 200, resp.text


async def test_a_reload_during_a_retrys_backoff_keeps_the_request_on_its_generation() -> None:
    old, new = await two_stubs()
    source = Reloadable(old, new, **{"chatd.retry.attempts": 1, "chatd.retry.backoff_secs": 1})
    old.fail_next(Fault(kind="status", status=503))
    try:
        async with (
            running_chatd(source(), source=source) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            ask = asyncio.create_task(
                client.post("/chat", json={"model": "qwen3.5:latest", "messages": HELLO})
            )
            await until(lambda: len(old.chats) == 1 and old.in_flight == 0)
            await reload(client, source)  # while the retry sleeps its backoff
            resp = await ask
            assert resp.status_code == 200, resp.text
            assert resp.json()["attempts"] == 2
            assert (len(old.chats), len(new.chats)) == (2, 0)
            # The old generation closed its sessions once its last request ended.
            await until(lambda: old.open_connections == 0, within=5)
            fresh = await client.post("/chat", json={"model": "qwen3.5:latest", "messages": HELLO})
            assert fresh.status_code == 200 and len(new.chats) == 1
    finally:
        await old.stop()
        await new.stop()


async def test_a_reload_during_a_long_stream_lets_it_finish_on_its_generation() -> None:
    old, new = await two_stubs()
    source = Reloadable(old, new)
    old.fail_next(Fault(kind="stall", seconds=1.0, after=2))
    try:
        async with (
            running_chatd(source(), source=source) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            body = {"model": "qwen3.5:latest", "messages": HELLO, "stream": True}
            async with client.stream("POST", "/chat", json=body) as resp:
                assert resp.status_code == 200
                lines = resp.aiter_lines()
                first = await anext(lines)
                await reload(client, source)  # mid-stream
                rest = [line async for line in lines]
            final = json.loads(rest[-1])
            assert json.loads(first)["content"] and final["done"] is True
            assert (len(old.chats), len(new.chats)) == (1, 0)
            await until(lambda: old.open_connections == 0, within=5)
    finally:
        await old.stop()
        await new.stop()


async def test_shutdown_closes_a_retiring_generation_still_in_use() -> None:
    old, new = await two_stubs()
    source = Reloadable(old, new, **{"chatd.server.graceful_timeout_secs": 0.5})
    ask = {"model": "qwen3.5:latest", "messages": HELLO}
    writer = None
    loop = asyncio.get_running_loop()
    unclosed: list[str] = []
    loop.set_exception_handler(lambda _, context: unclosed.append(context["message"]))
    try:
        async with (
            running_chatd(source(), source=source) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            # Two pooled connections to the old upstream, one of them idle below.
            replies = await asyncio.gather(*(client.post("/chat", json=ask) for _ in range(2)))
            assert [r.status_code for r in replies] == [200, 200]
            await until(lambda: old.open_connections == 2)
            old.fail_next(Fault(kind="delay", seconds=60))
            _, writer = await asyncio.open_connection(*base[7:].split(":"))
            body = json.dumps(ask).encode()
            writer.write(
                b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await until(lambda: old.in_flight == 1)
            await reload(client, source)
        # chatd stopped with the request still in: its generation is closed
        # too, not left to the garbage collector.
        await until(lambda: old.open_connections == 0, within=5)
        gc.collect()
        await asyncio.sleep(0)
        assert [m for m in unclosed if "Unclosed" in m] == []
    finally:
        loop.set_exception_handler(None)
        if writer is not None:
            writer.close()
        await old.stop()
        await new.stop()
