"""The OpenAI-compatible surface's errors: statuses and bodies chosen so
that the official SDKs raise their matching classes."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from lakehouse.callers.http_io import error_headers, known_error
from lakehouse.errors import ChatdError
from lakehouse.plain_asgi import Headers


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str | None
    param: str | None


class OpenAIErrorBody(msgspec.Struct):
    error: OpenAIErrorDetail


_encode = msgspec.json.Encoder().encode

# Where this surface answers differently from the native one, so that the
# SDK raises its matching class: throttling and spent quotas are 429 (as
# OpenAI's own), a request the upstream refused is the caller's 4xx.
_STATUS = {"upstream_rate_limited": 429, "upstream_quota": 429}
_REJECTED_STATUSES = frozenset({400, 404, 413, 422})
# The SDK retries 408, 409, 429 and 5xx by default: not these, which a
# retry cannot fix (a key, a quota, a config, a spent deadline).
_NO_RETRY = frozenset(
    {
        "upstream_auth",
        "upstream_quota",
        "upstream_redirect",
        "upstream_rejected",
        "deadline_exceeded",
    }
)


def error_status(exc: ChatdError) -> int:
    if exc.code == "upstream_rejected":
        upstream = exc.upstream_status
        return upstream if upstream in _REJECTED_STATUSES else 400
    return _STATUS.get(exc.code, exc.status)


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(exc: ChatdError, message: str) -> bytes:
    path = exc.path
    param = path[2:] if path is not None and path.startswith("$.") else None
    status = error_status(exc)
    detail = OpenAIErrorDetail(message, _error_type(status), exc.code, param)
    return _encode(OpenAIErrorBody(detail))


def openai_error_response(
    exc: BaseException, redact: Callable[[str], str] = str
) -> tuple[int, Headers, bytes]:
    """Status, headers and body of this surface for any exception."""
    error = known_error(exc, redact)
    headers = error_headers(error)
    if error.code in _NO_RETRY:
        headers.append((b"x-should-retry", b"false"))
    return error_status(error), headers, error_body(error, redact(error.message))
