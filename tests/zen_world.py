"""A chatd on 127.0.0.1 in front of the OpenCode Zen stub (all three of its
protocols), an OpenCode Go stub and Kimi's stub for its Anthropic endpoint."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from lakehouse.stubs import StubUpstream
from tests.support import make_config, running_chatd

ZEN_KEY = "zen-key-0123456789abcdef"
KIMI_KEY = "sk-kimi-0123456789abcdef"
ENV = {"OPENCODE_KEY": ZEN_KEY, "KIMI_KEY": KIMI_KEY}
SAID = "hello there friend"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": SAID}]
ZEN_MODELS = ["glm-5.2", "claude-opus-4-7", "gpt-5.4", "gemini-3-pro", "minimax-m3-beta"]


@dataclass
class World:
    base: str
    zen: StubUpstream
    go: StubUpstream
    kimi: StubUpstream

    def reset(self) -> None:
        for stub in (self.zen, self.go, self.kimi):
            stub.clear_faults()
            stub.received.clear()

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as client:
            return await client.post("/chat", json={"model": model, "messages": HELLO, **extra})

    async def lines(self, model: str, **extra: Any) -> tuple[int, list[Any]]:
        body = {"model": model, "messages": HELLO, "stream": True, **extra}
        async with (
            httpx.AsyncClient(base_url=self.base, timeout=30) as client,
            client.stream("POST", "/chat", json=body) as resp,
        ):
            raw = await resp.aread()
        return resp.status_code, [json.loads(line) for line in raw.splitlines() if line]


@contextlib.asynccontextmanager
async def zen_world() -> AsyncIterator[World]:
    zen = StubUpstream("opencode", key=ZEN_KEY, models=ZEN_MODELS)
    go = StubUpstream("opencode_go", key=ZEN_KEY)
    kimi = StubUpstream("kimi", key=KIMI_KEY, models=["kimi-for-coding"])
    try:
        overrides: dict[str, Any] = {
            "chatd.probe_interval_secs": 0,
            "chatd.timeout_secs": 5,
            "chatd.retry.attempts": 0,
            "chatd.failure_threshold": 1000,
            "chatd.providers.opencode.base_url": await zen.start(),
            "chatd.providers.opencode.key_env": "OPENCODE_KEY",
            # A family Zen adds later: one line of config, no code.
            "chatd.providers.opencode.options": {
                "routes": [{"match": "minimax-m3-*", "endpoint": "messages"}]
            },
            "chatd.providers.opencode_go.plugin": "opencode",
            "chatd.providers.opencode_go.base_url": await go.start(),
            "chatd.providers.opencode_go.key_env": "OPENCODE_KEY",
            "chatd.providers.opencode_go.headers": {"x-opencode-session": "chatd-test"},
            "chatd.providers.opencode_go.options": {
                "routes": [{"match": "minimax-*", "endpoint": "messages"}]
            },
            "chatd.providers.kimi_claude.plugin": "kimi_anthropic",
            "chatd.providers.kimi_claude.base_url": await kimi.start(),
            "chatd.providers.kimi_claude.key_env": "KIMI_KEY",
        }
        async with running_chatd(make_config(overrides=overrides), ENV) as base:
            yield World(base, zen, go, kimi)
    finally:
        for stub in (zen, go, kimi):
            await stub.stop()
