"""A chatd on 127.0.0.1 in front of all five providers' protocol stubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from lakehouse.stubs import StubUpstream
from tests.support import make_config, running_chatd

KEYS = {
    "ollama_cloud": "ollama-cloud-key-0123456789",
    "openrouter": "sk-or-v1-0123456789abcdef",
    "opencode": "zen-key-0123456789abcdef",
    "kimi": "sk-kimi-0123456789abcdef",
}
ENV = {f"{name.upper()}_KEY": key for name, key in KEYS.items()}
# A model each provider's stub knows, as a caller names it.
MODELS = {
    "ollama": "qwen3.5:latest",
    "ollama_cloud": "kimi-k2.6:cloud",
    "openrouter": "openrouter/openai/gpt-5",
    "opencode": "opencode/glm-5.2",
    "kimi": "kimi/kimi-for-coding",
}


@dataclass
class World:
    base: str
    stubs: dict[str, StubUpstream]

    async def settled(self, name: str, within: float = 5.0) -> int:
        """The stub's open connections once none is left (or time is up)."""
        stub = self.stubs[name]
        for _ in range(round(within / 0.02)):
            if stub.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        return stub.open_connections


@contextlib.asynccontextmanager
async def stub_world(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> AsyncIterator[World]:
    stubs = {
        "ollama": StubUpstream("ollama"),
        "ollama_cloud": StubUpstream(
            "ollama_cloud", key=KEYS["ollama_cloud"], models=["kimi-k2.6", "gpt-oss:120b"]
        ),
        "openrouter": StubUpstream(
            "openrouter",
            key=KEYS["openrouter"],
            models=["openai/gpt-5", "anthropic/claude-opus-4-7"],
            thinking=["openai/gpt-5"],
        ),
        "opencode": StubUpstream("opencode", key=KEYS["opencode"], models=["glm-5.2"]),
        "kimi": StubUpstream("kimi", key=KEYS["kimi"], models=["kimi-for-coding"]),
    }
    settings: dict[str, Any] = {
        "chatd.probe_interval_secs": 0,
        "chatd.timeout_secs": 1.5,
        "chatd.retry.attempts": 0,
        "chatd.failure_threshold": 1000,
    }
    try:
        for name, stub in stubs.items():
            settings[f"chatd.providers.{name}.base_url"] = await stub.start()
            if name in KEYS:
                settings[f"chatd.providers.{name}.key_env"] = f"{name.upper()}_KEY"
        settings.update(overrides or {})
        config = make_config(overrides=settings)
        async with running_chatd(config, {**ENV, **(environ or {})}) as base:
            yield World(base, stubs)
    finally:
        for stub in stubs.values():
            await stub.stop()
