"""What chatd records of each answered chat request: its metrics, its
access line, and (at debug, when asked) its redacted bodies."""

from __future__ import annotations

import logging
import time

from lakehouse.dispatcher import CallInfo
from lakehouse.errors import ChatdError
from lakehouse.generations import Generation
from lakehouse.logs import AccessEntry, AccessLog
from lakehouse.metrics import Metrics
from lakehouse.wire import ChatRequest, ChatResponse

access = logging.getLogger("chatd.access")

# Metric label for a request path: bounded, whatever callers send.
_ROUTES = {
    "/chat": "chat",
    "/v1/chat": "chat",
    "/chat/completions": "chat_completions",
    "/v1/chat/completions": "chat_completions",
}


class RequestLog:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.access = AccessLog()

    def observe(
        self,
        generation: Generation,
        path: str,
        rid: str,
        request: ChatRequest | None,
        info: CallInfo,
        status: int,
        started: float,
        response: ChatResponse | None,
        error: ChatdError | None,
    ) -> None:
        """Count and log one answered request (after its response was sent)."""
        total = time.perf_counter() - started
        # chatd's own time: not the upstream's, nor waits chatd chose.
        overhead = max(0.0, total - info.upstream_s - info.wait_s)
        prompt = response.prompt_tokens if response is not None else 0
        completion = response.completion_tokens if response is not None else 0
        code = error.code if error is not None else None
        self.metrics.observe(
            route=_ROUTES.get(path, "other"),
            provider=info.provider,
            tier=info.tier,
            status=status,
            upstream_s=info.upstream_s,
            overhead_s=overhead,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        if self.access.enabled:
            self.access.write(
                AccessEntry(
                    ts=self.access.timestamp(time.time()),
                    level="info",
                    logger="chatd.access",
                    msg="request",
                    request_id=rid,
                    route=path,
                    status=status,
                    upstream_ms=round(info.upstream_s * 1000, 3),
                    overhead_ms=round(overhead * 1000, 3),
                    wait_ms=round(info.wait_s * 1000, 3),
                    model=request.model[:200] if request is not None else None,
                    provider=info.provider or None,
                    tier=info.tier or None,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    attempts=info.attempts if info.attempts > 1 else 0,
                    error=code,
                    message=generation.registry.redact(str(error))[:500] if error else None,
                )
            )
        if (
            request is not None
            and generation.config.chatd.log_bodies
            and access.isEnabledFor(logging.DEBUG)
        ):
            redact = generation.registry.redact
            access.debug(
                "bodies",
                extra={
                    "request_id": rid,
                    "messages": [redact(m.text()) for m in request.messages],
                    "content": redact(response.content) if response else None,
                },
            )

    def close(self) -> None:
        self.metrics.close()
        self.access.flush()
