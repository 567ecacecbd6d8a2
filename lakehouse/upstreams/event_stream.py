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

from lakehouse.errors import ConfigError
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import Flavour, FlavouredProvider
from lakehouse.upstreams.provider import options_as
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
    return options_as(ctx, kind), ctx.key


class EventStreamProvider(FlavouredProvider):
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
        # The auth headers go in an own session, or with each request on a
        # shared one (HTTPProvider).
        super().__init__(ctx, auth=lambda key: auth, http=http)
        self.flavour = flavour
        self.probe_path, self.probe_timeout = probe

    # -- what a dialect supplies ----------------------------------------------

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        raise NotImplementedError

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        """The answer of a whole (non-streamed) 2xx reply."""
        raise NotImplementedError

    def fold(self, model: str, status: int) -> Fold:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------

    async def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        body = self.body(request, model, stream=True)
        async with self._http.stream_post(
            self.path, body, self._auth, error=self.classify
        ) as upstream:
            whole = await self.answered_whole(upstream, model)
            if whole is not None:
                # Its tool calls go out with the final reply.
                if whole.content or whole.reasoning:
                    yield StreamDelta(whole.content, whole.reasoning or "")
                yield whole
                return
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
