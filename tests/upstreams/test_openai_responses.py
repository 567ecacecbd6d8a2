"""lakehouse/upstreams/openai_responses*.py: the body it builds, the
response objects and streams it reads, and how each failure maps (HTTP
against aioresponses; end to end against the stub in
tests/test_opencode_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

from lakehouse import errors
from lakehouse.plugin_api import (
    ChatRequest,
    Flavour,
    OpenAIResponsesProvider,
    ResponsesOptions,
)
from lakehouse.upstreams.openai_responses_stream import ResponsesFold
from lakehouse.wire import StreamDelta, ToolCallChunk
from tests import upstream_cases as cases
from tests.support import mock_upstream

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789SECRET"
BASE = "https://gpt.test/v1"


def make(**options: Any) -> OpenAIResponsesProvider:
    return OpenAIResponsesProvider(
        cases.context("gpt", BASE, KEY, ResponsesOptions(**options)), Flavour()
    )


provider = cases.provider_fixture(make)


def response(*output: dict[str, Any], status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "model": "gpt-x",
        "output": list(output),
        "usage": {"input_tokens": 11, "output_tokens": 22, "total_tokens": 33},
        **extra,
    }


TEXT = {
    "type": "message",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
}
REASONING = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]}


# -- the request ------------------------------------------------------------------


def test_body() -> None:
    sent = cases.sent_body(make(), max_tokens=3, seed=1, temperature=0.4, format={"type": "object"})
    assert sent == {
        "model": "m",
        "instructions": "be brief",
        "input": [{"type": "message", "role": "user", "content": "hi"}],
        "stream": False,
        "store": False,
        # Raised to Responses' minimum.
        "max_output_tokens": 16,
        "text": {
            "format": {"type": "json_schema", "name": "response", "schema": {"type": "object"}}
        },
    }


def test_sampling_sent_when_not_dropped() -> None:
    sent = cases.sent_body(make(drop_sampling=False), temperature=0.4, top_p=0.9)
    assert (sent["temperature"], sent["top_p"]) == (0.4, 0.9)


@pytest.mark.parametrize(("think", "effort"), [(True, "medium"), ("low", "low"), ("max", "high")])
def test_think_is_reasoning_effort(think: Any, effort: str) -> None:
    assert cases.sent_body(make(), think=think)["reasoning"] == {
        "effort": effort,
        "summary": "auto",
    }
    assert "reasoning" not in cases.sent_body(make(), think=False)


@pytest.mark.parametrize("field", [{"logprobs": True}, {"stop": ["X"]}, {"presence_penalty": 1.0}])
def test_what_responses_cannot_carry_is_refused_by_name(field: dict[str, Any]) -> None:
    cases.check_refused_by_name(make(), field, "OpenAI Responses")


# -- whole replies ----------------------------------------------------------------


async def call(provider: OpenAIResponsesProvider, **reply: Any) -> Any:
    out, sent = await cases.exchange(provider, BASE + "/responses", **reply)
    assert sent.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    return out


async def test_reply(provider: OpenAIResponsesProvider) -> None:
    call_item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "f",
        "arguments": '{"a": 1}',
    }
    out = await call(provider, payload=response(REASONING, TEXT, call_item))
    assert (out.content, out.reasoning, out.model) == ("Hi", "thought", "gpt-x")
    assert (out.prompt_tokens, out.completion_tokens) == (11, 22)
    assert out.done_reason == "tool_calls"
    assert [(c.id, c.function.arguments) for c in out.tool_calls] == [("call_1", {"a": 1})]


@pytest.mark.parametrize(
    ("reason", "done"), [("max_output_tokens", "length"), ("content_filter", "content_filter")]
)
async def test_incomplete(provider: OpenAIResponsesProvider, reason: str, done: str) -> None:
    reply = response(TEXT, status="incomplete", incomplete_details={"reason": reason})
    assert (await call(provider, payload=reply)).done_reason == done


async def test_failed_is_an_upstream_error(provider: OpenAIResponsesProvider) -> None:
    reply = response(status="failed", error={"code": "server_error", "message": "boom"})
    with pytest.raises(errors.UpstreamError, match="boom"):
        await call(provider, payload=reply)


@pytest.mark.parametrize(
    "case",
    [
        cases.ErrorReply(
            400,
            {"error": {"message": "bad", "type": "invalid_request_error"}},
            errors.UpstreamRejected,
        ),
        cases.ErrorReply(
            401,
            {"error": {"message": "bad key", "type": "invalid_request_error"}},
            errors.UpstreamAuth,
        ),
        cases.ErrorReply(
            429, {"error": {"message": "quota", "code": "insufficient_quota"}}, errors.UpstreamQuota
        ),
        cases.ErrorReply(
            429,
            {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
            errors.UpstreamRateLimited,
        ),
        cases.ErrorReply(
            401,
            {"type": "error", "error": {"type": "CreditsError", "message": "no"}},
            errors.UpstreamError,
        ),
        cases.ErrorReply(503, {"error": {"message": "down"}}, errors.UpstreamError),
    ],
    ids=cases.error_id,
)
async def test_errors(provider: OpenAIResponsesProvider, case: cases.ErrorReply) -> None:
    await case.check(call(provider, **case.reply), case.body["error"]["message"])


# -- the stream fold --------------------------------------------------------------


def fold_all(*events: dict[str, Any]) -> tuple[list[StreamDelta], ResponsesFold]:
    fold = ResponsesFold("gpt", "m", KEY)
    return cases.fold_events(fold, *events), fold


def test_stream_fold() -> None:
    final = response(REASONING, TEXT)
    deltas, fold = fold_all(
        {"type": "response.created", "response": {**final, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning"}},
        {"type": "response.reasoning_summary_text.delta", "delta": "tho"},
        {"type": "response.reasoning_summary_text.delta", "delta": "ught"},
        {"type": "response.output_text.delta", "delta": "H"},
        {"type": "response.output_text.delta", "delta": "i"},
        {"type": "response.output_text.done", "text": "Hi"},
        {
            "type": "response.output_item.added",
            "output_index": 2,
            "item": {"type": "function_call", "call_id": "call_7", "name": "f", "arguments": ""},
        },
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": '{"a"'},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": ":3}"},
        {"type": "response.completed", "response": final},
    )
    assert deltas == [
        StreamDelta(reasoning="tho"),
        StreamDelta(reasoning="ught"),
        StreamDelta(content="H"),
        StreamDelta(content="i"),
        StreamDelta(tool_calls=[ToolCallChunk(0, id="call_7", name="f")]),
        StreamDelta(tool_calls=[ToolCallChunk(0, arguments='{"a"')]),
        StreamDelta(tool_calls=[ToolCallChunk(0, arguments=":3}")]),
    ]
    assert fold.done
    out = fold.result()
    # The text went out in the deltas: the end takes none of it from the
    # completed response's output.
    assert (out.content, out.reasoning, out.done_reason) == ("", None, "tool_calls")
    assert out.tool_calls is not None and out.tool_calls[0].function.arguments == {"a": 3}
    assert (out.prompt_tokens, out.completion_tokens) == (11, 22)


def test_stream_incomplete_is_length() -> None:
    final = response(TEXT, status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    _, fold = fold_all({"type": "response.incomplete", "response": final})
    assert fold.result().done_reason == "length"


def test_stream_failures() -> None:
    failed = response(status="failed", error={"code": "server_error", "message": "GPU gone"})
    _, fold = fold_all({"type": "response.failed", "response": failed})
    with pytest.raises(errors.UpstreamError, match="GPU gone"):
        fold.result()
    with pytest.raises(errors.UpstreamError, match="went away"):
        fold_all({"type": "error", "code": "server_error", "message": "went away"})


def test_stream_without_a_terminal_event() -> None:
    _, fold = fold_all({"type": "response.output_text.delta", "delta": "H"})
    with pytest.raises(errors.UpstreamBadResponse, match=r"without response\.completed"):
        fold.result()


async def test_a_done_sentinel_before_the_terminal_event_is_a_cut_stream(
    provider: OpenAIResponsesProvider,
) -> None:
    sse = b'data: {"type":"response.output_text.delta","delta":"H"}\n\ndata: [DONE]\n\n'
    with mock_upstream() as mock:
        mock.post(BASE + "/responses", body=sse, content_type="text/event-stream")
        stream = provider.stream(ChatRequest(model="m", messages=cases.HI), "m")
        assert await anext(stream) == StreamDelta(content="H")
        with pytest.raises(errors.UpstreamBadResponse, match=r"without response\.completed"):
            await anext(stream)


def test_stream_incomplete_in_a_function_call_is_length() -> None:
    item = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}
    final = response(
        {**item, "arguments": '{"ci'},
        status="incomplete",
        incomplete_details={"reason": "max_output_tokens"},
    )
    _, fold = fold_all(
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"ci'},
        {"type": "response.incomplete", "response": final},
    )
    assert fold.result().done_reason == "length"


def test_a_call_without_ids_is_relayed_with_the_id_of_the_final_answer() -> None:
    item = {"type": "function_call", "name": "f", "arguments": ""}
    deltas, fold = fold_all(
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{}"},
        {"type": "response.completed", "response": response({**item, "arguments": "{}"})},
    )
    cases.check_first_call_id_is_the_final_one(deltas, fold)


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_images_outside_user_turns_are_refused_not_dropped(role: Any) -> None:
    # instructions are text, and an assistant item holds output text only.
    assert "OpenAI Responses" in cases.image_refused_outside_user_turns(make(), role).message


REFUSAL = {
    "type": "message",
    "role": "assistant",
    "content": [{"type": "refusal", "refusal": "I can't help with that."}],
}


async def test_a_refusal_is_the_answer_and_ends_in_content_filter(
    provider: OpenAIResponsesProvider,
) -> None:
    # Under a JSON schema a declining model answers with a refusal part, not
    # output_text: an empty "stop" answer would hide it.
    out = await call(provider, payload=response(REFUSAL))
    assert (out.content, out.done_reason) == ("I can't help with that.", "content_filter")


def test_a_streamed_refusal_is_relayed_and_ends_in_content_filter() -> None:
    deltas, fold = fold_all(
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message"}},
        {"type": "response.refusal.delta", "output_index": 0, "delta": "I can't "},
        {"type": "response.refusal.delta", "output_index": 0, "delta": "help with that."},
        {"type": "response.refusal.done", "refusal": "I can't help with that."},
        {"type": "response.completed", "response": response(REFUSAL)},
    )
    assert deltas == [StreamDelta(content="I can't "), StreamDelta(content="help with that.")]
    out = fold.result()
    assert (out.content, out.done_reason) == ("", "content_filter")
