"""The ids that pair a conversation's tool calls with their results, for
dialects that pair them by id (Anthropic's ``tool_use_id``, Responses'
``call_id``) when a caller may send calls without ids and results by
``tool_name`` (Ollama's form, accepted by chatd's native API).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lakehouse.wire import Message

# Anthropic's tool_use ids match ^[a-zA-Z0-9_-]+$; other upstreams' ids
# (Kimi's "functions.get_weather:0") are rewritten the same way on both
# sides, so the pairs still match.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX = 64


def safe_id(raw: str) -> str:
    """``raw`` when it is a safe id already; else its safe characters and
    a digest of the whole, so ids that differ only where they are unsafe
    (``c.1``, ``c_1``) or past the 64th character stay apart: Anthropic
    refuses a conversation with two tool_use blocks of one id."""
    if not raw:
        return "call"
    if len(raw) <= _MAX and not _UNSAFE.search(raw):
        return raw
    digest = hashlib.blake2s(raw.encode(), digest_size=4).hexdigest()
    return f"{_UNSAFE.sub('_', raw)[: _MAX - 9]}_{digest}"


@dataclass
class CallIds:
    # (message index, call index) → the id sent for that call.
    calls: dict[tuple[int, int], str] = field(default_factory=dict)
    # message index of a tool turn → the id of the call it answers.
    results: dict[int, str] = field(default_factory=dict)


def pair_calls(messages: Sequence[Message]) -> CallIds:
    """Ids for every call and every result; a call without an id gets
    ``call_<message>_<call>``, a result named only by ``tool_name`` answers
    the earliest unanswered call of that name."""
    ids = CallIds()
    waiting: dict[str, list[str]] = {}
    for i, message in enumerate(messages):
        for j, call in enumerate(message.tool_calls or ()):
            sent = safe_id(call.id) if call.id else f"call_{i}_{j}"
            ids.calls[(i, j)] = sent
            waiting.setdefault(call.function.name, []).append(sent)
        if message.role != "tool":
            continue
        if message.tool_call_id:
            sent = safe_id(message.tool_call_id)
            for pending in waiting.values():
                if sent in pending:
                    pending.remove(sent)
        else:
            pending = waiting.get(message.tool_name or "", [])
            sent = pending.pop(0) if pending else safe_id(message.tool_name or "")
        ids.results[i] = sent
    return ids
