"""lakehouse/upstreams/call_ids.py: tool calls and results paired by id."""

from __future__ import annotations

import msgspec

from lakehouse.upstreams.call_ids import pair_calls, safe_id
from lakehouse.wire import Message


def messages(raw: list[dict[str, object]]) -> list[Message]:
    return msgspec.convert(raw, list[Message])


def test_ids_kept_made_safe_or_minted() -> None:
    history = messages(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "functions.get_weather:0", "function": {"name": "get_weather"}},
                    {"function": {"name": "get_time"}},
                    {"function": {"name": "get_time"}},
                ],
            },
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sun"},
            {"role": "tool", "tool_name": "get_time", "content": "noon"},
            {"role": "tool", "tool_name": "get_time", "content": "one"},
        ]
    )
    ids = pair_calls(history)
    assert ids.calls == {
        (1, 0): "functions_get_weather_0",
        (1, 1): "call_1_1",
        (1, 2): "call_1_2",
    }
    # Results by name answer the earliest unanswered call of that name.
    assert ids.results == {2: "functions_get_weather_0", 3: "call_1_1", 4: "call_1_2"}


def test_safe_id() -> None:
    assert safe_id("call_AbC-9") == "call_AbC-9"
    assert safe_id("a b/c") == "a_b_c"
    assert len(safe_id("x" * 100)) == 64
