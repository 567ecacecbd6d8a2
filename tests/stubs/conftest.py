"""Fixtures shared by the stub tests: stubs on 127.0.0.1, stopped after the
test, and one client session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from lakehouse.stubs import StubUpstream

MakeStub = Callable[..., Awaitable[StubUpstream]]


@pytest.fixture
async def make_stub() -> AsyncIterator[MakeStub]:
    stubs: list[StubUpstream] = []

    async def make(flavour: str = "ollama", **options: Any) -> StubUpstream:
        stub = StubUpstream(flavour, **options)
        await stub.start()
        stubs.append(stub)
        return stub

    yield make
    for stub in stubs:
        await stub.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
