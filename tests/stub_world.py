"""A chatd on 127.0.0.1 in front of all five providers' protocol stubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from lakehouse.stubs import StubUpstream
from tests.support import make_config, provider_table, running_chatd

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

    def reset(self) -> None:
        """No faults left, nothing received: for the next test."""
        for stub in self.stubs.values():
            stub.clear_faults()
            stub.received.clear()

    async def settled(self, name: str, within: float = 5.0) -> int:
        """The stub's open connections once none is left (or time is up)."""
        stub = self.stubs[name]
        for _ in range(round(within / 0.02)):
            if stub.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        return stub.open_connections


def provider(name: str, url: str) -> dict[str, Any]:
    """Overrides for provider ``name`` at ``url``, its key (if it takes
    one) read from the variable ENV sets."""
    table = provider_table(name, url)
    if name in KEYS:
        table[f"chatd.providers.{name}.key_env"] = f"{name.upper()}_KEY"
    return table


# How each provider's stub is made: its key and the models it knows.
STUBS: dict[str, dict[str, Any]] = {
    "ollama": {},
    "ollama_cloud": {"key": KEYS["ollama_cloud"], "models": ["kimi-k2.6", "gpt-oss:120b"]},
    "openrouter": {
        "key": KEYS["openrouter"],
        "models": ["openai/gpt-5", "anthropic/claude-opus-4-7"],
        "thinking": ["openai/gpt-5"],
    },
    "opencode": {"key": KEYS["opencode"], "models": ["glm-5.2"]},
    "kimi": {"key": KEYS["kimi"], "models": ["kimi-for-coding"]},
}


@contextlib.asynccontextmanager
async def stub_world(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    stub_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[World]:
    """chatd in front of every provider's stub: one call per request (no
    retries, no circuit opening, no probes), so each test sees exactly
    what it caused. ``stub_options`` add to or replace a stub's STUBS."""
    stubs = {
        name: StubUpstream(name, **{**options, **(stub_options or {}).get(name, {})})
        for name, options in STUBS.items()
    }
    settings: dict[str, Any] = {
        "chatd.probe_interval_secs": 0,
        "chatd.timeout_secs": 1.5,
        "chatd.retry.attempts": 0,
        "chatd.failure_threshold": 1000,
    }
    try:
        for name, stub in stubs.items():
            settings.update(provider(name, await stub.start()))
        settings.update(overrides or {})
        config = make_config(overrides=settings)
        async with running_chatd(config, {**ENV, **(environ or {})}) as base:
            yield World(base, stubs)
    finally:
        for stub in stubs.values():
            await stub.stop()


# What one_stub yields: chatd's base URL and the stub.
OneStub = tuple[str, StubUpstream]


@contextlib.asynccontextmanager
async def one_stub(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **stub_options: Any,
) -> AsyncIterator[OneStub]:
    """chatd in front of provider ``name``'s stub alone (with its key from
    KEYS, if it takes one), probes off; yields chatd's base URL and the
    stub."""
    stub = StubUpstream(name, **({"key": KEYS[name]} if name in KEYS else {}), **stub_options)
    try:
        settings = {
            **provider(name, await stub.start()),
            "chatd.probe_interval_secs": 0,
            **(overrides or {}),
        }
        config = make_config(overrides=settings)
        async with running_chatd(config, {**ENV, **(environ or {})}) as base:
            yield base, stub
    finally:
        await stub.stop()
