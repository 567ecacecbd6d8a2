from __future__ import annotations

from lakehouse.tool_calls import CallFold, answer_reason, arguments_text, parse_arguments
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


def test_answer_reason_says_tool_calls_unless_cut_short() -> None:
    assert answer_reason("stop", calls=True) == "tool_calls"
    assert answer_reason(None, calls=True) == "tool_calls"
    assert answer_reason(None, calls=False) == "stop"
    # A call cut off by max_tokens is not one to run: the caller is told.
    assert answer_reason("length", calls=True) == "length"
    assert answer_reason("content_filter", calls=True) == "content_filter"


def test_fold_passes_a_calls_id_and_name_once_when_the_upstream_repeats_them() -> None:
    # MiniMax through NVIDIA NIM sends the id and whole name on every chunk.
    fold = CallFold()
    first = fold.add(ToolCallChunk(0, "c1", "read_file", ""))
    again = fold.add(ToolCallChunk(0, "c1", "read_file", '{"path":'))
    last = fold.add(ToolCallChunk(0, "c1", "read_file", ' "a"}'))
    assert (first.id, first.name) == ("c1", "read_file")
    assert [(c.id, c.name, c.arguments) for c in (again, last)] == [
        (None, None, '{"path":'),
        (None, None, ' "a"}'),
    ]
    (call,) = fold.calls()
    assert (call.id, call.function.name, call.function.arguments) == (
        "c1",
        "read_file",
        {"path": "a"},
    )


def test_fold_takes_a_name_that_comes_after_the_first_chunk() -> None:
    fold = CallFold()
    fold.add(ToolCallChunk(0, "c1", "", ""))
    named = fold.add(ToolCallChunk(0, None, "f", "{}"))
    assert named.name == "f"
    assert fold.calls()[0].function.name == "f"
