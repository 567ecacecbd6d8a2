"""The dispatcher alone, with scripted providers: tiers, chains, retries,
Retry-After, deadlines, breaker and limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lakehouse import errors
from lakehouse.config import RetryConfig
from lakehouse.dispatcher import CallInfo, Dispatcher, Policy
from lakehouse.health import Health
from lakehouse.registry import Registry
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta
from tests.support import eventually

pytestmark = pytest.mark.anyio


class Scripted:
    """A provider that answers from a script: exceptions are raised, floats
    are slept, events waited for, anything else answers."""

    def __init__(self, name: str, *script: Any) -> None:
        self.name = name
        self.script = list(script)
        self.calls: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self) -> bool:
        return True

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        self.calls.append(model)
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)
        if isinstance(step, asyncio.Event):
            await step.wait()
        return ChatResponse(
            model=model,
            provider="",
            content=f"from {self.name}",
            done_reason="stop",
            prompt_tokens=1,
            completion_tokens=1,
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[ChatResponse]:
        yield await self.chat(request, model)


def dispatcher(
    *providers: Scripted,
    attempts: int = 1,
    max_retry_after: float = 10,
    deadline: float = 60,
    fallbacks: dict[str, list[str]] | None = None,
    tiers: dict[str, str] | None = None,
    threshold: int = 5,
    limits: dict[str, tuple[int, int]] | None = None,
) -> Dispatcher:
    registry = Registry(
        {p.name: p for p in providers},
        default=providers[0].name,
        suffix_routes={":cloud": "ollama_cloud"},
    )
    retry = RetryConfig(
        attempts=attempts,
        backoff_secs=0.01,
        max_backoff_secs=0.02,
        max_retry_after_secs=max_retry_after,
    )
    return Dispatcher(
        registry,
        tiers=tiers,
        health=Health(registry.names(), failure_threshold=threshold, cooldown=60),
        policy=Policy(
            retry=retry, deadline=deadline, fallbacks=fallbacks or {}, limits=limits or {}
        ),
    )


def ask(model: str, **kw: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", "hi")], **kw)


def boom(kind: type[errors.ChatdError] = errors.UpstreamError, **kw: Any) -> errors.ChatdError:
    return kind("scripted failure", provider="x", **kw)


async def test_tier_resolves_and_is_reported() -> None:
    a = Scripted("a")
    out = await dispatcher(a, tiers={"fast": "a/m1"}).chat(ask("fast"))
    assert (out.tier, out.provider, a.calls) == ("fast", "a", ["m1"])
    assert out.fallback is None and out.attempts is None


async def test_retryable_failure_is_retried_then_answers() -> None:
    a = Scripted("a", boom(), boom(errors.UpstreamUnreachable))
    info = CallInfo()
    out = await dispatcher(a, attempts=2).chat(ask("m"), info)
    assert out.content == "from a" and out.attempts == 3 and info.attempts == 3
    assert len(a.calls) == 3


async def test_rejection_is_neither_retried_nor_fallen_back() -> None:
    a, b = Scripted("a", boom(errors.UpstreamRejected)), Scripted("b")
    d = dispatcher(a, b, attempts=3, fallbacks={"t": ["b/m"]}, tiers={"t": "a/m"})
    with pytest.raises(errors.UpstreamRejected):
        await d.chat(ask("t"))
    assert (len(a.calls), b.calls) == (1, [])


@pytest.mark.parametrize(
    "error",
    [
        errors.UpstreamError,
        errors.UpstreamRateLimited,
        errors.UpstreamTimeout,
        errors.UpstreamUnreachable,
        errors.UpstreamAuth,
        errors.UpstreamQuota,
    ],
)
async def test_chain_falls_through_in_order(error: type[errors.ChatdError]) -> None:
    a = Scripted("a", boom(error), boom(error))
    b = Scripted("b", boom(error), boom(error))
    c = Scripted("c")
    d = dispatcher(
        a,
        b,
        c,
        fallbacks={"judge": ["cloud", "free"]},
        tiers={"judge": "a/m", "cloud": "b/m", "free": "c/m"},
    )
    out = await d.chat(ask("judge"))
    assert (out.provider, out.fallback, out.tier) == ("c", "free", "free")
    assert out.attempts == len(a.calls) + len(b.calls) + 1
    expected = 2 if error.retryable else 1
    assert (len(a.calls), len(b.calls)) == (expected, expected)


async def test_fallbacks_of_the_resolved_model_and_missing_links() -> None:
    a, c = Scripted("a", boom(), boom()), Scripted("c")
    d = dispatcher(a, c, fallbacks={"a/m": ["ghost:cloud", "c/x"]}, tiers={"t": "a/m"})
    out = await d.chat(ask("t"))
    # ghost:cloud has no provider: skipped, not fatal.
    assert (out.provider, out.fallback) == ("c", "c/x")


async def test_last_links_error_is_what_the_caller_gets() -> None:
    a = Scripted("a", boom(), boom())
    b = Scripted("b", boom(errors.UpstreamAuth))
    d = dispatcher(a, b, fallbacks={"a/m": ["b/m"]})
    with pytest.raises(errors.UpstreamAuth):
        await d.chat(ask("a/m"))


async def test_retry_after_within_budget_is_honoured() -> None:
    a = Scripted("a", boom(errors.UpstreamRateLimited, retry_after=0.3))
    started = time.monotonic()
    out = await dispatcher(a, max_retry_after=1).chat(ask("m"))
    assert time.monotonic() - started >= 0.3
    assert out.attempts == 2


async def test_retry_after_beyond_budget_moves_to_the_next_link_at_once() -> None:
    a = Scripted("a", boom(errors.UpstreamRateLimited, retry_after=30))
    b = Scripted("b")
    d = dispatcher(a, b, max_retry_after=1, fallbacks={"a/m": ["b/m"]})
    started = time.monotonic()
    out = await d.chat(ask("a/m"))
    # Not the 30 s asked for, nor the 1 s budget.
    assert time.monotonic() - started < 1
    assert (out.provider, len(a.calls)) == ("b", 1)


async def test_deadline_covers_retries_and_fallbacks() -> None:
    # Each step alone outlasts the bound asserted below (generous for a
    # loaded machine): only a deadline over the whole chain meets it.
    a = Scripted("a", 5.0, 5.0)
    b = Scripted("b", 5.0)
    d = dispatcher(a, b, deadline=30, fallbacks={"a/m": ["b/m"]})
    started = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded) as info:
        await d.chat(ask("a/m", deadline_secs=0.2))
    assert time.monotonic() - started < 3
    assert info.value.status == 504
    # The config's cap wins over a longer request.
    d = dispatcher(Scripted("a", 1.0), deadline=0.2)
    with pytest.raises(errors.DeadlineExceeded):
        await d.chat(ask("m", deadline_secs=100))


async def test_open_breaker_refuses_then_falls_back() -> None:
    a = Scripted("a", *[boom()] * 4)
    b = Scripted("b")
    d = dispatcher(a, b, attempts=0, threshold=2, fallbacks={"a/m": ["b/m"]})
    for _ in range(2):
        assert (await d.chat(ask("a/m"))).provider == "b"
    assert not d.health.available("a")
    calls = len(a.calls)
    assert (await d.chat(ask("a/m"))).provider == "b"
    assert len(a.calls) == calls  # refused at once, no upstream call
    with pytest.raises(errors.ProviderUnavailable):
        await d.chat(ask("a/other"))


async def test_full_queue_refuses_promptly_while_others_serve() -> None:
    gate = asyncio.Event()
    a = Scripted("a", gate, gate)
    b = Scripted("b")
    d = dispatcher(a, b, limits={"a": (1, 1)})
    first = asyncio.create_task(d.chat(ask("a/1")))
    second = asyncio.create_task(d.chat(ask("a/2")))
    await eventually(lambda: len(a.calls) == 1 and d.limiters["a"].waiting == 1)
    # Refused without waiting for the slot: the calls ahead are still held.
    with pytest.raises(errors.Overloaded):
        await d.chat(ask("a/3"))
    assert not first.done() and not second.done()
    assert (await d.chat(ask("b/x"))).provider == "b"
    gate.set()
    assert [r.content for r in await asyncio.gather(first, second)] == ["from a"] * 2


class Streaming(Scripted):
    """Streams `parts` as deltas, then the final answer; a script entry that
    is an exception is raised before the first delta, one inside `parts`
    is raised in the middle of the stream."""

    def __init__(self, name: str, *script: Any, parts: tuple[Any, ...] = ("Hel", "lo")) -> None:
        super().__init__(name, *script)
        self.parts = parts
        self.closed = 0

    async def stream(self, request: ChatRequest, model: str) -> Any:
        self.calls.append(model)
        step = self.script.pop(0) if self.script else "ok"
        try:
            if isinstance(step, BaseException):
                raise step
            text = ""
            for part in self.parts:
                if isinstance(part, BaseException):
                    raise part
                if isinstance(part, float):
                    await asyncio.sleep(part)
                    continue
                text += part
                yield StreamDelta(content=part)
            yield ChatResponse(
                model=model,
                provider="",
                content=text,
                done_reason="stop",
                prompt_tokens=1,
                completion_tokens=len(self.parts),
            )
        finally:
            self.closed += 1


async def collect(d: Dispatcher, request: ChatRequest) -> list[Any]:
    return [item async for item in d.stream(request)]


async def test_stream_yields_deltas_then_the_stamped_answer() -> None:
    a = Streaming("a")
    d = dispatcher(a, tiers={"t": "a/m"})
    items = await collect(d, ask("t"))
    assert [i.content for i in items[:-1]] == ["Hel", "lo"]
    final = items[-1]
    assert isinstance(final, ChatResponse)
    assert (final.content, final.provider, final.tier) == ("Hello", "a", "t")
    assert d.limiters["a"].active == 0 and a.closed == 1


async def test_stream_falls_back_only_before_the_first_item() -> None:
    a = Streaming("a", boom(), boom())
    b = Streaming("b")
    d = dispatcher(a, b, fallbacks={"a/m": ["b/m"]})
    items = await collect(d, ask("a/m"))
    assert (items[-1].provider, items[-1].fallback) == ("b", "b/m")

    a = Streaming("a", parts=("Hel", boom()))
    b = Streaming("b")
    d = dispatcher(a, b, fallbacks={"a/m": ["b/m"]})
    seen: list[Any] = []
    with pytest.raises(errors.UpstreamError):
        async for item in d.stream(ask("a/m")):
            seen.append(item)
    assert [i.content for i in seen] == ["Hel"]
    assert b.calls == [] and len(a.calls) == 1  # no retry, no fallback once started
    assert d.limiters["a"].active == 0


async def test_stream_holds_the_slot_while_it_runs_and_frees_it_when_abandoned() -> None:
    a = Streaming("a", parts=("x", 0.3, "y"))
    d = dispatcher(a, limits={"a": (1, 0)})
    stream = d.stream(ask("m"))
    assert (await anext(stream)).content == "x"
    assert d.limiters["a"].active == 1
    with pytest.raises(errors.Overloaded):
        await d.chat(ask("m"))
    await stream.aclose()  # the caller went away
    assert d.limiters["a"].active == 0 and a.closed == 1


async def test_stream_deadline_bounds_every_wait_and_cut_streams_are_errors() -> None:
    a = Streaming("a", parts=("x", 5.0, "y"))
    started = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        await collect(dispatcher(a), ask("m", deadline_secs=0.3))
    assert time.monotonic() - started < 1

    class Cut(Streaming):
        async def stream(self, request: ChatRequest, model: str) -> Any:
            yield StreamDelta(content="half")

    with pytest.raises(errors.UpstreamBadResponse, match="without a final answer"):
        await collect(dispatcher(Cut("a")), ask("m"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_half_open_provider_refused_a_slot_or_out_of_time_is_not_wedged() -> None:
    clock = Clock()
    a = Scripted("a", boom())
    registry = Registry({"a": a}, default="a", suffix_routes={})
    d = Dispatcher(
        registry,
        health=Health(["a"], failure_threshold=1, cooldown=30, clock=clock),
        policy=Policy(retry=RetryConfig(attempts=0), limits={"a": (1, 1)}),
    )
    with pytest.raises(errors.UpstreamError):
        await d.chat(ask("a/m"))
    clock.now += 31  # half-open: the next call is the trial
    assert d.health.available("a")
    limiter = d.limiters["a"]
    await limiter.acquire()  # another call holds the only slot
    # Waiting in the queue past the deadline: no verdict, and no trial kept.
    with pytest.raises(errors.DeadlineExceeded):
        await d.chat(ask("a/m"), deadline=0.05)
    queued = asyncio.create_task(limiter.acquire())  # the queue's one place
    await asyncio.sleep(0)
    with pytest.raises(errors.Overloaded):
        await d.chat(ask("a/m"))
    # The listing says what a request would get.
    assert d.health.available("a")
    limiter.release()
    await queued
    limiter.release()
    assert (await d.chat(ask("a/m"))).content == "from a"  # the trial, which closes it
    assert d.health.state("a") == "closed" and d.health.available("a")


async def test_a_trial_in_flight_is_what_the_listing_shows() -> None:
    clock = Clock()
    a = Scripted("a", boom(), 0.2)
    registry = Registry({"a": a}, default="a", suffix_routes={})
    d = Dispatcher(
        registry,
        health=Health(["a"], failure_threshold=1, cooldown=30, clock=clock),
        policy=Policy(retry=RetryConfig(attempts=0)),
    )
    with pytest.raises(errors.UpstreamError):
        await d.chat(ask("a/m"))
    clock.now += 31
    trial = asyncio.create_task(d.chat(ask("a/m")))
    await asyncio.sleep(0.05)
    # While the one trial runs, a request is refused, and so says the listing.
    with pytest.raises(errors.ProviderUnavailable):
        await d.chat(ask("a/m"))
    assert not d.health.available("a")
    await trial
    assert d.health.available("a")
