"""lakehouse/upstreams/call_ids.py: tool calls and results paired by id."""

from __future__ import annotations

import re

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
    kimi = ids.calls[(1, 0)]
    assert kimi.startswith("functions_get_weather_0_")
    assert ids.calls == {
        (1, 0): kimi,
        (1, 1): "call_1_1",
        (1, 2): "call_1_2",
    }
    # Results by name answer the earliest unanswered call of that name.
    assert ids.results == {2: kimi, 3: "call_1_1", 4: "call_1_2"}


def test_safe_id() -> None:
    assert safe_id("call_AbC-9") == "call_AbC-9"
    assert safe_id("a b/c").startswith("a_b_c_")
    assert len(safe_id("x" * 100)) == 64
    assert safe_id("") == "call"
    for made in (safe_id("a b/c"), safe_id("x" * 100), safe_id("é")):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", made)


def test_ids_that_differ_only_where_unsafe_stay_apart() -> None:
    # Both used to become "c_1": one conversation with two calls of one id,
    # which Anthropic refuses.
    assert safe_id("c.1") != safe_id("c_1")
    assert safe_id("c.1") != safe_id("c:1")
    assert safe_id("x" * 64 + "a") != safe_id("x" * 64 + "b")
    history = messages(
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c.1", "function": {"name": "f"}},
                    {"id": "c_1", "function": {"name": "f"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c_1", "content": "second"},
            {"role": "tool", "tool_call_id": "c.1", "content": "first"},
        ]
    )
    ids = pair_calls(history)
    assert ids.calls[(1, 0)] != ids.calls[(1, 1)]
    # Each result still answers its own call.
    assert ids.results == {2: ids.calls[(1, 1)], 3: ids.calls[(1, 0)]}
