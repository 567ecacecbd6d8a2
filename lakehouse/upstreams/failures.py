"""What an upstream's failure becomes in chatd's error family: HTTP
statuses, Retry-After, unusable bodies and transport errors."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import aiohttp
import msgspec

from lakehouse.errors import (
    ChatdError,
    UpstreamAuth,
    UpstreamBadResponse,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
    settled,
)
from lakehouse.upstreams.contract import UpstreamReply

T = TypeVar("T")

JSON_TYPES = ("application/json", "application/x-ndjson")


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or
    an HTTP date); None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    quota: bool = False,
) -> ChatdError:
    """The error family member for an upstream's non-2xx status.

    ``quota`` marks a 429 whose text says a plan's quota is spent: waiting a
    moment won't help, so it is not retryable like plain throttling.
    """
    text = (
        f"{provider} answered {status}: {message}" if message else f"{provider} answered {status}"
    )
    kw: dict[str, Any] = {"provider": provider, "upstream_status": status}
    if status in (401, 403):
        return UpstreamAuth(text, **kw)
    if status == 402 or (status == 429 and quota):
        return UpstreamQuota(text, retry_after=retry_after, **kw)
    if status == 429:
        return UpstreamRateLimited(text, retry_after=retry_after, **kw)
    if status in (408, 504):
        return UpstreamTimeout(text, **kw)
    if 300 <= status < 400:
        return UpstreamRedirect(
            f"{provider} answered {status} redirect; not followed for a POST (check base_url)",
            **kw,
        )
    if 400 <= status < 500:
        return UpstreamRejected(text, **kw)
    return UpstreamError(text, retry_after=retry_after, **kw)


def short_text(body: bytes, limit: int = 300) -> str:
    """A body as a one-line excerpt for an error message."""
    text = body[:limit].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text + ("…" if len(body) > limit else "")


def decode_json(decoder: msgspec.json.Decoder[T], reply: UpstreamReply, provider: str) -> T:
    """Decode a 2xx reply into a view Struct, or say why it is unusable."""
    if reply.content_type and reply.content_type not in JSON_TYPES:
        raise UpstreamBadResponse(
            f"{provider} answered {reply.status} with {reply.content_type}, not JSON: "
            f"{short_text(reply.body, 120)}",
            provider=provider,
            upstream_status=reply.status,
        )
    what = f"answered {reply.status} with an unusable body"
    return decode_or_refuse(decoder, reply.body, provider, reply.status, what)


def decode_or_refuse(
    decoder: msgspec.json.Decoder[T], data: bytes, provider: str, status: int, what: str
) -> T:
    """``data`` decoded, or UpstreamBadResponse saying "<provider> <what>:
    <why>" (``what``: "sent an unusable stream line")."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamBadResponse(
            f"{provider} {what}: {exc}", provider=provider, upstream_status=status
        ) from None


def decode_event(decoder: msgspec.json.Decoder[T], payload: bytes, provider: str, status: int) -> T:
    """Decode one stream event's data into a view Struct, or say why not."""
    return decode_or_refuse(decoder, payload, provider, status, "sent an unusable stream event")


def transport_error(exc: BaseException, provider: str, waited: str) -> ChatdError:
    """The error family member for an aiohttp/socket failure; ``waited``
    finishes the sentence of a timeout ("did not answer within 5s")."""
    # aiohttp keeps a body's error in the response's reader, and the
    # error's traceback holds the reader's frames: a reference cycle, with
    # the response and the frames of our own read in it. Only the message
    # is read from here on.
    settled(exc)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{provider} {waited}", provider=provider)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectFailed(
            f"cannot connect to {provider}: {_reason(exc)}", provider=provider
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamBadResponse(
            f"{provider} sent a broken body: {_reason(exc)}", provider=provider
        )
    return UpstreamUnreachable(f"{provider} connection failed: {_reason(exc)}", provider=provider)


def _reason(exc: BaseException) -> str:
    # aiohttp's messages name host and port, never headers, so they are safe
    # to show; fall back to the class name when there is no text.
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"
