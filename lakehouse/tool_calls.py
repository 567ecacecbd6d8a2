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


# Endings that say the answer was cut short or withheld: they stand even
# when the model had started calling tools, since a call cut off by
# max_tokens is not one to run (OpenAI answers "length" then too).
_CUT_SHORT = frozenset({"length", "content_filter"})


def answer_reason(upstream: str | None, *, calls: bool) -> str:
    """The ``done_reason`` of an answer: "tool_calls" when the model called
    tools and was not cut short (Ollama and Anthropic say "stop" or
    "end_turn" then), else the upstream's reason ("stop" when it gave none)."""
    reason = upstream or "stop"
    return "tool_calls" if calls and reason not in _CUT_SHORT else reason


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
        """Take one chunk; it is handed back as it is to be relayed: the
        first of its call with an id (minted when it has none), later ones
        without the id and name already given, so relayed chunks and the
        final calls agree."""
        index = chunk.index
        if index not in self._args:
            chunk = msgspec.structs.replace(chunk, id=chunk.id or mint_call_id())
            self._ids[index] = chunk.id or ""
        else:
            # Some upstreams (MiniMax through NVIDIA NIM, …) repeat the id
            # and the whole name on every chunk; a name is never split, and
            # the SDKs concatenate what they are sent ("get_weatherget_weather").
            name = None if index in self._names else chunk.name
            if chunk.id is not None or name != chunk.name:
                chunk = msgspec.structs.replace(chunk, id=None, name=name)
        if chunk.name:
            self._names[index] = chunk.name
        self._args.setdefault(index, []).append(chunk.arguments)
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
