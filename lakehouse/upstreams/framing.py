"""Framing of streamed upstream replies: NDJSON lines (Ollama) and SSE
``data:`` payloads (the OpenAI dialect), over any async iterable of byte
chunks cut at arbitrary places.

The parsers only frame: they hand back raw payload bytes for the caller's
msgspec decoder and do no I/O of their own, so they are tested byte by byte
without a socket.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

from lakehouse.errors import UpstreamBadResponse

# A streamed line is a token or two; Ollama's last /api/generate line can
# carry the whole token context, so the cap only stops a runaway upstream.
MAX_LINE = 16 * 1024 * 1024
SSE_DONE = b"[DONE]"
_BOM = b"\xef\xbb\xbf"


class LineSplitter:
    """Cuts chunks into lines without their ``\\n`` or ``\\r\\n`` ending."""

    def __init__(self, *, max_line: int = MAX_LINE, provider: str | None = None) -> None:
        self._rest = b""
        self._max_line = max_line
        self._provider = provider

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            self._rest += chunk
            self._check(self._rest)
            return []
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        self._check(self._rest)
        for line in lines:
            self._check(line)
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def finish(self) -> bytes | None:
        """The last line, when the stream ended without a newline after it."""
        rest, self._rest = self._rest, b""
        rest = rest[:-1] if rest.endswith(b"\r") else rest
        return rest or None

    def _check(self, line: bytes) -> None:
        if len(line) > self._max_line:
            name = self._provider or "the upstream"
            raise UpstreamBadResponse(
                f"{name} sent a stream line longer than {self._max_line} bytes",
                provider=self._provider,
            )


class SSEEvents:
    """Turns SSE lines into the ``data`` of each event (WHATWG event-stream rules).

    Comments (``: OPENROUTER PROCESSING``) and the ``event``, ``id`` and
    ``retry`` fields are dropped: no upstream of ours needs them.
    """

    def __init__(self) -> None:
        self._data: list[bytes] = []

    def line(self, line: bytes) -> bytes | None:
        """The event's data when ``line`` ends an event, else None."""
        if not line:
            return self.finish()
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)
        return None

    def finish(self) -> bytes | None:
        data, self._data = self._data, []
        if not data:
            return None
        return b"\n".join(data) or None


async def iter_ndjson(
    chunks: AsyncIterable[bytes], *, max_line: int = MAX_LINE, provider: str | None = None
) -> AsyncGenerator[bytes, None]:
    """The JSON text of each non-blank line, the last one also when no
    newline follows it."""
    splitter = LineSplitter(max_line=max_line, provider=provider)
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            if line := line.strip():
                yield line
    last = splitter.finish()
    if last is not None and (last := last.strip()):
        yield last


async def iter_sse(
    chunks: AsyncIterable[bytes], *, max_line: int = MAX_LINE, provider: str | None = None
) -> AsyncGenerator[bytes, None]:
    """The ``data`` of each event, up to and including ``SSE_DONE`` (given
    as that very constant, whatever whitespace surrounded it).

    Nothing after ``[DONE]`` is read: OpenCode Zen appends a cost event
    there, and the caller decides whether to drain the rest. An event cut
    off by the end of the stream (no blank line after it) is still given,
    so that a last ``data: [DONE]`` without its blank line counts.
    """
    splitter = LineSplitter(max_line=max_line, provider=provider)
    events = SSEEvents()
    first = True
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            if first:
                line, first = line.removeprefix(_BOM), False
            data = events.line(line)
            if data is None:
                continue
            if data.strip() == SSE_DONE:
                yield SSE_DONE
                return
            yield data
    last = splitter.finish()
    if last is not None:
        events.line(last.removeprefix(_BOM) if first else last)
    data = events.finish()
    if data is not None:
        yield SSE_DONE if data.strip() == SSE_DONE else data
