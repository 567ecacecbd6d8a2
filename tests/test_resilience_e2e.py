"""Resilience through the real server, against stubs that fail on command:
fallback chains, Retry-After, backpressure, cooldown, auth, deadlines and
config reload.

Long (~360 lines): each behaviour needs the same three-stub chain, built
once here."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lakehouse import config as configuration
from lakehouse.stubs import Fault, StubUpstream
from tests.support import eventually, make_config, running_chatd
from tests.test_cli import start

pytestmark = [pytest.mark.anyio, pytest.mark.stacks]

CLOUD_KEY = "ollama-cloud-key-0123456789"
ZEN_KEY = "zen-key-0123456789abcdef"
ENV = {"CLOUD_KEY": CLOUD_KEY, "ZEN_KEY": ZEN_KEY}
HELLO = [{"role": "user", "content": "judge this"}]
TIERS = (
    '[models]\nlocal_judge = "qwen3.5:latest"\ncloud_judge = "kimi-k2.6:cloud"\n'
    'frontier_free = "opencode/glm-5.2"\n'
    '[chatd.fallbacks]\nlocal_judge = ["cloud_judge", "frontier_free"]\n'
)


@dataclass
class Chain:
    base: str
    local: StubUpstream
    cloud: StubUpstream
    zen: StubUpstream

    async def ask(self, model: str = "local_judge", **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as client:
            return await client.post("/chat", json={"model": model, "messages": HELLO}, **kw)


async def stubs() -> tuple[StubUpstream, StubUpstream, StubUpstream, dict[str, Any]]:
    local = StubUpstream("ollama")
    cloud = StubUpstream("ollama_cloud", key=CLOUD_KEY, models=["kimi-k2.6"])
    zen = StubUpstream("opencode", key=ZEN_KEY, models=["glm-5.2"])
    overrides = {
        "chatd.providers.ollama.base_url": await local.start(),
        "chatd.providers.ollama_cloud.base_url": await cloud.start(),
        "chatd.providers.ollama_cloud.key_env": "CLOUD_KEY",
        "chatd.providers.opencode.base_url": await zen.start(),
        "chatd.providers.opencode.key_env": "ZEN_KEY",
        "chatd.probe_interval_secs": 0,
        # Long enough that a healthy stub never times out on a loaded CI
        # machine; the "timeout" fault delays 5 s, beyond it.
        "chatd.timeout_secs": 3,
        "chatd.retry.backoff_secs": 0.01,
        "chatd.retry.max_retry_after_secs": 2,
    }
    return local, cloud, zen, overrides


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    local, cloud, zen, overrides = await stubs()
    try:
        async with running_chatd(make_config(TIERS, overrides), ENV) as base:
            yield Chain(base, local, cloud, zen)
    finally:
        for stub in (local, cloud, zen):
            await stub.stop()


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="status", status=500),
        Fault(kind="status", status=503),
        Fault(kind="status", status=429),
        Fault(kind="delay", seconds=5),
        Fault(kind="reset"),
    ],
    ids=["500", "503", "429", "timeout", "reset"],
)
async def test_chain_falls_back_on_retryable_failures(chain: Chain, fault: Fault) -> None:
    chain.local.fail_always(fault)
    resp = await chain.ask()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["provider"], body["fallback"], body["tier"]) == (
        "ollama_cloud",
        "cloud_judge",
        "cloud_judge",
    )
    assert body["attempts"] == 3  # two tries of the local link, one of the cloud one
    assert len(chain.local.chats) == 2
    assert chain.cloud.chats[-1].json["model"] == "kimi-k2.6"


async def test_chain_goes_to_the_last_link(chain: Chain) -> None:
    chain.local.fail_always(Fault(kind="status", status=500))
    chain.cloud.fail_always(Fault(kind="quota"))
    body = (await chain.ask()).json()
    assert (body["provider"], body["fallback"]) == ("opencode", "frontier_free")
    # A quota is not retried on the same provider.
    assert len(chain.cloud.chats) == 1


async def test_connection_refused_falls_back(chain: Chain) -> None:
    await chain.local.stop()
    body = (await chain.ask()).json()
    assert body["provider"] == "ollama_cloud"


async def test_no_fallback_on_a_request_the_upstream_rejects(chain: Chain) -> None:
    chain.local.fail_always(Fault(kind="status", status=400, message="bad option"))
    resp = await chain.ask()
    assert (resp.status_code, resp.json()["error"]["code"]) == (502, "upstream_rejected")
    assert chain.cloud.chats == [] and chain.zen.chats == []
    assert len(chain.local.chats) == 1


async def test_retry_after_is_honoured_within_budget(chain: Chain) -> None:
    chain.local.fail_next(Fault(kind="status", status=429, retry_after="1"))
    started = time.monotonic()
    body = (await chain.ask("qwen3.5:latest")).json()
    assert time.monotonic() - started >= 1.0
    assert (body["provider"], body["attempts"]) == ("ollama", 2)


async def test_retry_after_past_budget_moves_on_at_once(chain: Chain) -> None:
    chain.local.fail_next(Fault(kind="status", status=429, retry_after="60"))
    started = time.monotonic()
    body = (await chain.ask()).json()
    # Honouring it would take 60 s (10 s at most by the budget).
    assert time.monotonic() - started < 5.0
    assert body["provider"] == "ollama_cloud"
    assert len(chain.local.chats) == 1


async def test_deadline_header_bounds_the_whole_request(chain: Chain) -> None:
    chain.local.fail_always(Fault(kind="delay", seconds=5))
    chain.cloud.fail_always(Fault(kind="delay", seconds=5))
    started = time.monotonic()
    resp = await chain.ask(headers={"X-Chatd-Deadline": "0.5"})
    # Well before either upstream's 5 s.
    assert time.monotonic() - started < 4.0
    assert (resp.status_code, resp.json()["error"]["code"]) == (504, "deadline_exceeded")
    resp = await chain.ask(headers={"X-Chatd-Deadline": "soon"})
    assert resp.status_code == 400


async def test_full_provider_refuses_promptly_while_others_serve() -> None:
    local, cloud, zen, overrides = await stubs()
    overrides.update(
        {
            "chatd.providers.ollama.max_concurrency": 2,
            "chatd.providers.ollama.max_queue": 1,
            "chatd.timeout_secs": 20,
        }
    )
    local.fail_always(Fault(kind="delay", seconds=3))
    try:
        async with running_chatd(make_config(TIERS, overrides), ENV) as base:
            c = Chain(base, local, cloud, zen)
            slow = [asyncio.create_task(c.ask("qwen3.5:latest")) for _ in range(3)]

            async def full() -> bool:
                # Two calls upstream, one waiting for a slot.
                async with httpx.AsyncClient(base_url=base) as client:
                    text = (await client.get("/metrics")).text
                return 'chatd_provider_queue_depth{provider="ollama"} 1.0' in text

            await eventually(lambda: len(local.chats) == 2)
            await eventually(full)
            refused = await c.ask("qwen3.5:latest")
            # Refused without waiting for a slot: the calls ahead still run.
            assert not any(task.done() for task in slow)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "overloaded"
            assert refused.headers["retry-after"] == "1"
            assert (await c.ask("opencode/glm-5.2")).status_code == 200
            assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 3
            async with httpx.AsyncClient(base_url=base) as client:
                text = (await client.get("/metrics")).text
            assert 'chatd_provider_rejections_total{provider="ollama"} 1.0' in text
    finally:
        for stub in (local, cloud, zen):
            await stub.stop()


async def test_dead_provider_cools_down_and_recovers() -> None:
    local, cloud, zen, overrides = await stubs()
    overrides.update(
        {"chatd.failure_threshold": 2, "chatd.cooldown_secs": 0.5, "chatd.retry.attempts": 0}
    )
    local.fail_always(Fault(kind="status", status=500))
    try:
        async with running_chatd(make_config(TIERS, overrides), ENV) as base:
            c = Chain(base, local, cloud, zen)
            for _ in range(2):
                assert (await c.ask("qwen3.5:latest")).status_code == 502
            async with httpx.AsyncClient(base_url=base) as client:
                listing = (await client.get("/chat/providers")).json()["providers"]
            assert listing["ollama"] is False
            calls = len(local.chats)
            resp = await c.ask("qwen3.5:latest")
            assert (resp.status_code, resp.json()["error"]["code"]) == (503, "provider_unavailable")
            assert (await c.ask()).json()["provider"] == "ollama_cloud"  # falls back at once
            assert len(local.chats) == calls
            local.clear_faults()
            await asyncio.sleep(0.6)
            resp = await c.ask("qwen3.5:latest")  # the trial call
            assert resp.status_code == 200
            async with httpx.AsyncClient(base_url=base) as client:
                listing = (await client.get("/chat/providers")).json()["providers"]
            assert listing["ollama"] is True
    finally:
        for stub in (local, cloud, zen):
            await stub.stop()


async def test_service_auth() -> None:
    local, cloud, zen, overrides = await stubs()
    env = {**ENV, "CHATD_TOKENS": "tok-alpha-123456, tok-beta-654321"}
    try:
        async with running_chatd(make_config(TIERS, overrides), env) as base:
            async with httpx.AsyncClient(base_url=base) as client:
                body = {"model": "qwen3.5:latest", "messages": HELLO}
                for headers in (
                    {},
                    {"Authorization": "Bearer wrong"},
                    {"Authorization": "Basic dG9rLWFscGhh"},
                ):
                    resp = await client.post("/chat", json=body, headers=headers)
                    assert resp.status_code == 401
                    assert resp.headers["www-authenticate"].startswith("Bearer")
                    assert resp.json()["error"]["code"] == "unauthorized"
                    assert "tok-" not in resp.text
                resp = await client.get("/chat/providers")
                assert resp.status_code == 401 and resp.headers["x-request-id"]
                ok = {"Authorization": "Bearer tok-beta-654321"}
                assert (await client.post("/chat", json=body, headers=ok)).status_code == 200
                assert (await client.get("/chat/providers", headers=ok)).status_code == 200
                for path in ("/health", "/ready", "/metrics"):
                    assert (await client.get(path)).status_code == 200
            assert local.chats and "authorization" not in local.chats[-1].headers
    finally:
        for stub in (local, cloud, zen):
            await stub.stop()


def test_auth_required_without_tokens_stops_startup() -> None:
    from lakehouse.auth import Gate
    from lakehouse.errors import ConfigError

    config = make_config("[chatd.auth]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"chatd\.auth\.enabled"):
        Gate.from_config(config.chatd.auth, "0.0.0.0:3220", {})


def test_auth_off_beyond_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    from lakehouse.auth import Gate

    config = make_config()
    Gate.from_config(config.chatd.auth, "127.0.0.1:3220", {})
    assert "auth is off" not in caplog.text
    Gate.from_config(config.chatd.auth, "0.0.0.0:3220", {})
    assert "auth is off" in caplog.text


async def test_reload_under_load_drops_nothing(tmp_path: Path) -> None:
    local, cloud, zen, overrides = await stubs()
    path = tmp_path / "chatd.toml"
    path.write_text(TIERS)

    def source() -> configuration.Config:
        return configuration.load(path, overrides)

    try:
        async with running_chatd(source(), ENV, source) as base:
            c = Chain(base, local, cloud, zen)
            stop = asyncio.Event()
            statuses: list[int] = []

            async def hammer() -> None:
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    while not stop.is_set():
                        resp = await client.post(
                            "/chat", json={"model": "local_judge", "messages": HELLO}
                        )
                        statuses.append(resp.status_code)

            workers = [asyncio.create_task(hammer()) for _ in range(8)]
            await eventually(lambda: len(statuses) >= 20)
            path.write_text(
                TIERS.replace("[models]\n", '[models]\nnew_tier = "opencode/glm-5.2"\n')
            )
            async with httpx.AsyncClient(base_url=base) as client:
                resp = await client.post("/admin/reload")
                assert resp.status_code == 200, resp.text
                served = len(statuses)
                await eventually(lambda: len(statuses) >= served + 20)
                path.write_text("[chatd]\ntimeout_sec = 3\n")
                resp = await client.post("/admin/reload")
                assert resp.status_code == 422
                assert resp.json()["error"]["code"] == "reload_refused"
                assert "chatd.timeout_sec`" in resp.json()["error"]["message"]
            served = len(statuses)
            await eventually(lambda: len(statuses) >= served + 20)
            stop.set()
            await asyncio.gather(*workers)
            assert len(statuses) >= 60
            assert set(statuses) == {200}
            body = (await c.ask("new_tier")).json()
            assert (body["provider"], body["tier"]) == ("opencode", "new_tier")
    finally:
        for stub in (local, cloud, zen):
            await stub.stop()


def test_sighup_reloads_a_running_chatd(tmp_path: Path) -> None:
    from lakehouse.stubs import StubThread

    upstream = StubThread("ollama")
    url = upstream.start()
    path = tmp_path / "c.toml"
    base_text = f'[chatd]\nprobe_interval_secs = 0\n[chatd.providers.ollama]\nbase_url = "{url}"\n'
    path.write_text(base_text)
    server = start(["--config", str(path)])
    try:
        ask = {"model": "quick", "messages": HELLO}
        # Not a tier yet: the bare name goes upstream as is (and is unknown there).
        assert httpx.post(server.base + "/chat", json=ask).status_code == 502
        assert upstream.stub.chats[-1].json["model"] == "quick"
        path.write_text(base_text + '[models]\nquick = "qwen3:latest"\n')
        os.kill(server.proc.pid, signal.SIGHUP)
        for _ in range(200):
            body = httpx.post(server.base + "/chat", json=ask).json()
            if body.get("tier") == "quick":
                break
            time.sleep(0.1)
        assert body["tier"] == "quick"
        assert upstream.stub.chats[-1].json["model"] == "qwen3:latest"
        assert server.proc.poll() is None
    finally:
        server.proc.terminate()
        server.proc.wait(30)
        upstream.stop()


async def test_a_request_waiting_to_retry_finishes_on_the_old_generation() -> None:
    # "Requests in flight finish on the old generation, whose sessions close
    # once they have": one waiting out a Retry-After holds no concurrency
    # slot, and must still find its sessions open.
    stub = StubUpstream("ollama")
    url = await stub.start()
    overrides = {"chatd.providers.ollama.base_url": url, "chatd.probe_interval_secs": 0}

    def source() -> configuration.Config:
        return make_config(overrides=overrides)

    stub.fail_next(Fault(kind="status", status=429, message="slow down", retry_after="2"))
    try:
        async with (
            running_chatd(source(), {}, source) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            waiting = asyncio.create_task(
                client.post("/chat", json={"model": "qwen3.5:latest", "messages": HELLO})
            )
            for _ in range(500):
                if stub.chats:
                    break
                await asyncio.sleep(0.02)
            assert (await client.post("/admin/reload")).status_code == 200
            resp = await waiting
            assert resp.status_code == 200, resp.text
            assert resp.json()["attempts"] == 2
    finally:
        await stub.stop()
