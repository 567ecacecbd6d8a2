"""What the Anthropic Messages and OpenAI Responses clients share: one
``POST`` path, errors classified by a Flavour, a whole reply parsed, and
a stream of typed SSE events folded into deltas until the fold says the
answer is complete. Each client adds its request body, its reply parser
and its fold."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol

from lakehouse.upstreams.contract import ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour, FlavouredProvider
from lakehouse.upstreams.provider import Auth
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta


class Fold(Protocol):
    """A stream's events folded into deltas and the final answer."""

    @property
    def done(self) -> bool: ...

    def add(self, payload: bytes) -> StreamDelta | None: ...

    def result(self) -> ChatResponse: ...


class ProbeOptions(Protocol):
    @property
    def probe_path(self) -> str: ...

    @property
    def probe_timeout_secs(self) -> float: ...


class EventStreamProvider(FlavouredProvider):
    """``path``: where requests go; ``flavour``: how its errors read."""

    path: str

    def __init__(
        self,
        ctx: ProviderContext,
        flavour: Flavour,
        options: ProbeOptions,
        *,
        auth: Auth,
        http: HTTPClient | None,
    ) -> None:
        super().__init__(ctx, auth=auth, http=http)
        self.flavour = flavour
        self.probe_path = options.probe_path
        self.probe_timeout = options.probe_timeout_secs

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        raise NotImplementedError

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        raise NotImplementedError

    def fold(self, model: str, status: int) -> Fold:
        raise NotImplementedError

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
