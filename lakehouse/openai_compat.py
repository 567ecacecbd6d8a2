"""The one OpenAI Chat Completions client, shared by every provider that
speaks that dialect (OpenRouter, OpenCode Zen, Kimi For Coding).

A plugin configures it with a ``Flavour``: which output-cap field the
upstream documents, and which error classes and phrases mean what. Every
flavour reads all three error-body shapes and both usage locations, since
Zen relays its routed upstream's bodies unchanged and OpenRouter relays
upstream errors: a per-flavour switch would only be a way to be wrong.

Plugins reach this module through ``lakehouse.plugin_api``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from lakehouse.errors import (
    ChatdError,
    ConfigError,
    UpstreamAuth,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRejected,
)
from lakehouse.keys import REDACTED
from lakehouse.upstream import (
    HTTPClient,
    PluginOptions,
    ProviderContext,
    UpstreamReply,
    decode_json,
    error_for_status,
    parse_retry_after,
    short_text,
)
from lakehouse.wire import ChatRequest, ChatResponse, Message

CapField = Literal["max_tokens", "max_completion_tokens"]
# How an upstream error is classified when its class or text decides it
# rather than its status.
ErrorKind = Literal["auth", "quota", "rejected", "rate_limited", "error"]

# OpenAI's and Moonshot's spent-quota types (also relayed by Zen and OpenRouter).
OPENAI_ERROR_KINDS: Mapping[str, ErrorKind] = {
    "insufficient_quota": "quota",
    "exceeded_current_quota_error": "quota",
}

# OpenCode Zen's own error classes. Zen answers 401 for spent credits and
# for unknown models, so the class, not the status, says whether the key is bad.
ZEN_ERROR_KINDS: Mapping[str, ErrorKind] = {
    **OPENAI_ERROR_KINDS,
    "AuthError": "auth",
    "RegionError": "auth",
    "CreditsError": "quota",
    "MonthlyLimitError": "quota",
    "UserLimitError": "quota",
    "FreeUsageLimitError": "quota",
    "GoUsageLimitError": "quota",
    "BlackUsageLimitError": "quota",
    "ModelError": "rejected",
    "RateLimitError": "rate_limited",
}

# OpenRouter's 402s name the limit hit in ``metadata.limit_source``; only the
# in-flight budget clears by itself (it is the one sent with Retry-After).
OPENROUTER_ERROR_KINDS: Mapping[str, ErrorKind] = {
    **OPENAI_ERROR_KINDS,
    "openrouter_credits": "quota",
    "openrouter_key_limit": "quota",
    "openrouter_in_flight_budget": "rate_limited",
}

# Lower-case phrases that mark a spent plan quota on a 401/403/429.
QUOTA_PHRASES = ("usage limit", "exceeded your current quota")


@dataclass(frozen=True)
class Flavour:
    """What differs between upstreams that speak the same dialect."""

    # The output cap each upstream documents (protocols.md §3.1).
    cap_field: CapField = "max_tokens"
    # ``error.type``, a string ``error.code`` or ``error.metadata.limit_source``
    # → its class; checked before the status on 4xx replies.
    error_kinds: Mapping[str, ErrorKind] = field(default_factory=lambda: OPENAI_ERROR_KINDS)
    quota_phrases: tuple[str, ...] = QUOTA_PHRASES


ProbePath = Annotated[str, msgspec.Meta(pattern=r"^(/\S*)?$")]


class OpenAICompatOptions(PluginOptions):
    """Options an operator may set in ``[chatd.providers.<name>.options]``."""

    # Never send the caller's temperature. Kimi K2.5+ (and Moonshot's fixed-
    # sampling models) answer 400 "only 1 is allowed" to any other value.
    drop_temperature: bool = False
    # Override the flavour's output-cap field, for an upstream that has
    # changed which one it accepts; the flavour's choice when unset.
    cap_field: CapField | None = None
    # A GET path under base_url whose 200 means healthy, e.g. "/models".
    # Empty (the default): no probe, since a call may cost money or quota.
    probe_path: ProbePath = ""
    probe_timeout_secs: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class _JSONSchemaFormat(msgspec.Struct):
    name: str
    schema: dict[str, Any]


class _ResponseFormat(msgspec.Struct, omit_defaults=True):
    type: Literal["json_object", "json_schema"]
    json_schema: _JSONSchemaFormat | None = None


class _Body(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    # No default, so always sent: the upstream default never decides.
    stream: bool
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    response_format: _ResponseFormat | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ReplyMessage(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    message: _ReplyMessage | None = None
    finish_reason: str | None = None
    usage: _Usage | None = None
    error: Any = None


class _Completion(msgspec.Struct):
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


class _ErrorEnvelope(msgspec.Struct):
    # "error" in Zen's own (Anthropic-style) envelope, absent otherwise.
    type: Any = None
    error: Any = None


_encode = msgspec.json.Encoder().encode
_completion_decoder = msgspec.json.Decoder(_Completion)
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)


@dataclass(frozen=True)
class _ErrorInfo:
    # The human text, for phrase matching; ``message`` adds the class name.
    text: str
    message: str
    # Candidate class names: error.type, a string error.code, limit_source.
    names: tuple[str, ...] = ()
    zen_envelope: bool = False


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _error_info(error: Any, key: str | None, *, zen_envelope: bool = False) -> _ErrorInfo:
    """Read the inner ``error`` value of any of the three shapes."""
    if not isinstance(error, dict):
        text = _one_line(redact_key(str(error) if error is not None else "", key))
        return _ErrorInfo(text, text)
    message = error.get("message")
    text = message if isinstance(message, str) else ""
    names = [v for v in (error.get("type"), error.get("code")) if isinstance(v, str) and v]
    metadata = error.get("metadata")
    if isinstance(metadata, dict):
        source = metadata.get("limit_source")
        if isinstance(source, str):
            names.append(source)
        # OpenRouter's own message is often generic; the relayed one says why.
        raw, via = metadata.get("raw"), metadata.get("provider_name")
        if isinstance(raw, str) and raw:
            text += f" (via {via}: {raw})" if isinstance(via, str) else f" ({raw})"
    # Redact before cutting, so no part of a quoted key survives the cut.
    text = _one_line(redact_key(text, key))
    message = f"{text} [{names[0]}]" if text and names else text or (names[0] if names else "")
    return _ErrorInfo(text, message, tuple(names), zen_envelope)


def _parse_error_body(body: bytes, key: str | None) -> _ErrorInfo:
    """The message and class names of a non-2xx body, whatever its shape."""
    if key:
        body = body.replace(key.encode(), REDACTED.encode())
    try:
        envelope = _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        envelope = _ErrorEnvelope()
    if envelope.error is None:
        text = short_text(body)
        return _ErrorInfo(text, text)
    return _error_info(envelope.error, key, zen_envelope=envelope.type == "error")


_KIND_CLASSES: Mapping[ErrorKind, type[UpstreamError]] = {
    "auth": UpstreamAuth,
    "quota": UpstreamQuota,
    "rejected": UpstreamRejected,
    "rate_limited": UpstreamRateLimited,
    "error": UpstreamError,
}


def classify_error(
    reply: UpstreamReply, flavour: Flavour, provider: str, key: str | None = None
) -> ChatdError:
    """The error family member for a non-2xx reply of this flavour."""
    info = _parse_error_body(reply.body, key)
    retry_after = parse_retry_after(reply.headers)
    status = reply.status
    kind: ErrorKind | None = None
    if 400 <= status < 500:
        kind = next((flavour.error_kinds[n] for n in info.names if n in flavour.error_kinds), None)
        lowered = info.text.lower()
        if (
            kind is None
            and status in (401, 403, 429)
            and any(phrase in lowered for phrase in flavour.quota_phrases)
        ):
            kind = "quota"
        # Zen's envelope names its class; a 401 with one we do not know is
        # not proof of a dead key, so it stays unclassified rather than auth.
        if kind is None and info.zen_envelope and status == 401:
            kind = "error"
    if kind is None:
        return error_for_status(status, info.message, provider=provider, retry_after=retry_after)
    text = f"{provider} answered {status}" + (f": {info.message}" if info.message else "")
    return _KIND_CLASSES[kind](
        text, provider=provider, upstream_status=status, retry_after=retry_after
    )


def redact_key(text: str, key: str | None) -> str:
    """Upstreams sometimes quote the key back in their error text."""
    return text.replace(key, REDACTED) if key else text


def response_format(fmt: Literal["json"] | dict[str, Any] | None) -> _ResponseFormat | None:
    if fmt is None:
        return None
    if fmt == "json":
        return _ResponseFormat("json_object")
    assert isinstance(fmt, dict)
    # OpenAI requires a name; callers give only the schema.
    return _ResponseFormat("json_schema", _JSONSchemaFormat(name="response", schema=fmt))


class OpenAICompatProvider:
    """One OpenAI-dialect upstream: ``POST {base_url}/chat/completions``."""

    def __init__(self, ctx: ProviderContext, flavour: Flavour) -> None:
        if not ctx.key:
            raise ConfigError("this provider needs a key")
        self.name = ctx.name
        self.flavour = flavour
        options = ctx.options if ctx.options is not None else OpenAICompatOptions()
        if not isinstance(options, OpenAICompatOptions):
            raise ConfigError("options must be an OpenAICompatOptions")
        self._options = options
        self._cap: CapField = options.cap_field or flavour.cap_field
        self._key = ctx.key
        self._http = HTTPClient(ctx, {"Authorization": f"Bearer {ctx.key}"})

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def probe(self) -> bool:
        path = self._options.probe_path
        if not path:
            return True
        reply = await self._http.request("GET", path, timeout=self._options.probe_timeout_secs)
        return reply.status == 200

    def body(self, request: ChatRequest, model: str) -> bytes:
        cap = request.max_tokens
        temperature = None if self._options.drop_temperature else request.temperature
        return _encode(
            _Body(
                model=model,
                messages=request.messages,
                stream=False,
                max_tokens=cap if self._cap == "max_tokens" else None,
                max_completion_tokens=cap if self._cap == "max_completion_tokens" else None,
                temperature=temperature,
                response_format=response_format(request.format),
            )
        )

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        reply = await self._http.post_json("/chat/completions", self.body(request, model))
        if not 200 <= reply.status < 300:
            raise classify_error(reply, self.flavour, self.name, self._key)
        return self.parse(reply, model)

    def parse(self, reply: UpstreamReply, model: str) -> ChatResponse:
        data = decode_json(_completion_decoder, reply, self.name)
        # OpenRouter reports failures after the status is sent as a 200 with
        # an error object (top level or in the choice); never read as content.
        if data.error is not None:
            raise self._error_in_body(data.error, reply.status)
        if not data.choices:
            raise UpstreamBadResponse(
                f"{self.name} answered {reply.status} with no choices",
                provider=self.name,
                upstream_status=reply.status,
            )
        choice = data.choices[0]
        if choice.error is not None or choice.finish_reason == "error":
            raise self._error_in_body(choice.error, reply.status)
        if choice.message is None:
            raise UpstreamBadResponse(
                f"{self.name} answered {reply.status} with a choice that has no message",
                provider=self.name,
                upstream_status=reply.status,
            )
        usage = data.usage or choice.usage or _Usage()
        message = choice.message
        return ChatResponse(
            model=data.model or model,
            provider=self.name,
            # null when the model only called tools; we never ask for tools.
            content=message.content or "",
            done_reason=choice.finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            reasoning=message.reasoning or message.reasoning_content or None,
        )

    def _error_in_body(self, error: Any, status: int) -> UpstreamError:
        message = _error_info(error, self._key).message or 'finish_reason "error"'
        return UpstreamError(
            f"{self.name} answered {status} with an error: {message}",
            provider=self.name,
            upstream_status=status,
        )
