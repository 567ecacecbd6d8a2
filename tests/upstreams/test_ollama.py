"""lakehouse/ollama_native.py's ollama_stream, through plugins/ollama.py,
against aioresponses: the line shapes it reads and how a stream can end
badly. (The same against the real stub: tests/test_streaming_providers.py.)"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from lakehouse import errors
from lakehouse.wire import ChatRequest, ChatResponse, Message, StreamDelta
from tests import upstream_cases as cases
from tests.support import build_provider, mock_upstream

pytestmark = pytest.mark.anyio

BASE = "http://ollama.test:11434"
NDJSON = "application/x-ndjson"
REQUEST = ChatRequest(model="m", messages=[Message("user", "hi")])


def lines(*objects: dict[str, Any]) -> bytes:
    return b"".join(msgspec.json.encode(o) + b"\n" for o in objects)


def chunk(content: str = "", thinking: str | None = None, **kw: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    return {"model": "qwen3.5:latest", "message": message, "done": False, **kw}


DONE = {
    "model": "qwen3.5:latest",
    "message": {"role": "assistant", "content": "!"},
    "done": True,
    "done_reason": "length",
    "prompt_eval_count": 9,
    "eval_count": 4,
}


provider = cases.provider_fixture(lambda: build_provider("ollama", BASE))


async def run(
    provider: Any, body: bytes, content_type: str = NDJSON
) -> list[StreamDelta | ChatResponse]:
    with mock_upstream() as mock:
        mock.post(BASE + "/api/chat", body=body, content_type=content_type)
        return [item async for item in provider.stream(REQUEST, "qwen3.5:latest")]


async def test_chat_lines_stream_and_the_done_line_ends(provider: Any) -> None:
    body = lines(chunk(thinking="Hm"), chunk(""), chunk("Hel"), chunk("lo"), DONE)
    items = await run(provider, body)
    assert items[:-1] == [
        StreamDelta(reasoning="Hm"),
        StreamDelta(content="Hel"),
        StreamDelta(content="lo"),
        StreamDelta(content="!"),  # the done line's text still counts
    ]
    final = items[-1]
    assert isinstance(final, ChatResponse)
    # The text went out in the deltas: the end keeps none of it.
    assert (final.content, final.reasoning, final.done_reason) == ("", None, "length")
    assert (final.prompt_tokens, final.completion_tokens) == (9, 4)


async def test_generate_lines_are_read_too(provider: Any) -> None:
    body = lines(
        {"response": "", "thinking": "x", "done": False},
        {"response": "ok", "done": False},
        {"response": "", "done": True},
    )
    items = await run(provider, body)
    assert items[:-1] == [StreamDelta(reasoning="x"), StreamDelta(content="ok")]
    final = items[-1]
    assert isinstance(final, ChatResponse)
    assert (final.content, final.reasoning, final.done_reason) == ("", None, "stop")
    assert final.model == "qwen3.5:latest"  # the requested name when none is reported


async def test_a_whole_json_reply_is_a_one_line_stream(provider: Any) -> None:
    items = await run(provider, lines(DONE), content_type="application/json")
    assert items == [StreamDelta(content="!"), items[-1]]
    assert isinstance(items[-1], ChatResponse) and items[-1].done_reason == "length"


async def test_eof_without_done_is_a_bad_response(provider: Any) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="without its done line"):
        await run(provider, lines(chunk("Hel"), chunk("lo")))


async def test_error_line_is_an_upstream_error(provider: Any) -> None:
    with pytest.raises(errors.UpstreamError, match="out of memory") as caught:
        await run(provider, lines(chunk("Hel"), {"error": "out of memory"}))
    assert type(caught.value) is errors.UpstreamError


async def test_unusable_line_is_a_bad_response(provider: Any) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="unusable stream line"):
        await run(provider, lines(chunk("Hel")) + b'{"message": 7}\n')


async def test_html_is_refused_before_any_item(provider: Any) -> None:
    with pytest.raises(errors.UpstreamBadResponse, match="text/html, not an NDJSON stream"):
        await run(provider, b"<html>proxy error</html>", content_type="text/html")


async def test_error_status_maps_like_chat(provider: Any) -> None:
    with mock_upstream() as mock:
        mock.post(BASE + "/api/chat", status=404, payload={"error": "model 'm' not found"})
        with pytest.raises(errors.UpstreamRejected, match="not found"):
            await anext(provider.stream(REQUEST, "m"))


def called(*names: str) -> dict[str, Any]:
    calls = [
        {"function": {"index": n, "name": name, "arguments": {"n": n}}}
        for n, name in enumerate(names)
    ]
    return {
        "model": "qwen3.5:latest",
        "message": {"role": "assistant", "content": "", "tool_calls": calls},
        "done": False,
    }


STOP = {**DONE, "done_reason": "stop", "message": {"role": "assistant", "content": ""}}


@pytest.mark.parametrize("parallel", [None, False])
async def test_whole_calls_become_one_chunk_each_with_minted_ids(
    provider: Any, parallel: bool | None
) -> None:
    request = msgspec.structs.replace(REQUEST, parallel_tool_calls=parallel)
    with mock_upstream() as mock:
        mock.post(BASE + "/api/chat", body=lines(called("f", "g"), STOP), content_type=NDJSON)
        items = [item async for item in provider.stream(request, "qwen3.5:latest")]
    *deltas, final = items
    assert isinstance(final, ChatResponse)
    # Ollama says "stop"; the caller is told the model called tools.
    assert final.done_reason == "tool_calls"
    expected = ["f"] if parallel is False else ["f", "g"]
    assert final.tool_calls is not None
    assert [c.function.name for c in final.tool_calls] == expected
    chunks = [c for d in deltas if isinstance(d, StreamDelta) for c in d.tool_calls or ()]
    assert [(c.index, c.id, c.name, c.arguments) for c in chunks] == [
        (n, call.id, call.function.name, f'{{"n":{n}}}') for n, call in enumerate(final.tool_calls)
    ]
    assert all(c.id.startswith("call_") for c in final.tool_calls)
