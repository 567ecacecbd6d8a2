"""lakehouse/upstreams/anthropic_messages*.py: the body it builds, the
replies and streams it reads, and how each failure maps onto the family
(HTTP against aioresponses; end to end against the stub in
tests/test_opencode_e2e.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.plugin_api import (
    ANTHROPIC_ERROR_KINDS,
    AnthropicMessagesProvider,
    Flavour,
    Message,
    MessagesOptions,
)
from lakehouse.upstreams.anthropic_messages_request import thinking
from lakehouse.upstreams.anthropic_messages_stream import MessagesFold
from lakehouse.wire import ImagePart, ImageURL, StreamDelta, ToolCallChunk
from tests import upstream_cases as cases

pytestmark = pytest.mark.anyio

KEY = "sk-ant-test-0123456789SECRET"
BASE = "https://claude.test/v1"


def make(**options: Any) -> AnthropicMessagesProvider:
    ctx = cases.context("claude", BASE, KEY, MessagesOptions(**options))
    return AnthropicMessagesProvider(ctx, Flavour(error_kinds=ANTHROPIC_ERROR_KINDS))


provider = cases.provider_fixture(make)


def message(*content: dict[str, Any], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": list(content),
        "stop_reason": stop,
        "usage": {
            "input_tokens": 4,
            "output_tokens": 7,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 100,
        },
    }


# -- the request ------------------------------------------------------------------


def test_system_is_top_level_and_max_tokens_always_sent() -> None:
    sent = cases.sent_body(make(default_max_tokens=321), stop=["X"], seed=5, presence_penalty=0.0)
    assert sent == {
        "model": "m",
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 321,
        "stream": False,
        "stop_sequences": ["X"],
    }


@pytest.mark.parametrize(
    "field", [{"logprobs": True}, {"presence_penalty": 0.5}, {"frequency_penalty": -1.0}]
)
def test_what_messages_cannot_carry_is_refused_by_name(field: dict[str, Any]) -> None:
    cases.check_refused_by_name(make(), field, "Anthropic Messages")


def test_only_system_messages_is_a_clear_400() -> None:
    with pytest.raises(errors.BadRequest, match="user or assistant"):
        cases.sent_body(make(), messages=[Message("system", "x")])


@pytest.mark.parametrize(
    ("think", "cap", "budget"),
    [
        (None, 4096, None),
        (False, 4096, None),
        (True, 8000, 4096),
        ("low", 8000, 1024),
        ("max", 8000, 7999),
        # No room for the 1024 minimum: thinking stays off.
        ("high", 1024, None),
    ],
)
def test_thinking_budget(think: Any, cap: int, budget: int | None) -> None:
    block = thinking(think, cap)
    assert (block.budget_tokens if block else None) == budget


def test_sampling_dropped_with_thinking_on() -> None:
    sent = cases.sent_body(make(), think=True, temperature=0.3, top_p=0.5, max_tokens=5000)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert "temperature" not in sent and "top_p" not in sent
    sent = cases.sent_body(make(), temperature=0.3, top_p=0.5)
    assert (sent["temperature"], sent["top_p"]) == (0.3, 0.5)


def test_consecutive_tool_results_share_one_user_turn() -> None:
    calls = [
        {"id": "a:1", "function": {"name": "f", "arguments": {"x": 1}}},
        {"id": "b", "function": {"name": "g", "arguments": "not json"}},
    ]
    messages = msgspec.convert(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "calling", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "a:1", "content": "one"},
            {"role": "tool", "tool_call_id": "b", "content": "two"},
        ],
        list[Message],
    )
    sent = cases.sent_body(make(), messages=messages)
    # Ids are made safe for Anthropic, the same way on both sides.
    a_1 = sent["messages"][1]["content"][1]["id"]
    assert a_1.startswith("a_1_")
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": a_1, "name": "f", "input": {"x": 1}},
                {"type": "tool_use", "id": "b", "name": "g", "input": {"arguments": "not json"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": a_1, "content": "one"},
                {"type": "tool_result", "tool_use_id": "b", "content": "two"},
            ],
        },
    ]


async def call(provider: AnthropicMessagesProvider, **reply: Any) -> tuple[Any, Any]:
    return await cases.exchange(provider, BASE + "/messages", **reply)


@pytest.mark.parametrize(
    "options,sent",
    [
        ({}, {"x-api-key": KEY}),
        ({"auth": "bearer"}, {"Authorization": f"Bearer {KEY}"}),
    ],
)
async def test_key_in_x_api_key_or_bearer(options: dict[str, Any], sent: dict[str, str]) -> None:
    async with cases.started(make(**options)) as provider:
        _, request = await call(provider, payload=message({"type": "text", "text": "hi"}))
    headers = {k.lower(): v for k, v in request.kwargs["headers"].items()}
    assert headers["anthropic-version"] == "2023-06-01"
    for name, value in sent.items():
        assert headers[name.lower()] == value
    other = {"x-api-key", "authorization"} - {name.lower() for name in sent}
    assert not other & headers.keys()  # the key goes one way only


# -- whole replies ----------------------------------------------------------------


async def test_reply_maps_content_reasoning_calls_and_tokens(
    provider: AnthropicMessagesProvider,
) -> None:
    out, _ = await call(
        provider,
        payload=message(
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "redacted_thinking", "data": "xx"},
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            stop="tool_use",
        ),
    )
    assert (out.content, out.reasoning, out.model) == ("Hi", "hmm", "claude-x")
    assert out.done_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in out.tool_calls] == [
        ("toolu_1", "f", {"a": 1})
    ]
    # The cached prompt counts: input_tokens leaves it out.
    assert (out.prompt_tokens, out.completion_tokens) == (114, 7)


@pytest.mark.parametrize(
    ("stop", "done"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("something_new", "something_new"),
    ],
)
async def test_stop_reasons(provider: AnthropicMessagesProvider, stop: str, done: str) -> None:
    out, _ = await call(provider, payload=message({"type": "text", "text": "x"}, stop=stop))
    assert out.done_reason == done


def anthropic(kind: str, text: str = "nope") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_1"}


@pytest.mark.parametrize(
    ("status", "kind", "headers", "error", "retry_after"),
    [
        (400, "invalid_request_error", {}, errors.UpstreamRejected, None),
        (401, "authentication_error", {}, errors.UpstreamAuth, None),
        (403, "permission_error", {}, errors.UpstreamAuth, None),
        (402, "billing_error", {}, errors.UpstreamQuota, None),
        (404, "not_found_error", {}, errors.UpstreamRejected, None),
        (429, "rate_limit_error", {"retry-after": "12"}, errors.UpstreamRateLimited, 12.0),
        (500, "api_error", {}, errors.UpstreamError, None),
        (529, "overloaded_error", {"retry-after": "3"}, errors.UpstreamError, 3.0),
    ],
)
async def test_errors(
    provider: AnthropicMessagesProvider,
    status: int,
    kind: str,
    headers: dict[str, str],
    error: type[errors.ChatdError],
    retry_after: float | None,
) -> None:
    # The reply quotes the key back: the error keeps the kind, not the key.
    case = cases.ErrorReply(status, anthropic(kind, f"{KEY} {kind}"), error, retry_after, headers)
    raised = await case.check(call(provider, **case.reply), kind)
    assert KEY not in raised.message


async def test_a_200_with_an_error_body_is_an_error(provider: AnthropicMessagesProvider) -> None:
    with pytest.raises(errors.UpstreamError, match="overloaded"):
        await call(provider, payload=anthropic("overloaded_error"))


async def test_html_is_a_bad_response(provider: AnthropicMessagesProvider) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="text/html"):
        await call(provider, body="<html>", content_type="text/html")


# -- the stream fold --------------------------------------------------------------


def fold_all(*events: dict[str, Any]) -> tuple[list[StreamDelta], MessagesFold]:
    fold = MessagesFold("claude", "m", KEY)
    return cases.fold_events(fold, *events), fold


START = {"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 9}}}


def block_delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def test_stream_fold() -> None:
    deltas, fold = fold_all(
        START,
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        block_delta(0, type="thinking_delta", thinking="Let me"),
        block_delta(0, type="signature_delta", signature="sig"),
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}},
        block_delta(1, type="text_delta", text="Hi"),
        {"type": "some_future_event", "what": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}},
        },
        block_delta(2, type="input_json_delta", partial_json='{"a":'),
        block_delta(2, type="input_json_delta", partial_json=" 2}"),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    )
    assert deltas == [
        StreamDelta(reasoning="Let me"),
        StreamDelta(content="Hi"),
        StreamDelta(tool_calls=[ToolCallChunk(0, id="toolu_9", name="f")]),
        StreamDelta(tool_calls=[ToolCallChunk(0, arguments='{"a":')]),
        StreamDelta(tool_calls=[ToolCallChunk(0, arguments=" 2}")]),
    ]
    final = fold.result()
    # The text went out in the deltas: the end keeps none of it.
    assert (final.content, final.reasoning, final.model) == ("", None, "claude-x")
    assert (final.prompt_tokens, final.completion_tokens) == (9, 30)
    assert final.done_reason == "tool_calls"
    assert final.tool_calls is not None and final.tool_calls[0].function.arguments == {"a": 2}


def test_stream_error_event() -> None:
    with pytest.raises(errors.UpstreamError, match="Overloaded") as info:
        fold_all(
            START, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    assert type(info.value) is errors.UpstreamError


@pytest.mark.parametrize(
    "events",
    [
        [START, block_delta(0, type="text_delta", text="Hi")],
        [{"type": "message_stop"}],
    ],
)
def test_stream_cut_short(events: list[dict[str, Any]]) -> None:
    _, fold = fold_all(*events)
    with pytest.raises(errors.UpstreamBadResponse):
        fold.result()


def test_stream_garbage_event() -> None:
    fold = MessagesFold("claude", "m", KEY)
    with pytest.raises(errors.UpstreamBadResponse, match="unusable"):
        fold.add(b"{not json")


def test_a_tool_call_cut_off_by_max_tokens_ends_in_length() -> None:
    # Anthropic stops mid tool_use when max_tokens runs out: the input is
    # partial JSON, so the answer must not read as a call to run.
    _, fold = fold_all(
        START,
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
        block_delta(0, type="input_json_delta", partial_json='{"ci'),
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {}},
        {"type": "message_stop"},
    )
    assert fold.result().done_reason == "length"


async def test_a_whole_reply_cut_off_in_a_tool_call_ends_in_length(
    provider: AnthropicMessagesProvider,
) -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    out, _ = await call(provider, payload=message(use, stop="max_tokens"))
    assert out.done_reason == "length"


@pytest.mark.parametrize(
    ("url", "media"),
    [
        ("data:image/jpeg;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", "image/png"),
        ("data:image/jpg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD=", "image/jpeg"),
        ("data:image/jpg;base64,AAAAAAAA", "image/jpeg"),
        ("data:image/webp;base64,AAAAAAAA", "image/webp"),
    ],
)
def test_image_media_type_is_what_the_bytes_say(url: str, media: str) -> None:
    seeing = Message("user", [ImagePart(ImageURL(url))])
    (turn,) = cases.sent_body(make(), messages=[seeing])["messages"]
    assert turn["content"][0]["source"]["media_type"] == media


def test_a_tool_use_without_an_id_is_relayed_with_the_id_of_the_final_answer() -> None:
    deltas, fold = fold_all(
        START,
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "name": "f", "input": {}},
        },
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
        {"type": "message_stop"},
    )
    cases.check_first_call_id_is_the_final_one(deltas, fold)


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_images_outside_user_turns_are_refused_not_dropped(role: Any) -> None:
    # Messages' system is text and an assistant turn holds no image: the
    # image would be lost on the way, so it is refused naming where it is.
    cases.image_refused_outside_user_turns(make(), role)
    with pytest.raises(errors.BadRequest) as bare:
        cases.sent_body(
            make(), messages=[Message(role, "look", images=[cases.PNG]), Message("user", "hi")]
        )
    assert bare.value.path == "$.messages[0].images"


@pytest.mark.parametrize(
    ("think", "budget", "cap"),
    [
        (True, 4096, 8192),
        ("high", 16384, 20480),
        ("low", 1024, 5120),
        # Within Opus 4's 32000-token output limit; the answer keeps 4096.
        ("max", 27904, 32000),
    ],
)
def test_thinking_without_max_tokens_keeps_the_answers_room(
    think: Any, budget: int, cap: int
) -> None:
    # max_tokens counts thinking too: cutting the budget to fit the default
    # 4096 left the answer one token (budget 4095 of 4096).
    sent = cases.sent_body(make(default_max_tokens=4096), think=think)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == cap


def test_a_callers_max_tokens_is_kept_with_thinking() -> None:
    sent = cases.sent_body(make(), think=True, max_tokens=5000)
    assert (sent["max_tokens"], sent["thinking"]["budget_tokens"]) == (5000, 4096)
