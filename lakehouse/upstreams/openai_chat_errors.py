"""Error bodies of the OpenAI Chat Completions dialect, in all three shapes
its upstreams use (OpenAI/Moonshot, OpenRouter, OpenCode Zen's own), and
their mapping onto chatd's error family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from lakehouse.errors import (
    ChatdError,
    UpstreamAuth,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRejected,
)
from lakehouse.keys import redact_key
from lakehouse.upstreams.contract import UpstreamReply
from lakehouse.upstreams.failures import error_for_status, parse_retry_after, short_text

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


class _ErrorEnvelope(msgspec.Struct):
    # "error" in Zen's own (Anthropic-style) envelope, absent otherwise.
    type: Any = None
    error: Any = None


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
    body = redact_key(body, key)
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
    reply: UpstreamReply,
    *,
    error_kinds: Mapping[str, ErrorKind],
    quota_phrases: tuple[str, ...],
    provider: str,
    key: str | None = None,
) -> ChatdError:
    """The error family member for a non-2xx reply. ``error_kinds`` maps
    ``error.type``, a string ``error.code`` or ``metadata.limit_source`` to
    its class; ``quota_phrases`` mark a spent quota on a 401/403/429."""
    info = _parse_error_body(reply.body, key)
    retry_after = parse_retry_after(reply.headers)
    status = reply.status
    kind: ErrorKind | None = None
    if 400 <= status < 500:
        kind = next((error_kinds[n] for n in info.names if n in error_kinds), None)
        lowered = info.text.lower()
        if (
            kind is None
            and status in (401, 403, 429)
            and any(phrase in lowered for phrase in quota_phrases)
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


def in_band_error(error: Any, status: int, provider: str, key: str | None) -> UpstreamError:
    """A failure reported inside a 2xx body or stream (an ``error`` object, or
    ``finish_reason: "error"`` with ``error`` None): the upstream's fault."""
    message = _error_info(error, key).message or 'finish_reason "error"'
    return UpstreamError(
        f"{provider} answered {status} with an error: {message}",
        provider=provider,
        upstream_status=status,
    )
