"""A provider with three hosts (three Ollama stubs) through the real server."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from lakehouse.errors import ConfigError, UpstreamConnectFailed, UpstreamError
from lakehouse.stubs import Fault, StubUpstream
from lakehouse.upstreams.pool import HostPool
from tests.support import chat_request, make_config, running_chatd
from tests.test_metrics import samples, value

pytestmark = pytest.mark.anyio

GOOD = {"model": "qwen3.5:latest", "messages": [{"role": "user", "content": "hi"}]}
HOSTS = ("a", "b", "c")


@pytest.fixture
async def stubs() -> AsyncIterator[dict[str, StubUpstream]]:
    started = {name: StubUpstream("ollama") for name in HOSTS}
    for stub in started.values():
        await stub.start()
    yield started
    for stub in started.values():
        await stub.stop()


def pooled(stubs: dict[str, StubUpstream], **extra: Any) -> Any:
    return make_config(
        overrides={
            "chatd.providers.ollama.base_urls": {n: s.base_url for n, s in stubs.items()},
            "chatd.probe_interval_secs": 0.2,
            "chatd.cooldown_secs": 0.5,
            **extra,
        }
    )


def calls(stubs: dict[str, StubUpstream]) -> dict[str, int]:
    return {name: len(stub.chats) for name, stub in stubs.items()}


async def load(
    base: str, total: int, clients: int = 6, between: Callable[[int], Awaitable[None]] | None = None
) -> collections.Counter[int]:
    """``total`` requests from ``clients`` keep-alive clients; the statuses."""
    statuses: collections.Counter[int] = collections.Counter()
    sent = 0

    async def client() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while sent < total:
                sent += 1
                if between is not None:
                    await between(sent)
                statuses[(await http.post("/chat", json=GOOD)).status_code] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


async def test_equal_hosts_share_the_load_evenly(stubs: dict[str, StubUpstream]) -> None:
    async with running_chatd(pooled(stubs)) as base:
        assert await load(base, 300) == {200: 300}
        scraped = samples((await httpx.AsyncClient().get(base + "/metrics")).text)
    for name, count in calls(stubs).items():
        assert 90 <= count <= 110, calls(stubs)
        assert (
            value(scraped, "chatd_upstream_host_calls_total", provider="ollama", host=name) == count
        )
    # Labels are the hosts' names, never their URLs.
    assert not [k for k in scraped if any("127.0.0.1" in v for _, v in k[1])]


async def test_a_slow_host_gets_fewer_calls(stubs: dict[str, StubUpstream]) -> None:
    stubs["c"].fail_always(Fault(kind="delay", seconds=0.3))
    async with running_chatd(pooled(stubs)) as base:
        assert await load(base, 150) == {200: 150}
    counts = calls(stubs)
    assert counts["c"] * 3 < min(counts["a"], counts["b"]), counts


async def test_a_host_that_dies_costs_no_request_and_rejoins(
    stubs: dict[str, StubUpstream],
) -> None:
    victim = stubs["b"]
    port = int(victim.origin.rsplit(":", 1)[1])
    revived = StubUpstream("ollama")
    async with running_chatd(pooled(stubs)) as base, httpx.AsyncClient(base_url=base) as http:

        async def between(sent: int) -> None:
            if sent == 100:
                await victim.stop()

        assert await load(base, 300, between=between) == {200: 300}
        died_at = len(victim.chats)
        counts = calls(stubs)
        # Its share moved to the others.
        assert counts["a"] + counts["c"] >= 300 - died_at
        assert died_at < 150
        listing = (await http.get("/chat/providers")).json()
        assert listing == {
            "providers": {"ollama": True},
            "hosts": {"ollama": {"a": True, "b": False, "c": True}},
        }
        await revived.start(port=port)
        stubs["b"] = revived
        # Back after its next probe (or breaker trial): it takes calls again.
        async with asyncio.timeout(30):
            while len(revived.chats) < 10:
                assert (await http.post("/chat", json=GOOD)).status_code == 200
        listing = (await http.get("/chat/providers")).json()
        assert listing["hosts"] == {"ollama": {"a": True, "b": True, "c": True}}
    await victim.stop()


async def test_all_hosts_down_is_the_provider_down(stubs: dict[str, StubUpstream]) -> None:
    async with running_chatd(pooled(stubs)) as base, httpx.AsyncClient(base_url=base) as http:
        for stub in stubs.values():
            stub.set_down(True)
        async with asyncio.timeout(30):
            while (await http.get("/chat/providers")).json()["providers"]["ollama"]:  # noqa: ASYNC110 - polls the server
                await asyncio.sleep(0.1)
        resp = await http.post("/chat", json=GOOD)
        assert (resp.status_code, resp.json()["error"]["code"]) == (503, "provider_unavailable")


async def test_a_call_that_cannot_connect_moves_to_another_host(
    stubs: dict[str, StubUpstream],
) -> None:
    await stubs["a"].stop()
    config = pooled(stubs, **{"chatd.probe_interval_secs": 0, "chatd.retry.attempts": 0})
    async with running_chatd(config) as base, httpx.AsyncClient(base_url=base) as http:
        for _ in range(6):
            resp = await http.post("/chat", json={**GOOD, "stream": True})
            assert resp.status_code == 200
            assert resp.text.strip().splitlines()[-1].find('"done":true') > 0
            assert (await http.post("/chat", json=GOOD)).status_code == 200
    # No retries, no probes: the pool itself moved each call on.
    assert len(stubs["b"].chats) + len(stubs["c"].chats) == 12


def test_bad_pools_stop_start_up() -> None:
    with pytest.raises(ConfigError, match="both set"):
        make_config(
            overrides={
                "chatd.providers.ollama.base_url": "http://x:1",
                "chatd.providers.ollama.base_urls": ["http://y:1"],
            }
        )
    with pytest.raises(ConfigError, match=r"base_urls.1"):
        make_config(overrides={"chatd.providers.ollama.base_urls": ["http://y:1", "y:2"]})
    with pytest.raises(ConfigError, match="host name"):
        make_config(overrides={"chatd.providers.ollama.base_urls": {"a b": "http://y:1"}})
    with pytest.raises(ConfigError, match="1 to 64 hosts"):
        make_config(overrides={"chatd.providers.ollama.base_urls": []})


class Fake:
    """A provider that answers when told to (or fails, or cannot connect)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.calls = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def chat(self, request: Any, model: str) -> Any:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await self.gate.wait()
        return self.name

    async def stream(self, request: Any, model: str) -> Any:
        yield await self.chat(request, model)

    async def probe(self) -> bool:
        return True


