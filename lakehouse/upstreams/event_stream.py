"""What the Anthropic Messages and OpenAI Responses clients share: one
``POST {base_url}<path>`` that answers whole (JSON) or, with ``stream:
true``, as SSE events that a dialect's fold reads into deltas and the final
reply. A dialect supplies its path, auth headers, body, whole-reply parser
and fold; the posting, relaying and error classification are here, once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Protocol, TypeVar

from lakehouse.errors import ChatdError, ConfigError
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour
from lakehouse.upstreams.openai_chat_errors import classify_error
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

Options = TypeVar("Options", bound=PluginOptions)


class Fold(Protocol):
    """A dialect's reading of one stream."""

    @property
    def done(self) -> bool:
        """Whether the stream's terminal event has come."""
        ...

    def add(self, payload: bytes) -> StreamDelta | None: ...

    def result(self) -> ChatResponse: ...


def keyed_options(ctx: ProviderContext, kind: type[Options]) -> tuple[Options, str]:
    """The provider's options (defaults when none) and its key, for a
    dialect that needs one; ConfigError otherwise."""
    if not ctx.key:
        raise ConfigError("this provider needs a key")
    options = ctx.options if ctx.options is not None else kind()
    if not isinstance(options, kind):
        raise ConfigError(f"options must be a {kind.__name__}")
    return options, ctx.key


class EventStreamProvider:
    """One upstream of an SSE dialect. ``http``: a session shared with the
    provider that owns it (which then starts and closes it); else its own."""

    path = ""

    def __init__(
        self,
        ctx: ProviderContext,
        flavour: Flavour,
        auth: Mapping[str, str],
        *,
        probe: tuple[str, float],
        http: HTTPClient | None = None,
    ) -> None:
        self.name = ctx.name
        self.flavour = flavour
        self._key = ctx.key
        self._auth = dict(auth)
        self._probe = probe
        self._http = http or HTTPClient(ctx)

    # -- what a dialect supplies ----------------------------------------------

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        raise NotImplementedError

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        """The answer of a whole (non-streamed) 2xx reply."""
        raise NotImplementedError

    def fold(self, model: str, status: int) -> Fold:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        path, timeout = self._probe
        return await self._http.probe(path, timeout, self._auth)

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
                # An upstream (or proxy) that ignored "stream" answers whole;
                # its tool calls go out with the final reply.
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
