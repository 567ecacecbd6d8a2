"""The one error family of chatd.

Every failure a caller can see is a ``ChatdError`` subclass; its class
attributes say which HTTP status and stable code it becomes, and the web
layer turns it into a response in one place. Messages are written for
humans and must never carry a key: the registry redacts them on the way out.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar


class ChatdError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    # Whether trying the same provider again may succeed (after a backoff).
    retryable: ClassVar[bool] = False
    # Whether the next link of a fallback chain should be tried: not when
    # the request itself is at fault, since every link would refuse it.
    fallback: ClassVar[bool] = False
    # Whether it says the provider is unwell (feeds its circuit breaker).
    provider_fault: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.path = path
        self.retry_after = retry_after
        self.upstream_status = upstream_status


E = TypeVar("E", bound=BaseException)


def settled(error: E) -> E:
    """``error``, answered, to keep past its except clause: its traceback
    dropped. The traceback holds the frame that caught the error; when that
    frame holds the error too (a local, or ``self`` keeping it), the two
    make a reference cycle that only the cyclic collector frees, with every
    frame and object they hold, and a busy worker turns that collector off
    (lakehouse.gc_pacing). chatd answers and logs its errors by class, code
    and message; their tracebacks are never read."""
    return error.with_traceback(None)


class BadRequest(ChatdError):
    status = 400
    code = "bad_request"


class Unauthorized(ChatdError):
    status = 401
    code = "unauthorized"


class NotFound(ChatdError):
    status = 404
    code = "not_found"


class Forbidden(ChatdError):
    status = 403
    code = "forbidden"


class MethodNotAllowed(ChatdError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        # The route's methods, for the Allow header (RFC 9110 §15.5.6).
        self.allow = allow


class ReloadRefused(ChatdError):
    """A reload's new config was refused; the running one stays."""

    status = 422
    code = "reload_refused"


class PayloadTooLarge(ChatdError):
    status = 413
    code = "payload_too_large"


class ProviderNotFound(ChatdError):
    status = 404
    code = "provider_not_found"
    fallback = True


class ProviderUnavailable(ChatdError):
    status = 503
    code = "provider_unavailable"
    fallback = True


class Overloaded(ChatdError):
    """chatd's own backpressure: the provider's queue is full."""

    status = 503
    code = "overloaded"
    fallback = True


class UpstreamError(ChatdError):
    """The upstream answered, but with an error that is not the caller's fault
    to fix by changing chatd's request (5xx, or an error we cannot classify)."""

    status = 502
    code = "upstream_error"
    retryable = True
    fallback = True
    provider_fault = True


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (4xx such as an unknown model
    or a bad parameter): trying again, here or elsewhere, gives the same."""

    code = "upstream_rejected"
    retryable = False
    fallback = False
    provider_fault = False


class UpstreamAuth(UpstreamError):
    """401/403: the key is missing, wrong, revoked or not allowed here."""

    code = "upstream_auth"
    retryable = False


class UpstreamQuota(UpstreamError):
    """402, or a 429 that says a plan's quota is spent (waiting won't help soon)."""

    code = "upstream_quota"
    retryable = False


class UpstreamRateLimited(UpstreamError):
    """429 that is transient throttling; carries the upstream's Retry-After."""

    code = "upstream_rate_limited"


class UpstreamBadResponse(UpstreamError):
    """200 with a body we cannot use: not JSON, HTML, zero choices, cut short."""

    code = "upstream_bad_response"


class UpstreamUnreachable(UpstreamError):
    """Connection refused, DNS or TLS failure, connection reset."""

    code = "upstream_unreachable"


class UpstreamConnectFailed(UpstreamUnreachable):
    """No connection was made, so the request was never sent: safe to send
    to another host of the same provider."""


class UpstreamRedirect(UpstreamError):
    """A 3xx: never followed for a POST, since it would turn into a body-less GET."""

    code = "upstream_redirect"
    retryable = False


class UpstreamTimeout(ChatdError):
    status = 504
    code = "upstream_timeout"
    retryable = True
    fallback = True
    provider_fault = True


class DeadlineExceeded(ChatdError):
    status = 504
    code = "deadline_exceeded"


class ConfigError(Exception):
    """A bad configuration; stops start-up with one line naming the key."""
