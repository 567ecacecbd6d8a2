"""Scripted failures, and the per-stub queue that hands them to chat requests."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Literal, get_args

import msgspec

FaultKind = Literal[
    "status",
    "quota",
    "delay",
    "html",
    "wrong_content_type",
    "garbage",
    "empty_choices",
    "redirect",
    "reset",
    "truncate",
    "midstream_error",
    "stall",
]

KINDS: frozenset[str] = frozenset(get_args(FaultKind))
# Only the OpenAI dialect has a `choices` array to empty.
OPENAI_ONLY: frozenset[str] = frozenset({"empty_choices"})


class Fault(msgspec.Struct, kw_only=True, frozen=True):
    """One scripted failure of a chat request.

    ``status`` is the HTTP status for ``status`` (required) and overrides the
    default of ``quota``, ``redirect`` (301), ``html``, ``wrong_content_type``
    and ``garbage`` (200). ``after`` counts the frames written before
    ``truncate``, ``midstream_error`` and ``stall`` strike: NDJSON lines or SSE
    events (comments included); a whole JSON body is written as two halves,
    so there the cut falls after the first half (``midstream_error`` on a
    whole reply answers as the upstream does when it fails before the first
    byte). ``seconds`` is how long
    ``delay`` waits before answering and ``stall`` pauses mid-reply.
    """

    kind: FaultKind
    status: int | None = None
    message: str | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    # Zen error class (e.g. "RateLimitError"), Kimi error type; ignored by Ollama.
    error_type: str | None = None
    # OpenRouter `error.metadata` (e.g. {"limit_source": "openrouter_key_limit"}).
    metadata: dict[str, Any] | None = None
    seconds: float = 0.0
    after: int = 2
    location: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(KINDS)}")
        if self.kind == "status" and self.status is None:
            raise ValueError("Fault(kind='status') needs a status")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"fault status {self.status} is not an HTTP status")
        if self.kind == "status" and self.status is not None and self.status < 400:
            raise ValueError("Fault(kind='status') is for error statuses (>= 400)")
        if self.kind == "redirect" and self.status is not None and not 300 <= self.status < 400:
            raise ValueError("Fault(kind='redirect') needs a 3xx status")
        if self.seconds < 0 or self.after < 0:
            raise ValueError("fault seconds and after must not be negative")
        if self.kind in ("delay", "stall") and self.seconds == 0:
            raise ValueError(f"Fault(kind={self.kind!r}) needs seconds > 0")

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.retry_after is not None:
            out["Retry-After"] = self.retry_after
        if self.retry_after_ms is not None:
            out["retry-after-ms"] = self.retry_after_ms
        return out


class FaultQueue:
    """Faults waiting for chat requests: queued ones first, then a standing one.

    Locked because a StubThread's owner scripts faults from another thread.
    """

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        self._lock = threading.Lock()
        self._next: deque[Fault] = deque()
        self._always: Fault | None = None

    def _check(self, fault: Fault) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        if fault.kind in OPENAI_ONLY and self._dialect != "openai":
            raise ValueError(f"fault {fault.kind!r} only applies to OpenAI-dialect flavours")

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        self._check(fault)
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._next.extend([fault] * times)

    def fail_always(self, fault: Fault) -> None:
        self._check(fault)
        with self._lock:
            self._always = fault

    def clear(self) -> None:
        with self._lock:
            self._next.clear()
            self._always = None

    def take(self) -> Fault | None:
        with self._lock:
            if self._next:
                return self._next.popleft()
            return self._always
