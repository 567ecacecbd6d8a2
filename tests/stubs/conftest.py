"""Fixtures shared by the stub tests: stubs on 127.0.0.1, stopped after the
test, and one client session; and how they post to a stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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


async def posted(
    http: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, Any, bytes]:
    """POST ``body`` as JSON: the status, headers and body of the answer."""
    async with http.post(url, json=body, **kw) as resp:
        return resp.status, resp.headers, await resp.read()


Post = Callable[..., Awaitable[tuple[int, Any, bytes]]]


def poster(path: str, headers: Mapping[str, str]) -> Post:
    """``post(http, stub, body[, given])``: ``body`` posted to the stub's
    ``path`` with the ``given`` headers, ``headers`` (its key) unless given."""

    async def post(
        http: aiohttp.ClientSession,
        stub: StubUpstream,
        body: Any,
        given: Mapping[str, str] = headers,
    ) -> tuple[int, Any, bytes]:
        return await posted(http, stub.base_url + path, body, headers=given)

    return post
