"""The stub's tool use: when it calls tools, with which arguments, and what
it answers once the results are back. Deterministic, so tests can predict
every call from the request alone.

- Tools offered, ``tool_choice`` not "none", and the last message is the
  user's: the stub calls tools instead of answering. One call (the named
  tool, else the first) unless the user's text has the word "parallel" and
  ``parallel_tool_calls`` is not false: then one call per tool, in order.
- Arguments fit the tool's schema (``replies.schema_sample``), strings carrying
  the user's text.
- The last message is a tool result: the answer quotes every result that
  follows the last assistant turn, in order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lakehouse.stubs.replies import part_text, schema_sample


def _name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return None
    name = function.get("name")
    return name if isinstance(name, str) and name else None


def check_tools(data: Mapping[str, Any]) -> str | None:
    """What is wrong with ``tools`` (as an upstream would say it), or None."""
    tools = data.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "tools must be an array"
    for i, tool in enumerate(tools):
        if _name(tool) is None:
            return f"tools[{i}]: expected {{type: function, function: {{name, parameters}}}}"
    return None


def planned_calls(data: Mapping[str, Any], user_text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, arguments)`` of each call the stub makes; [] to answer in text."""
    tools = [t for t in data.get("tools") or () if _name(t)]
    messages = data.get("messages") or []
    choice = data.get("tool_choice")
    if not tools or choice == "none" or not messages:
        return []
    if str(messages[-1].get("role", "")).lower() != "user":
        return []
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    chosen = [t for t in tools if _name(t) == named] if named else tools
    parallel = "parallel" in user_text.split() and data.get("parallel_tool_calls") is not False
    if not parallel:
        chosen = chosen[:1]
    calls = []
    for tool in chosen:
        schema = tool["function"].get("parameters") or {"type": "object", "properties": {}}
        args = schema_sample(schema, " ".join(user_text.split()))
        calls.append((str(_name(tool)), args if isinstance(args, dict) else {"value": args}))
    return calls


def results_answer(messages: list[Any]) -> str | None:
    """The answer to a turn of tool results, or None when the last message
    is not one."""
    if not messages or str(messages[-1].get("role", "")).lower() != "tool":
        return None
    results = []
    for m in reversed(messages):
        if str(m.get("role", "")).lower() != "tool":
            break
        results.append(part_text(m.get("content")))
    return "The tools said: " + " | ".join(reversed(results))


def arguments_text(args: dict[str, Any]) -> str:
    """Arguments as OpenAI sends them: JSON text (with spaces, as Python
    writes it, so a re-encoding upstream would be noticed)."""
    return json.dumps(args)
