"""The Relay without a server: a fake caller (ASGI send/receive) and scripted
item streams, to pin down framing, status, hang-ups and keep-alives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.callers.http_io import error_response
from lakehouse.callers.openai_errors import openai_error_response
from lakehouse.callers.streaming import ChunkWriter, LineWriter, Relay
from lakehouse.wire import ChatResponse, FunctionCall, StreamDelta, ToolCall, ToolCallChunk

pytestmark = pytest.mark.anyio

FINAL = ChatResponse(
    model="m",
    provider="p",
    content="Hello",
    done_reason="stop",
    prompt_tokens=1,
    completion_tokens=2,
    latency_ms=5,
)


class Caller:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.first_body = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: Any) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.first_body.set()

    def hang_up(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


class Script:
    """Items as given; floats are pauses, exceptions are raised."""

    def __init__(self, *steps: Any) -> None:
        self.steps = steps
        self.closed = False

    async def items(self) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        try:
            for step in self.steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
        finally:
            self.closed = True


def native(caller: Caller) -> Relay:
    return Relay(
        caller.send,
        caller.receive,
        LineWriter(),
        headers=[(b"x-request-id", b"r1")],
        refuse=error_response,
    )


def sse(caller: Caller, keepalive: float) -> Relay:
    return Relay(
        caller.send,
        caller.receive,
        ChunkWriter("r1", "m", include_usage=False),
        headers=[(b"x-request-id", b"r1")],
        refuse=openai_error_response,
        keepalive_secs=keepalive,
    )


def lines(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.splitlines()]


async def test_deltas_then_the_metadata_marked_done_without_repeating_content() -> None:
    caller, script = Caller(), Script(StreamDelta("Hel"), StreamDelta(reasoning="r"), FINAL)
    outcome = await native(caller).run(script.items())
    assert (outcome.status, outcome.final, outcome.error) == (200, FINAL, None)
    assert caller.status == 200
    assert caller.headers[b"content-type"] == b"application/x-ndjson"
    assert caller.headers[b"x-request-id"] == b"r1"
    assert lines(caller.body) == [
        {"content": "Hel"},
        {"reasoning": "r"},
        {
            "model": "m",
            "provider": "p",
            "done_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "latency_ms": 5,
            "done": True,
        },
    ]
    assert caller.sent[-1]["more_body"] is False and script.closed


async def test_a_failure_before_the_first_item_is_a_status() -> None:
    caller = Caller()
    error = errors.ProviderNotFound("no such model")
    outcome = await native(caller).run(Script(error).items())
    assert (outcome.status, outcome.error) == (404, error)
    assert caller.status == 404
    assert caller.headers[b"content-type"] == b"application/json"
    assert json.loads(caller.body)["error"]["code"] == "provider_not_found"


async def test_a_failure_after_the_first_item_ends_the_stream_with_an_error_line() -> None:
    caller = Caller()
    error = errors.UpstreamError("upstream broke", provider="p")
    outcome = await native(caller).run(Script(StreamDelta("Hel"), error).items())
    assert (outcome.status, outcome.error) == (502, error)
    assert caller.status == 200
    assert lines(caller.body) == [
        {"content": "Hel"},
        {"error": {"code": "upstream_error", "message": "upstream broke", "provider": "p"}},
    ]
    assert caller.sent[-1]["more_body"] is False


async def test_an_unexpected_exception_is_an_internal_error_without_internals() -> None:
    caller = Caller()
    outcome = await native(caller).run(Script(StreamDelta("x"), KeyError("secret")).items())
    assert outcome.status == 500
    assert lines(caller.body)[-1] == {"error": {"code": "internal", "message": "internal error"}}


@pytest.mark.parametrize("after_first", [True, False])
async def test_a_hang_up_cancels_the_stream_at_once(after_first: bool) -> None:
    caller = Caller()
    steps = (StreamDelta("x"), 60.0, FINAL) if after_first else (60.0, FINAL)
    script = Script(*steps)
    run = asyncio.create_task(native(caller).run(script.items()))
    if after_first:
        await caller.first_body.wait()
    else:
        await asyncio.sleep(0.05)
    caller.hang_up()
    # Far sooner than the script's 60 s step.
    outcome = await asyncio.wait_for(run, 10)
    assert outcome.status == 499 and script.closed
    assert len(caller.sent) == (2 if after_first else 0)


async def test_keep_alives_fill_silences_and_commit_the_stream_early() -> None:
    caller = Caller()
    script = Script(0.35, StreamDelta("Hi"), 0.35, FINAL)
    outcome = await sse(caller, keepalive=0.1).run(script.items())
    assert outcome.status == 200
    assert caller.status == 200
    assert caller.headers[b"content-type"] == b"text/event-stream"
    frames = [m["body"] for m in caller.sent[1:]]
    first = next(i for i, f in enumerate(frames) if f.startswith(b"data: "))
    assert first >= 2 and set(frames[:first]) == {b": keep-alive\n\n"}
    assert frames.count(b": keep-alive\n\n") >= 4
    assert caller.body.endswith(b"data: [DONE]\n\n")


async def test_after_a_keep_alive_an_early_failure_is_an_error_event() -> None:
    caller = Caller()
    error = errors.UpstreamTimeout("slow", provider="p")
    outcome = await sse(caller, keepalive=0.05).run(Script(0.2, error).items())
    assert (outcome.status, outcome.error) == (504, error)
    assert caller.status == 200
    last = caller.body.split(b"\n\n")[-2]
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_timeout"
    assert b"[DONE]" not in caller.body


async def test_no_keep_alive_when_chunks_keep_coming_or_when_off() -> None:
    caller = Caller()
    steps = [x for _ in range(6) for x in (0.03, StreamDelta("x"))]
    await sse(caller, keepalive=0.1).run(Script(*steps, FINAL).items())
    assert b"keep-alive" not in caller.body
    caller = Caller()
    await sse(caller, keepalive=0).run(Script(0.2, FINAL).items())
    assert b"keep-alive" not in caller.body


async def test_native_stream_sends_each_tool_call_whole_once_complete() -> None:
    calls = [
        ToolCall(id="c1", function=FunctionCall("f", {"a": 1})),
        ToolCall(id="c2", function=FunctionCall("g", {})),
    ]
    final = msgspec.structs.replace(FINAL, content="", done_reason="tool_calls", tool_calls=calls)
    script = Script(
        StreamDelta(tool_calls=[ToolCallChunk(0, "c1", "f", "")]),
        StreamDelta(tool_calls=[ToolCallChunk(0, arguments='{"a": 1}')]),
        StreamDelta(tool_calls=[ToolCallChunk(1, "c2", "g", "{}")]),
        final,
    )
    caller = Caller()
    await native(caller).run(script.items())
    sent = lines(caller.body)
    assert sent[:-1] == [
        {
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ]
        },
        {
            "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": {}}}
            ]
        },
    ]
    assert sent[-1]["done"] is True and sent[-1]["done_reason"] == "tool_calls"
    # Each call once: the done line does not repeat them.
    assert "tool_calls" not in sent[-1]


async def test_an_answer_given_whole_has_its_text_sent_once_in_both_framings() -> None:
    # A provider that cannot stream yields its whole answer alone: no delta
    # carried the text, so the relay sends it before the end. After deltas,
    # the end's text is the deltas' and is not sent again (the first test).
    whole = msgspec.structs.replace(FINAL, reasoning="r")
    caller = Caller()
    await native(caller).run(Script(whole).items())
    sent = lines(caller.body)
    assert sent[0] == {"content": "Hello", "reasoning": "r"}
    assert sent[1]["done"] is True and len(sent) == 2

    caller = Caller()
    await sse(caller, keepalive=0).run(Script(whole).items())
    events = [e.removeprefix(b"data: ") for e in caller.body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": "Hello", "reasoning_content": "r"}
    assert [d.get("content") for d in deltas[1:]] == [None]


async def test_an_answer_given_whole_with_calls_sends_text_then_calls_then_the_end() -> None:
    # What an upstream that ignored `stream` becomes (the providers yield
    # its whole answer alone): the text, then every call once, then the end.
    calls = [
        ToolCall(id="c1", function=FunctionCall("f", {"a": 1})),
        ToolCall(id="c2", function=FunctionCall("g", {})),
    ]
    whole = msgspec.structs.replace(FINAL, tool_calls=calls, done_reason="tool_calls")
    caller = Caller()
    await native(caller).run(Script(whole).items())
    sent = lines(caller.body)
    assert sent[0] == {"content": "Hello"}
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["c1", "c2"]
    assert sent[2]["done"] is True and "tool_calls" not in sent[2] and len(sent) == 3

    caller = Caller()
    await sse(caller, keepalive=0).run(Script(whole).items())
    events = [e.removeprefix(b"data: ") for e in caller.body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert choices[0]["delta"] == {"role": "assistant", "content": "Hello"}
    deltas = choices[1]["delta"]["tool_calls"]
    assert [(d["index"], d["id"], d["function"]["arguments"]) for d in deltas] == [
        (0, "c1", '{"a":1}'),
        (1, "c2", "{}"),
    ]
    assert choices[2]["finish_reason"] == "tool_calls" and len(choices) == 3
