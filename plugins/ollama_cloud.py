"""Ollama Cloud, straight to ``https://ollama.com`` with a Bearer key.

Endpoint ``generate`` (the default, as in the reference design) calls
``POST /api/generate`` with the messages flattened:

- ``system``: the content of every system message, in order, joined by a
  blank line; left out when there is none (the model's own then applies).
- ``prompt``: when the other messages are a single user message, its
  content unchanged. Otherwise a transcript, one block per message in
  order, ``User: …`` / ``Assistant: …`` / ``Tool: …``, blank-line separated
  and ending with ``Assistant:`` so the model writes the next turn.
  Ollama wraps the prompt in the model's template as one user turn.
- only system messages: refused (400); an empty prompt would only load the
  model and answer nothing.

Endpoint ``chat`` sends the messages as they are to ``POST /api/chat``; so
does a request of any endpoint that offers tools, carries tool calls or
results, or images, which ``/api/generate`` cannot carry.

Model names: ollama.com wants the bare name, so a source marker is removed
with the grammar of Ollama's own parser (``internal/modelref``): a last
``:cloud`` tag (any case) is dropped, and a tag ending in ``-cloud`` with no
``/`` in it loses that ending (``gpt-oss:120b-cloud`` → ``gpt-oss:120b``).
A name without a tag, such as ``my-cloud-model``, is left alone. Two markers
(``x:cloud:local``) or a ``:local`` marker are refused with 400: the caller
asked for something contradictory, and guessing would hide it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Literal

import msgspec

from lakehouse.plugin_api import (
    BadRequest,
    ChatRequest,
    ChatResponse,
    ConfigError,
    HTTPClient,
    Message,
    OllamaGenerateBody,
    Plugin,
    PluginOptions,
    ProviderContext,
    StreamDelta,
    chat_body,
    decode_json,
    ollama_error,
    ollama_reply_decoder,
    ollama_response,
    ollama_stream,
    runtime_options,
    think_value,
)

_ROLE_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


class OllamaCloudOptions(PluginOptions):
    endpoint: Literal["generate", "chat"] = "generate"
    # GET under base_url whose 200 means reachable. /api/tags answers without
    # a key and costs nothing, so it proves reachability, not the key.
    # Empty: no probe.
    probe_path: Annotated[str, msgspec.Meta(pattern=r"^(/\S*)?$")] = "/api/tags"
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


def _split_source(name: str) -> tuple[str, str | None]:
    """``name`` without its source marker, and the marker (or None)."""
    head, sep, tag = name.rpartition(":")
    if not sep:
        return name, None
    lowered = tag.lower()
    if lowered in ("cloud", "local"):
        return head, lowered
    if "/" not in tag and lowered.endswith("-cloud"):
        return f"{head}:{tag[: -len('-cloud')]}", "cloud"
    return name, None


def cloud_model(model: str) -> str:
    """The name ollama.com knows, or BadRequest for a contradictory one."""
    base, source = _split_source(model)
    if source is not None and _split_source(base)[1] is not None:
        raise BadRequest(f"model {model!r} has more than one source marker")
    if source == "local":
        raise BadRequest(f"model {model!r} is marked :local but was sent to Ollama Cloud")
    if not base or base.endswith(":"):
        raise BadRequest(f"model {model!r} has no name before its source marker")
    return base


def flatten(messages: list[Message]) -> tuple[str | None, str]:
    """``(system, prompt)`` for /api/generate, as the module docstring says."""
    system = [m.text() for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    if not rest:
        raise BadRequest("Ollama Cloud's generate endpoint needs a non-system message")
    if len(rest) == 1 and rest[0].role == "user":
        prompt = rest[0].text()
    else:
        turns = [f"{_ROLE_LABELS[m.role]}: {m.text()}" for m in rest]
        prompt = "\n\n".join([*turns, "Assistant:"])
    return ("\n\n".join(system) or None), prompt


_encode = msgspec.json.Encoder().encode


class OllamaCloudProvider:
    def __init__(self, ctx: ProviderContext) -> None:
        if not ctx.key:
            raise ConfigError("this provider needs a key")
        self.name = ctx.name
        self._options: OllamaCloudOptions = ctx.options or OllamaCloudOptions()
        self._key = ctx.key
        self._http = HTTPClient(ctx, {"Authorization": f"Bearer {ctx.key}"})

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        return await self._http.probe(self._options.probe_path, self._options.probe_timeout_secs)

    def request_for(
        self, request: ChatRequest, name: str, *, stream: bool = False
    ) -> tuple[str, bytes]:
        """The path and body of the upstream call for the bare model ``name``."""
        # /api/generate has no tools, tool turns or per-message images.
        rich = request.uses_tools() or request.has_images()
        if self._options.endpoint == "chat" or rich:
            return "/api/chat", _encode(chat_body(request, name, stream=stream))
        system, prompt = flatten(request.messages)
        generate = OllamaGenerateBody(
            model=name,
            prompt=prompt,
            system=system,
            stream=stream,
            think=think_value(request),
            format=request.format,
            options=runtime_options(request),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs,
        )
        return "/api/generate", _encode(generate)

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        name = cloud_model(model)
        path, body = self.request_for(request, name)
        reply = await self._http.post_json(path, body)
        if reply.status != 200:
            raise ollama_error(reply, self.name, self._key)
        data = decode_json(ollama_reply_decoder, reply, self.name)
        return ollama_response(data, provider=self.name, model=name, key=self._key, request=request)

    async def stream(
        self, request: ChatRequest, model: str
    ) -> AsyncGenerator[StreamDelta | ChatResponse, None]:
        # A generator, so a refused model name is raised on the first step
        # like any other failure, not when the stream is created.
        name = cloud_model(model)
        path, body = self.request_for(request, name, stream=True)
        upstream = ollama_stream(self._http, path, body, model=name, key=self._key, request=request)
        async with aclosing(upstream) as items:
            async for item in items:
                yield item


PLUGIN = Plugin(
    build=OllamaCloudProvider,
    default_base_url="https://ollama.com",
    options=OllamaCloudOptions,
    needs_key=True,
)
