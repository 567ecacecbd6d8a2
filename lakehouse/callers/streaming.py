"""Streamed answers on their way to the caller, in plain ASGI.

A ``Relay`` sends one ``Dispatcher.stream`` in a framing (native NDJSON
lines, or the OpenAI surface's SSE events). Its status is decided by the
first item: a failure before it is an ordinary error response, a failure
after it ends the stream with an error event in the stream's own framing,
never a silent cut. A small task per stream watches the caller: when it
hangs up, the stream is cancelled (closing the upstream response at once);
during silences it sends the framing's keep-alive comment, if it has one,
which also commits the stream to 200 when the first item is slow to come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from lakehouse.callers.http_io import known_error
from lakehouse.callers.openai_errors import error_body, error_status
from lakehouse.callers.openai_replies import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    Usage,
    choice_logprobs,
    finish_reason,
    usage,
)
from lakehouse.errors import ChatdError, settled
from lakehouse.plain_asgi import Headers, Receive, Send
from lakehouse.tool_calls import CallFold, arguments_text
from lakehouse.wire import (
    ChatResponse,
    ErrorBody,
    ErrorDetail,
    StreamDelta,
    StreamDone,
    StreamLine,
    ToolCall,
    ToolCallChunk,
    encoder,
)

# Status, headers and body of an error answered before the stream started.
Refuse = Callable[[ChatdError], tuple[int, Headers, bytes]]
Items = AsyncGenerator[StreamDelta | ChatResponse, None]
# The status counted for a caller that hung up (nginx's convention).
CLIENT_GONE = 499


class Framing(Protocol):
    @property
    def content_type(self) -> bytes: ...

    @property
    def keepalive(self) -> bytes | None:
        """A frame the caller ignores, sent through silences; None: never."""
        ...

    def delta(self, item: StreamDelta) -> bytes:
        """The frame for ``item``; b"" when it is held back for now."""
        ...

    def end(self, final: ChatResponse) -> bytes: ...

    def error(self, exc: ChatdError, message: str) -> bytes: ...

    def status(self, exc: ChatdError) -> int: ...


class LineWriter:
    """The native stream: one JSON object per line."""

    content_type = b"application/x-ndjson"
    keepalive = None

    def __init__(self) -> None:
        # The calls being streamed: a call is whole once the next starts.
        self._fold = CallFold()
        self._sent = 0

    def delta(self, item: StreamDelta) -> bytes:
        whole: list[ToolCall] = []
        for chunk in item.tool_calls or ():
            if self._fold and chunk.index not in self._fold.indices():
                made = self._fold.calls()
                whole += made[self._sent :]
                self._sent = len(made)
            self._fold.add(chunk)
        if not (item.content or item.reasoning or whole or item.logprobs):
            return b""
        line = StreamLine(item.content, item.reasoning, whole or None, item.logprobs)
        return encoder.encode(line) + b"\n"

    def end(self, final: ChatResponse) -> bytes:
        lines = b""
        rest = (final.tool_calls or [])[self._sent :]
        if rest:
            lines = encoder.encode(StreamLine(tool_calls=rest)) + b"\n"
        return lines + encoder.encode(StreamDone.of(final)) + b"\n"

    def error(self, exc: ChatdError, message: str) -> bytes:
        detail = ErrorDetail(code=exc.code, message=message, provider=exc.provider)
        return encoder.encode(ErrorBody(detail)) + b"\n"

    def status(self, exc: ChatdError) -> int:
        return exc.status


class ChunkWriter:
    """SSE frames of one streamed completion."""

    content_type = b"text/event-stream"
    keepalive = b": keep-alive\n\n"

    def __init__(self, rid: str, model: str | Callable[[], str], *, include_usage: bool) -> None:
        self._id = f"chatcmpl-{rid}"
        # Read at the first chunk: the dispatcher knows the model by then.
        self._model = model if callable(model) else lambda: model
        self._created = int(time.time())
        self._include_usage = include_usage
        self._role_sent = False
        self._calls_sent = False

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            self._id, "chat.completion.chunk", self._created, self._model(), choices, usage
        )
        return b"data: " + encoder.encode(chunk) + b"\n\n"

    def _delta(self, content: str | None, reasoning: str | None) -> Delta:
        role: Literal["assistant"] | None = None if self._role_sent else "assistant"
        self._role_sent = True
        return Delta(role, content, reasoning)

    def delta(self, item: StreamDelta) -> bytes:
        delta = self._delta(item.content or None, item.reasoning or None)
        if item.tool_calls:
            self._calls_sent = True
            delta.tool_calls = [_delta_call(c) for c in item.tool_calls]
        logprobs = choice_logprobs(item.logprobs)
        return self._chunk([ChunkChoice(0, delta, None, logprobs)])

    def end(self, final: ChatResponse) -> bytes:
        frames = []
        if not self._role_sent:
            frames.append(self._chunk([ChunkChoice(0, self._delta("", None), None)]))
        if final.tool_calls and not self._calls_sent:
            # A provider that answered whole: its calls go out in one chunk.
            calls = [
                ToolCallChunk(n, c.id, c.function.name, arguments_text(c.function))
                for n, c in enumerate(final.tool_calls)
            ]
            frames.append(
                self._chunk(
                    [ChunkChoice(0, Delta(tool_calls=[_delta_call(c) for c in calls]), None)]
                )
            )
        reason = finish_reason(final.done_reason)
        frames.append(self._chunk([ChunkChoice(0, Delta(), reason)]))
        if self._include_usage:
            frames.append(self._chunk([], usage(final)))
        frames.append(b"data: [DONE]\n\n")
        return b"".join(frames)

    def error(self, exc: ChatdError, message: str) -> bytes:
        # The SDK raises on an event with an `error`; no [DONE] follows.
        return b"data: " + error_body(exc, message) + b"\n\n"

    def status(self, exc: ChatdError) -> int:
        return error_status(exc)


def _delta_call(chunk: ToolCallChunk) -> DeltaToolCall:
    """The OpenAI shape of a chunk: ``arguments`` always there (the SDKs
    concatenate it), ``id``, ``type`` and the name only on a call's first."""
    function = DeltaFunction(chunk.name, chunk.arguments)
    kind: Literal["function"] | None = "function" if chunk.id else None
    return DeltaToolCall(chunk.index, chunk.id, kind, function)


