"""When the stub's "model" calls tools in the Messages and Responses
dialects, with what, and what it answers once the results are back.

The same rules as the Chat Completions and Ollama dialects (issue 16's
stub convention), so every dialect's tests predict the same calls:
- tools offered, a tool choice that is not "none", and a conversation
  whose last turn is the user's own → the model calls the named tool, else
  the first; one call per tool when the user's text has the word
  "parallel" and parallel calls are not switched off;
- arguments fit the tool's schema, strings carrying the user's words;
- after tool results, it answers "The tools said: <r1> | <r2>".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lakehouse.stubs.replies import json_content, tokens

RESULTS_PREFIX = "The tools said: "


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.arguments)

    @property
    def pieces(self) -> list[str]:
        """The arguments' JSON text in the fragments a stream sends."""
        text = self.text
        cut = max(1, len(text) // 3)
        return [text[i : i + cut] for i in range(0, len(text), cut)]

    @property
    def count(self) -> int:
        return max(1, len(tokens(self.text.replace(",", ", "))))


def choose(
    tools: Sequence[Mapping[str, Any]], named: str | None, user_text: str, *, parallel: bool
) -> list[Call]:
    """The calls, given each tool as ``{name, schema}``; [] for none."""
    if not tools:
        return []
    chosen = [t for t in tools if t["name"] == named] if named else list(tools)
    if not (parallel and "parallel" in user_text.split()):
        chosen = chosen[:1]
    calls = []
    for tool in chosen:
        schema = tool.get("schema") or {"type": "object"}
        arguments = json.loads(json_content(" ".join(user_text.split()) or "hello", schema))
        calls.append(Call(tool["name"], arguments if isinstance(arguments, dict) else {}))
    return calls


def results_answer(results: Sequence[str]) -> str:
    return RESULTS_PREFIX + " | ".join(results)
