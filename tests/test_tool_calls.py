from __future__ import annotations

from lakehouse.tool_calls import CallFold, arguments_text, parse_arguments
from lakehouse.wire import FunctionCall, ToolCallChunk


def test_arguments_object_and_text_round_trip() -> None:
    assert parse_arguments('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_arguments("  ") == {}
    # Not an object: kept as written, so nothing is lost on the way back.
    assert parse_arguments('{"a": 1') == '{"a": 1'
    assert parse_arguments("[1]") == "[1]"
    assert arguments_text(FunctionCall("f", {"a": 1})) == '{"a":1}'
    assert arguments_text(FunctionCall("f", '{"a": 1')) == '{"a": 1'


def test_fold_assembles_fragments_per_index_and_mints_missing_ids() -> None:
    fold = CallFold()
    assert not fold
    fold.add(ToolCallChunk(0, "c1", "get_weather", ""))
    fold.add(ToolCallChunk(0, arguments='{"city"'))
    minted = fold.add(ToolCallChunk(1, None, "get_time", '{"zone": '))
    fold.add(ToolCallChunk(0, arguments=': "Paris"}'))
    fold.add(ToolCallChunk(1, arguments='"CET"}'))
    assert minted.id and minted.id.startswith("call_")
    calls = fold.calls()
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("c1", "get_weather", {"city": "Paris"}),
        (minted.id, "get_time", {"zone": "CET"}),
    ]
    # The same ids each time: relayed chunks and the final answer agree.
    assert [c.id for c in fold.calls()] == ["c1", minted.id]
