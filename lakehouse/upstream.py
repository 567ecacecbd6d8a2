"""HTTP plumbing shared by providers: one pooled aiohttp session per
provider, and the mapping of transport failures and HTTP statuses onto
chatd's error family.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import msgspec

from lakehouse import request_id
from lakehouse.errors import (
    ChatdError,
    UpstreamAuth,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)

T = TypeVar("T")

JSON_TYPES = ("application/json", "application/x-ndjson")


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class PluginOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every plugin's options: unknown keys are refused."""


@dataclass
class ProviderContext:
    """What the registry hands a plugin when it builds a provider."""

    name: str
    base_url: str
    key: str | None
    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Any = None


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
    try:
        return decoder.decode(reply.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamBadResponse(
            f"{provider} answered {reply.status} with an unusable body: {exc}",
            provider=provider,
            upstream_status=reply.status,
        ) from None


class HTTPClient:
    """One pooled session to one upstream, opened and closed with the app."""

    def __init__(self, ctx: ProviderContext, headers: Mapping[str, str] | None = None) -> None:
        self.provider = ctx.name
        self.base_url = ctx.base_url.rstrip("/")
        self.timeout = ctx.timeout
        self._headers = {**ctx.headers, **(headers or {})}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            # Upstream replies are read whole; cookies are never wanted.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnreachable(
                f"{self.provider}: client not started", provider=self.provider
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> UpstreamReply:
        """Send one request and read the whole reply; transport failures
        become ``UpstreamUnreachable``/``UpstreamTimeout``."""
        kwargs: dict[str, Any] = {"allow_redirects": False}
        if body is not None:
            kwargs["data"] = body
        rid = request_id.current.get()
        if rid is not None:
            headers = {**(headers or {}), request_id.HEADER: rid}
        if headers:
            kwargs["headers"] = headers
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.request(method, self.base_url + path, **kwargs) as resp:
                data = await resp.read()
                return UpstreamReply(resp.status, resp.headers, data)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.provider} did not answer within {timeout or self.timeout:g}s",
                provider=self.provider,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {self.provider}: {_reason(exc)}", provider=self.provider
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamBadResponse(
                f"{self.provider} sent a broken body: {_reason(exc)}", provider=self.provider
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnreachable(
                f"{self.provider} connection failed: {_reason(exc)}", provider=self.provider
            ) from None

    async def post_json(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> UpstreamReply:
        return await self.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )


def _reason(exc: BaseException) -> str:
    # aiohttp's messages name host and port, never headers, so they are safe
    # to show; fall back to the class name when there is no text.
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


async def wait_closed(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for it, swallowing only its cancellation."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
