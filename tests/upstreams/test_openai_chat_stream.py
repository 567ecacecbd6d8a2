"""lakehouse/openai_stream.py (ChunkFold) and OpenAICompatProvider.stream
against aioresponses: every chunk shape the dialect's upstreams send, and
how a stream can end badly. (Against the real stubs:
tests/test_streaming_providers.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.plugin_api import Flavour, OpenAICompatProvider, ProviderContext
from lakehouse.upstreams.openai_chat_stream import ChunkFold
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta
from tests.support import mock_upstream

pytestmark = pytest.mark.anyio

BASE = "https://up.test/v1"
URL = BASE + "/chat/completions"
KEY = "sk-test-0123456789abcdef"
REQUEST = ChatRequest(model="m", messages=[Message("user", "hi")], max_tokens=50)


def event(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else msgspec.json.encode(obj)) + b"\n\n"


def delta(finish: str | None = None, usage: Any = None, **fields: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": fields, "finish_reason": finish}
    if usage is not None:
        choice["usage"] = usage
    return {"id": "c1", "model": "vendor/m-1", "choices": [choice]}


USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def fold_all(*chunks: dict[str, Any], done: bool = True) -> tuple[list[StreamDelta], Any]:
    fold = ChunkFold("up", "m", KEY)
    deltas = [d for c in chunks if (d := fold.add(msgspec.json.encode(c))) is not None]
    return deltas, fold.result(done=done)


# -- ChunkFold --------------------------------------------------------------------


def test_content_and_both_reasoning_fields() -> None:
    deltas, final = fold_all(
        delta(role="assistant", content=""),
        delta(reasoning="Let "),
        delta(reasoning_content="me."),
        delta(content="Hi", reasoning=None),
        delta(content=None),
        delta(finish="stop"),
        {"id": "c1", "model": "vendor/m-1", "choices": [], "usage": USAGE},
    )
    assert deltas == [
        StreamDelta(reasoning="Let "),
        StreamDelta(reasoning="me."),
        StreamDelta(content="Hi"),
    ]
    # The text went out in the deltas: the end keeps none of it.
    assert (final.content, final.reasoning, final.done_reason) == ("", None, "stop")
    assert (final.prompt_tokens, final.completion_tokens, final.model) == (7, 5, "vendor/m-1")


def test_usage_inside_the_choice() -> None:
    _, final = fold_all(delta(content="x"), delta(finish="length", usage=USAGE))
    assert (final.prompt_tokens, final.completion_tokens, final.done_reason) == (7, 5, "length")


def test_no_usage_and_no_model_fall_back() -> None:
    _, final = fold_all({"choices": [{"delta": {"content": "x"}}]})
    assert (final.prompt_tokens, final.completion_tokens, final.model) == (0, 0, "m")
    assert final.reasoning is None and final.done_reason == "stop"


def test_finish_reason_without_done_is_whole() -> None:
    deltas, final = fold_all(delta(content="x"), delta(finish="stop"), done=False)
    assert deltas == [StreamDelta(content="x")] and final.done_reason == "stop"


def test_no_done_and_no_finish_is_cut_short() -> None:
    with pytest.raises(errors.UpstreamBadResponse, match=r"without \[DONE\]"):
        fold_all(delta(content="x"), done=False)


def test_only_empty_choices_is_a_bad_response() -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="no choices"):
        fold_all({"choices": [], "usage": USAGE})


@pytest.mark.parametrize(
    "chunk",
    [
        # OpenRouter: a top-level error and finish_reason "error".
        {
            "error": {"code": "server_error", "message": f"boom {KEY}"},
            "choices": [{"delta": {"content": ""}, "finish_reason": "error"}],
        },
        {"type": "error", "error": {"type": "APIError", "message": f"boom {KEY}"}},  # Zen
        {"error": {"message": f"boom {KEY}", "type": "server_error"}},  # Kimi
        {"choices": [{"delta": {}, "finish_reason": "stop", "error": {"message": f"boom {KEY}"}}]},
    ],
)
def test_in_band_errors(chunk: dict[str, Any]) -> None:
    with pytest.raises(errors.UpstreamError, match="boom") as caught:
        fold_all(delta(content="x"), chunk)
    assert type(caught.value) is errors.UpstreamError
    assert KEY not in str(caught.value) and caught.value.upstream_status == 200


def test_finish_reason_error_alone() -> None:
    with pytest.raises(errors.UpstreamError, match='finish_reason "error"'):
        fold_all(delta(finish="error"))


def test_unusable_event_is_a_bad_response() -> None:
    fold = ChunkFold("up", "m")
    with pytest.raises(errors.UpstreamBadResponse, match="unusable stream event"):
        fold.add(b'{"choices": "nope"}')
    with pytest.raises(errors.UpstreamBadResponse):
        fold.add(b"{not json")


# -- the provider -------------------------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[OpenAICompatProvider]:
    ctx = ProviderContext(name="up", base_url=BASE, key=KEY, timeout=5)
    p = OpenAICompatProvider(ctx, Flavour())
    await p.start()
    yield p
    await p.close()


async def run(
    provider: OpenAICompatProvider, body: bytes, content_type: str = "text/event-stream"
) -> tuple[list[StreamDelta | ChatResponse], dict[str, Any]]:
    with mock_upstream() as mock:
        mock.post(URL, body=body, content_type=content_type)
        items = [item async for item in provider.stream(REQUEST, "m")]
        (call,) = [c for calls in mock.requests.values() for c in calls]
    return items, json.loads(call.kwargs["data"])


async def test_sends_stream_and_include_usage(provider: OpenAICompatProvider) -> None:
    body = event(delta(content="Hi")) + event(delta(finish="stop")) + b"data: [DONE]\n\n"
    items, sent = await run(provider, body)
    assert sent == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 50,
        "stream_options": {"include_usage": True},
    }
    assert items[0] == StreamDelta(content="Hi")
    assert isinstance(items[-1], ChatResponse) and items[-1].done_reason == "stop"


async def test_eof_without_done_or_finish(provider: OpenAICompatProvider) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match=r"without \[DONE\]"):
        await run(provider, event(delta(content="Hi")))


async def test_events_after_done_are_ignored(provider: OpenAICompatProvider) -> None:
    body = (
        b": OPENROUTER PROCESSING\n\n"
        + event(delta(content="Hi"))
        + b"data: [DONE]\n\n"
        + event({"choices": [], "cost": "0.001"})
        + b"data: {garbage\n\n"
    )
    items, _ = await run(provider, body)
    assert [type(i) for i in items] == [StreamDelta, ChatResponse]


async def test_a_whole_json_reply_to_a_stream_request(provider: OpenAICompatProvider) -> None:
    whole = {
        "model": "vendor/m-1",
        "choices": [
            {
                "message": {"content": "Hi", "reasoning_content": "Hm"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    items, _ = await run(provider, msgspec.json.encode(whole), "application/json")
    # The whole answer alone: the relay sends its text (tests/callers).
    [final] = items
    assert isinstance(final, ChatResponse)
    assert (final.content, final.reasoning, final.prompt_tokens) == ("Hi", "Hm", 7)


async def test_plain_text_is_refused(provider: OpenAICompatProvider) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="text/plain, not an event stream"):
        await run(provider, b"hello", "text/plain")


async def test_error_status_is_classified_like_chat(provider: OpenAICompatProvider) -> None:
    with mock_upstream() as mock:
        mock.post(
            URL,
            status=429,
            payload={"error": {"message": "slow down", "type": "rate_limit_reached_error"}},
            headers={"Retry-After": "3"},
        )
        with pytest.raises(errors.UpstreamRateLimited) as caught:
            await anext(provider.stream(REQUEST, "m"))
    assert caught.value.retry_after == 3 and caught.value.upstream_status == 429


def test_tool_call_fragments_are_passed_on_and_folded() -> None:
    fold = ChunkFold("p", "m")
    head = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    first = fold.add(msgspec.json.encode(delta(tool_calls=[head])))
    second = fold.add(
        msgspec.json.encode(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]))
    )
    # An upstream that sends a whole call with no index and no id.
    whole = fold.add(
        msgspec.json.encode(delta(tool_calls=[{"function": {"name": "g", "arguments": "{}"}}]))
    )
    fold.add(
        msgspec.json.encode(delta(tool_calls=[{"index": 0, "function": {"arguments": " 1}"}}]))
    )
    fold.add(msgspec.json.encode(delta("stop")))
    assert first is not None and first.tool_calls is not None
    assert (first.tool_calls[0].id, first.tool_calls[0].name) == ("c1", "f")
    assert second is not None and second.tool_calls is not None
    assert second.tool_calls[0].arguments == '{"a":'
    assert whole is not None and whole.tool_calls is not None
    final = fold.result(done=True)
    # Ollama-style "stop" after calls still reads as a tool call answer.
    assert final.done_reason == "tool_calls"
    assert final.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in final.tool_calls] == [
        ("c1", "f", {"a": 1}),
        (whole.tool_calls[0].id, "g", {}),
    ]
    assert whole.tool_calls[0].index == 1 and whole.tool_calls[0].id


def test_a_tool_call_cut_off_by_max_tokens_stays_length() -> None:
    # OpenAI ends a call cut off by max_tokens with "length"; the caller
    # must not be told to run it.
    head = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a'},
    }
    _, final = fold_all(delta(tool_calls=[head]), delta("length"))
    assert final.done_reason == "length"


def test_a_name_and_id_repeated_on_every_chunk_are_relayed_once() -> None:
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "read_file"}}
    deltas, final = fold_all(
        delta(tool_calls=[{**call, "function": {"name": "read_file", "arguments": ""}}]),
        delta(tool_calls=[{**call, "function": {"name": "read_file", "arguments": '{"p":'}}]),
        delta(tool_calls=[{**call, "function": {"name": "read_file", "arguments": "1}"}}]),
        delta("tool_calls"),
    )
    relayed = [c for d in deltas for c in d.tool_calls or ()]
    assert [(c.id, c.name) for c in relayed] == [("c1", "read_file"), (None, None), (None, None)]
    assert [(c.id, c.function.name, c.function.arguments) for c in final.tool_calls] == [
        ("c1", "read_file", {"p": 1})
    ]
