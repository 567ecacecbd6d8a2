"""Wire types of chatd's native API, and the codecs built once for them.

Inbound types are strict (unknown fields and wrong types are refused with
the path of the bad field); outbound types omit optional fields left unset.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool"]
ThinkLevel = Literal["low", "medium", "high", "max"]

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    content: NonEmpty


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: NonEmpty
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    # "json", or a JSON Schema object for structured output.
    format: Literal["json"] | dict[str, Any] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    think: bool | ThinkLevel | None = None
    # Seconds this request may take, retries and fallbacks included; capped
    # by the config's deadline_secs.
    deadline_secs: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Answer as NDJSON lines while the answer is generated (StreamDelta
    # lines, then a StreamDone line), instead of one JSON object.
    stream: bool = False
    stop: Annotated[list[str], msgspec.Meta(max_length=16)] | None = None
    seed: int | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class ChatResponse(msgspec.Struct, omit_defaults=True):
    model: str
    provider: str
    content: str
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Stamped by the dispatcher; the -1 default (never sent) only marks an
    # answer that has not been through it, so a stamped 0 is still sent.
    latency_ms: int = -1
    reasoning: str | None = None
    tier: str | None = None
    # Set when a fallback answered: the name (tier or model) of the link
    # that did, and how many upstream calls the request took.
    fallback: str | None = None
    attempts: int | None = None


class StreamDelta(msgspec.Struct, omit_defaults=True):
    """A piece of a streamed answer; a provider's stream ends with the whole
    ChatResponse after the last one."""

    content: str = ""
    reasoning: str = ""


class StreamDone(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The last line of a streamed native answer: what the deltas did not
    say (the ChatResponse without ``content`` and ``reasoning``), so a
    client joining every line's ``content`` gets the answer once."""

    model: str
    provider: str
    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int = -1
    tier: str | None = None
    fallback: str | None = None
    attempts: int | None = None
    done: Literal[True]

    @classmethod
    def of(cls, final: ChatResponse) -> StreamDone:
        return cls(
            model=final.model,
            provider=final.provider,
            done_reason=final.done_reason,
            prompt_tokens=final.prompt_tokens,
            completion_tokens=final.completion_tokens,
            latency_ms=final.latency_ms,
            tier=final.tier,
            fallback=final.fallback,
            attempts=final.attempts,
            done=True,
        )


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    provider: str | None = None
    path: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class ProvidersListing(msgspec.Struct):
    providers: dict[str, bool]


class Status(msgspec.Struct):
    """``/health`` and ``/ready``."""

    status: Literal["ok", "ready", "starting"]


chat_request_decoder = msgspec.json.Decoder(ChatRequest)
encoder = msgspec.json.Encoder()
