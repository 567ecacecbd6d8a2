"""What the Anthropic Messages and OpenAI Responses clients share: one
``POST`` path, errors classified by a Flavour, a whole reply parsed, and
a stream of typed SSE events folded into deltas until the fold says the
answer is complete. Each client adds its request body, its reply parser
and its fold."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol

from lakehouse.errors import ChatdError
from lakehouse.upstreams.contract import UpstreamReply
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour
from lakehouse.upstreams.openai_chat_errors import classify_error
from lakehouse.upstreams.provider import HTTPProvider
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta


class Fold(Protocol):
    """A stream's events folded into deltas and the final answer."""

    @property
    def done(self) -> bool: ...

    def add(self, payload: bytes) -> StreamDelta | None: ...

    def result(self) -> ChatResponse: ...


class EventStreamProvider(HTTPProvider):
    path: str
    flavour: Flavour

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        raise NotImplementedError

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        raise NotImplementedError

    def fold(self, model: str, status: int) -> Fold:
        raise NotImplementedError

    def classify(self, reply: UpstreamReply) -> ChatdError:
        return classify_error(
            reply,
            error_kinds=self.flavour.error_kinds,
            quota_phrases=self.flavour.quota_phrases,
            provider=self.name,
            key=self._key,
        )

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        reply = await self._http.post_json(self.path, self.body(request, model), self._auth)
        if not 200 <= reply.status < 300:
            raise self.classify(reply)
        return self.parse(reply, model)

    async def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        body = self.body(request, model, stream=True)
        async with self._http.stream_post(
            self.path, body, self._auth, error=self.classify
        ) as upstream:
            if upstream.content_type == "application/json":
                # An upstream (or proxy) that ignored "stream" answers whole.
                data = await upstream.read(MAX_WHOLE_BODY)
                whole = self.parse(UpstreamReply(upstream.status, upstream.headers, data), model)
                if whole.content or whole.reasoning:
                    yield StreamDelta(whole.content, whole.reasoning or "")
                yield whole
                return
            if upstream.content_type not in ("text/event-stream", ""):
                raise upstream.refuse(await upstream.read(300), "an event stream")
            fold = self.fold(model, upstream.status)
            async with aclosing(iter_sse(upstream, provider=self.name)) as events:
                async for data in events:
                    # Not these protocols' ending; a relay may add it anyway.
                    if data == SSE_DONE:
                        break
                    delta = fold.add(data)
                    if delta is not None:
                        yield delta
                    if fold.done:
                        break
            yield fold.result()
            await upstream.drain()
