"""lakehouse/streams.py: NDJSON and SSE framing over chunks cut anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from lakehouse.errors import UpstreamBadResponse
from lakehouse.upstreams.framing import SSE_DONE, LineSplitter, SSEEvents, iter_ndjson, iter_sse

pytestmark = pytest.mark.anyio


class Source:
    """Chunks as an upstream body would hand them over, counting reads."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = list(parts)
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.read += 1
            yield part


def splits(data: bytes) -> Iterable[list[bytes]]:
    """The whole, one byte at a time, and cut in two at every offset."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


async def ndjson(parts: Iterable[bytes], **kw: Any) -> list[bytes]:
    return [line async for line in iter_ndjson(Source(parts), **kw)]


async def sse(parts: Iterable[bytes], **kw: Any) -> list[bytes]:
    return [data async for data in iter_sse(Source(parts), **kw)]


NDJSON_SAMPLE = (
    b'{"message":{"content":"","thinking":"Let me"},"done":false}\n'
    b'{"message":{"content":"H\xc3\xa9l"},"done":false}\r\n'
    b"\n"
    b"   \n"
    b'{"message":{"content":"lo"},"done":false}\n'
    b'{"message":{"content":""},"done":true,"done_reason":"stop"}'
)
NDJSON_LINES = [
    b'{"message":{"content":"","thinking":"Let me"},"done":false}',
    b'{"message":{"content":"H\xc3\xa9l"},"done":false}',
    b'{"message":{"content":"lo"},"done":false}',
    b'{"message":{"content":""},"done":true,"done_reason":"stop"}',
]


async def test_ndjson_lines_survive_every_chunk_boundary() -> None:
    for parts in splits(NDJSON_SAMPLE):
        assert await ndjson(parts) == NDJSON_LINES, parts


async def test_ndjson_last_line_with_or_without_newline() -> None:
    assert await ndjson([b'{"a":1}\n{"b":2}']) == [b'{"a":1}', b'{"b":2}']
    assert await ndjson([b'{"a":1}\n{"b":2}\n']) == [b'{"a":1}', b'{"b":2}']
    assert await ndjson([b'{"a":1}\r\n{"b":2}\r']) == [b'{"a":1}', b'{"b":2}']


async def test_ndjson_blank_and_empty_streams() -> None:
    assert await ndjson([]) == []
    assert await ndjson([b""]) == []
    assert await ndjson([b"\n\n  \r\n", b"\t"]) == []


async def test_ndjson_line_cap_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse, match="longer than 8 bytes"):
        await ndjson([b"0123", b"45678", b"9\n"], max_line=8)
    with pytest.raises(UpstreamBadResponse):
        await ndjson([b"0123456789\n"], max_line=8)
    assert await ndjson([b"01234567\n"], max_line=8) == [b"01234567"]


SSE_SAMPLE = (
    b": OPENROUTER PROCESSING\n\n"
    b": OPENROUTER PROCESSING\r\n\r\n"
    b'data: {"choices":[{"delta":{"content":"H\xc3\xa9"}}]}\n\n'
    b"event: message\r\n"
    b"id: 7\r\n"
    b"retry: 1000\r\n"
    b'data: {"choices":\r\n'
    b'data: [{"delta":{"content":"llo"}}]}\r\n'
    b"\r\n"
    b'data:{"choices":[],"usage":{"prompt_tokens":3}}\n'
    b": a comment inside an event\n"
    b"\n"
    b"data: [DONE]\n\n"
    b'data: {"choices":[],"cost":"0.0001"}\n\n'
)
SSE_EVENTS = [
    '{"choices":[{"delta":{"content":"Hé"}}]}'.encode(),
    b'{"choices":\n[{"delta":{"content":"llo"}}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3}}',
    SSE_DONE,
]


async def test_sse_events_survive_every_chunk_boundary() -> None:
    for parts in splits(SSE_SAMPLE):
        assert await sse(parts) == SSE_EVENTS, parts


async def test_sse_stops_reading_at_done() -> None:
    # Zen's cost event, and even garbage, after [DONE] is never parsed.
    source = Source([b"data: 1\n\n", b"data: [DONE]\n\n", b"data: {cost\n\n", b"\xff" * 99])
    assert [d async for d in iter_sse(source)] == [b"1", SSE_DONE]
    assert source.read == 2


async def test_sse_done_with_spaces_or_without_final_blank_line() -> None:
    assert await sse([b"data:  [DONE] \n\n"]) == [SSE_DONE]
    assert await sse([b"data: 1\n\ndata: [DONE]"]) == [b"1", SSE_DONE]
    assert await sse([b"data: 1\n\ndata: [DONE]\n"]) == [b"1", SSE_DONE]


async def test_sse_event_cut_by_the_end_is_still_given() -> None:
    # The caller finds out from the payload (it will not decode) or from
    # the missing [DONE]; the framing does not hide it.
    assert await sse([b'data: 1\n\ndata: {"choi']) == [b"1", b'{"choi']
    assert await sse([b"data: 1\n\n"]) == [b"1"]


async def test_sse_fields_and_odd_lines() -> None:
    assert await sse([b"data\n\n"]) == []  # empty data: no event
    assert await sse([b"data\ndata\n\n"]) == [b"\n"]
    assert await sse([b"event: ping\n\n", b"id: 1\n\n"]) == []
    assert await sse([b"data: a\nnonsense\ndata: b\n\n"]) == [b"a\nb"]
    assert await sse([b"data:  two spaces\n\n"]) == [b" two spaces"]
    assert await sse([b"\xef\xbb", b"\xbfdata: x\n\n"]) == [b"x"]
    assert await sse([]) == []


async def test_sse_line_cap_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse, match=r"^up sent a stream line"):
        await sse([b"data: " + b"x" * 100], max_line=64, provider="up")


def test_line_splitter_keeps_partial_lines() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\r") == []
    assert splitter.feed(b"\nd\n\ne") == [b"abc", b"d", b""]
    assert splitter.finish() == b"e"
    assert splitter.finish() is None


def test_sse_events_by_line() -> None:
    events = SSEEvents()
    assert events.line(b"data: a") is None
    assert events.line(b": note") is None
    assert events.line(b"data: b") is None
    assert events.line(b"") == b"a\nb"
    assert events.line(b"") is None
    assert events.finish() is None
