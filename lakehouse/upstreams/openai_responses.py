"""The OpenAI Responses client (``POST {base_url}/responses``), for any
upstream that speaks it, such as OpenCode Zen's GPT-5 models. The facts it
relies on are in docs/protocols/openai-responses.md.

How chatd's request maps:
- system messages become ``instructions`` (joined in order), the rest
  ``input`` messages with their role;
- ``max_tokens`` becomes ``max_output_tokens`` (reasoning counts against
  it), raised to Responses' minimum of 16 when smaller;
- ``format`` becomes ``text.format`` (``json_object`` or a named
  ``json_schema``);
- ``think`` becomes ``reasoning.effort`` (``max`` is sent as ``high``) with
  ``summary: auto``, so the reasoning comes back as text; without ``think``
  the model's default effort applies;
- ``stop`` and ``seed`` have no Responses counterpart and are dropped;
- ``store: false``: chatd keeps no conversation state upstream.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import msgspec

from lakehouse.errors import BadRequest, ChatdError, ConfigError
from lakehouse.upstreams.contract import PluginOptions, ProviderContext, UpstreamReply
from lakehouse.upstreams.framing import iter_sse
from lakehouse.upstreams.http import HTTPClient
from lakehouse.upstreams.openai_chat import MAX_WHOLE_BODY, Flavour, ProbePath
from lakehouse.upstreams.openai_chat_errors import classify_error
from lakehouse.upstreams.openai_responses_reply import parse_response
from lakehouse.upstreams.openai_responses_stream import ResponsesFold
from lakehouse.wire import ChatRequest, ChatResponse, StreamDelta

# OpenAI refuses a smaller max_output_tokens (400); a smaller cap is raised.
MIN_OUTPUT_TOKENS = 16
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


class ResponsesOptions(PluginOptions):
    """Options of a Responses upstream (``[chatd.providers.<name>.options]``)."""

    # GPT-5 reasoning models answer 400 to temperature and top_p.
    drop_sampling: bool = True
    probe_path: ProbePath = ""
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class _Input(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str


class _Format(msgspec.Struct, omit_defaults=True):
    type: Literal["json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None


class _Text(msgspec.Struct):
    format: _Format


class _Reasoning(msgspec.Struct):
    effort: str
    summary: str = "auto"


class _Body(msgspec.Struct, omit_defaults=True):
    model: str
    input: list[_Input]
    stream: bool
    # No default, so always sent: chatd keeps no state upstream.
    store: bool
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: _Text | None = None
    reasoning: _Reasoning | None = None


_encode = msgspec.json.Encoder().encode


def text_format(fmt: Literal["json"] | dict[str, Any] | None) -> _Text | None:
    if fmt is None:
        return None
    if fmt == "json":
        return _Text(_Format("json_object"))
    assert isinstance(fmt, dict)
    # Responses requires a name; callers give only the schema.
    return _Text(_Format("json_schema", name="response", schema=fmt))


def output_cap(max_tokens: int | None) -> int | None:
    return None if max_tokens is None else max(max_tokens, MIN_OUTPUT_TOKENS)


def reasoning(think: bool | str | None) -> _Reasoning | None:
    if think is None or think is False:
        return None
    return _Reasoning(_EFFORTS["medium" if think is True else str(think)])


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
        return await self._http.probe(self._options.probe_path, self._options.probe_timeout_secs)

    def body(self, request: ChatRequest, model: str, *, stream: bool = False) -> bytes:
        instructions: list[str] = []
        items: list[_Input] = []
        for message in request.messages:
            if message.role == "system":
                instructions.append(message.content)
            elif message.role == "assistant":
                items.append(_Input("assistant", message.content))
            else:
                # A tool result without the tool-call model is the user's text.
                items.append(_Input("user", message.content))
        if not items:
            raise BadRequest(
                f"{self.name}: the Responses API needs a user or assistant message, "
                "not only system ones",
                provider=self.name,
            )
        sampling = not self._options.drop_sampling
        return _encode(
            _Body(
                model=model,
                input=items,
                stream=stream,
                store=False,
                instructions="\n\n".join(instructions) or None,
                max_output_tokens=output_cap(request.max_tokens),
                temperature=request.temperature if sampling else None,
                top_p=request.top_p if sampling else None,
                text=text_format(request.format),
                reasoning=reasoning(request.think),
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
                    delta = fold.add(data)
                    if delta is not None:
                        yield delta
                    if fold.done:
                        break
            yield fold.result()
            await upstream.drain()
