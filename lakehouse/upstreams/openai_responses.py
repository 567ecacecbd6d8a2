"""The OpenAI Responses client (``POST {base_url}/responses``), for any
upstream that speaks it, such as OpenCode Zen's GPT-5 models. The facts it
relies on are in docs/protocols/openai-responses.md; how chatd's request
maps is in ``openai_responses_request``, how the reply maps back in
``openai_responses_reply`` and ``openai_responses_stream``.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.event_stream import EventStreamProvider, keyed_options
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import Flavour, ProbePath
from lakehouse.upstreams.openai_responses_reply import parse_response
from lakehouse.upstreams.openai_responses_request import body as responses_body
from lakehouse.upstreams.openai_responses_stream import ResponsesFold
from lakehouse.wire import ChatRequest, ChatResponse


class ResponsesOptions(PluginOptions):
    """Options of a Responses upstream (``[chatd.providers.<name>.options]``)."""

    # GPT-5 reasoning models answer 400 to temperature and top_p.
    drop_sampling: bool = True
    probe_path: ProbePath = ""
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


_encode = msgspec.json.Encoder().encode


class OpenAIResponsesProvider(EventStreamProvider):
    """One Responses upstream. ``http``: a session shared with the provider
    that owns it (which then starts and closes it); else its own."""

    path = "/responses"

    def __init__(
        self, ctx: ProviderContext, flavour: Flavour, *, http: HTTPClient | None = None
    ) -> None:
        options, key = keyed_options(ctx, ResponsesOptions)
        super().__init__(
            ctx,
            flavour,
            {"Authorization": f"Bearer {key}"},
            probe=(options.probe_path, options.probe_timeout_secs),
            http=http,
        )
        self._options = options

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

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        return parse_response(reply, model, self.name, self._key)

    def fold(self, model: str, status: int) -> ResponsesFold:
        return ResponsesFold(self.name, model, self._key, status=status)
