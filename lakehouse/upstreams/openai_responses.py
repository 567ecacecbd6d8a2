"""The OpenAI Responses client (``POST {base_url}/responses``), for any
upstream that speaks it, such as OpenCode Zen's GPT-5 models. The facts it
relies on are in docs/protocols/openai-responses.md; how chatd's request
maps is in ``openai_responses_request``, how the reply maps back in
``openai_responses_reply`` and ``openai_responses_stream``.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated

import msgspec

from lakehouse.errors import ChatdError, ConfigError
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import SSE_DONE, iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour, ProbePath
from lakehouse.upstreams.openai_chat_errors import classify_error
from lakehouse.upstreams.openai_responses_reply import parse_response
from lakehouse.upstreams.openai_responses_request import body as responses_body
from lakehouse.upstreams.openai_responses_stream import ResponsesFold
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta


class ResponsesOptions(PluginOptions):
    """Options of a Responses upstream (``[chatd.providers.<name>.options]``)."""

    # GPT-5 reasoning models answer 400 to temperature and top_p.
    drop_sampling: bool = True
    probe_path: ProbePath = ""
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


_encode = msgspec.json.Encoder().encode


class OpenAIResponsesProvider:
    """One Responses upstream. ``http``: a session shared with the provider
    that owns it (which then starts and closes it); else its own."""

    path = "/responses"

    def __init__(
        self, ctx: ProviderContext, flavour: Flavour, *, http: HTTPClient | None = None
    ) -> None:
        if not ctx.key:
            raise ConfigError("this provider needs a key")
        options = ctx.options if ctx.options is not None else ResponsesOptions()
        if not isinstance(options, ResponsesOptions):
            raise ConfigError("options must be a ResponsesOptions")
        self.name = ctx.name
        self.flavour = flavour
        self._options = options
        self._key = ctx.key
        self._auth = {"Authorization": f"Bearer {ctx.key}"}
        self._http = http or HTTPClient(ctx)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        return await self._http.probe(
            self._options.probe_path, self._options.probe_timeout_secs, self._auth
        )

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        return _encode(
            responses_body(
                request,
                model,
                stream=stream,
                sampling=not self._options.drop_sampling,
                provider=self.name,
            )
        )

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
        return parse_response(reply, model, self.name, self._key)

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
                reply = UpstreamReply(upstream.status, upstream.headers, data)
                whole = parse_response(reply, model, self.name, self._key)
                if whole.content or whole.reasoning:
                    yield StreamDelta(whole.content, whole.reasoning or "")
                yield whole
                return
            if upstream.content_type not in ("text/event-stream", ""):
                raise upstream.refuse(await upstream.read(300), "an event stream")
            fold = ResponsesFold(self.name, model, self._key, status=upstream.status)
            async with aclosing(iter_sse(upstream, provider=self.name)) as events:
                async for data in events:
                    # Not this protocol's ending; a relay may add it anyway.
                    if data == SSE_DONE:
                        break
                    delta = fold.add(data)
                    if delta is not None:
                        yield delta
                    if fold.done:
                        break
            yield fold.result()
            await upstream.drain()
