"""Logging: one JSON object per line, fields from ``extra=``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import msgspec

from lakehouse import request_id

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_encode = msgspec.json.Encoder(enc_hook=str).encode


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.current.get()
        if rid is not None:
            line["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encode(line).decode()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("chatd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class Stamps:
    """``timestamp`` with the formatted second cached (strftime is ~5 µs)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(now * 1000) % 1000:03d}Z"


class AccessEntry(msgspec.Struct, omit_defaults=True):
    """One request's access line; the same JSON shape as the other log lines."""

    ts: str
    level: str
    logger: str
    msg: str
    request_id: str
    route: str
    status: int
    upstream_ms: float
    overhead_ms: float
    # Retry backoff, Retry-After and queueing; left out when nothing waited.
    wait_ms: float = 0.0
    model: str | None = None
    provider: str | None = None
    tier: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    error: str | None = None
    # The error's message (an upstream's own words, keys redacted).
    message: str | None = None


class GatewayAccessEntry(msgspec.Struct, omit_defaults=True):
    """One request through the gateway; 499 when the caller left first."""

    ts: str
    level: str
    logger: str
    msg: str
    request_id: str
    method: str
    path: str
    status: int
    duration_ms: float
    route: str | None = None


class AccessLog:
    """Access lines, one per request, at a few microseconds each.

    Going through ``logging`` cost ~70 µs a request (a record, a generic
    formatter, a write syscall per line): here a line is one msgspec encode
    into a buffer that is written out within ``every`` seconds, at
    ``limit`` bytes, and when the app stops. Writes end on line boundaries
    and stay under PIPE_BUF, so workers sharing stderr never split a line.
    """

    PIPE_BUF = 4096

    def __init__(self, fd: int = 2, *, every: float = 0.1, limit: int = 32768) -> None:
        self.enabled = logging.getLogger("chatd.access").isEnabledFor(logging.INFO)
        self._fd = fd
        self._every = every
        self._limit = limit
        self._lines: list[bytes] = []
        self._size = 0
        self._pending: asyncio.TimerHandle | None = None
        self._encode = msgspec.json.Encoder().encode
        self.timestamp = Stamps()

    def write(self, entry: msgspec.Struct) -> None:
        line = self._encode(entry) + b"\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._limit:
            self.flush()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self._every, self.flush)

    def flush(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        chunk: list[bytes] = []
        size = 0
        for line in self._lines:
            if chunk and size + len(line) > self.PIPE_BUF:
                self._out(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._out(b"".join(chunk))
        self._lines.clear()
        self._size = 0

    def _out(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # stderr gone (closed pipe): losing access lines beats crashing
