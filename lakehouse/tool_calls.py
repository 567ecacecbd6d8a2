"""Tool calls between their two forms: arguments as JSON text (OpenAI,
streamed fragments) and as a JSON object (Ollama, chatd's native API);
and the fold of streamed ``ToolCallChunk``s into whole ``ToolCall``s.

Shared by every provider client and both caller surfaces, so that each
reads arguments the same way.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

from lakehouse.wire import FunctionCall, ToolCall, ToolCallChunk

_encode = msgspec.json.Encoder().encode


def mint_call_id() -> str:
    """An id for a call the upstream gave none (Ollama's older servers)."""
    return f"call_{secrets.token_hex(12)}"


def parse_arguments(text: str) -> dict[str, Any] | str:
    """The arguments as an object; the text itself when it is not a JSON
    object (a model may write broken JSON, or be cut off by max_tokens)."""
    if not text.strip():
        return {}
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
    return value if isinstance(value, dict) else text


def arguments_text(call: FunctionCall) -> str:
    """The arguments as JSON text (unchanged when they are kept as text)."""
    args = call.arguments
    return args if isinstance(args, str) else _encode(args).decode()


class CallFold:
    """The whole calls that a stream's ``ToolCallChunk``s add up to."""

    def __init__(self) -> None:
        self._ids: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._args: dict[int, list[str]] = {}

    def __bool__(self) -> bool:
        return bool(self._args)

    def indices(self) -> set[int]:
        return set(self._args)

    def add(self, chunk: ToolCallChunk) -> ToolCallChunk:
        """Take one chunk; it is handed back with an id minted when it is
        the first of its call and has none, so relayed chunks and the
        final calls agree."""
        if chunk.index not in self._args and not chunk.id:
            chunk = msgspec.structs.replace(chunk, id=mint_call_id())
        if chunk.id:
            self._ids[chunk.index] = chunk.id
        if chunk.name:
            self._names[chunk.index] = self._names.get(chunk.index, "") + chunk.name
        self._args.setdefault(chunk.index, []).append(chunk.arguments)
        return chunk

    def calls(self) -> list[ToolCall]:
        """The calls in index order; a call that came with no id gets one."""
        return [
            ToolCall(
                id=self._ids.get(i) or mint_call_id(),
                function=FunctionCall(
                    name=self._names.get(i, ""), arguments=parse_arguments("".join(parts))
                ),
            )
            for i, parts in sorted(self._args.items())
        ]
