"""One built-in provider in front of its protocol stub on 127.0.0.1, for the
Provider.stream tests (tests/test_streaming_providers.py for every plugin,
tests/test_streaming_zen.py for OpenCode's Messages and Responses paths), and
the checks both run on every stream: pre-stream failures as chat() raises
them, abandoned or cancelled streams leaving no connection behind, and a
reader keeping nothing of a long answer's text."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.stubs import Fault, StubUpstream
from lakehouse.upstreams import failures
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta
from tests.cancelling import cancel_once
from tests.support import build_provider

KEY = "stream-test-key-0123456789"
USER = "hello there friend"
MODELS = {
    "ollama": "qwen3.5:latest",
    "ollama_cloud": "kimi-k2.6",
    "openrouter": "moonshotai/kimi-k2.6",
    "opencode": "kimi-k2.6",
    "kimi": "kimi-for-coding",
}
# Faults every protocol's stub can send before the first frame.
PRE_STREAM = [
    Fault(kind="status", status=429, retry_after="7"),
    Fault(kind="status", status=400),
    Fault(kind="quota"),
    Fault(kind="reset"),
    Fault(kind="html"),
    Fault(kind="garbage"),
]
# A stall long enough that only chatd's side can end the stream.
STALL = Fault(kind="stall", after=5, seconds=30)


@dataclass
class World:
    flavour: str
    stub: StubUpstream
    provider: Any
    model: str

    def request(self, **kw: Any) -> ChatRequest:
        return ChatRequest(model=self.model, messages=[Message("user", USER)], **kw)

    def stream(self, **kw: Any) -> Any:
        return self.provider.stream(self.request(**kw), self.model)

    async def items(self, **kw: Any) -> list[StreamDelta | ChatResponse]:
        return [item async for item in self.stream(**kw)]

    async def decoded_held_after(self, pieces: int) -> int:
        """Bytes of what the stream reader decoded (every upstream line or
        event is, in decode_or_refuse) that it still holds once it has
        yielded ``pieces`` deltas of a longer answer, each dropped once read
        as the relay does. Kept, each piece is a ~60-byte string."""
        said = " ".join(f"word{n}" for n in range(pieces))
        request = ChatRequest(model=self.model, messages=[Message("user", said)])
        stream = self.provider.stream(request, self.model)
        try:
            assert isinstance(await anext(stream), StreamDelta)
            tracemalloc.start()
            try:
                for _ in range(pieces - 1):
                    assert isinstance(await anext(stream), StreamDelta)
                held = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            assert isinstance([item async for item in stream][-1], ChatResponse)
        finally:
            await stream.aclose()
        decoded = held.filter_traces([tracemalloc.Filter(True, failures.__file__)])
        return sum(stat.size for stat in decoded.statistics("filename"))

    async def settled(self, open_connections: int = 0, within: float = 2.0) -> int:
        """The stub's open connections once they reach ``open_connections``
        (or ``within`` seconds have passed)."""
        for _ in range(round(within / 0.01)):
            if self.stub.open_connections == open_connections:
                break
            await asyncio.sleep(0.01)
        return self.stub.open_connections

    async def until_error(self) -> tuple[list[Any], BaseException]:
        """The items a stream gives before it fails, and its error."""
        got: list[Any] = []
        try:
            async for item in self.stream():
                got.append(item)
        except errors.ChatdError as exc:
            return got, exc
        raise AssertionError(f"the stream ended without an error after {got}")

    async def check_fails_before_the_first_item_as_chat(self, fault: Fault) -> None:
        """A fault the stub sends before any frame fails stream() as it
        fails chat(): the same error, status and Retry-After, never the key."""
        self.stub.fail_next(fault)
        with pytest.raises(errors.ChatdError) as by_chat:
            await self.provider.chat(self.request(), self.model)
        self.stub.fail_next(fault)
        with pytest.raises(errors.ChatdError) as by_stream:
            await anext(self.stream())
        assert type(by_stream.value) is type(by_chat.value)
        if fault.kind != "midstream_error":
            # Asked for a whole reply, the stub fails with a status instead.
            assert by_stream.value.upstream_status == by_chat.value.upstream_status
        assert by_stream.value.retry_after == by_chat.value.retry_after
        assert by_stream.value.provider == self.flavour
        assert KEY not in str(by_stream.value)

    async def abandon_streams(self, times: int) -> None:
        """Read the first delta of ``times`` streams and close each there."""
        for _ in range(times):
            stream = self.stream()
            assert isinstance(await anext(stream), StreamDelta)
            await stream.aclose()

    async def cancel_consumers(self, times: int) -> None:
        """Cancel ``times`` tasks, each reading a stream, once it has an item."""
        for _ in range(times):
            started = asyncio.Event()

            async def consume(started: asyncio.Event = started) -> None:
                async for _ in self.stream():
                    started.set()

            await cancel_once(started, consume())


@contextlib.asynccontextmanager
async def world_of(
    flavour: str, model: str | None = None, timeout: float = 5
) -> AsyncIterator[World]:
    """``flavour``'s stub and its provider, asked for ``model`` (the stub's
    usual model for that flavour unless given)."""
    key = None if flavour == "ollama" else KEY
    async with StubUpstream(flavour, key=key) as stub:
        provider = build_provider(flavour, stub.base_url, key=key, timeout=timeout)
        await provider.start()
        try:
            yield World(flavour, stub, provider, model or MODELS[flavour])
        finally:
            await provider.close()