def fake_pool(**kw: Any) -> tuple[HostPool, dict[str, Fake]]:
    fakes = {n: Fake(n) for n in HOSTS}
    return HostPool("p", list(fakes.items()), **kw), fakes


async def test_ties_go_round_robin_and_busy_hosts_wait() -> None:
    pool, fakes = fake_pool()
    assert [await pool.chat(chat_request(), "m") for _ in range(6)] == list("abcabc")
    fakes["a"].gate = asyncio.Event()
    held = asyncio.create_task(pool.chat(chat_request(), "m"))  # a: one in flight
    await asyncio.sleep(0)
    assert [await pool.chat(chat_request(), "m") for _ in range(4)] == list("bcbc")
    fakes["a"].gate.set()
    assert await held == "a"


async def test_a_failing_host_is_skipped_once_its_breaker_opens() -> None:
    pool, fakes = fake_pool(failure_threshold=2, cooldown=600)
    fakes["b"].fail = UpstreamError("b is broken", provider="p")
    answers = []
    for _ in range(9):
        try:
            answers.append(await pool.chat(chat_request(), "m"))
        except UpstreamError:
            answers.append("error")
    assert answers.count("error") == 2 and fakes["b"].calls == 2
    assert pool.states()["b"].available is False and pool.states()["b"].failures == 2
    assert not pool.states()["a"].failures


async def test_a_host_that_cannot_connect_passes_the_call_on() -> None:
    pool, fakes = fake_pool()
    for fake in fakes.values():
        fake.fail = UpstreamConnectFailed("refused", provider="p")
    with pytest.raises(UpstreamConnectFailed):
        await pool.chat(chat_request(), "m")
    assert [f.calls for f in fakes.values()] == [1, 1, 1]
    fakes["c"].fail = None
    assert await pool.chat(chat_request(), "m") == "c"