@dataclass(slots=True)
class Outcome:
    """How a stream ended, for metrics and the access log."""

    status: int
    final: ChatResponse | None = None
    error: ChatdError | None = None


class Relay:
    def __init__(
        self,
        send: Send,
        receive: Receive,
        framing: Framing,
        *,
        headers: Headers,
        refuse: Refuse,
        redact: Callable[[str], str] = str,
        keepalive_secs: float = 0.0,
        trailer: Callable[[], bytes] | None = None,
    ) -> None:
        self._send = send
        # Server-Timing, known only at the end: an HTTP trailer when the
        # connection can carry one (see chat_flow.timing_trailer).
        self._trailer = trailer
        self._receive = receive
        self._framing = framing
        self._headers = headers
        self._refuse = refuse
        self._redact = redact
        self._keepalive = keepalive_secs if framing.keepalive is not None else 0.0
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        # Sends come from the relay and the watcher: one at a time.
        self._lock = asyncio.Lock()
        self._started = False
        self._ended = False
        self._outcome: Outcome | None = None
        self._watching = True
        self.gone = False

    async def run(self, items: Items) -> Outcome:
        """Send ``items`` (closed on the way out, whatever happens)."""
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch(task))
        try:
            return await self._relay(items)
        except asyncio.CancelledError:
            if not self.gone:
                raise
            # Our own cancellation, for a caller that hung up (maybe just
            # as the last frame went out).
            task.uncancel()
            return self._outcome if self._ended and self._outcome else Outcome(CLIENT_GONE)
        finally:
            self._watching = False
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await items.aclose()

    async def _relay(self, items: Items) -> Outcome:
        try:
            item = await anext(items)
            if isinstance(item, ChatResponse):
                await self._answered_whole(item)
            while not isinstance(item, ChatResponse):
                frame = self._framing.delta(item)
                if frame:
                    await self._body(frame)
                item = await anext(items)
        except Exception as exc:
            return await self._fail(known_error(exc, self._redact))
        self._outcome = Outcome(200, final=item)
        await self._body(self._framing.end(item), more=False)
        return self._outcome

    async def _answered_whole(self, final: ChatResponse) -> None:
        """A stream that was one ChatResponse (a provider that cannot stream):
        its text has not gone out in deltas, so it goes as one now; the
        framing's end sends the rest (tool calls, usage) as after deltas."""
        if final.content or final.reasoning or final.logprobs:
            whole = StreamDelta(final.content, final.reasoning or "", None, final.logprobs)
            frame = self._framing.delta(whole)
            if frame:
                await self._body(frame)

    async def _fail(self, error: ChatdError) -> Outcome:
        # Kept in the outcome, which self keeps: no traceback back to here.
        error = settled(error)
        async with self._lock:
            if not self._started:
                status, headers, body = self._refuse(error)
                self._started = self._ended = True
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                    *self._headers,
                ]
                await self._send(
                    {"type": "http.response.start", "status": status, "headers": headers}
                )
                self._outcome = Outcome(status, error=error)
                await self._send({"type": "http.response.body", "body": body})
                return self._outcome
        self._outcome = Outcome(self._framing.status(error), error=error)
        await self._body(self._framing.error(error, self._redact(error.message)), more=False)
        return self._outcome

    async def _start(self) -> None:
        self._started = True
        headers = [
            (b"content-type", self._framing.content_type),
            (b"cache-control", b"no-cache"),
            # Tells a buffering proxy (nginx) to pass each frame on at once.
            (b"x-accel-buffering", b"no"),
            *self._headers,
        ]
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        if self._trailer is not None:
            headers.append((b"trailer", b"server-timing"))
            start["trailers"] = True
        await self._send(start)

    async def _body(self, frame: bytes, *, more: bool = True) -> None:
        async with self._lock:
            if self._ended:
                return
            if not self._started:
                await self._start()
            self._ended = not more
            await self._send({"type": "http.response.body", "body": frame, "more_body": more})
            self._last = self._loop.time()
            if self._ended and self._trailer is not None:
                timing = (b"server-timing", self._trailer())
                await self._send(
                    {"type": "http.response.trailers", "headers": [timing], "more_trailers": False}
                )

    async def _watch(self, task: asyncio.Task[object]) -> None:
        """Until the caller hangs up: then cancel the stream (``task``). In
        the meantime, a keep-alive whenever nothing was sent for a while."""
        try:
            while True:
                due = self._last + self._keepalive if self._keepalive else None
                try:
                    async with asyncio.timeout_at(due):
                        message = await self._receive()
                except TimeoutError:
                    await self._keep_alive()
                    continue
                if message["type"] == "http.disconnect":
                    break
        except (OSError, RuntimeError):
            pass  # a keep-alive could not be sent: the caller is gone as well
        if self._watching:
            self.gone = True
            task.cancel()

    async def _keep_alive(self) -> None:
        frame = self._framing.keepalive
        assert frame is not None
        async with self._lock:
            if self._ended or self._loop.time() - self._last < self._keepalive * 0.99:
                return
            if not self._started:
                await self._start()
            await self._send({"type": "http.response.body", "body": frame, "more_body": True})
            self._last = self._loop.time()
